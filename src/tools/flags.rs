//! Value parsers the tools' flags share. A value out of range is refused by clap itself,
//! which names the flag and exits with status 2, the contract's status for a usage error,
//! before the tool starts.

use clap::builder::RangedU64ValueParser;

/// A count from 1 to `max`.
pub fn count(max: u64) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(1..=max)
}

/// A share from 0 to 1.
pub fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err("a share from 0 to 1, e.g. 0.05".into()),
    }
}

/// Most requests per second an open loop is asked for: ten times what one load generator
/// sends here. Past it a connection's interval between two requests rounds to nothing,
/// and a schedule that never moves never reaches its end.
pub const MAX_PER_SECOND: f64 = 10_000_000.0;

/// Whether `v` requests per second is a rate an open loop can keep: from 0.01 (a
/// connection's interval between two requests stays within what a clock can add) to
/// [`MAX_PER_SECOND`].
pub fn rate_in_range(v: f64) -> bool {
    (0.01..=MAX_PER_SECOND).contains(&v)
}

/// A positive number of requests per second, up to [`MAX_PER_SECOND`] (the closed loop,
/// without `--rate`, is the way to send as fast as the peer answers).
pub fn per_second(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        // NaN and infinities fall outside the range too.
        Ok(v) if rate_in_range(v) => Ok(v),
        _ => Err(
            "a number of requests per second from 0.01 to 10000000, e.g. 10000 (for as fast as the peer answers, leave out --rate: the closed loop)"
                .into(),
        ),
    }
}

/// A `host:port` to connect to (a name or an address; `[::1]:8583` for IPv6), its port
/// from 1 to 65535. Whether the host resolves is known only when connecting; a value that
/// cannot be an address at all is a usage error.
pub fn host_port(s: &str) -> Result<String, String> {
    if crate::config::is_host_port_to_dial(s) {
        Ok(s.to_string())
    } else {
        Err("a host:port to connect to, its port from 1 to 65535, e.g. 127.0.0.1:8583".into())
    }
}
