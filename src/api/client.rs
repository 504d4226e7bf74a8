//! `vpan card`: the operators' client of the issuance API.
//!
//! It speaks only HTTPS to a running `vpan serve` (never to the data directory), so it
//! works the same on the switch's host and from an operator's desk. It trusts the PEM given
//! by `--ca` (the self-signed `tls-cert.pem` of the data dir works), and reads the token
//! from `--token`/`VPAN_TOKEN` or a file, so the token need not sit in the shell history.
//! When neither is given, `./vpan-data/tls-cert.pem` and `./vpan-data/api-token` are used
//! if they exist: on the switch's own host, in its working directory, it just works.
//!
//! Exit status: 0 on success; 1 on an API or connection error, with one line naming the
//! API's error code and message; 2 on a usage error (clap's, or no token at all).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::pan::mask_card_numbers;

/// `vpan card ...`: create, show, pause, resume, close, list, search.
#[derive(Args, Debug)]
pub struct CardArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CardCommand,
    /// Base URL of the API.
    #[arg(
        long,
        env = "VPAN_URL",
        default_value = "https://127.0.0.1:8443",
        global = true,
        help_heading = "Connection"
    )]
    pub url: String,
    /// Bearer token (default: the content of ./vpan-data/api-token).
    #[arg(
        long,
        env = "VPAN_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Connection"
    )]
    pub token: Option<String>,
    /// Read the bearer token from this file (e.g. <data_dir>/api-token).
    #[arg(long, value_name = "FILE", global = true, help_heading = "Connection")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate to trust beside the system's roots (default:
    /// ./vpan-data/tls-cert.pem when it exists).
    #[arg(
        long,
        env = "VPAN_CA",
        value_name = "PEM",
        global = true,
        help_heading = "Connection"
    )]
    pub ca: Option<PathBuf>,
    /// Print the API's JSON instead of readable text.
    #[arg(long, global = true, help_heading = "Output")]
    pub json: bool,
}

/// The `vpan card` subcommands.
#[derive(Subcommand, Debug)]
pub enum CardCommand {
    /// Issue a virtual card for a real card; prints the new vPAN.
    Create(Box<CreateArgs>),
    /// Show a card: status, remaining amount, uses, controls.
    Show {
        /// The vPAN.
        vpan: String,
        /// Show the card's recent decisions instead, newest first.
        #[arg(long)]
        transactions: bool,
    },
    /// Pause a card: authorizations are declined (62) until it is resumed.
    Pause {
        /// The vPAN.
        vpan: String,
    },
    /// Resume a paused card.
    Resume {
        /// The vPAN.
        vpan: String,
    },
    /// Close a card for good: authorizations are declined (46).
    Close {
        /// The vPAN.
        vpan: String,
    },
    /// List cards in vPAN order, one page at a time.
    List(PageArgs),
    /// List the vPANs issued for one real card, in vPAN order, one page at a time.
    Search {
        /// The real card number ("-" reads it from standard input, out of the shell
        /// history); sent in the request's body, never in its URL.
        #[arg(long)]
        pan: String,
        /// Which page.
        #[command(flatten)]
        page: PageArgs,
    },
}

/// Which page of a listing.
#[derive(Args, Debug)]
pub struct PageArgs {
    /// Cards per page (1 to 1000).
    #[arg(long, allow_negative_numbers = true, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    limit: u16,
    /// Start after this vPAN (the "next" hint of the previous page).
    #[arg(long)]
    after: Option<String>,
    /// Follow every page to the end.
    #[arg(long)]
    all: bool,
}

