//! The configuration: one typed struct, read from a TOML file, overridden by environment
//! variables, validated once at start with messages that name the key.
//!
//! Every key has a default, so `vpan serve` runs with no file at all. Unknown keys are an
//! error that names them (a typo in a production config must not be silently ignored).
//! `VPAN_<SECTION>_<KEY>` overrides `[section] key`; the value is read as the type of the
//! key it overrides (a list takes TOML array syntax or comma-separated items).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::cards::CardsConfig;
pub use crate::store::StoreConfig;

/// Why the configuration cannot be used. Each variant names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file named by `--config`.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown, or a value has the wrong type.
    #[error("config {origin}: {message}")]
    Parse {
        /// The file, or "environment" for overrides.
        origin: String,
        /// The TOML/serde message, which names the key.
        message: String,
    },
    /// An environment variable names a key that does not exist or holds a bad value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// A value parsed but is not usable.
    #[error("config key {key}: {message}")]
    Invalid {
        /// `section.key`.
        key: &'static str,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// The whole configuration of `vpan serve`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The card network / acquirer side of the link.
    pub network: NetworkConfig,
    /// The issuer's authorization host, to which vpan is a client.
    pub issuer: IssuerConfig,
    /// How virtual cards are numbered.
    pub cards: CardsConfig,
    /// The HTTPS issuance API.
    pub api: ApiConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Where decisions are made durable.
    pub store: StoreConfig,
    /// The threads that run it all.
    pub runtime: RuntimeConfig,
}

/// `[network]`: the card network / acquirer side.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Address vpan listens on when it is the server side of the link.
    pub listen: String,
    /// When set, vpan dials this address instead of listening, and redials on loss.
    pub connect: String,
    /// With `connect`: longest wait between two dials (the backoff doubles up to it).
    pub reconnect_max_ms: u64,
    /// Length header: `len2`, `len2-inclusive`, `len4-ascii` or `len2-bcd`.
    pub framing: String,
    /// Fixed header after the length (e.g. a TPDU), as hex; counted in the length, echoed.
    pub header_hex: String,
    /// `iso87ascii`, `iso87binary` or the path of a jPOS GenericPackager XML file.
    pub spec: String,
    /// Connections accepted at once; the next one is refused.
    pub max_connections: usize,
    /// A frame longer than this closes its connection.
    pub max_frame_bytes: usize,
    /// Requests in flight on one connection before vpan stops reading from it.
    pub max_in_flight: usize,
    /// A connection with no frame for this long is closed (0: never). Networks send echoes.
    pub idle_timeout_ms: u64,
    /// A frame whose first byte arrived must be complete within this delay.
    pub read_timeout_ms: u64,
    /// On shutdown, how long requests in flight get to be answered before vpan exits.
    pub drain_timeout_ms: u64,
    /// Message authentication on this link: `none`, or `iso9797-1-alg3` for a MAC in
    /// DE 64/128 on every message both ways (see `switch::mac`).
    pub mac: String,
    /// With `mac` on: the file holding the link's double-length DES key as 32 hex digits.
    pub mac_key_file: String,
    /// ISO/IEC 9797-1 padding method of the MAC: 1 (zeros, ANSI X9.19) or 2 (0x80, zeros).
    pub mac_padding: u8,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: "127.0.0.1:8583".into(),
            connect: String::new(),
            reconnect_max_ms: 5_000,
            framing: "len2".into(),
            header_hex: String::new(),
            spec: "iso87ascii".into(),
            max_connections: 256,
            max_frame_bytes: 8192,
            max_in_flight: 1024,
            idle_timeout_ms: 300_000,
            read_timeout_ms: 10_000,
            drain_timeout_ms: 5_000,
            mac: "none".into(),
            mac_key_file: String::new(),
            mac_padding: 1,
        }
    }
}

/// `[issuer]`: the issuer's authorization host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IssuerConfig {
    /// The host's address.
    pub connect: String,
    /// Length header on this link.
    pub framing: String,
    /// Fixed header on this link, as hex.
    pub header_hex: String,
    /// Message layout on this link.
    pub spec: String,
    /// After this delay the network gets 91 and a late approval is reversed.
    pub timeout_ms: u64,
    /// Persistent connections kept open to the host.
    pub connections: usize,
    /// An idle connection sends an 0800 echo this often.
    pub echo_interval_ms: u64,
    /// Longest wait between two reconnection attempts (the backoff doubles up to it).
    pub reconnect_max_ms: u64,
    /// Send an 0800 sign-on (DE 70 = 001) on each new connection.
    pub sign_on: bool,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        IssuerConfig {
            connect: "127.0.0.1:9100".into(),
            framing: "len2".into(),
            header_hex: String::new(),
            spec: "iso87ascii".into(),
            timeout_ms: 1500,
            connections: 2,
            echo_interval_ms: 30_000,
            reconnect_max_ms: 5_000,
            sign_on: true,
        }
    }
}

/// `[api]`: the HTTPS issuance API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// HTTPS listen address.
    pub listen: String,
    /// PEM certificate chain; empty: a self-signed pair is made in the data dir.
    pub tls_cert: String,
    /// PEM private key, with `tls_cert`.
    pub tls_key: String,
    /// Bearer token; empty: one is made at first start in the data dir (mode 0600).
    pub token: Secret,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8443".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            token: Secret::default(),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Plain HTTP listen address of `GET /metrics`.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9583".into(),
        }
    }
}

/// `[runtime]`: the threads that run the links, the API and the metrics endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads of the async runtime; 0 (the default): one per core. On cores
    /// shared with other busy processes, one thread hands no work between threads: on
    /// this project's 2-core machine, beside the issuer simulator and the load generator,
    /// 1 thread spent 15-25 % less CPU per request than 2 and passed 1.09-1.16x the
    /// requests, but added more latency at p50 at 10,000/s (121-171 µs against 45-73 µs).
    /// README, "End to end, in detail".
    pub worker_threads: usize,
}

/// Most worker threads accepted: a typo guard, far above any core count vpan runs on.
const MAX_WORKER_THREADS: usize = 1024;
/// Most network connections at once (`network.max_connections`).
const MAX_NETWORK_CONNECTIONS: usize = 1_000_000;
/// Most persistent connections to the issuer host (`issuer.connections`).
const MAX_ISSUER_CONNECTIONS: usize = 1024;

