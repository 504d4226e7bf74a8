//! The HTTPS issuance API (contract section 5): issuers create and steer virtual cards.
//!
//! A call goes through these files in this order:
//!
//! - [`tls`]: the certificate (configured, or self-signed at first start) and the listener
//!   that hands axum finished TLS handshakes, with a connection cap;
//! - this module: the layers every call passes: a cap on calls in flight (503 beyond it),
//!   the body size limit (413), and [`auth`]'s bearer token check (401);
//! - [`routes`]: one handler per endpoint over the [`Cards`] facade; the router is built
//!   from one table that the OpenAPI document is tested against;
//! - [`model`]: the request and answer bodies and the checks that name the field at fault;
//! - [`error`]: the contract's error shape for everything that is not a success.
//!
//! [`client`] is the other end: `vpan card`, a small client for operators.
//!
//! The API never holds a card lock across an `.await`, never returns or logs a real PAN
//! (only masked), and answers an issuance only once it is durable.

pub mod auth;
pub mod client;
pub mod error;
pub mod iso4217;
pub mod model;
pub mod routes;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::cards::Cards;
use crate::config::ApiConfig;
use error::ApiError;

/// Largest request body accepted (a card request is well under 1 KiB).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Calls served at once; one more is answered 503 at once rather than queued.
pub const MAX_IN_FLIGHT: usize = 512;
/// The most a connection's request head (request line and headers) may take: hyper's
/// default of about 400 KiB, times every connection a client may hold open, let anyone who
/// reaches the port take half a gigabyte of the switch's memory. A head over it is
/// answered 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A request's headers must arrive within this of its first byte.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a request's body may take to arrive once its headers have: a client trickling
/// it held its connection (and one of the API's slots) for as long as it liked.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One health probe: true while its part is up. Cheap, synchronous, never blocks.
pub type Probe = Box<dyn Fn() -> bool + Send + Sync>;

/// What `/healthz` asks: named checks, each a cheap closure the [`App`](crate::app::App)
/// provides, so the API knows nothing of the switch's internals.
#[derive(Default)]
pub struct Health {
    /// Name and probe of each check, in report order.
    checks: Vec<(&'static str, Probe)>,
}

impl Health {
    /// No checks yet (healthy).
    pub fn new() -> Health {
        Health::default()
    }