/// The controls of a new card.
#[derive(Args)]
pub struct CreateArgs {
    /// The real card number ("-" reads it from standard input, out of the shell history).
    #[arg(long)]
    pub pan: String,
    /// The real card's expiry, YYMM.
    #[arg(long, value_name = "YYMM")]
    pub pan_expiry: String,
    /// ISO 4217 numeric currency of the limits, e.g. 978.
    #[arg(long)]
    pub currency: String,
    /// Cumulative cap, minor units.
    #[arg(long, value_name = "MINOR_UNITS", allow_hyphen_values = true)]
    pub amount_limit: u64,
    /// Largest single purchase, minor units.
    #[arg(long, value_name = "MINOR_UNITS", allow_hyphen_values = true)]
    pub per_transaction_limit: Option<u64>,
    /// Approved purchases allowed (1: single use).
    #[arg(long, allow_negative_numbers = true)]
    pub max_uses: Option<i64>,
    /// Validity from now: 90s, 30m, 2h, 30d or 2w.
    // Hyphen values reach the parser, which names the flag ("-1d" is no flag of its own).
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "valid_until")]
    pub valid_for: Option<u64>,
    /// End of validity, RFC 3339 (e.g. 2026-12-31T23:59:59Z).
    #[arg(long, value_name = "TIME")]
    pub valid_until: Option<String>,
    /// none, first-use, or a merchant's acceptor ID (DE 42).
    #[arg(
        long,
        value_name = "none|first-use|ACCEPTOR_ID",
        default_value = "none"
    )]
    pub merchant_lock: String,
    /// Only these MCCs, comma-separated.
    #[arg(long, value_name = "MCC,...", value_delimiter = ',', value_parser = mcc)]
    pub mcc_allow: Vec<String>,
    /// Never these MCCs, comma-separated.
    #[arg(long, value_name = "MCC,...", value_delimiter = ',', value_parser = mcc)]
    pub mcc_block: Vec<String>,
    /// Makes the command safe to run again (after a timeout, say): the same key with the
    /// same flags within 24 hours gives the card issued the first time, not a second one.
    #[arg(long, value_name = "KEY", value_parser = idempotency_key)]
    pub idempotency_key: Option<String>,
}

/// `--idempotency-key` as the API takes it, or a usage error told before any call.
fn idempotency_key(text: &str) -> Result<String, String> {
    if crate::cards::requests::well_formed(text.as_bytes()) {
        Ok(text.to_string())
    } else {
        Err(format!("must be {}", crate::cards::requests::key_shape()))
    }
}

/// One MCC of a list as people write it (`5411, 5499`): the spaces around it dropped, and
/// anything but 4 digits a usage error, told before any call.
fn mcc(text: &str) -> Result<String, String> {
    let code = text.trim();
    if code.len() == 4 && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(code.to_string())
    } else {
        Err("an MCC is 4 digits, e.g. 5411".into())
    }
}

/// The vPANs on the command line are 12 to 19 digits: refused before any call (a usage
/// error) rather than sent for the API to answer 404. Not through clap, which would quote
/// the value, and a card number typed with dots or a typo in it is still one.
fn check_vpans(command: &CardCommand) -> Result<(), Failure> {
    let (vpan, what) = match command {
        CardCommand::Show { vpan, .. }
        | CardCommand::Pause { vpan }
        | CardCommand::Resume { vpan }
        | CardCommand::Close { vpan } => (Some(vpan), "<VPAN>"),
        CardCommand::List(page) | CardCommand::Search { page, .. } => {
            (page.after.as_ref(), "--after")
        }
        CardCommand::Create(_) => (None, ""),
    };
    match vpan {
        Some(v) if !((12..=19).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit())) => {
            Err(Failure::Usage(format!(
                "{what} must be a vPAN, 12 to 19 digits (not quoted here: it may be a card number) (see --help)"
            )))
        }
        _ => Ok(()),
    }
}

/// Reads `90s`, `30m`, `2h`, `30d`, `2w` (or plain seconds) as seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30d or 2h"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{text:?}: the unit is one of s, m, h, d, w")),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("{text:?} must be above zero and not absurdly long")),
        Some(secs) => Ok(secs),
    }
}

/// How a command failed.
enum Failure {
    /// The command line cannot work as given (exit 2).
    Usage(String),
    /// The API or the connection said no (exit 1).
    Failed(String),
}

/// The API's or the connection's refusal, as [`ApiClient::call`] words it.
impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Failed(message)
    }
}

/// Runs `vpan card ...`; prints the result or one error line, returns the exit status.
pub fn main(args: CardArgs) -> ExitCode {
    exit_with(run(args))
}

/// `vpan health`: a running switch's `GET /healthz`, for a container's health check or a
/// script. The endpoint needs no token.
#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Base URL of the API (https://), or of the metrics listener (http://), which answers
    /// /healthz the same with no certificate to trust; a URL ending in /healthz is taken
    /// as its base.
    #[arg(long, env = "VPAN_URL", default_value = "https://127.0.0.1:8443")]
    pub url: String,
    /// PEM certificate to trust for an https:// URL, beside the system's roots (default:
    /// ./vpan-data/tls-cert.pem when it exists).
    #[arg(long, env = "VPAN_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
}