/// A secret string (the API token): never printed by `Debug`, nor by an error.
#[derive(Clone, Default, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    /// Text only, refused without its value: serde's own "invalid type: integer `...`"
    /// quotes it, and a token written without quotes went to the log whole.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) => Ok(Secret(s)),
            other => Err(serde::de::Error::custom(format!(
                "must be text in quotes, not {} (its value is not shown: it is a secret)",
                other.type_str()
            ))),
        }
    }
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for comparison and for writing it to its 0600 file only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

const FRAMINGS: [&str; 4] = ["len2", "len2-inclusive", "len4-ascii", "len2-bcd"];

/// `network.mac` values: no MAC, or ISO/IEC 9797-1 MAC algorithm 3 with DES.
pub const MAC_ALGORITHMS: [&str; 2] = ["none", "iso9797-1-alg3"];

impl Config {
    /// A whole switch on this machine: every listener on 127.0.0.1 with a free port (each
    /// bound address is logged and reported by `App::addresses`), the data in `data_dir`,
    /// the issuer host at `issuer`; the rest as default. For the demo and tests.
    pub fn local(data_dir: &Path, issuer: &str) -> Config {
        let mut config = Config::default();
        config.network.listen = "127.0.0.1:0".into();
        config.api.listen = "127.0.0.1:0".into();
        config.metrics.listen = "127.0.0.1:0".into();
        config.store.data_dir = data_dir.to_path_buf();
        config.issuer.connect = issuer.into();
        config
    }

    /// Reads `path` (or only the defaults when `None`), applies the `VPAN_*` variables of
    /// `env`, and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "defaults".to_string()),
        };
        let config = Config::from_toml(&text, &origin, env)?;
        // A token written in the file makes the file a secret, as the token file is.
        if let Some(p) = path
            && sets_token(&text)
        {
            crate::store::warn_if_open_to_others(p, "the config file, which holds api.token,");
        }
        Ok(config)
    }

    /// Reads `text` (the TOML of a config file; `origin` names it in errors), applies the
    /// `VPAN_*` variables of `env`, and validates the result. [`Config::load`] without the
    /// file, so the config fuzz target drives the same code.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let origin = origin.to_string();
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.clone(),
            message: one_line(&e, text),
        })?;
        if let Some(message) = section_written_as_a_list(&table) {
            return Err(ConfigError::Parse { origin, message });
        }
        // Deserialize once first so that a bad file is reported against the file, not
        // against an environment variable that happens to be set too.
        toml::Value::Table(table.clone())
            .try_into::<Config>()
            .map_err(|e| ConfigError::Parse {
                origin: origin.clone(),
                message: one_line(&e, text),
            })?;
        let set_by = apply_env(&mut table, env)?;
        let config = toml::Value::Table(table)
            .try_into::<Config>()
            .map_err(|e| ConfigError::Parse {
                origin: format!("{origin} with environment overrides"),
                message: one_line(&e, ""),
            })?;
        // A value a variable set is told against the variable: the file may not set that
        // key at all, or set it right.
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { key, message } => match set_by.get(key) {
                Some(var) => ConfigError::Env {
                    var: var.clone(),
                    message: format!("{key}: {message}"),
                },
                None => ConfigError::Invalid { key, message },
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Checks what types alone cannot: addresses, names, ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.network.connect.is_empty() {
            check_addr("network.listen", &self.network.listen)?;
        } else {
            check_host_port("network.connect", &self.network.connect)?;
        }
        check_host_port("issuer.connect", &self.issuer.connect)?;
        check_addr("api.listen", &self.api.listen)?;
        check_addr("metrics.listen", &self.metrics.listen)?;
        self.check_listeners_apart()?;
        self.check_issuer_is_not_vpan()?;
        for (key, framing) in [
            ("network.framing", &self.network.framing),
            ("issuer.framing", &self.issuer.framing),
        ] {
            if !FRAMINGS.contains(&framing.as_str()) {
                return invalid(
                    key,
                    format!("{framing:?} is not one of {}", FRAMINGS.join(", ")),
                );
            }
        }
        for (key, hex) in [
            ("network.header_hex", &self.network.header_hex),
            ("issuer.header_hex", &self.issuer.header_hex),
        ] {
            if decode_hex(hex).is_none() {
                return invalid(key, "must be an even number of hex digits".into());
            }
        }
        // Bounded above too: a semaphore of more permits than tokio allows panics.
        if !(1..=MAX_NETWORK_CONNECTIONS).contains(&self.network.max_connections) {
            return invalid(
                "network.max_connections",
                format!("must be between 1 and {MAX_NETWORK_CONNECTIONS}"),
            );
        }
        if !(64..=65_535).contains(&self.network.max_frame_bytes) {
            return invalid(
                "network.max_frame_bytes",
                "must be between 64 and 65535".into(),
            );
        }
        if self.runtime.worker_threads > MAX_WORKER_THREADS {
            return invalid(
                "runtime.worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (0: one per core)"),
            );
        }
        if self.network.max_in_flight == 0 {
            return invalid("network.max_in_flight", "must be at least 1".into());
        }
        if !MAC_ALGORITHMS.contains(&self.network.mac.as_str()) {
            return invalid(
                "network.mac",
                format!(
                    "{:?} is not one of {}",
                    self.network.mac,
                    MAC_ALGORITHMS.join(", ")
                ),
            );
        }
        if self.network.mac != "none" && self.network.mac_key_file.is_empty() {
            return invalid(
                "network.mac_key_file",
                format!(
                    "network.mac = {:?} needs the file holding the MAC key (32 hex digits)",
                    self.network.mac
                ),
            );
        }
        // A key provisioned and named, but the MAC left off: the link would run without
        // one, and nothing would say so.
        if self.network.mac == "none" && !self.network.mac_key_file.is_empty() {
            return invalid(
                "network.mac_key_file",
                "is set while network.mac is \"none\": set network.mac = \"iso9797-1-alg3\" to MAC the link, or leave network.mac_key_file empty".into(),
            );
        }
        if ![1u8, 2].contains(&self.network.mac_padding) {
            return invalid(
                "network.mac_padding",
                "must be 1 (zeros) or 2 (0x80, then zeros)".into(),
            );
        }
        // Over a minute the network has long since given up and stood in: a wait that long
        // only holds the card's money and, at a stop, the drain.
        if !(1..=60_000).contains(&self.issuer.timeout_ms) {
            return invalid(
                "issuer.timeout_ms",
                "must be between 1 and 60,000 (a minute)".into(),
            );
        }
        // Zero would not mean "off" here but a timer firing every millisecond.
        if self.network.read_timeout_ms == 0 {
            return invalid("network.read_timeout_ms", "must be at least 1".into());
        }
        if self.issuer.echo_interval_ms < 100 {
            return invalid(
                "issuer.echo_interval_ms",
                "must be at least 100 (an 0800 every few milliseconds would flood the host)".into(),
            );
        }
        if self.network.reconnect_max_ms < 100 {
            return invalid(
                "network.reconnect_max_ms",
                "must be at least 100, the backoff's first step".into(),
            );
        }
        if self.issuer.reconnect_max_ms < 50 {
            return invalid(
                "issuer.reconnect_max_ms",
                "must be at least 50, the backoff's first step".into(),
            );
        }
        if !(1..=MAX_ISSUER_CONNECTIONS).contains(&self.issuer.connections) {
            return invalid(
                "issuer.connections",
                format!("must be between 1 and {MAX_ISSUER_CONNECTIONS}"),
            );
        }
        if ![6u8, 8].contains(&self.cards.bin_length) {
            return invalid("cards.bin_length", "must be 6 or 8".into());
        }
        if !(1_000..=100_000_000).contains(&self.cards.ledger_capacity) {
            return invalid(
                "cards.ledger_capacity",
                "must be between 1,000 and 100,000,000 transactions".into(),
            );
        }
        if !(1..=8_760).contains(&self.cards.ledger_retention_hours) {
            return invalid(
                "cards.ledger_retention_hours",
                "must be between 1 and 8,760 (a year)".into(),
            );
        }
        for range in &self.cards.virtual_ranges {
            if range.is_empty() || range.len() > 18 || !range.bytes().all(|b| b.is_ascii_digit()) {
                return invalid(
                    "cards.virtual_ranges",
                    format!("{range:?} is not a PAN prefix of 1 to 18 digits"),
                );
            }
            // A vPAN keeps the real card's first `bin_length` digits and a real card
            // inside a range is refused at issuance: a range no longer than that holds no
            // vPAN ever, only real cards, each then declined 14 as an unknown vPAN.
            if range.len() <= usize::from(self.cards.bin_length) {
                return invalid(
                    "cards.virtual_ranges",
                    format!(
                        "{range:?} is no longer than cards.bin_length ({}): a vPAN keeps that many digits of the real card, so the range would hold the real cards (each declined 14) and never a vPAN; reserve a longer prefix inside the BIN, such as \"{range}9\"",
                        self.cards.bin_length
                    ),
                );
            }
        }
        if self.api.tls_cert.is_empty() != self.api.tls_key.is_empty() {
            return invalid(
                "api.tls_cert",
                "api.tls_cert and api.tls_key go together: set both or neither".into(),
            );
        }
        let token = self.api.token.expose();
        if !token.is_empty() && token.trim_ascii().is_empty() {
            return invalid(
                "api.token",
                "is only whitespace: set the token, or leave it empty for the token file".into(),
            );
        }
        if self.store.data_dir.as_os_str().is_empty() {
            return invalid("store.data_dir", "must not be empty".into());
        }
        Ok(())
    }
}

