//! The running switch as one value: [`App::build`] opens the store and binds every
//! listener (port 0 allowed), [`App::addresses`] says where they are, [`App::run`] serves
//! until the shutdown future resolves, then drains and flushes.
//!
//! Tests start it on port 0 in-process; `vpan serve` and `vpan demo` start it the same way.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiServer, ApiSetupError, Health};
use crate::cards::{Cards, OpenError, Recovered, SnapshotPolicy};
use crate::config::{Config, decode_hex};
use crate::iso8583::{FrameCodec, Framing, Message, Spec, SpecError};
use crate::metrics as m;
use crate::store::owed::OwedReversals;
use crate::switch::mac::{self, MacKey, Padding};
use crate::switch::{ConnectionLimits, Flow, IssuerLink, IssuerSettings, server};

/// The largest frame on the issuer link: what a two-byte length carries.
const ISSUER_MAX_FRAME_BYTES: usize = 65_535;

/// Why the switch could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error("cannot listen on {key} = {addr}: {source}")]
    Bind {
        /// The config key.
        key: &'static str,
        /// Its value.
        addr: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A spec could not be loaded.
    #[error("{key}: {source}")]
    Spec {
        /// The config key.
        key: &'static str,
        /// Why.
        source: SpecError,
    },
    /// A config value is not usable.
    #[error("{key}: {message}")]
    Config {
        /// The config key.
        key: &'static str,
        /// Why.
        message: String,
    },
    /// The data directory could not be opened or recovered.
    #[error("store: {0}")]
    Store(#[from] OpenError),
    /// The API's certificate or token could not be loaded or made.
    #[error(transparent)]
    Api(#[from] ApiSetupError),
    /// The journal failed while the switch served (its error was logged when it did).
    #[error(
        "the store failed while serving (its error was logged then): every request since was answered 96; what was approved before it is on disk"
    )]
    StoreFailedWhileServing,
}

/// Where the switch's listeners are bound.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    /// The network listener (`None` when vpan dials the network).
    pub network: Option<SocketAddr>,
    /// The Prometheus endpoint.
    pub metrics: SocketAddr,
    /// The HTTPS issuance API.
    pub api: SocketAddr,
}

/// The network side: a bound listener, or the address to dial and the longest wait
/// between two dials.
enum NetworkSide {
    Listen(TcpListener),
    Dial {
        addr: String,
        reconnect_max: Duration,
    },
}

/// A built, not yet running, switch.
pub struct App {
    /// The virtual cards, shared with the flow (and the API).
    cards: Arc<Cards>,
    /// `store.snapshot_every_records`.
    snapshot_every_records: u64,
    /// What recovery found at start.
    recovered: Recovered,
    /// The network side.
    network: NetworkSide,
    /// The network side's layout.
    network_spec: &'static Spec,
    /// The network link's MAC key, when `network.mac` is on.
    network_mac: Option<MacKey>,
    /// Per-connection limits of the network side.
    limits: ConnectionLimits,
    /// The longest a stop can take ([`longest_stop`]).
    stop_bound: Duration,
    /// `network.max_connections`.
    max_connections: usize,
    /// The metrics listener.
    metrics: TcpListener,
    /// The issuance API, bound, certificate and token ready.
    api: ApiServer,
    /// Where everything is bound.
    addresses: Addresses,
    /// Cancels every task at shutdown.
    shutdown: CancellationToken,
    /// Stops the issuer link, only once the network side has drained: requests in flight
    /// need it for their answers, and for the reversals of what the issuer approved.
    issuer_stop: CancellationToken,
    /// The issuer link (already dialling).
    issuer: IssuerLink,
}