/// Runs `vpan health`: exit 0 and the answer on stdout when the switch is up (200); exit 1
/// and one line naming what is down (503) or why there is no answer, otherwise.
pub fn health_main(args: HealthArgs) -> ExitCode {
    exit_with(health(args))
}

async fn health(args: HealthArgs) -> Result<(), Failure> {
    // The metrics listener's plain HTTP carries no token and no card: it is allowed here,
    // and nowhere else.
    let plain = args
        .url
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"));
    if !plain {
        https_only(&args.url).map_err(|_| {
            Failure::Usage(format!(
                "--url {}: must be https:// (the API) or http:// (the metrics listener)",
                args.url
            ))
        })?;
    }
    let base = health_base(&args.url);
    let api = if plain {
        ApiClient::plain(&base).map_err(Failure::Failed)?
    } else {
        let ca = args.ca.or_else(default_ca);
        ApiClient::new(&base, String::new(), ca.as_deref()).map_err(Failure::Failed)?
    };
    let answer = api.call(reqwest::Method::GET, "/healthz", None).await?;
    println!("{answer}");
    Ok(())
}

/// `url` as the base `/healthz` is asked under: the endpoint's own URL (its path ending in
/// `/healthz`, with no query), as pasted from a browser or a probe's configuration, is
/// taken as its base; anything else as typed.
fn health_base(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return url.to_string();
    };
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return url.to_string();
    }
    let Some(base) = parsed.path().trim_end_matches('/').strip_suffix("/healthz") else {
        return url.to_string();
    };
    let base = base.to_string();
    parsed.set_path(&base);
    parsed.as_str().trim_end_matches('/').to_string()
}

/// Runs a client command on a runtime of its own; prints its error as one line, and
/// returns the exit status (2 for a usage error, 1 for any other).
fn exit_with(command: impl std::future::Future<Output = Result<(), Failure>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vpan: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        // Masked: an error may quote a URL or a path with a vPAN in it.
        Err(Failure::Usage(m)) => {
            eprintln!("vpan: {}", mask_card_numbers(&m));
            ExitCode::from(2)
        }
        Err(Failure::Failed(m)) => {
            eprintln!("vpan: {}", mask_card_numbers(&m));
            ExitCode::from(1)
        }
    }
}

/// A connection to the API: `vpan card` and `vpan demo` speak through it.
pub struct ApiClient {
    /// HTTPS client trusting only `--ca` (or the data dir's certificate).
    http: reqwest::Client,
    /// Base URL without a trailing slash.
    base: String,
    /// The bearer token.
    token: String,
}

async fn run(args: CardArgs) -> Result<(), Failure> {
    check_vpans(&args.command)?;
    let api = connect(&args)?;
    let json_out = args.json;
    let again = same_connection(&args);
    match args.command {
        CardCommand::Create(c) => {
            let key = c.idempotency_key.clone();
            let body = create_body(*c)?;
            let card = api
                .call_keyed(
                    reqwest::Method::POST,
                    "/v1/cards",
                    Some(body),
                    key.as_deref(),
                )
                .await?;
            print_card(&card, json_out);
        }
        CardCommand::Show { vpan, transactions } => {
            if transactions {
                let list = api
                    .call(
                        reqwest::Method::GET,
                        &format!("/v1/cards/{}/transactions", path(&vpan)),
                        None,
                    )
                    .await?;
                print_transactions(&list, json_out);
            } else {
                let card = api
                    .call(
                        reqwest::Method::GET,
                        &format!("/v1/cards/{}", path(&vpan)),
                        None,
                    )
                    .await?;
                print_card(&card, json_out);
            }
        }
        CardCommand::Pause { vpan } => status(&api, &vpan, "pause", json_out).await?,
        CardCommand::Resume { vpan } => status(&api, &vpan, "resume", json_out).await?,
        CardCommand::Close { vpan } => status(&api, &vpan, "close", json_out).await?,
        CardCommand::List(page) => {
            let listing = Listing {
                method: reqwest::Method::GET,
                path: "/v1/cards",
                body: None,
                again: format!("{again} list"),
            };
            listing.print(&api, page, json_out).await?;
        }
        CardCommand::Search { pan, page } => {
            let listing = Listing {
                method: reqwest::Method::POST,
                path: "/v1/cards/search",
                body: Some(json!({ "pan": read_pan(pan)? })),
                // Never the card number: the next page reads it again.
                again: format!("{again} search --pan -"),
            };
            listing.print(&api, page, json_out).await?;
        }
    }
    Ok(())
}