/// Parses hex such as a TPDU header; `None` when it is not whole bytes of hex.
pub fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

impl Config {
    /// Refuses two listeners on one port (the same address, or one of them on every
    /// address): their addresses are bound before the store is opened, without listening,
    /// and two such sockets do not conflict until the second listens, after the recovery
    /// (review of 12c6cda).
    fn check_listeners_apart(&self) -> Result<(), ConfigError> {
        let mut listeners = vec![
            ("api.listen", &self.api.listen),
            ("metrics.listen", &self.metrics.listen),
        ];
        if self.network.connect.is_empty() {
            listeners.insert(0, ("network.listen", &self.network.listen));
        }
        let parsed: Vec<(&'static str, SocketAddr)> = listeners
            .into_iter()
            .filter_map(|(key, value)| Some((key, value.parse().ok()?)))
            .collect();
        for (i, (key, addr)) in parsed.iter().enumerate() {
            for (earlier, other) in &parsed[..i] {
                if ports_overlap(*addr, *other) {
                    return Err(ConfigError::Invalid {
                        key,
                        message: format!("{addr} takes the port of {earlier} ({other})"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Refuses an `issuer.connect` that is one of vpan's own listeners (a copy of
    /// `network.listen`, say): the issuer link would dial vpan itself, sign on to its own
    /// network side and show up, and every authorization would then end in 91.
    fn check_issuer_is_not_vpan(&self) -> Result<(), ConfigError> {
        let Some((host, port)) = self.issuer.connect.rsplit_once(':') else {
            return Ok(());
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let targets: Vec<std::net::IpAddr> = if host.eq_ignore_ascii_case("localhost") {
            vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()]
        } else {
            host.parse().into_iter().collect()
        };
        let mut listeners = vec![
            ("api.listen", &self.api.listen),
            ("metrics.listen", &self.metrics.listen),
        ];
        if self.network.connect.is_empty() {
            listeners.insert(0, ("network.listen", &self.network.listen));
        }
        for (key, listen) in listeners {
            let Ok(listen) = listen.parse::<SocketAddr>() else {
                continue;
            };
            let itself =
                port.parse() == Ok(listen.port()) && targets.iter().any(|&ip| reaches(listen, ip));
            if itself {
                return Err(ConfigError::Invalid {
                    key: "issuer.connect",
                    message: format!(
                        "{:?} is vpan's own {key} ({listen}): the issuer link would dial vpan itself; set the issuer host's address",
                        self.issuer.connect
                    ),
                });
            }
        }
        Ok(())
    }
}

/// True when dialling `ip` on a listener's port reaches the listener at `listener`: the
/// same address, a loopback address on a listener on every address, or the unspecified
/// address (which dials this host) on a local one.
fn reaches(listener: SocketAddr, ip: std::net::IpAddr) -> bool {
    let (l, t) = (listener.ip().to_canonical(), ip.to_canonical());
    let local = |ip: std::net::IpAddr| ip.is_loopback() || ip.is_unspecified();
    listener.port() != 0
        && (l == t || (covers(l, t) && local(t)) || (t.is_unspecified() && local(l)))
}

/// True when listeners on `a` and `b` cannot both listen: one nonzero port, on the same
/// address (an IPv4-mapped IPv6 address is its IPv4 one) or one covering the other.
fn ports_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    let (a, b) = (a.ip().to_canonical(), b.ip().to_canonical());
    a == b || covers(a, b) || covers(b, a)
}

/// An unspecified address takes its port on every address of its family, and `[::]` on
/// IPv4's too (vpan does not set `IPV6_V6ONLY`); `0.0.0.0` leaves `[::1]` free.
fn covers(wide: std::net::IpAddr, other: std::net::IpAddr) -> bool {
    wide.is_unspecified() && (wide.is_ipv6() || other.is_ipv4())
}

fn check_addr(key: &'static str, value: &str) -> Result<(), ConfigError> {
    value
        .parse::<SocketAddr>()
        .map(|_| ())
        .map_err(|_| ConfigError::Invalid {
            key,
            message: format!("{value:?} is not an IP:port address (port 0 picks a free port)"),
        })
}

fn check_host_port(key: &'static str, value: &str) -> Result<(), ConfigError> {
    if is_host_port_to_dial(value) {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            message: format!(
                "{value:?} is not a host:port to connect to, its port from 1 to 65535"
            ),
        })
    }
}

/// A `host:port` vpan can dial: a host without spaces, a port from 1 (port 0, which a
/// listener takes as "any free port", reaches nothing: dialled, it is refused for good).
pub fn is_host_port_to_dial(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains(char::is_whitespace)
            && port.parse::<u16>().is_ok_and(|p| p != 0)
    })
}

/// What is wrong with a section of ours written as a list, where vpan takes one table:
/// `[[section]]`, typed, reads "invalid type: map, expected a string (in `network`)", and
/// `network = []` passed as all defaults.
fn section_written_as_a_list(table: &toml::Table) -> Option<String> {
    let sections = toml::Table::try_from(Config::default()).ok()?;
    table.iter().find_map(|(name, value)| {
        let toml::Value::Array(items) = value else {
            return None;
        };
        if !sections.get(name).is_some_and(toml::Value::is_table) {
            return None;
        }
        Some(
            if !items.is_empty() && items.iter().all(toml::Value::is_table) {
                format!("[[{name}]] makes a list of {name} tables; vpan takes one: write [{name}]")
            } else {
                format!("{name} is a list; vpan takes one [{name}] table")
            },
        )
    })
}

/// Applies `VPAN_<SECTION>_<KEY>` variables to the parsed file. Variables whose section is
/// not a config section (such as `VPAN_TOKEN` of the `vpan card` client) are not ours.
/// Returns the variable that set each key (`section.key`).
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<std::collections::HashMap<String, String>, ConfigError> {
    let mut set_by = std::collections::HashMap::new();
    let defaults = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Parse {
        origin: "defaults".into(),
        message: e.to_string(),
    })?;
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("VPAN_"))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let rest = var["VPAN_".len()..].to_ascii_lowercase();
        let env_error = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        let ours = rest.split_once('_').and_then(|(section, key)| {
            let toml::Value::Table(t) = defaults.get(section)? else {
                return None;
            };
            Some((section, key, t))
        });
        let Some((section, key, section_defaults)) = ours else {
            if let Some(meant) = variable_meant(&defaults, &rest) {
                return Err(env_error(format!(
                    "names no configuration section; {meant} was meant?"
                )));
            }
            // Not ours: `VPAN_TOKEN` of `vpan card`, a test harness's own.
            continue;
        };
        let Some(default) = section_defaults.get(key) else {
            if is_service_link(key, &raw) {
                // Kubernetes sets `<SERVICE>_PORT`, `<SERVICE>_PORT_8443_TCP`,
                // `<SERVICE>_SERVICE_HOST`, ... for every service in the namespace: one
                // named `vpan-api` must not stop the switch. No key of ours is so named.
                continue;
            }
            return Err(env_error(format!("[{section}] has no key {key:?}")));
        };
        let value = env_value(default, &raw).map_err(env_error)?;
        let slot = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = slot {
            t.insert(key.to_string(), value);
        }
        // Typed now, so that a value of the wrong kind (`-5` for a count, a number in a
        // list of prefixes) is told against its variable: the file typed already, and the
        // variables before this one did too.
        toml::Value::Table(table.clone())
            .try_into::<Config>()
            .map_err(|e| env_error(one_line(&e, "")))?;
        set_by.insert(format!("{section}.{key}"), var.clone());
    }
    Ok(set_by)
}