impl App {
    /// Opens the store (recovering it), binds the listeners, starts dialling the issuer.
    pub async fn build(config: Config) -> Result<App, AppError> {
        let network_spec = load_spec("network.spec", &config.network.spec, Link::Network)?;
        let issuer_spec = load_spec("issuer.spec", &config.issuer.spec, Link::Issuer)?;
        let network_codec = codec(
            "network.framing",
            &config.network.framing,
            &config.network.header_hex,
            config.network.max_frame_bytes,
        )?;
        let network_mac = network_mac(&config, network_spec)?;
        // The issuer host is trusted: its link takes any frame its framing can carry, and a
        // tighter `network.max_frame_bytes` (against hostile network peers) does not cut
        // the issuer's long answers.
        let issuer_codec = codec(
            "issuer.framing",
            &config.issuer.framing,
            &config.issuer.header_hex,
            ISSUER_MAX_FRAME_BYTES,
        )?;

        // Certificate files the operator named are read before the store is opened: a typo
        // stops the start before anything is made in a fresh data directory.
        if !config.api.tls_cert.is_empty() {
            let named = crate::api::tls::files(
                &config.api.tls_cert,
                &config.api.tls_key,
                &config.store.data_dir,
            )
            .map_err(ApiSetupError::from)?;
            crate::api::tls::server_config(&named).map_err(ApiSetupError::from)?;
        }
        if config.cards.virtual_ranges.is_empty() {
            tracing::warn!(
                "cards.virtual_ranges is empty: vPANs are drawn among the real cards' BINs, where \
                 one may equal another cardholder's real card; reserve ranges in production"
            );
        }
        // The listeners' addresses are taken before the store is opened, so that a port in
        // use stops the start before anything is made in a fresh data directory, and before
        // a long recovery; they listen only once it is done, so that the network's
        // connections meanwhile are refused (another node of a pair takes them), not left
        // unanswered in a backlog.
        let network_address = if config.network.connect.is_empty() {
            Some(reserve("network.listen", &config.network.listen)?)
        } else {
            None
        };
        let metrics_address = reserve("metrics.listen", &config.metrics.listen)?;
        let api_address = reserve("api.listen", &config.api.listen)?;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            build = env!("VPAN_BUILD"),
            data_dir = %config.store.data_dir.display(),
            "vpan starting: recovering the store"
        );
        let (cards, store) = (config.cards.clone(), config.store.clone());
        let (cards, recovered, (owed, debts, stamps)) = tokio::task::spawn_blocking(move || {
            let (cards, recovered) = Cards::open(&cards, &store, cards.ledger())?;
            // The cards' own: they hold the data directory's lock, and made the key.
            let cipher = cards.cipher();
            // The STANs the issuer link changed within the hour it remembers them (and a
            // minute ahead, for a clock set back a little; later ones are dropped rather
            // than kept for ever).
            // A debt an older vpan wrote with card-verification data loses it now.
            let owed = OwedReversals::open_restating(
                &store.data_dir,
                cipher,
                crate::cards::card::unix_now(),
                crate::switch::issuer::RESTAMPED_KEPT.as_secs(),
                |reversal| crate::switch::issuer::kept_as_owed(issuer_spec, reversal),
            )
            .map_err(crate::store::naming_the_key(
                &store.key_path(),
                &store.data_dir.join(crate::store::owed::FILE),
            ))?;
            Ok::<_, OpenError>((cards, recovered, owed))
        })
        .await
        .map_err(|e| AppError::Config {
            key: "store.data_dir",
            message: format!("recovery did not finish: {e}"),
        })??;
        tracing::info!(
            cards = recovered.cards,
            records = recovered.records,
            bytes_cut = recovered.bytes_cut,
            intact_records_cut = recovered.intact_records_cut,
            holds_counted_as_spent = recovered.holds_counted_as_spent,
            records_of_unknown_cards = recovered.records_of_unknown_cards,
            elapsed_ms = recovered.elapsed_ms,
            reversals_owed = debts.len(),
            data_dir = %config.store.data_dir.display(),
            "store recovered"
        );