/// A listing of cards the API answers a page at a time.
struct Listing {
    method: reqwest::Method,
    path: &'static str,
    body: Option<Value>,
    /// The command for the next page, but its `--limit` and `--after`.
    again: String,
}

impl Listing {
    /// Prints `page`, or every page from it on with `--all`; a page that is not the last
    /// ends with a `more:` line on stderr, the command for the next page.
    async fn print(&self, api: &ApiClient, page: PageArgs, json_out: bool) -> Result<(), Failure> {
        let PageArgs { limit, after, all } = page;
        let mut after = after;
        let mut header = !json_out;
        loop {
            let mut url = format!("{}?limit={limit}", self.path);
            if let Some(a) = &after {
                url.push_str(&format!("&after={}", path(a)));
            }
            let page = api
                .call(self.method.clone(), &url, self.body.clone())
                .await?;
            print_page(&page, json_out, header);
            header = false;
            after = page["next_after"].as_str().map(str::to_string);
            match (&after, all) {
                (Some(_), true) => continue,
                (Some(next), false) if !json_out => {
                    eprintln!("more: {} --limit {limit} --after {next}", self.again);
                }
                _ => {}
            }
            return Ok(());
        }
    }
}

/// `vpan card` as this one was run, to paste for the next page: the program's own path and
/// where it connected, with what it trusted and the token's file; never a token given on
/// the command line (shown, it would be on the screen and in the shell's history).
fn same_connection(args: &CardArgs) -> String {
    let mut again = format!(
        "{} card --url {}",
        shell_word(&crate::tools::this_program()),
        shell_word(&args.url)
    );
    if let Some(ca) = &args.ca {
        again.push_str(&format!(" --ca {}", shell_word(&ca.display().to_string())));
    }
    if let Some(file) = &args.token_file {
        let file = file.display().to_string();
        again.push_str(&format!(" --token-file {}", shell_word(&file)));
    }
    again
}

/// `word` as a POSIX shell reads it back: as it is when it holds only characters no shell
/// treats specially, else in single quotes (a quote in it written `'\''`). A path that is
/// not UTF-8 shows as its lossy form, which no shell can give back.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

async fn status(api: &ApiClient, vpan: &str, verb: &str, json_out: bool) -> Result<(), Failure> {
    let card = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/cards/{}/{verb}", path(vpan)),
            None,
        )
        .await?;
    print_card(&card, json_out);
    Ok(())
}

/// Keeps a path segment to digits, so nothing typed can change the path.
fn path(vpan: &str) -> String {
    vpan.chars().filter(char::is_ascii_alphanumeric).collect()
}

fn connect(args: &CardArgs) -> Result<ApiClient, Failure> {
    let default_dir = default_data_dir();
    let token = match (&args.token_file, &args.token) {
        (Some(file), _) => read_token(file)?,
        (None, Some(t)) => t.trim().to_string(),
        (None, None) if default_dir.join("api-token").exists() => {
            read_token(&default_dir.join("api-token"))?
        }
        (None, None) => {
            return Err(Failure::Usage(
                "no API token: pass --token-file <data_dir>/api-token, --token or VPAN_TOKEN"
                    .into(),
            ));
        }
    };
    let ca = args.ca.clone().or_else(default_ca);
    // A URL that cannot work is the command line's fault (exit 2); a certificate file that
    // is missing or not PEM is the machine's, as a missing token file is (exit 1).
    https_only(&args.url).map_err(Failure::Usage)?;
    ApiClient::new(&args.url, token, ca.as_deref()).map_err(Failure::Failed)
}

/// The certificate trusted when `--ca` is not given: the one `vpan serve` makes in its
/// default data directory, when there is one, so that on the switch's own host, in its
/// working directory, the clients just work.
fn default_ca() -> Option<PathBuf> {
    Some(default_data_dir().join("tls-cert.pem")).filter(|p| p.exists())
}

/// `vpan serve`'s data directory when none is configured, relative to where it runs.
fn default_data_dir() -> PathBuf {
    crate::store::StoreConfig::default().data_dir
}