/// For a `VPAN_` variable's `rest` (lower case) that names no configuration section, the
/// variable of ours it was meant to be, if any: a section misspelt, section and key alike
/// (a key a letter or two off too: `VPAN_STOR_KEYFILE`), or the underscore after the
/// section lost (`VPAN_METRICSLISTEN`, `VPAN_STOREDATA_DIR`). Left alone with no more than
/// a warning, `VPAN_STOR_KEY_FILE` would put the card key in the data directory, and
/// `VPAN_METRIC_LISTEN` the metrics on the loopback. `VPAN_STATE_DIR` is someone else's:
/// `store` has no key near `dir`.
fn variable_meant(defaults: &toml::Table, rest: &str) -> Option<String> {
    let misspelt_section = rest.split_once('_').and_then(|(section, key)| {
        defaults.iter().find_map(|(s, table)| {
            let k = key_meant(table, key)?;
            misspelt(section, s).then(|| format!("VPAN_{s}_{k}").to_ascii_uppercase())
        })
    });
    misspelt_section.or_else(|| joined_section_and_key(defaults, rest))
}

/// The key of a section's `table` that `written` is, or is a letter or two off.
fn key_meant<'t>(table: &'t toml::Value, written: &str) -> Option<&'t String> {
    let toml::Value::Table(table) = table else {
        return None;
    };
    table.keys().find(|k| *k == written || misspelt(written, k))
}