        let network = match network_address {
            Some(address) => NetworkSide::Listen(address.listen()?),
            None => NetworkSide::Dial {
                addr: config.network.connect.clone(),
                reconnect_max: Duration::from_millis(config.network.reconnect_max_ms),
            },
        };
        let metrics = metrics_address.listen()?;
        let api = ApiServer::new(api_address.listen()?, &config.api, &config.store.data_dir)?;
        let addresses = Addresses {
            network: match &network {
                NetworkSide::Listen(l) => l.local_addr().ok(),
                NetworkSide::Dial { .. } => None,
            },
            metrics: metrics.local_addr().map_err(|source| AppError::Bind {
                key: "metrics.listen",
                addr: config.metrics.listen.clone(),
                source,
            })?,
            api: api.local_addr().map_err(|source| AppError::Bind {
                key: "api.listen",
                addr: config.api.listen.clone(),
                source,
            })?,
        };
        let shutdown = CancellationToken::new();
        let issuer_stop = CancellationToken::new();
        m::install();
        m::publish_settings(
            config.network.max_connections,
            Duration::from_millis(config.issuer.timeout_ms),
            config.issuer.connections,
            api.certificate_expires(),
        );
        owed.publish();
        let issuer = IssuerLink::start(
            IssuerSettings {
                connect: config.issuer.connect.clone(),
                codec: issuer_codec,
                header: Bytes::from(decode_hex(&config.issuer.header_hex).unwrap_or_default()),
                spec: issuer_spec,
                timeout: Duration::from_millis(config.issuer.timeout_ms),
                connections: config.issuer.connections,
                echo_interval: Duration::from_millis(config.issuer.echo_interval_ms.max(1)),
                reconnect_max: Duration::from_millis(config.issuer.reconnect_max_ms.max(1)),
                sign_on: config.issuer.sign_on,
            },
            Arc::new(owed),
            debts,
            stamps,
            issuer_stop.clone(),
        );
        let drain_timeout = drain_timeout(&config);
        let limits = ConnectionLimits {
            codec: network_codec,
            max_in_flight: config.network.max_in_flight,
            idle_timeout: (config.network.idle_timeout_ms > 0)
                .then(|| Duration::from_millis(config.network.idle_timeout_ms)),
            read_timeout: Duration::from_millis(config.network.read_timeout_ms.max(1)),
            drain_timeout,
        };
        let app = App {
            cards: Arc::new(cards),
            snapshot_every_records: config.store.snapshot_every_records,
            recovered,
            network,
            network_spec,
            network_mac,
            limits,
            stop_bound: stop_within(drain_timeout, answer_within(&config)),
            max_connections: config.network.max_connections,
            metrics,
            api,
            addresses,
            shutdown,
            issuer_stop,
            issuer,
        };
        app.log_addresses();
        Ok(app)
    }

    fn log_addresses(&self) {
        match (&self.network, self.addresses.network) {
            (NetworkSide::Listen(_), Some(addr)) => {
                tracing::info!(%addr, "network listener bound (ISO 8583)")
            }
            (NetworkSide::Dial { addr, .. }, _) => {
                tracing::info!(%addr, "will dial the network")
            }
            _ => {}
        }
        tracing::info!(addr = %self.addresses.metrics, "metrics listener bound (GET /metrics)");
        tracing::info!(addr = %self.addresses.api, cert = %self.api.cert_file().display(), "API listener bound (HTTPS)");
    }

    /// Where the listeners are bound.
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// The virtual cards (for the issuance API, the demo and tests).
    pub fn cards(&self) -> Arc<Cards> {
        self.cards.clone()
    }

    /// The issuer link (its [`IssuerLink::connected`] tells when it is up).
    pub fn issuer(&self) -> IssuerLink {
        self.issuer.clone()
    }

    /// What recovery found at start.
    pub fn recovered(&self) -> &Recovered {
        &self.recovered
    }

    /// Serves until `shutdown` resolves; then stops accepting, gives requests in flight
    /// `network.drain_timeout_ms`, and flushes the journal.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        let App {
            cards,
            snapshot_every_records,
            network,
            network_spec,
            network_mac,
            limits,
            max_connections,
            metrics,
            api,
            shutdown: token,
            issuer_stop,
            issuer,
            ..
        } = self;
        let drain_timeout = limits.drain_timeout;
        // Snapshots bound the journal on disk and what a restart replays.
        let policy = SnapshotPolicy {
            every_records: snapshot_every_records,
            ..SnapshotPolicy::default()
        };
        let snapshots = if snapshot_every_records == 0 {
            None
        } else {
            match cards.start_snapshots(policy) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "snapshot thread not started: the journal grows until the next start");
                    None
                }
            }
        };
        let flow = Arc::new(Flow {
            cards: cards.clone(),
            issuer: issuer.clone(),
            network_spec,
            network_mac,
        });

        // The API and /metrics outlive the network side's drain: an operator watches the
        // drain on /metrics, and /healthz says the network is down while it lasts rather
        // than refusing the connection.
        let sides = CancellationToken::new();
        // Counted once before /metrics answers: its first scrape lists the cards too.
        let handle = m::install();
        publish_card_counts(&cards);
        // Listening, the network side is up while it accepts; dialling, while connected.
        // Neither before the issuer link's first try (below).
        let network_up = Arc::new(AtomicBool::new(false));
        let health = Arc::new(
            Health::new()
                .check("network", {
                    let network_up = network_up.clone();
                    move || network_up.load(Ordering::Relaxed)
                })
                // The journal's alone: a book of reversals owed that cannot be written
                // leaves debts in memory only, which a restart would forget, so it must not
                // read as down to what restarts unhealthy processes; it has its own gauge
                // and alert (vpan_issuer_reversals_unrecorded).
                .check("store", {
                    let cards = cards.clone();
                    move || !cards.store_failed()
                })
                .check("issuer", {
                    let issuer = issuer.clone();
                    move || issuer.connected() > 0
                }),
        );
        let metrics_task = tokio::spawn(m::serve(metrics, handle, health.clone(), sides.clone()));
        let gauges_task = tokio::spawn(publish_card_gauges(cards.clone(), sides.clone()));
        let api_task = tokio::spawn(api.serve(cards.clone(), health, sides.clone()));
        let network_task = tokio::spawn({
            let (flow, issuer, network_up, token) = (
                flow.clone(),
                issuer.clone(),
                network_up.clone(),
                token.clone(),
            );
            async move {
                // The network is served once the issuer link has had its first try (a host
                // down refuses at once; one that never answers costs one timeout, at
                // most): served before, the repeats of purchases left in doubt would get 91
                // for want of a connection a few milliseconds from being up. Connections
                // the network opens meanwhile wait in the listener's backlog. The API and
                // /metrics serve meanwhile, and a stop is not held up by it.
                tokio::select! {
                    () = issuer.first_tries(issuer.timeout()) => {}
                    () = token.cancelled() => return,
                }
                tracing::info!(
                    up = issuer.connected(),
                    of = issuer.connections(),
                    "serving the network"
                );
                match network {
                    NetworkSide::Listen(listener) => {
                        up_while(
                            network_up,
                            server::listen(listener, flow, limits, max_connections, token),
                        )
                        .await
                    }
                    NetworkSide::Dial {
                        addr,
                        reconnect_max,
                    } => server::dial(addr, reconnect_max, flow, limits, network_up, token).await,
                }
            }
        });

        shutdown.await;
        tracing::info!(
            at_most_ms = self.stop_bound.as_millis() as u64,
            "shutting down: no new connections, draining requests in flight"
        );
        token.cancel();
        // Not taking new connections: down, for /healthz, from now on. After the cancel,
        // which a connection dialled at this instant checks after marking the link up.
        network_up.store(false, Ordering::SeqCst);
        let _ = network_task.await;
        // Every network connection has drained: the answers it waited for came over the
        // issuer link. What the issuer never answered is reversed before the link goes.
        issuer.quiesce(drain_timeout).await;
        issuer_stop.cancel();
        sides.cancel();
        // The API and /metrics let calls in flight finish; a client that never ends its
        // call (a stalled scraper, a request half sent) is cut rather than left to keep
        // the store from closing.
        // Side by side, so that the stop takes one grace at most, not two.
        tokio::join!(
            finish_within(api_task, SIDE_SERVER_GRACE, "API"),
            finish_within(metrics_task, SIDE_SERVER_GRACE, "metrics"),
        );
        let _ = gauges_task.await;
        drop(flow);
        drop(issuer);
        // A snapshot being written finishes first; then no thread holds the cards.
        if let Some(s) = snapshots {
            let _ = tokio::task::spawn_blocking(move || s.stop()).await;
        }
        // Said in the exit status too: a service manager records the stop of a switch
        // whose store failed as a failure, not as a clean exit.
        let store_failed = cards.store_failed();
        // The last handle on the cards: dropping it flushes and closes the journal, and
        // frees the data directory. A task that held a handle (a connection that has just
        // ended) lets go of it within moments; waited for, so that the journal closes here,
        // before "stopped", and an App started next on this directory finds it free.
        let mut cards = cards;
        let shared_until = tokio::time::Instant::now() + CARDS_LET_GO;
        loop {
            match Arc::try_unwrap(cards) {
                Ok(last) => {
                    tokio::task::spawn_blocking(move || drop(last))
                        .await
                        .unwrap_or(());
                    break;
                }
                Err(shared) if tokio::time::Instant::now() < shared_until => {
                    cards = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    tracing::warn!("cards still shared at shutdown; the journal closes with them");
                    break;
                }
            }
        }
        tracing::info!("stopped");
        if store_failed {
            return Err(AppError::StoreFailedWhileServing);
        }
        Ok(())
    }
}

