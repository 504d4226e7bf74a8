//! The switch: vpan on the ISO 8583 link, between the network and the issuer host.
//!
//! A request's way through, by file:
//!
//! - [`server`]: accepts network connections (or dials the network), within
//!   `max_connections`;
//! - [`connection`]: one connection's frames in and answers out, many in flight, answered
//!   in whatever order they are decided;
//! - [`flow`]: what each message type means: decide on the card, forward, answer;
//! - [`issuer`]: the persistent connections to the issuer host, STAN re-stamping, timeouts
//!   and the reversal of late approvals;
//! - [`mac`]: the optional MAC (DE 64/128) on the network link, checked before anything
//!   else is done with a message and put on every answer;
//! - `scrub`: the real card number found wherever else an issuer's answer holds it, so
//!   that the network never gets it.

pub mod connection;
pub mod flow;
pub mod issuer;
pub mod mac;
mod scrub;
pub mod server;
mod tracks;

pub use connection::ConnectionLimits;
pub use flow::Flow;
pub use issuer::{IssuerError, IssuerLink, IssuerSettings};

/// How long a dial (to the issuer host, or to the network) may wait for the peer's answer.
/// The kernel alone keeps retrying a SYN that gets no answer (a host down behind a firewall
/// that drops rather than refuses) for about two minutes; the link would stay down that
/// long after the peer came back.
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a TCP connection to `addr`, failing with `TimedOut` after [`DIAL_TIMEOUT`].
pub(crate) async fn dial(addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    dial_within(addr, DIAL_TIMEOUT).await
}

/// [`dial`], failing with `TimedOut` after `limit` (the load generator's `--timeout-ms`).
pub(crate) async fn dial_within(
    addr: &str,
    limit: std::time::Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
        Ok(dialled) => dialled,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer to the connection in {} ms", limit.as_millis()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dial_that_gets_no_answer_fails_at_its_limit() {
        // A listener that never accepts, its backlog full: the kernel drops further SYNs
        // unanswered, as a firewall would, and a dial waits for an answer that never comes.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut queued = Vec::new();
        let limit = std::time::Duration::from_millis(300);
        let dialled = loop {
            // Guarded: a dial that ignored its limit would wait out the kernel's two minutes.
            let dialled = tokio::time::timeout(limit * 20, dial_within(&addr, limit))
                .await
                .expect("the dial ends at its own limit");
            match dialled {
                Ok(stream) => queued.push(stream),
                Err(e) => break e,
            }
            assert!(queued.len() < 64, "the backlog never filled");
        };
        assert_eq!(dialled.kind(), std::io::ErrorKind::TimedOut, "{dialled}");
        assert!(dialled.to_string().contains("300 ms"), "{dialled}");
    }
}