/// `VPAN_<SECTION>_<KEY>` for a variable's `rest` that is a section name and one of its
/// keys (or a key a letter or two off) written with no underscore between them.
fn joined_section_and_key(defaults: &toml::Table, rest: &str) -> Option<String> {
    defaults.iter().find_map(|(section, table)| {
        let key = key_meant(table, rest.strip_prefix(section.as_str())?)?;
        Some(format!("VPAN_{section}_{key}").to_ascii_uppercase())
    })
}

/// True for a variable Kubernetes makes for a service (`vpan-api`: `VPAN_API_PORT`,
/// `VPAN_API_PORT_8443_TCP_ADDR`, `VPAN_API_SERVICE_HOST`, ...; `vpan-api-gw`:
/// `VPAN_API_GW_SERVICE_HOST`, ...), by its name's ending and its value's shape: an
/// operator's `VPAN_API_PORT=9443` is a mistake to be told of, not one of these.
fn is_service_link(key: &str, value: &str) -> bool {
    let words: Vec<&str> = key.split('_').collect();
    let proto = |w: &str| matches!(w, "tcp" | "udp" | "sctp");
    let url = || {
        value.split_once("://").is_some_and(|(scheme, addr)| {
            proto(scheme) && addr.parse::<std::net::SocketAddr>().is_ok()
        })
    };
    let ip = || value.parse::<std::net::IpAddr>().is_ok();
    let port = || value.parse::<u16>().is_ok();
    // The service's name may add words before the ending (`gw_service_host`).
    (0..words.len()).any(|from| match &words[from..] {
        ["port"] => url(),
        ["port", n, p, rest @ ..] if n.parse::<u16>().is_ok() && proto(p) => match rest {
            [] => url(),
            ["addr"] => ip(),
            ["port"] => port(),
            ["proto"] => proto(value),
            _ => false,
        },
        ["service", "host"] => ip(),
        ["service", "port", ..] => port(),
        _ => false,
    })
}

/// True when `written` is `section` with a letter or two wrong, missing or added (one, for
/// a name as short as `api`): a section misspelt, not another tool's variable.
fn misspelt(written: &str, section: &str) -> bool {
    let most = if section.len() <= 3 { 1 } else { 2 };
    written != section && edit_distance(written.as_bytes(), section.as_bytes()) <= most
}

/// Levenshtein's distance between `a` and `b`.
fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Whether the TOML `text` (which parses) writes an `api.token` that is not empty.
fn sets_token(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| {
        t.get("api")
            .and_then(|api| api.get("token"))
            .and_then(toml::Value::as_str)
            .is_some_and(|token| !token.is_empty())
    })
}

/// The process's `VPAN_*` variables, to pass to [`Config::load`]. Read without
/// `std::env::vars`, which panics on any variable that is not UTF-8, even one that has
/// nothing to do with vpan; a `VPAN_*` one that is not UTF-8 is refused by name.
pub fn vpan_env_vars() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().filter(|n| n.starts_with("VPAN_")) else {
            continue;
        };
        let value = value.into_string().map_err(|_| ConfigError::Env {
            var: name.to_string(),
            message: "its value is not UTF-8".into(),
        })?;
        vars.push((name.to_string(), value));
    }
    Ok(vars)
}

/// The `VPAN_<SECTION>_<KEY>` variables whose section does not exist, which
/// [`Config::load`] leaves alone (tools and test harnesses use the prefix for their own
/// variables too), so that a misspelt section can be warned about rather than go unseen.
pub fn env_vars_naming_no_section(env: &[(String, String)]) -> Vec<String> {
    let Ok(defaults) = toml::Table::try_from(Config::default()) else {
        return Vec::new();
    };
    env.iter()
        .filter_map(|(var, _)| {
            let rest = var.strip_prefix("VPAN_")?.to_ascii_lowercase();
            let (section, _) = rest.split_once('_')?;
            // One meant as ours is refused by `Config::load`, not warned of as another's.
            let others =
                !defaults.contains_key(section) && variable_meant(&defaults, &rest).is_none();
            others.then(|| var.clone())
        })
        .collect()
}

/// A TOML error as one line: where (line and column, when the error has a place in
/// `text`) and what, without the excerpt of the file that toml's own rendering adds over
/// several lines (the excerpt may hold a secret, such as a token on the line it quotes).
fn one_line(e: &toml::de::Error, text: &str) -> String {
    let what = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    // Errors from typing a table (an unknown key, a wrong type) name the section in
    // their rendering, not in their message.
    let section = e
        .to_string()
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("in `"))
        .map(|l| format!(" ({l})"))
        .unwrap_or_default();
    // A duplicate key or table is named, as the file writes it: toml's span covers it. Only
    // a bare key (letters, digits, `_`, `-`): a quoted one may hold anything.
    let what = match e.span().and_then(|s| text.get(s)) {
        Some(key)
            if what == "duplicate key"
                && !key.is_empty()
                && key.len() <= 64
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            format!("duplicate key `{key}`")
        }
        _ => what,
    };
    match e.span().filter(|s| s.start <= text.len()) {
        Some(span) => {
            let before = &text.as_bytes()[..span.start];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
            format!("line {line}, column {column}: {what}{section}")
        }
        None => format!("{what}{section}"),
    }
}