/// How long a stop waits for the last other handle on the cards to be let go of.
const CARDS_LET_GO: Duration = Duration::from_secs(2);

/// The longest a stop can take from the signal: the network side's drain (and the
/// [`LINGER`](crate::switch::connection::LINGER) of its last connections), the issuer
/// link's reversals owed (as long again), then API calls and scrapes still open, then the
/// last other handles on the cards; then only a snapshot being written, which is
/// finished, and the journal's last flush. A service
/// manager's stop timeout must be at least this, or it kills a clean stop.
pub fn longest_stop(config: &Config) -> Duration {
    stop_within(drain_timeout(config), answer_within(config))
}

/// [`longest_stop`] for a drain of `drain`, a request taking `answered` at most: the
/// network side's connections end at the drain's end, then finish what they read just
/// before it (unanswered, within `answered`) while they linger for their peers to read the
/// last answers.
fn stop_within(drain: Duration, answered: Duration) -> Duration {
    let closing = answered.max(crate::switch::connection::LINGER);
    [closing, drain, SIDE_SERVER_GRACE, CARDS_LET_GO]
        .into_iter()
        .fold(drain, Duration::saturating_add)
}

/// The longest a request can take to be answered: the issuer's timeout, or the journal's
/// stall limit for a hold the disk does not make durable (the two run side by side).
fn answer_within(config: &Config) -> Duration {
    Duration::from_millis(config.issuer.timeout_ms).max(crate::store::journal::STALL_AFTER)
}