/// Refuses a base URL that is not `https://`, said plainly (the HTTP client's own refusal
/// reads as a builder error).
fn https_only(base: &str) -> Result<(), String> {
    if base
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    {
        Ok(())
    } else {
        Err(format!(
            "--url {base}: must be https:// (the token and real card numbers never leave in clear)"
        ))
    }
}

/// Whether `base` names this host (`localhost`, 127.0.0.0/8, `::1`, either written as an
/// IPv4-mapped IPv6 address, or `0.0.0.0`/`::`, which Linux connects to this host).
fn is_loopback(base: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(base) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback() || ip.is_unspecified(),
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

fn read_token(file: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Failed(format!("--token-file {}: {e}", file.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Failure::Failed(format!(
            "--token-file {} is empty",
            file.display()
        )));
    }
    Ok(token.to_string())
}

impl ApiClient {
    /// A client of the API at `base` (e.g. `https://127.0.0.1:8443`), trusting the PEM
    /// certificate `ca` (besides the system's roots); the error names the bad file.
    pub fn new(base: &str, token: String, ca: Option<&Path>) -> Result<ApiClient, String> {
        https_only(base)?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            // The token and real card numbers never leave in clear, whatever --url says.
            .https_only(true);
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
            // Read now: a file with no certificate in it would otherwise pass here and
            // show later as the server's certificate being refused.
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|certs| !certs.is_empty())
                .ok_or_else(|| format!("--ca {}: holds no PEM certificate", ca.display()))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        ApiClient::built(base, token, builder)
    }

    /// A client for a plain-HTTP base, with no token: for the metrics listener's
    /// `/healthz`, which holds neither a secret nor a card.
    fn plain(base: &str) -> Result<ApiClient, String> {
        ApiClient::built(base, String::new(), reqwest::Client::builder())
    }

    fn built(
        base: &str,
        token: String,
        mut builder: reqwest::ClientBuilder,
    ) -> Result<ApiClient, String> {
        // No proxy can reach this host's own loopback: a container with HTTP(S)_PROXY
        // and no NO_PROXY would otherwise fail its health check against 127.0.0.1.
        if is_loopback(base) {
            builder = builder.no_proxy();
        }
        let http = builder
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot set up HTTPS: {}", chain(&e)))?;
        Ok(ApiClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// One call; the JSON answer on success, the API's error as one line otherwise.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        self.call_keyed(method, path, body, None).await
    }

    /// [`ApiClient::call`] under an `Idempotency-Key`, when there is one.
    pub async fn call_keyed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if !self.token.is_empty() {
            request = request.bearer_auth(&self.token);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            let mut m = format!("cannot reach {}: {}", self.base, unreached(&e));
            if m.contains("certificate") {
                m.push_str(" (pass --ca with the API's certificate, e.g. vpan-data/tls-cert.pem)");
            }
            m
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("reading the answer: {}", chain(&e)))?;
        let value: Option<Value> = serde_json::from_str(&text).ok();
        if status.is_success() {
            return value.ok_or_else(|| format!("the answer to {path} is not JSON"));
        }
        let error = value.as_ref().map(|v| &v["error"]);
        match error.and_then(|e| Some((e["code"].as_str()?, e["message"].as_str()?))) {
            Some((code, message)) => Err(format!("{code}: {message} (HTTP {})", status.as_u16())),
            None => Err(format!("HTTP {status} from {path}")),
        }
    }
}

/// Why a request got no answer, on one short line: the root cause ("Connection refused",
/// "invalid peer certificate: UnknownIssuer"), not the layers above it, which repeat the
/// URL and name the HTTP library's parts.
fn unreached(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out (5 s to connect, 30 s to answer)".to_string();
    }
    let mut root: &dyn std::error::Error = e;
    while let Some(source) = root.source() {
        root = source;
    }
    root.to_string()
}

/// `--merchant-lock`'s value as the API takes it: `none` and `first-use` (or
/// `first_use`) in any case, and around spaces, are the locks; anything else is a
/// merchant's acceptor ID. Read exactly, `None` locked the card to a merchant called
/// "None", which no terminal is: every purchase declined 57.
fn merchant_lock(flag: &str) -> Value {
    let word = flag.trim();
    if word.eq_ignore_ascii_case("none") {
        json!("none")
    } else if word.eq_ignore_ascii_case("first-use") || word.eq_ignore_ascii_case("first_use") {
        json!("first_use")
    } else {
        json!({"acceptor_id": flag})
    }
}