/// Reads an environment value as the type of the key's default.
fn env_value(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    Ok(match default {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not a whole number"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not true or false"))?,
        ),
        toml::Value::Array(_) => {
            let raw = raw.trim();
            if raw.starts_with('[') {
                let parsed: toml::Table = toml::from_str(&format!("v = {raw}"))
                    .map_err(|e| format!("not a TOML array: {}", e.message()))?;
                parsed
                    .get("v")
                    .cloned()
                    .unwrap_or(toml::Value::Array(vec![]))
            } else {
                toml::Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_string()))
                        .collect(),
                )
            }
        }
        other => return Err(format!("cannot be set from the environment ({other})")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vpan.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn no_file_gives_the_contract_defaults() {
        let c = Config::load(None, []).unwrap();
        assert_eq!(c.network.listen, "127.0.0.1:8583");
        assert_eq!(c.network.framing, "len2");
        assert_eq!(c.network.spec, "iso87ascii");
        assert_eq!(c.network.max_connections, 256);
        assert_eq!(c.network.max_frame_bytes, 8192);
        assert_eq!(c.issuer.connect, "127.0.0.1:9100");
        assert_eq!(c.issuer.timeout_ms, 1500);
        assert_eq!(c.issuer.connections, 2);
        assert_eq!(c.cards.bin_length, 6);
        assert!(c.cards.virtual_ranges.is_empty());
        assert_eq!(c.api.listen, "127.0.0.1:8443");
        assert_eq!(c.metrics.listen, "127.0.0.1:9583");
        assert_eq!(c.store.data_dir, PathBuf::from("./vpan-data"));
        assert_eq!(c.store.key_path(), PathBuf::from("./vpan-data/pan.key"));
        assert_eq!(c.store.snapshot_every_records, 2_000_000);
    }

    #[test]
    fn worker_threads_default_to_one_per_core_and_are_bounded() {
        assert_eq!(Config::load(None, []).unwrap().runtime.worker_threads, 0);
        let c = load("[runtime]\nworker_threads = 3\n", &[]).unwrap();
        assert_eq!(c.runtime.worker_threads, 3);
        let c = load("", &[("VPAN_RUNTIME_WORKER_THREADS", "1")]).unwrap();
        assert_eq!(c.runtime.worker_threads, 1);
        let err = load("[runtime]\nworker_threads = 100000\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("runtime.worker_threads"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = load(
            "[network]\nlisten = \"127.0.0.1:0\"\nmax_conections = 3\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_conections"), "{err}");
    }

    #[test]
    fn a_section_written_as_a_list_of_tables_is_told_so() {
        for section in ["network", "issuer", "store"] {
            let err = load(&format!("[[{section}]]\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("[[{section}]] makes a list"))
                    && err.contains(&format!("write [{section}]")),
                "{err}"
            );
        }
        // Nor any other list (an empty one read as all defaults).
        let err = load("network = []\n", &[]).unwrap_err().to_string();
        assert!(
            err.contains("network is a list; vpan takes one [network] table"),
            "{err}"
        );
        // A key of the wrong type stays the key's error.
        let err = load("[cards]\nvirtual_ranges = 5\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("virtual_ranges"), "{err}");
    }

    #[test]
    fn an_unknown_section_is_refused_by_name() {
        let err = load("[netwrok]\nlisten = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("netwrok"), "{err}");
    }

    #[test]
    fn environment_variables_override_the_file_with_the_keys_type() {
        let c = load(
            "[network]\nmax_connections = 3\n",
            &[
                ("VPAN_NETWORK_MAX_CONNECTIONS", "7"),
                ("VPAN_CARDS_VIRTUAL_RANGES", "4970109, 4970108"),
                ("VPAN_API_TOKEN", "12345"),
                ("VPAN_ISSUER_SIGN_ON", "false"),
                ("VPAN_TOKEN", "not a config key, ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.network.max_connections, 7);
        assert_eq!(c.cards.virtual_ranges, vec!["4970109", "4970108"]);
        assert_eq!(c.api.token.expose(), "12345");
        assert!(!c.issuer.sign_on);
    }

    #[test]
    fn an_environment_variable_for_an_unknown_key_is_refused_by_name() {
        let err = load("", &[("VPAN_NETWORK_LISTN", "127.0.0.1:0")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("VPAN_NETWORK_LISTN"), "{err}");
    }

    #[test]
    fn the_variables_kubernetes_makes_for_a_service_named_vpan_api_are_not_ours() {
        let c = load(
            "",
            &[
                ("VPAN_API_PORT", "tcp://10.0.0.7:8443"),
                ("VPAN_API_PORT_8443_TCP", "tcp://10.0.0.7:8443"),
                ("VPAN_API_PORT_8443_TCP_ADDR", "10.0.0.7"),
                ("VPAN_API_PORT_8443_TCP_PORT", "8443"),
                ("VPAN_API_PORT_8443_TCP_PROTO", "tcp"),
                ("VPAN_API_SERVICE_HOST", "10.0.0.7"),
                ("VPAN_API_SERVICE_PORT_HTTPS", "8443"),
                ("VPAN_API_GW_SERVICE_HOST", "10.0.0.8"),
                ("VPAN_METRICS_SERVICE_PORT", "9583"),
            ],
        )
        .unwrap();
        assert_eq!(c.api.listen, Config::default().api.listen);
        // An operator's guess at a key is still refused by name.
        for (var, value) in [
            ("VPAN_API_PORT", "9443"),
            ("VPAN_NETWORK_PORT", "8583"),
            ("VPAN_ISSUER_PORT", "10.0.0.9:8583"),
        ] {
            let err = load("", &[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(var), "{err}");
        }
    }

    #[test]
    fn a_variable_naming_a_section_misspelt_or_run_into_its_key_is_refused_with_the_name_meant() {
        for (var, meant) in [
            ("VPAN_STOR_KEY_FILE", "VPAN_STORE_KEY_FILE"),
            ("VPAN_METRIC_LISTEN", "VPAN_METRICS_LISTEN"),
            ("VPAN_NETWRK_LISTEN", "VPAN_NETWORK_LISTEN"),
            ("VPAN_APU_TOKEN", "VPAN_API_TOKEN"),
            ("VPAN_STOR_KEYFILE", "VPAN_STORE_KEY_FILE"),
            // The underscore after the section lost.
            ("VPAN_METRICSLISTEN", "VPAN_METRICS_LISTEN"),
            ("VPAN_APITOKEN", "VPAN_API_TOKEN"),
            ("VPAN_STOREDATA_DIR", "VPAN_STORE_DATA_DIR"),
            ("VPAN_NETWORKLISTN", "VPAN_NETWORK_LISTEN"),
        ] {
            let err = load("", &[(var, "x")]).unwrap_err().to_string();
            assert!(err.contains(var) && err.contains(meant), "{var}: {err}");
        }
        // Other tools' variables stay theirs (the `vpan card` client's too), a section near
        // one of ours included when that section has no such key.
        for var in [
            "VPAN_TOKEN",
            "VPAN_URL",
            "VPAN_CA",
            "VPAN_NETWORKING",
            "VPAN_TOKEN_FILE",
            "VPAN_BENCH_DIR",
            "VPAN_CRASH_ROUND",
            "VPAN_TEST_KEEP_LOGS",
            "VPAN_STATE_DIR",
            "VPAN_APP_VERSION",
            "VPAN_CARD_PAN",
        ] {
            assert!(load("", &[(var, "1")]).is_ok(), "{var}");
        }
    }

    #[test]
    fn a_variable_naming_no_section_is_found_for_a_warning_and_leaves_the_config_alone() {
        let env: Vec<(String, String)> = [
            ("VPAN_NET_LISTEN", "127.0.0.1:1"),
            ("VPAN_NETWORK_LISTEN", "127.0.0.1:0"),
            ("VPAN_TOKEN", "the card client's"),
            // Refused by `Config::load` as ours misspelt: not also warned of as another's.
            ("VPAN_STOREDATA_DIR", "/tmp/x"),
            ("VPAN_STOR_KEY_FILE", "/tmp/k"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env_vars_naming_no_section(&env), vec!["VPAN_NET_LISTEN"]);
        let env: Vec<_> = env.into_iter().take(3).collect();
        let c = Config::from_toml("", "test", env).unwrap();
        assert_eq!(c.network.listen, "127.0.0.1:0");
    }

    #[test]
    fn a_file_error_is_one_line_with_its_place_and_never_quotes_the_file() {
        let secret = "s3cr3t-t0ken";
        let cases = [
            // A syntax error on the token's line (the string is not closed).
            (format!("[api]\ntoken = \"{secret}\n"), "line 2"),
            (
                "[network]\nmax_conections = 3\n".to_string(),
                "max_conections",
            ),
            ("[issuer]\ntimeout_ms = \"soon\"\n".to_string(), "issuer"),
            // Review of configuration: a token written without quotes was quoted whole in
            // serde's "invalid type" (masked only when as long as a card number).
            ("[api]\ntoken = 98765432101\n".to_string(), "api.token"),
            // A key or a section written twice is named (toml's own words did not).
            (
                "[issuer]\ntimeout_ms = 1\ntimeout_ms = 2\n".to_string(),
                "line 3, column 1: duplicate key `timeout_ms`",
            ),
            (
                "[network]\nmax_connections = 3\n[network]\n".to_string(),
                "duplicate key `network`",
            ),
            // A quoted key may hold anything: not quoted back.
            (
                format!("[api]\n\"{secret}\" = 1\n\"{secret}\" = 2\n"),
                "line 3, column 1: duplicate key",
            ),
        ];
        for (text, names) in cases {
            let err = load(&text, &[]).unwrap_err().to_string();
            assert_eq!(err.lines().count(), 1, "{err:?}");
            assert!(!err.ends_with('\n'), "{err:?}");
            assert!(err.contains(names), "{err}");
            assert!(!err.contains(secret), "{err}");
            assert!(!err.contains("98765432101"), "{err}");
        }
    }

    #[test]
    fn an_environment_value_of_the_wrong_type_is_refused_by_name() {
        for (var, raw) in [
            ("VPAN_ISSUER_TIMEOUT_MS", "soon"),
            // Read as a number, but not of the key's kind: told by serde, still by name.
            ("VPAN_ISSUER_TIMEOUT_MS", "-5"),
            ("VPAN_CARDS_VIRTUAL_RANGES", "[\"4970\", 5]"),
        ] {
            let err = load("", &[("VPAN_API_LISTEN", "127.0.0.1:0"), (var, raw)])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("environment variable {var}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn listeners_overlap_on_one_port_as_linux_binds_them() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        for (a, b, overlap) in [
            ("127.0.0.1:18443", "127.0.0.1:18443", true),
            ("0.0.0.0:18443", "127.0.0.1:18443", true),
            ("[::]:18443", "127.0.0.1:18443", true),
            ("[::]:18443", "[::1]:18443", true),
            ("[::ffff:127.0.0.1]:18443", "127.0.0.1:18443", true),
            ("[::ffff:0.0.0.0]:18443", "10.0.0.1:18443", true),
            // Review of 83591e9: these listen side by side.
            ("0.0.0.0:18443", "[::1]:18443", false),
            ("127.0.0.1:18443", "[::1]:18443", false),
            ("127.0.0.1:18443", "127.0.0.2:18443", false),
            ("127.0.0.1:0", "127.0.0.1:0", false),
            ("127.0.0.1:18443", "127.0.0.1:18444", false),
        ] {
            assert_eq!(ports_overlap(at(a), at(b)), overlap, "{a} {b}");
            assert_eq!(ports_overlap(at(b), at(a)), overlap, "{b} {a}");
        }
    }

    /// Review of b4e48eb: a value out of range that a variable set was told against the
    /// config key, and the operator looked in a file that did not set it.
    #[test]
    fn an_environment_value_out_of_range_is_refused_naming_the_variable() {
        for (var, raw, key) in [
            (
                "VPAN_NETWORK_MAX_CONNECTIONS",
                "0",
                "network.max_connections",
            ),
            ("VPAN_CARDS_BIN_LENGTH", "7", "cards.bin_length"),
            ("VPAN_ISSUER_CONNECT", "127.0.0.1:0", "issuer.connect"),
        ] {
            let err = load("", &[("VPAN_API_LISTEN", "127.0.0.1:0"), (var, raw)])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("environment variable {var}: {key}: ")),
                "{err}"
            );
        }
        // Set in the file, it is still the file's key.
        let err = load("[cards]\nbin_length = 7\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config key cards.bin_length: "), "{err}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            ("[network]\nframing = \"len3\"\n", "network.framing"),
            ("[network]\nlisten = \"localhost\"\n", "network.listen"),
            ("[network]\nheader_hex = \"60000\"\n", "network.header_hex"),
            ("[cards]\nbin_length = 7\n", "cards.bin_length"),
            ("[cards]\nledger_capacity = 10\n", "cards.ledger_capacity"),
            (
                "[cards]\nledger_retention_hours = 0\n",
                "cards.ledger_retention_hours",
            ),
            (
                "[cards]\nvirtual_ranges = [\"49x\"]\n",
                "cards.virtual_ranges",
            ),
            // Review of configuration: the BIN itself as a range declined every real card
            // of the BIN with 14, and no vPAN could be issued in it.
            (
                "[cards]\nvirtual_ranges = [\"4970109\", \"497010\"]\n",
                "cards.virtual_ranges",
            ),
            (
                "[cards]\nbin_length = 8\nvirtual_ranges = [\"4970109\"]\n",
                "cards.virtual_ranges",
            ),
            ("[issuer]\ntimeout_ms = 0\n", "issuer.timeout_ms"),
            ("[issuer]\ntimeout_ms = 60001\n", "issuer.timeout_ms"),
            ("[api]\ntls_cert = \"cert.pem\"\n", "api.tls_cert"),
            ("[api]\ntoken = \" \\n\"\n", "api.token"),
            ("[network]\nmac = \"x9.9\"\n", "network.mac"),
            (
                "[network]\nmac = \"iso9797-1-alg3\"\n",
                "network.mac_key_file",
            ),
            ("[network]\nmac_padding = 3\n", "network.mac_padding"),
            // Review of configuration: a MAC key named with the MAC left off ran the link
            // without one.
            (
                "[network]\nmac_key_file = \"/etc/vpan/mac.key\"\n",
                "network.mac_key_file",
            ),
            (
                "[network]\nread_timeout_ms = 0\n",
                "network.read_timeout_ms",
            ),
            (
                "[issuer]\necho_interval_ms = 0\n",
                "issuer.echo_interval_ms",
            ),
            (
                "[issuer]\nreconnect_max_ms = 0\n",
                "issuer.reconnect_max_ms",
            ),
            (
                "[network]\nreconnect_max_ms = 99\n",
                "network.reconnect_max_ms",
            ),
            (
                "[network]\nmax_connections = 9000000000000000000\n",
                "network.max_connections",
            ),
            ("[issuer]\nconnections = 100000\n", "issuer.connections"),
            ("[issuer]\nconnect = \"127.0.0.1:0\"\n", "issuer.connect"),
            (
                "[api]\nlisten = \"0.0.0.0:18443\"\n[metrics]\nlisten = \"127.0.0.1:18443\"\n",
                "metrics.listen",
            ),
            (
                "[network]\nconnect = \"network.example:0\"\n",
                "network.connect",
            ),
        ];
        for (text, key) in cases {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err}");
        }
    }

    /// Review of configuration: `issuer.connect` set to vpan's own network listener was
    /// taken; the link dialled vpan, signed on to it, showed up, and every authorization
    /// was answered 91.
    #[test]
    fn the_issuer_link_may_not_dial_one_of_vpans_own_listeners() {
        for text in [
            "[issuer]\nconnect = \"127.0.0.1:8583\"\n",
            "[network]\nlisten = \"0.0.0.0:18583\"\n[issuer]\nconnect = \"localhost:18583\"\n",
            "[network]\nlisten = \"[::]:18583\"\n[issuer]\nconnect = \"127.0.0.1:18583\"\n",
            "[issuer]\nconnect = \"127.0.0.1:9583\"\n",
        ] {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(
                err.starts_with("config key issuer.connect: "),
                "{text:?}: {err}"
            );
        }
        // An issuer host elsewhere on the port vpan listens on is another machine's.
        for text in [
            "[network]\nlisten = \"0.0.0.0:8583\"\n[issuer]\nconnect = \"10.0.0.10:8583\"\n",
            "[network]\nlisten = \"127.0.0.1:0\"\n[issuer]\nconnect = \"127.0.0.1:8583\"\n",
            "[network]\nconnect = \"10.0.0.9:8583\"\n[issuer]\nconnect = \"127.0.0.1:8583\"\n",
        ] {
            assert!(load(text, &[]).is_ok(), "{text:?}");
        }
    }

    #[test]
    fn port_zero_is_accepted_everywhere() {
        let c = load(
            "[network]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.api.listen, "127.0.0.1:0");
    }

    #[test]
    fn the_example_production_config_is_valid_and_shows_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/vpan.example.toml");
        let c = Config::load(Some(&path), []).unwrap();
        assert_eq!(c.network.listen, "0.0.0.0:8583");
        let example: toml::Table =
            toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, keys) in &defaults {
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    example.get(section).and_then(|t| t.get(key)).is_some(),
                    "deploy/vpan.example.toml lacks [{section}] {key}"
                );
            }
        }
    }

    #[test]
    fn the_readme_configuration_table_lists_every_key_with_its_default() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let mut keys = 0;
        for (section, table) in &defaults {
            for (key, value) in table.as_table().unwrap() {
                // The row as README.md writes it: key and default, as TOML would.
                let row = format!("| `{section}.{key}` | `{value}` |");
                assert!(
                    readme.contains(&row),
                    "README.md's configuration table lacks the row {row}"
                );
                keys += 1;
            }
        }
        let rows = readme
            .lines()
            .filter(|l| {
                defaults
                    .keys()
                    .any(|section| l.starts_with(&format!("| `{section}.")))
            })
            .count();
        assert_eq!(
            rows, keys,
            "README.md lists a key the configuration does not have"
        );
    }

    #[test]
    fn the_token_never_prints() {
        let mut c = Config::default();
        c.api.token = Secret::new("s3cr3t-token");
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn hex_headers_decode_or_are_refused() {
        assert_eq!(decode_hex("6000010000"), Some(vec![0x60, 0, 1, 0, 0]));
        assert_eq!(decode_hex(""), Some(vec![]));
        assert_eq!(decode_hex("6g"), None);
        assert_eq!(decode_hex("600"), None);
    }
}