/// How long shutdown waits for the requests in flight: `network.drain_timeout_ms`, raised
/// (with a warning) to the longest a request can take to be answered ([`answer_within`]),
/// plus slack for the issuer link's sweep. Shorter, a request still with the issuer at
/// shutdown could be approved there, counted, and never answered.
fn drain_timeout(config: &Config) -> Duration {
    let longest = u64::try_from(answer_within(config).as_millis()).unwrap_or(u64::MAX);
    let at_least = longest.saturating_add(100);
    if config.network.drain_timeout_ms < at_least {
        tracing::warn!(
            network_drain_timeout_ms = config.network.drain_timeout_ms,
            issuer_timeout_ms = config.issuer.timeout_ms,
            "network.drain_timeout_ms is shorter than a request can take to be answered: shutdown waits {at_least} ms"
        );
    }
    Duration::from_millis(config.network.drain_timeout_ms.max(at_least))
}

/// Runs `task`, with `up` true until it ends (the network check of `/healthz`).
async fn up_while(up: Arc<AtomicBool>, task: impl Future<Output = ()>) {
    up.store(true, Ordering::Relaxed);
    task.await;
    up.store(false, Ordering::Relaxed);
}

/// Sets `vpan_cards{status}` from the cards.
fn publish_card_counts(cards: &Cards) {
    for (status, count) in cards.counts_by_status(crate::cards::card::unix_now()) {
        metrics::gauge!(m::CARDS, "status" => status).set(count as f64);
    }
}