/// An error with its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `--pan` as given, or for `-` the first line of standard input.
fn read_pan(pan: String) -> Result<String, Failure> {
    if pan != "-" {
        return Ok(pan);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::Usage(format!("--pan -: cannot read standard input: {e}")))?;
    Ok(line.trim().to_string())
}

fn create_body(c: CreateArgs) -> Result<Value, Failure> {
    let pan = read_pan(c.pan)?;
    let mut body = json!({
        "pan": pan,
        "pan_expiry": c.pan_expiry,
        "currency": c.currency,
        "amount_limit": c.amount_limit,
        "merchant_lock": merchant_lock(&c.merchant_lock),
        "mcc_allow": c.mcc_allow,
        "mcc_block": c.mcc_block,
    });
    let fields = [
        (
            "per_transaction_limit",
            c.per_transaction_limit.map(Value::from),
        ),
        ("max_uses", c.max_uses.map(Value::from)),
        ("valid_for_seconds", c.valid_for.map(Value::from)),
        ("valid_until", c.valid_until.map(Value::from)),
    ];
    if let Some(map) = body.as_object_mut() {
        for (key, value) in fields {
            if let Some(v) = value {
                map.insert(key.to_string(), v);
            }
        }
    }
    Ok(body)
}

fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let _ = writeln!(std::io::stdout(), "{text}");
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

fn print_card(card: &Value, json_out: bool) {
    if json_out {
        return print_json(card);
    }
    let uses = match &card["max_uses"] {
        Value::Null => format!("{} (no limit)", s(&card["uses"])),
        max => format!("{} of {}", s(&card["uses"]), s(max)),
    };
    let lock = match &card["merchant_lock"] {
        Value::Object(m) => format!(
            "merchant {}",
            m.get("acceptor_id").map(s).unwrap_or_default()
        ),
        other => match card["merchant_bound"].as_str() {
            Some(bound) => format!("{}, bound to merchant {bound}", s(other)),
            None => s(other),
        },
    };
    let list = |v: &Value| {
        v.as_array()
            .filter(|a| !a.is_empty())
            .map_or("-".to_string(), |a| {
                a.iter().map(s).collect::<Vec<_>>().join(", ")
            })
    };
    let lines = [
        ("vPAN", s(&card["vpan"])),
        ("expiry", s(&card["expiry"])),
        ("status", s(&card["status"])),
        (
            "remaining",
            format!(
                "{} of {} (minor units, currency {})",
                s(&card["available"]),
                s(&card["amount_limit"]),
                s(&card["currency"])
            ),
        ),
        (
            "spent / held",
            format!("{} / {}", s(&card["spent"]), s(&card["held"])),
        ),
        ("per purchase", s(&card["per_transaction_limit"])),
        ("uses", uses),
        ("valid until", s(&card["valid_until"])),
        ("merchant lock", lock),
        ("MCC allow", list(&card["mcc_allow"])),
        ("MCC block", list(&card["mcc_block"])),
        ("real card", s(&card["pan_masked"])),
        ("created", s(&card["created_at"])),
    ];
    let mut out = std::io::stdout().lock();
    for (name, value) in lines {
        let _ = writeln!(out, "{name:<14} {value}");
    }
}

fn print_page(page: &Value, json_out: bool, header: bool) {
    if json_out {
        return print_json(page);
    }
    let mut out = std::io::stdout().lock();
    if header {
        let _ = writeln!(
            out,
            "{:<19}  {:<6}  {:<6}  {:>12}  {:>12}  {:<3}  REAL CARD",
            "VPAN", "EXPIRY", "STATUS", "AVAILABLE", "LIMIT", "CUR"
        );
    }
    for c in page["cards"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<19}  {:<6}  {:<6}  {:>12}  {:>12}  {:<3}  {}",
            s(&c["vpan"]),
            s(&c["expiry"]),
            s(&c["status"]),
            s(&c["available"]),
            s(&c["amount_limit"]),
            s(&c["currency"]),
            s(&c["pan_masked"])
        );
    }
}