    /// Adds a check: `probe` returns true while `name` is up.
    pub fn check(
        mut self,
        name: &'static str,
        probe: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Health {
        self.checks.push((name, Box::new(probe)));
        self
    }

    /// Runs every check.
    pub fn run(&self) -> Vec<(&'static str, bool)> {
        self.checks.iter().map(|(n, f)| (*n, f())).collect()
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The virtual cards.
    pub cards: Arc<Cards>,
    /// The probes of `/healthz`.
    pub health: Arc<Health>,
    /// One listing of the cards at a time: each page walks every card (see
    /// `routes::list_cards`).
    pub listing: Arc<tokio::sync::Semaphore>,
}

/// Why the API could not start; names the file or setting.
#[derive(Debug, thiserror::Error)]
pub enum ApiSetupError {
    /// The certificate or key.
    #[error("api TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The token file.
    #[error("api token file {path}: {source}")]
    Token {
        /// `<data_dir>/api-token`.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The API, bound and set up (certificate and token ready), not yet serving.
pub struct ApiServer {
    /// The bound TCP listener.
    listener: TcpListener,
    /// Certificate and key.
    tls: Arc<rustls::ServerConfig>,
    /// The bearer token.
    token: auth::Token,
    /// Where the certificate is (to tell operators what to trust).
    files: tls::TlsFiles,
    /// When the certificate stops being valid, Unix seconds.
    certificate_expires: u64,
}

/// A certificate that expires within this is said at start: it is read only then.
const CERTIFICATE_WARNING_SECS: u64 = 30 * 86_400;

impl ApiServer {
    /// Loads or makes the certificate and the token (in `data_dir` when not configured)
    /// for a bound listener. Logs where the files are, never the token.
    pub fn new(
        listener: TcpListener,
        config: &ApiConfig,
        data_dir: &Path,
    ) -> Result<ApiServer, ApiSetupError> {
        let files = tls::files(&config.tls_cert, &config.tls_key, data_dir)?;
        let tls = tls::server_config(&files)?;
        let certificate_expires = tls::not_after(&files)?;
        if certificate_expires < crate::cards::card::unix_now() + CERTIFICATE_WARNING_SECS {
            // Not refused: the network side does not need the API, and a front end that
            // refuses the certificate says so itself.
            tracing::warn!(
                cert = %files.cert.display(),
                not_after = %crate::cards::card::format_rfc3339(certificate_expires),
                "the API certificate expires within 30 days, or has: renew it and restart vpan, which reads it only at start"
            );
        }
        if files.generated {
            tracing::info!(cert = %files.cert.display(), key = %files.key.display(), "made a self-signed API certificate for localhost, 127.0.0.1 and ::1; clients trust the cert file");
        }
        let (secret, token_file) =
            auth::load_or_create(&config.token, data_dir).map_err(|source| {
                ApiSetupError::Token {
                    path: data_dir.join(auth::TOKEN_FILE),
                    source,
                }
            })?;
        match token_file {
            Some(path) => {
                tracing::info!(path = %path.display(), "API bearer token is in this file")
            }
            None => tracing::info!("API bearer token from api.token"),
        }
        Ok(ApiServer {
            listener,
            tls,
            token: auth::Token::new(secret),
            files,
            certificate_expires,
        })
    }

    /// When the certificate served stops being valid, Unix seconds.
    pub fn certificate_expires(&self) -> u64 {
        self.certificate_expires
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The certificate file served (trust it when self-signed).
    pub fn cert_file(&self) -> &Path {
        &self.files.cert
    }

    /// Serves until `shutdown`, then lets calls in flight finish.
    pub async fn serve(
        self,
        cards: Arc<Cards>,
        health: Arc<Health>,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let mut listener = tls::TlsListener::start(self.listener, self.tls, shutdown.clone())?;
        let state = ApiState {
            cards,
            health,
            listing: Arc::new(tokio::sync::Semaphore::new(1)),
        };
        let app = router(state, self.token);
        // The TLS listener caps the connections itself, before their handshakes.
        serve_http(&mut listener, app, None, shutdown, "API").await;
        Ok(())
    }
}

/// Serves `app` over HTTP/1 on `listener` until `shutdown`, then lets calls in flight
/// finish; the API's and `/metrics`' server alike.
///
/// hyper directly rather than `axum::serve`, for its timer: without one hyper has no
/// header read deadline, and a client that trickles header bytes (each one restarting the
/// connection's idle timer), or sends half a request and waits, holds its connection for
/// ever. Past `max_connections` open at once (when the listener does not cap them
/// itself), a new one is closed at once: enough held open would use up the process's file
/// descriptors, and with them the card network's connections.
pub(crate) async fn serve_http<L>(
    listener: &mut L,
    app: Router,
    max_connections: Option<usize>,
    shutdown: CancellationToken,
    server: &'static str,
) where
    L: axum::serve::Listener,
{
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    let graceful = GracefulShutdown::new();
    let permits = max_connections.map(|n| Arc::new(Semaphore::new(n)));
    loop {
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let permit = match &permits {
            Some(permits) => match permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    // Throttled: a client flooding the port must not flood the log too.
                    crate::logging::throttled!(
                        warn,
                        server,
                        max_connections,
                        "HTTP connection refused: too many open"
                    );
                    continue;
                }
            },
            None => None,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(server, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    // Calls in flight finish; idle keep-alive connections are closed now. Bounded: a
    // client in the middle of sending its headers has at most their deadline.
    if tokio::time::timeout(HEADER_READ_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            server,
            "HTTP connections still open at shutdown were dropped"
        );
    }
}

/// The whole API as a router: the route table, the token on the calls that need it, the
/// body limit, and the cap on calls in flight around everything.
pub fn router(state: ApiState, token: auth::Token) -> Router {
    router_with(state, token, MAX_IN_FLIGHT)
}

fn router_with(state: ApiState, token: auth::Token, max_in_flight: usize) -> Router {
    let mut open = Router::new();
    let mut guarded = Router::new();
    for r in routes::table() {
        if r.auth {
            guarded = guarded.route(r.path, r.handler);
        } else {
            open = open.route(r.path, r.handler);
        }
    }
    // The token guards the fallbacks too: without it, every call but `/healthz` gets 401,
    // a path that does not exist included, so nothing is learnt about the API without it.
    let guarded = guarded
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(token, auth::require_token));
    open.merge(guarded)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            Arc::new(Semaphore::new(max_in_flight)),
            limit_in_flight,
        ))
        .layer(middleware::map_response(not_to_be_stored))
        .with_state(state)
}

/// Marks every answer `Cache-Control: no-store`: a card's answer carries its vPAN, a card
/// number a merchant takes, which no proxy or client cache may keep.
async fn not_to_be_stored(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// Answers 503 at once when [`MAX_IN_FLIGHT`] calls are already being served, so a flood
/// gets a quick "try again" and never an unbounded queue.
async fn limit_in_flight(
    State(permits): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    match permits.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => ApiError::unavailable("overloaded", "too many calls in flight; retry shortly")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;
    use crate::cards::{CardsConfig, LedgerConfig};
    use crate::config::Secret;
    use crate::store::StoreConfig;

    fn state(dir: &Path) -> ApiState {
        state_with(dir, &CardsConfig::default())
    }

    fn state_with(dir: &Path, config: &CardsConfig) -> ApiState {
        let store = StoreConfig {
            data_dir: dir.to_path_buf(),
            key_file: PathBuf::new(),
            ..Default::default()
        };
        let (cards, _) = Cards::open(config, &store, LedgerConfig::default()).unwrap();
        ApiState {
            cards: Arc::new(cards),
            health: Arc::new(Health::new().check("store", || true)),
            listing: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    async fn error_code(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), MAX_BODY_BYTES)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["error"]["code"].as_str().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn a_call_past_the_in_flight_cap_is_answered_503_at_once_with_the_error_shape() {
        let dir = tempfile::tempdir().unwrap();
        let token = auth::Token::new(Secret::new("t"));
        let app = router_with(state(dir.path()), token, 0);
        let request = Request::get("/healthz").body(Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(error_code(response).await, "overloaded");
    }

    #[tokio::test]
    async fn no_answer_may_be_stored_by_a_cache_whatever_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let token = auth::Token::new(Secret::new("t"));
        let app = router_with(state(dir.path()), token, 4);
        for (path, bearer, status) in [
            ("/healthz", None, StatusCode::OK),
            ("/v1/cards", Some("t"), StatusCode::OK),
            ("/v1/cards", None, StatusCode::UNAUTHORIZED),
            ("/v1/cards/unknown", Some("t"), StatusCode::NOT_FOUND),
        ] {
            let mut request = Request::get(path);
            if let Some(t) = bearer {
                request = request.header("authorization", format!("Bearer {t}"));
            }
            let response = app
                .clone()
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), status, "{path}");
            assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
        }
    }

    /// Review of a07ad5e: a range with every number taken was answered `Retry-After: 1`,
    /// and a client that obeyed looped for good.
    #[tokio::test]
    async fn a_full_virtual_range_is_a_503_that_asks_for_no_retry() {
        let dir = tempfile::tempdir().unwrap();
        let config = CardsConfig {
            virtual_ranges: vec!["49701099999999".into()],
            ..Default::default()
        };
        let token = auth::Token::new(Secret::new("t"));
        let app = router_with(state_with(dir.path(), &config), token, 4);
        let card = serde_json::json!({
            "pan": crate::pan::test_pan("497010"),
            "pan_expiry": "2912",
            "currency": "978",
            "amount_limit": 100
        });
        // Ten numbers in the range (one digit drawn, then the check digit).
        for issued in 0.. {
            let request = Request::post("/v1/cards")
                .header("authorization", "Bearer t")
                .body(Body::from(card.to_string()))
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            if response.status() == StatusCode::CREATED {
                assert!(issued < 10, "more cards than numbers");
                continue;
            }
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(!response.headers().contains_key("retry-after"));
            assert_eq!(error_code(response).await, "no_vpan_available");
            break;
        }
    }

    /// Review of 522e2c5: a card request sent again under its `Idempotency-Key` once the
    /// store had failed was answered `Retry-After: 1`, though only a restart mends it.
    #[tokio::test]
    async fn a_request_sent_again_under_its_key_after_the_store_failed_asks_for_no_retry() {
        use crate::store::segment::sync_gate::{self, Gate};
        let dir = tempfile::tempdir().unwrap();
        let token = auth::Token::new(Secret::new("t"));
        let app = router_with(state(dir.path()), token, 4);
        let card = |pan: String| {
            serde_json::json!({
                "pan": pan,
                "pan_expiry": "2912",
                "currency": "978",
                "amount_limit": 100
            })
        };
        let keyed = card(crate::pan::test_pan("497010"));
        let post = |body: &serde_json::Value, key: Option<&str>| {
            let mut request = Request::post("/v1/cards").header("authorization", "Bearer t");
            if let Some(key) = key {
                request = request.header("idempotency-key", key);
            }
            app.clone()
                .oneshot(request.body(Body::from(body.to_string())).unwrap())
        };
        let first = post(&keyed, Some("order-17")).await.unwrap();
        assert_eq!(first.status(), StatusCode::CREATED);
        // The store fails under another card's record, which the barrier of the request
        // sent again then waits for.
        let _gate = sync_gate::set(dir.path(), Gate::Failing);
        let failed = post(&card(crate::pan::test_pan("497010")), None)
            .await
            .unwrap();
        assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
        let again = post(&keyed, Some("order-17")).await.unwrap();
        assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!again.headers().contains_key("retry-after"));
        assert_eq!(error_code(again).await, "store_unavailable");
    }

    #[tokio::test]
    async fn under_the_cap_calls_go_through() {
        let dir = tempfile::tempdir().unwrap();
        let token = auth::Token::new(Secret::new("t"));
        let app = router_with(state(dir.path()), token, 1);
        let request = Request::get("/healthz").body(Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}