/// Keeps `vpan_cards{status}` current. Each count walks every card, so it runs on the
/// blocking pool, as the card listing does: on a runtime thread it would hold up the
/// switch's connections sharing that thread for the whole walk (all of them with
/// `runtime.worker_threads = 1`).
async fn publish_card_gauges(cards: Arc<Cards>, shutdown: CancellationToken) {
    loop {
        let walked = Arc::clone(&cards);
        let _ = tokio::task::spawn_blocking(move || publish_card_counts(&walked)).await;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// A listener's address, bound but not yet listening: connections to it are refused.
struct Reserved {
    key: &'static str,
    addr: String,
    socket: tokio::net::TcpSocket,
}

/// Binds `addr` (a listener key's value, an `IP:port` the config checked) without
/// listening: the error names the key when the address is in use or not this host's.
fn reserve(key: &'static str, addr: &str) -> Result<Reserved, AppError> {
    let failed = |source| AppError::Bind {
        key,
        addr: addr.to_string(),
        source,
    };
    let parsed: SocketAddr = addr.parse().map_err(|_| {
        failed(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an IP:port address",
        ))
    })?;
    let socket = if parsed.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(failed)?;
    // As `TcpListener::bind` does: a restart takes its port back at once, past the
    // connections of the process before still closing (TIME_WAIT).
    socket.set_reuseaddr(true).map_err(failed)?;
    socket.bind(parsed).map_err(failed)?;
    Ok(Reserved {
        key,
        addr: addr.to_string(),
        socket,
    })
}

impl Reserved {
    /// Starts listening, with the backlog `TcpListener::bind` gives.
    fn listen(self) -> Result<TcpListener, AppError> {
        self.socket.listen(1024).map_err(|source| AppError::Bind {
            key: self.key,
            addr: self.addr,
            source,
        })
    }
}

/// Which link a layout is for: each needs it to hold what vpan itself writes there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    Network,
    Issuer,
}