fn print_transactions(list: &Value, json_out: bool) {
    if json_out {
        return print_json(list);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<20}  {:<4}  {:>12}  {:<2}  {:<7}  {:<6}  MERCHANT",
        "TIME", "MTI", "AMOUNT", "RC", "BY", "REFUND"
    );
    for t in list["transactions"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<20}  {:<4}  {:>12}  {:<2}  {:<7}  {:<6}  {}",
            s(&t["time"]),
            s(&t["mti"]),
            s(&t["amount"]),
            s(&t["response_code"]),
            s(&t["decided_by"]),
            if t["refund"] == Value::Bool(true) {
                "yes"
            } else {
                ""
            },
            s(&t["merchant"])
        );
    }
}

/// Masked: the real card number in full must never reach a log line, even through `{:?}`.
impl std::fmt::Debug for CreateArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateArgs")
            .field(
                "pan",
                &format_args!("{}", crate::pan::Masked(self.pan.as_bytes())),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_of_the_next_page_hint_reads_back_the_same_in_a_shell() {
        for word in [
            "/usr/local/bin/vpan",
            "https://127.0.0.1:8443",
            "/srv/vpan data/tls-cert.pem",
            "/srv/vpan/it's/api-token",
            "/srv/$HOME/tls-cert.pem",
            "https://host/?a=1&b=`id`",
            "",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_word(word)))
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                word,
                "{}",
                shell_word(word)
            );
        }
    }

    #[test]
    fn durations_read_their_unit() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("30d"), Ok(2_592_000));
        assert_eq!(parse_duration("2w"), Ok(1_209_600));
        assert_eq!(parse_duration("45"), Ok(45));
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("d").is_err());
    }

    #[test]
    fn the_health_endpoints_own_url_is_taken_as_its_base_and_anything_else_as_typed() {
        for (url, base) in [
            ("http://127.0.0.1:9583/healthz", "http://127.0.0.1:9583"),
            ("https://h:8443/healthz/", "https://h:8443"),
            ("https://h/api/healthz", "https://h/api"),
            ("https://h:8443", "https://h:8443"),
            ("http://healthz", "http://healthz"),
            ("http://healthz:9583/", "http://healthz:9583/"),
            ("http://h/healthz?x", "http://h/healthz?x"),
            ("/healthz", "/healthz"),
        ] {
            assert_eq!(health_base(url), base, "{url}");
        }
    }

    #[test]
    fn only_this_hosts_loopback_skips_the_proxy() {
        for url in [
            "https://127.0.0.1:8443",
            "http://127.3.2.1:9090/",
            "https://[::1]:8443",
            "https://localhost:8443",
            "https://LocalHost.:8443",
            "http://api.localhost",
            "https://[::ffff:127.0.0.1]:8443",
            "http://0.0.0.0:9583",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "https://10.0.0.1:8443",
            "https://api.example.com",
            "https://localhost.example.com",
            "https://[::2]:8443",
            "not a url",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }

    #[test]
    fn a_path_segment_keeps_only_letters_and_digits() {
        assert_eq!(path("4970/../10"), "497010");
    }

    #[test]
    fn a_merchant_lock_flag_in_any_case_is_the_lock_not_a_merchant_of_that_name() {
        for lock in ["None", "NONE", " none"] {
            assert_eq!(merchant_lock(lock), json!("none"), "{lock:?}");
        }
        for lock in ["First-Use", "FIRST_USE", "first_use "] {
            assert_eq!(merchant_lock(lock), json!("first_use"), "{lock:?}");
        }
        assert_eq!(
            merchant_lock("Nonesuch"),
            json!({"acceptor_id": "Nonesuch"})
        );
    }

    #[test]
    fn a_merchant_lock_flag_becomes_the_api_value() {
        let args = |lock: &str| CreateArgs {
            pan: crate::pan::test_pan("497010"),
            pan_expiry: "2912".into(),
            currency: "978".into(),
            amount_limit: 100,
            per_transaction_limit: None,
            max_uses: Some(1),
            valid_for: Some(60),
            valid_until: None,
            merchant_lock: lock.into(),
            mcc_allow: vec![],
            mcc_block: vec![],
            idempotency_key: None,
        };
        let body = |lock: &str| create_body(args(lock)).ok().unwrap();
        assert_eq!(body("first-use")["merchant_lock"], json!("first_use"));
        assert_eq!(body("none")["merchant_lock"], json!("none"));
        assert_eq!(
            body("SHOP1")["merchant_lock"],
            json!({"acceptor_id": "SHOP1"})
        );
        assert_eq!(body("none")["valid_for_seconds"], json!(60));
        assert!(body("none").get("valid_until").is_none());
    }
}