/// The layout `name` (the setting `key`) for `link`, refused when it cannot hold what vpan
/// writes of its own on that link: a STAN's six digits in DE 11 and its two-digit response
/// codes in DE 39 (every answer it gives), and toward the issuer an 0800's DE 7 and DE 70
/// (sign-on, echo). Loaded anyway, such a layout starts cleanly and then leaves every
/// answer of vpan's own unsent (a DE 39 of three characters, as in some 1993 layouts).
fn load_spec(key: &'static str, name: &str, link: Link) -> Result<&'static Spec, AppError> {
    let spec = Spec::by_name(name).map_err(|source| AppError::Spec { key, source })?;
    let unfit = |field: usize, what: &str| AppError::Spec {
        key,
        source: SpecError::BadField {
            field: field.to_string(),
            reason: format!("this layout cannot hold {what}, which vpan writes there"),
        },
    };
    // A layout's MTI is four digits (the loader refuses any other), so these take it.
    if let Ok(mut answer) = Message::new(spec, b"0110") {
        answer
            .set(11, b"000001")
            .map_err(|_| unfit(11, "a STAN of six digits"))?;
        for code in [b"00", b"30", b"91", b"96"] {
            answer
                .set_response_code(code)
                .map_err(|_| unfit(39, "a response code of two digits (00, 30, 91, 96, ...)"))?;
        }
    }
    if link == Link::Issuer
        && let Ok(mut request) = Message::new(spec, b"0800")
    {
        request
            .set(7, b"1207081500")
            .map_err(|_| unfit(7, "an 0800's transmission time, ten digits"))?;
        request
            .set(70, b"301")
            .map_err(|_| unfit(70, "an 0800's network management code, three digits"))?;
    }
    Ok(spec)
}

/// The network link's MAC key when `network.mac` is on; refuses to start when the key
/// file is missing or bad (the error names the key, never shows it) or when the layout
/// has no 8-byte binary DE 64/128.
fn network_mac(config: &Config, spec: &'static Spec) -> Result<Option<MacKey>, AppError> {
    if config.network.mac == "none" {
        return Ok(None);
    }
    mac::check_spec(spec).map_err(|message| AppError::Config {
        key: "network.mac",
        message,
    })?;
    let padding =
        Padding::from_number(config.network.mac_padding).ok_or_else(|| AppError::Config {
            key: "network.mac_padding",
            message: "must be 1 or 2".into(),
        })?;
    let key =
        MacKey::load(std::path::Path::new(&config.network.mac_key_file), padding).map_err(|e| {
            AppError::Config {
                key: "network.mac_key_file",
                message: e.to_string(),
            }
        })?;
    tracing::info!(
        algorithm = %config.network.mac,
        padding = config.network.mac_padding,
        key_file = %config.network.mac_key_file,
        "network link MAC on: every message in and out carries DE 64/128"
    );
    Ok(Some(key))
}

fn codec(
    key: &'static str,
    framing: &str,
    header_hex: &str,
    max_frame: usize,
) -> Result<FrameCodec, AppError> {
    let framing: Framing = framing.parse().map_err(|_| AppError::Config {
        key,
        message: format!("unknown framing {framing:?}"),
    })?;
    let header_len = decode_hex(header_hex).map_or(0, |h| h.len());
    Ok(FrameCodec::new(framing, header_len, max_frame))
}

/// Takes SIGHUP for good, and logs each one: its default would kill the switch on the
/// spot, with no drain (a closed terminal, `systemctl kill -s HUP`), and vpan has no
/// configuration to reload. Called first thing, inside the runtime.
pub fn ignore_hangups() {
    #[cfg(unix)]
    if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    {
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::warn!(
                    "SIGHUP ignored: vpan has no configuration to reload; SIGTERM stops it"
                );
            }
        });
    }
}

/// Resolves on Ctrl-C or SIGTERM (how systemd and container runtimes stop a process).
/// The signals are taken from the call on, not from the first poll: one that comes while
/// the caller still starts up is not lost. Once the stop has begun, a further Ctrl-C or
/// SIGTERM is said in the log, so that an operator sees the stop is under way.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)))
    };
    async move {
        #[cfg(unix)]
        if let Ok((mut term, mut int)) = signals {
            either(&mut term, &mut int).await;
            // The same streams, still registered: a later signal is seen whenever it comes.
            tokio::spawn(async move {
                loop {
                    either(&mut term, &mut int).await;
                    tracing::warn!("a stop is already under way; waiting for it to finish");
                }
            });
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The next of two signals.
#[cfg(unix)]
async fn either(a: &mut tokio::signal::unix::Signal, b: &mut tokio::signal::unix::Signal) {
    tokio::select! {
        _ = a.recv() => {}
        _ = b.recv() => {}
    }
}

/// How long the API and the metrics server get, at shutdown, to finish the calls in
/// flight: longer than the API's own header deadline, so that it cuts its slow clients
/// first.
const SIDE_SERVER_GRACE: Duration = Duration::from_secs(12);

/// Waits for a side server's task to end, at most `limit`, then aborts it.
async fn finish_within<T>(mut task: tokio::task::JoinHandle<T>, limit: Duration, what: &str) {
    if tokio::time::timeout(limit, &mut task).await.is_err() {
        task.abort();
        tracing::warn!(server = what, "calls still open at shutdown were cut");
        // Until it is gone: what it held (the cards among it) is let go of then.
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests;
