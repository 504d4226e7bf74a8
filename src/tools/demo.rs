//! `vpan demo`: the whole system on one machine, with nothing to set up.
//!
//! One process runs the issuer simulator, the switch (journal on, in a temporary data
//! directory) and the HTTPS API, then drives them from outside, the way a network and a
//! cardholder's bank would: cards are issued over HTTPS, traffic goes over ISO 8583 on TCP,
//! the answers are counted by the load generator, and the cards and `/metrics` are read
//! back. Nothing is taken from inside the switch, so a demo that passes shows the parts
//! working together, not a shortcut through them.
//!
//! A scenario is a directory (the built-in one is `fixtures/demo`, compiled in):
//!
//! - `cards.json`: the cards to make, each with a name the traffic uses (`${vpan.NAME}`,
//!   `${expiry.NAME}`), its controls as the API takes them, what to do after issuing
//!   (`then`: pause or close), how the issuer host treats its real account, and what the
//!   card must show once the story is over (`expect`).
//! - `story.jsonl` (optional): messages sent one at a time, in order, each with the DE 39
//!   it must get: the story of single use, caps, merchant locks, reversals, repeats...
//! - `load.jsonl` (optional): messages whose expectations hold however often and however
//!   concurrently they are replayed, sent closed loop (or at `--rate`) for `--duration`.
//!
//! The report gives, for each phase, every response code received next to the count the
//! scenario expects, then the checks on cards and metrics, and ends with one line that
//! says whether every expectation held (exit status 0) or not (1).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::issuer_sim::{IssuerSim, SimConfig};
use super::loadgen::{self, LoadgenConfig, ShapeArgs, Summary, parse_duration};
use super::traffic::{Bindings, BoundCard, Traffic};
use crate::api::client::ApiClient;
use crate::app::App;
use crate::cards::Expiry;
use crate::cards::card::unix_now;
use crate::cards::vpan::random_luhn;
use crate::config::Config;
use crate::iso8583::Spec;
use crate::metrics as m;
use crate::pan::Pan;

/// `vpan demo` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Scenario directory with cards.json and story.jsonl and/or load.jsonl (default: the
    /// built-in scenario, fixtures/demo).
    #[arg(long, value_name = "DIR")]
    pub scenario: Option<PathBuf>,
    /// How long the load phase sends, e.g. 5s, 500ms, 1m.
    // Hyphen values reach the parser, which names the flag ("-1s" is no flag of its own).
    #[arg(long, allow_hyphen_values = true, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How hard the load phase drives the switch.
    #[command(flatten)]
    pub load: ShapeArgs,
    /// Data directory to use and keep (default: a temporary one, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// After the report, keep everything running and print where to reach it, until
    /// Ctrl-C or SIGTERM.
    #[arg(long)]
    pub keep_running: bool,
}

/// What a name in the traffic stands for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A virtual card issued through the API.
    #[default]
    Virtual,
    /// A number inside the virtual range that was never issued (the switch answers 14).
    Unissued,
    /// An ordinary card outside every virtual range (passed through untouched).
    Plain,
}

/// What to do with a card once issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Then {
    /// `POST /v1/cards/{vpan}/pause`.
    Pause,
    /// `POST /v1/cards/{vpan}/close`.
    Close,
}

/// What a card must show through the API once the story is over.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardExpect {
    /// `active`, `paused` or `closed`.
    pub status: Option<String>,
    /// Minor units.
    pub spent: Option<u64>,
    /// Minor units held by approvals in flight.
    pub held: Option<u64>,
    /// Approved uses.
    pub uses: Option<u64>,
}

/// One entry of `cards.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardDef {
    /// The name the traffic uses.
    pub name: String,
    /// Virtual (default), unissued or plain.
    #[serde(default)]
    pub kind: Kind,
    /// BIN of the real card (and so of the vPAN); default 497010, a made-up test BIN.
    #[serde(default = "default_bin")]
    pub bin: String,
    /// Balance of the real account at the issuer host, minor units (default: plenty).
    #[serde(default)]
    pub issuer_balance: Option<i64>,
    /// The issuer host never answers for this account (the switch answers 91).
    #[serde(default)]
    pub issuer_silent: bool,
    /// The API's `POST /v1/cards` body, without `pan` and `pan_expiry` (made here).
    #[serde(default)]
    pub controls: Map<String, Value>,
    /// Pause or close the card once issued.
    #[serde(default)]
    pub then: Option<Then>,
    /// What the card must show after the story.
    #[serde(default)]
    pub expect: Option<CardExpect>,
}

fn default_bin() -> String {
    "497010".into()
}

/// Balance of accounts the scenario does not set: never the reason for a decline.
const PLENTY: i64 = 1_000_000_000_000;

/// A scenario: the cards and the two traffic files, as text.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Where it came from, for the report.
    pub source: String,
    /// `cards.json`.
    pub cards: Vec<CardDef>,
    /// `story.jsonl`.
    pub story: Option<String>,
    /// `load.jsonl`.
    pub load: Option<String>,
}

impl Scenario {
    /// The scenario in `fixtures/demo`, compiled into the binary so that the demo runs
    /// from any directory.
    pub fn builtin() -> Result<Scenario, String> {
        Scenario::from_texts(
            "built-in (fixtures/demo)",
            include_str!("../../fixtures/demo/cards.json"),
            Some(include_str!("../../fixtures/demo/story.jsonl").to_string()),
            Some(include_str!("../../fixtures/demo/load.jsonl").to_string()),
        )
    }

    /// Reads a scenario directory.
    pub fn load(dir: &Path) -> Result<Scenario, String> {
        let read = |name: &str| -> Result<Option<String>, String> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            }
        };
        let cards = read("cards.json")?
            .ok_or_else(|| format!("--scenario {}: no cards.json there", dir.display()))?;
        let (story, load) = (read("story.jsonl")?, read("load.jsonl")?);
        if story.is_none() && load.is_none() {
            return Err(format!(
                "--scenario {}: neither story.jsonl nor load.jsonl is there",
                dir.display()
            ));
        }
        Scenario::from_texts(&dir.display().to_string(), &cards, story, load)
    }

    fn from_texts(
        source: &str,
        cards: &str,
        story: Option<String>,
        load: Option<String>,
    ) -> Result<Scenario, String> {
        // serde names the key or type at fault and the line; the file holds no card number.
        let cards: Vec<CardDef> =
            serde_json::from_str(cards).map_err(|e| format!("{source}: cards.json: {e}"))?;
        let mut names = std::collections::BTreeSet::new();
        for c in &cards {
            if !names.insert(c.name.as_str()) {
                return Err(format!("{source}: cards.json: {:?} is named twice", c.name));
            }
            if c.bin.len() < 6 || c.bin.len() > 8 || !c.bin.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "{source}: cards.json: card {:?}: bin must be 6 to 8 digits",
                    c.name
                ));
            }
        }
        Ok(Scenario {
            source: source.to_string(),
            cards,
            story,
            load,
        })
    }

    /// The virtual ranges the demo's switch is given: each BIN of a virtual card, then 9,
    /// so that a stranger number can be drawn inside the range and plain cards outside.
    fn virtual_ranges(&self) -> Vec<String> {
        let mut ranges: Vec<String> = self
            .cards
            .iter()
            .filter(|c| c.kind != Kind::Plain)
            .map(|c| format!("{}9", c.bin))
            .collect();
        ranges.sort();
        ranges.dedup();
        ranges
    }
}

/// One check of the report: what was checked and whether it held.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked, in words.
    pub what: String,
    /// What was seen, when it did not hold.
    pub failure: Option<String>,
}

/// One replay of a traffic file: what was sent and what came back.
#[derive(Debug)]
pub struct Phase {
    /// The messages, as bound to the issued cards (their expectations by file line).
    pub traffic: Arc<Traffic>,
    /// What the load generator measured.
    pub summary: Summary,
}

/// What a demo run found.
#[derive(Debug)]
pub struct Report {
    /// The story phase, when the scenario has one.
    pub story: Option<Phase>,
    /// The load phase, when the scenario has one.
    pub load: Option<Phase>,
    /// Every check, in the order made.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.failure.is_none())
    }
}

/// A running demo: the simulator, the switch and where they listen.
struct Running {
    sim: super::issuer_sim::IssuerSimHandle,
    stop: CancellationToken,
    app: tokio::task::JoinHandle<Result<(), crate::app::AppError>>,
    network: String,
    api: String,
    metrics: String,
    data_dir: PathBuf,
    api_client: ApiClient,
}

/// `vpan demo`: runs the scenario, prints the report, and says whether it held.
pub async fn run_cli(args: Args) -> Result<bool, String> {
    // Taken over before anything is made: a Ctrl-C or SIGTERM at any moment stops the
    // demo's parts and removes its temporary directory (its card key and sealed numbers
    // among it), where the default action left them all behind.
    let mut signal: Signal = Box::pin(crate::app::shutdown_signal());
    let scenario = match &args.scenario {
        Some(dir) => Scenario::load(dir)?,
        None => Scenario::builtin()?,
    };
    let (data_dir, temporary) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (temp_dir()?, true),
    };
    let result = run(&args, &scenario, &data_dir, &mut signal).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    result
}

/// What stops the demo early: Ctrl-C or SIGTERM ([`crate::app::shutdown_signal`]).
type Signal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn run(
    args: &Args,
    scenario: &Scenario,
    data_dir: &Path,
    signal: &mut Signal,
) -> Result<bool, String> {
    const STOPPED: &str = "stopped by a signal before the end";
    println!("vpan demo: scenario {}", scenario.source);
    let mut cards = Cast::draw(scenario)?;
    let running = tokio::select! {
        running = start(scenario, &cards, data_dir) => running?,
        () = &mut *signal => return Err(STOPPED.into()),
    };
    println!(
        "  issuer simulator {}, switch {}, API {}, metrics {}",
        running.sim.local_addr(),
        running.network,
        running.api,
        running.metrics
    );
    let outcome = tokio::select! {
        outcome = drive(args, scenario, &mut cards, &running) => Some(outcome),
        () = &mut *signal => None,
    };
    // The signal future is over once it has fired: never polled again.
    let stopped = outcome.is_none();
    let passed = match outcome {
        Some(Ok(report)) => {
            print_report(&report);
            report.passed()
        }
        Some(Err(e)) => {
            // Masked: a client error may quote a URL with a vPAN in it.
            let e = crate::pan::mask_card_numbers(&e.to_string());
            println!("the demo could not run to the end: {e}");
            false
        }
        None => {
            println!("{STOPPED}: stopping the switch and the issuer simulator");
            false
        }
    };
    if args.keep_running && !stopped {
        print_keep_running(&running);
        signal.await;
    }
    running.stop.cancel();
    let app_result = running.app.await;
    running.sim.shutdown().await;
    if stopped {
        return Err(STOPPED.into());
    }
    match app_result {
        Ok(Ok(())) => Ok(passed),
        Ok(Err(e)) => Err(format!("the switch stopped with an error: {e}")),
        Err(e) => Err(format!("the switch task failed: {e}")),
    }
}

/// The real card numbers behind the scenario's names, drawn for this run only (random
/// Luhn-valid numbers under each card's BIN), then the bindings the traffic is read with.
struct Cast {
    /// Real PAN of each virtual card, stranger number of each unissued one, card number
    /// of each plain one, by name.
    numbers: BTreeMap<String, Pan>,
    /// Real card expiry (YYMM) given to the API: four years from now.
    pan_expiry: String,
    /// Filled as cards are issued.
    bindings: Bindings,
}

impl Cast {
    fn draw(scenario: &Scenario) -> Result<Cast, String> {
        let ranges = scenario.virtual_ranges();
        let in_range = |p: &Pan| {
            ranges
                .iter()
                .any(|r| p.as_bytes().starts_with(r.as_bytes()))
        };
        let mut numbers = BTreeMap::new();
        for c in &scenario.cards {
            let prefix = match c.kind {
                Kind::Unissued => format!("{}9", c.bin),
                Kind::Virtual | Kind::Plain => c.bin.clone(),
            };
            // Real and plain numbers stay out of the virtual ranges, strangers in; a BIN
            // that lies inside another card's range can never give a plain number.
            let mut draws = (0..1000).map(|_| random_pan(&prefix));
            let pan = draws
                .find(|p| {
                    p.as_ref()
                        .map_or(true, |p| in_range(p) == (c.kind == Kind::Unissued))
                })
                .unwrap_or_else(|| {
                    Err(format!(
                        "card {:?}: bin {} lies inside a virtual range; give it another",
                        c.name, c.bin
                    ))
                })?;
            numbers.insert(c.name.clone(), pan);
        }
        let pan_expiry = Expiry::of_time(unix_now() + 4 * 365 * 86_400)
            .as_str()
            .to_string();
        Ok(Cast {
            numbers,
            pan_expiry,
            bindings: Bindings::new(),
        })
    }

    fn number(&self, name: &str) -> Result<&Pan, String> {
        self.numbers
            .get(name)
            .ok_or_else(|| format!("card {name:?} has no number"))
    }
}

/// Starts the simulator and the switch; the switch's issuer link is up when this returns.
async fn start(scenario: &Scenario, cast: &Cast, data_dir: &Path) -> Result<Running, String> {
    let mut accounts = Vec::new();
    let mut silent = Vec::new();
    for c in &scenario.cards {
        let pan = cast.number(&c.name)?.clone();
        if c.issuer_silent {
            silent.push(pan.clone());
        }
        accounts.push((pan, c.issuer_balance.unwrap_or(PLENTY)));
    }
    let sim = IssuerSim::start(SimConfig {
        accounts,
        silent,
        default_balance: Some(PLENTY),
        // Enough to look at every request of the story afterwards.
        keep_last: 1000,
        ..SimConfig::default()
    })
    .await
    .map_err(|e| format!("issuer simulator: {e}"))?;

    let mut config = Config::local(data_dir, &sim.local_addr().to_string());
    // Short, so that the story's timeout does not keep the reader waiting, but with room
    // for a loaded machine: an approval a little late would be a 91 and a failed check.
    config.issuer.timeout_ms = 2000;
    config.cards.virtual_ranges = scenario.virtual_ranges();
    let connections = config.issuer.connections;
    let app = App::build(config).await.map_err(|e| e.to_string())?;
    let addrs = app.addresses();
    let issuer = app.issuer();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let app = tokio::spawn(app.run(async move { token.cancelled().await }));
    // The link dials in the background; the story must not start before it is up.
    let up = tokio::time::timeout(Duration::from_secs(10), async {
        while issuer.connected() < connections {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    if up.is_err() {
        stop.cancel();
        return Err("the issuer link did not come up within 10 s".into());
    }
    let network = addrs
        .network
        .map(|a| a.to_string())
        .ok_or("the switch has no network listener")?;
    let api = format!("https://{}", addrs.api);
    let token = std::fs::read_to_string(data_dir.join("api-token"))
        .map_err(|e| format!("cannot read the API token: {e}"))?;
    let api_client = ApiClient::new(
        &api,
        token.trim().to_string(),
        Some(&data_dir.join("tls-cert.pem")),
    )?;
    Ok(Running {
        sim,
        stop,
        app,
        network,
        api,
        metrics: format!("http://{}/metrics", addrs.metrics),
        data_dir: data_dir.to_path_buf(),
        api_client,
    })
}

/// Issues the cards, runs the phases and makes the checks.
async fn drive(
    args: &Args,
    scenario: &Scenario,
    cast: &mut Cast,
    running: &Running,
) -> Result<Report, String> {
    let mut checks = Vec::new();
    issue_cards(scenario, cast, running, &mut checks).await?;
    let bindings_file = running.data_dir.join("cards.json");
    write_private(
        &bindings_file,
        &serde_json::to_vec_pretty(&cast.bindings).map_err(|e| e.to_string())?,
    )?;

    let story = match &scenario.story {
        None => None,
        Some(text) => {
            // One at a time and in order: each answer depends on the ones before.
            let story = replay("story.jsonl", text, cast, running, |cfg| cfg.in_flight = 1).await?;
            phase_checks("story", &story.summary, &mut checks);
            card_checks(scenario, cast, running, &mut checks).await;
            issuer_view_check(cast, running, &mut checks);
            Some(story)
        }
    };

    let load = match &scenario.load {
        None => None,
        Some(text) => {
            write_private(&running.data_dir.join("load.jsonl"), text.as_bytes())?;
            let load = replay("load.jsonl", text, cast, running, |cfg| {
                cfg.connections = args.load.connections;
                cfg.in_flight = args.load.in_flight;
                cfg.rate = args.load.rate;
                cfg.duration = Some(args.duration);
                cfg.progress = true;
            })
            .await?;
            phase_checks("load", &load.summary, &mut checks);
            Some(load)
        }
    };

    let answered = [&story, &load]
        .into_iter()
        .flatten()
        .map(|p| p.summary.answered)
        .sum();
    metrics_checks(running, answered, &mut checks).await;
    Ok(Report {
        story,
        load,
        checks,
    })
}

/// Binds `text` to the issued cards and sends it to the switch with loadgen's defaults
/// as `tweak` changes them.
async fn replay(
    file: &str,
    text: &str,
    cast: &Cast,
    running: &Running,
    tweak: impl FnOnce(&mut LoadgenConfig),
) -> Result<Phase, String> {
    let traffic = Arc::new(
        Traffic::parse_bound(text, Spec::iso87ascii(), &cast.bindings)
            .map_err(|e| format!("{file}: {e}"))?,
    );
    let mut cfg = LoadgenConfig::new(running.network.clone(), traffic.clone());
    tweak(&mut cfg);
    let summary = loadgen::run(cfg).await.map_err(|e| e.to_string())?;
    Ok(Phase { traffic, summary })
}

/// Issues every virtual card through the API, pauses or closes those that say so, and
/// binds every name.
async fn issue_cards(
    scenario: &Scenario,
    cast: &mut Cast,
    running: &Running,
    checks: &mut Vec<Check>,
) -> Result<(), String> {
    let mut issued = 0;
    let mut leaked = Vec::new();
    for c in &scenario.cards {
        let number = cast.number(&c.name)?.clone();
        if c.kind != Kind::Virtual {
            cast.bindings.insert(
                c.name.clone(),
                BoundCard {
                    vpan: number.expose().to_string(),
                    expiry: cast.pan_expiry.clone(),
                },
            );
            continue;
        }
        let mut body = c.controls.clone();
        body.insert("pan".into(), json!(number.expose()));
        body.insert("pan_expiry".into(), json!(cast.pan_expiry));
        let card = running
            .api_client
            .call(
                reqwest::Method::POST,
                "/v1/cards",
                Some(Value::Object(body)),
            )
            .await
            .map_err(|e| format!("issuing card {:?}: {e}", c.name))?;
        let vpan = card["vpan"].as_str().unwrap_or_default().to_string();
        let expiry = card["expiry"].as_str().unwrap_or_default().to_string();
        if card.to_string().contains(number.expose()) {
            leaked.push(c.name.clone());
        }
        if let Some(then) = c.then {
            let verb = match then {
                Then::Pause => "pause",
                Then::Close => "close",
            };
            running
                .api_client
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/cards/{vpan}/{verb}"),
                    None,
                )
                .await
                .map_err(|e| format!("{verb} card {:?}: {e}", c.name))?;
        }
        cast.bindings
            .insert(c.name.clone(), BoundCard { vpan, expiry });
        issued += 1;
    }
    println!("  issued {issued} cards through the HTTPS API");
    checks.push(Check {
        what: format!("API: the {issued} cards issued came back without their real card number"),
        failure: (!leaked.is_empty())
            .then(|| format!("the answer held the real number for {leaked:?}")),
    });
    Ok(())
}

/// Every request answered, and answered with the code the scenario expects.
fn phase_checks(phase: &str, s: &Summary, checks: &mut Vec<Check>) {
    let unanswered = s.sent - s.answered;
    checks.push(Check {
        what: format!("{phase}: every request answered ({})", s.sent),
        failure: (unanswered > 0 || s.errors > 0).then(|| {
            format!(
                "{unanswered} unanswered ({} timed out), errors {:?}",
                s.timeouts, s.errors_by_kind
            )
        }),
    });
    checks.push(Check {
        what: format!("{phase}: every answer has the expected response code"),
        failure: (s.expect_mismatched > 0).then(|| {
            let lines: Vec<String> = s
                .mismatches
                .iter()
                .map(|(line, got)| format!("line {line} got {got:?}"))
                .collect();
            format!("{} mismatched: {}", s.expect_mismatched, lines.join("; "))
        }),
    });
}

/// Each card's state read back through the API against the scenario's `expect`.
async fn card_checks(scenario: &Scenario, cast: &Cast, running: &Running, checks: &mut Vec<Check>) {
    for c in &scenario.cards {
        let (Some(want), Some(bound)) = (&c.expect, cast.bindings.get(&c.name)) else {
            continue;
        };
        let what = format!("card {:?} after the story: {}", c.name, describe(want));
        let failure = match running
            .api_client
            .call(
                reqwest::Method::GET,
                &format!("/v1/cards/{}", bound.vpan),
                None,
            )
            .await
        {
            Err(e) => Some(e),
            Ok(card) => {
                let got = CardExpect {
                    status: card["status"].as_str().map(str::to_string),
                    spent: card["spent"].as_u64(),
                    held: card["held"].as_u64(),
                    uses: card["uses"].as_u64(),
                };
                let differs = (want.status.is_some() && want.status != got.status)
                    || (want.spent.is_some() && want.spent != got.spent)
                    || (want.held.is_some() && want.held != got.held)
                    || (want.uses.is_some() && want.uses != got.uses);
                differs.then(|| format!("got {}", describe(&got)))
            }
        };
        checks.push(Check { what, failure });
    }
}

/// What the issuer host received during the story: real card numbers for the virtual
/// cards (the switch swapped them), and never a vPAN.
fn issuer_view_check(cast: &Cast, running: &Running, checks: &mut Vec<Check>) {
    let vpans: Vec<&str> = cast.bindings.values().map(|b| b.vpan.as_str()).collect();
    let received = running.sim.recent(1000);
    let with_pan: Vec<Pan> = received.iter().filter_map(|r| r.pan()).collect();
    let leaked = with_pan
        .iter()
        .filter(|p| vpans.contains(&p.expose()) && !cast.numbers.values().any(|n| n == *p))
        .count();
    checks.push(Check {
        what: format!(
            "issuer host: the {} requests it received carried real card numbers, no vPAN",
            with_pan.len()
        ),
        failure: (leaked > 0).then(|| format!("{leaked} carried a virtual card number")),
    });
}

fn describe(e: &CardExpect) -> String {
    let mut parts = Vec::new();
    if let Some(s) = &e.status {
        parts.push(s.clone());
    }
    for (name, v) in [("spent", e.spent), ("held", e.held), ("uses", e.uses)] {
        if let Some(v) = v {
            parts.push(format!("{name} {v}"));
        }
    }
    parts.join(", ")
}

/// A real scrape of `/metrics`: every metric of the contract is there, and the switch
/// counted as many requests as the network side received answers.
async fn metrics_checks(running: &Running, answered: u64, checks: &mut Vec<Check>) {
    let text = match reqwest::get(&running.metrics).await {
        Ok(r) => r.text().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            checks.push(Check {
                what: "metrics: scraped".into(),
                failure: Some(e),
            });
            return;
        }
    };
    let missing: Vec<&str> = m::CONTRACT
        .iter()
        .copied()
        .filter(|name| !text.lines().any(|l| l.starts_with(name)))
        .collect();
    checks.push(Check {
        what: format!(
            "metrics: all {} metrics of the contract are exported",
            m::CONTRACT.len()
        ),
        failure: (!missing.is_empty()).then(|| format!("missing: {}", missing.join(", "))),
    });
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with(&format!("{}{{", m::REQUESTS_TOTAL)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    checks.push(Check {
        what: format!(
            "metrics: {} counts every answer the network received ({answered})",
            m::REQUESTS_TOTAL
        ),
        failure: (counted as u64 != answered).then(|| format!("it counts {counted}")),
    });
}

/// What each response code means, for the report.
fn meaning(code: &str) -> &'static str {
    match code {
        "00" => "approved",
        "12" => "invalid transaction (issuer)",
        "14" => "unknown card number in a virtual range",
        "30" => "format error",
        "46" => "card closed or used up",
        "51" => "insufficient funds (issuer)",
        "54" => "validity over or wrong expiry",
        "57" => "merchant, MCC or currency not allowed",
        "61" => "over the amount cap",
        "62" => "card paused",
        "63" => "security violation",
        "91" => "issuer unavailable or too slow",
        "94" => "same transaction key, other content",
        "96" => "cannot record durably: failed closed",
        _ => "",
    }
}

/// Counts each response code the scenario expects for what was sent: the codes received,
/// moved from what came to what was expected for every mismatch.
fn expected_codes(s: &Summary, traffic_expect: &BTreeMap<usize, String>) -> BTreeMap<String, u64> {
    let mut want = s.response_codes.clone();
    for (line, got) in &s.mismatches {
        for (code, n) in got {
            if let Some(c) = want.get_mut(code) {
                *c = c.saturating_sub(*n);
            }
            if let Some(expected) = traffic_expect.get(line) {
                *want.entry(expected.clone()).or_insert(0) += n;
            }
        }
    }
    want.retain(|_, n| *n > 0);
    want
}

fn print_phase(title: &str, phase: &Phase) {
    let s = &phase.summary;
    println!();
    println!("{title}");
    println!(
        "  {} requests, {} answered in {:.2} s: {:.0} per second",
        s.sent, s.answered, s.elapsed_s, s.throughput_per_s
    );
    let l = &s.latency_us;
    println!(
        "  latency (µs): p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        l.p50, l.p90, l.p99, l.p999, l.max
    );
    let expect_by_line: BTreeMap<usize, String> = phase
        .traffic
        .entries()
        .iter()
        .filter_map(|e| Some((e.line, String::from_utf8_lossy(&e.expect?).into_owned())))
        .collect();
    let expected = expected_codes(s, &expect_by_line);
    let mut codes: Vec<&String> = s.response_codes.keys().chain(expected.keys()).collect();
    codes.sort();
    codes.dedup();
    println!(
        "  {:<4} {:<40} {:>10} {:>10}",
        "code", "meaning", "expected", "received"
    );
    for code in codes {
        let got = s.response_codes.get(code).copied().unwrap_or(0);
        let want = expected.get(code).copied().unwrap_or(0);
        let mark = if got == want { "" } else { "  <-" };
        println!(
            "  {:<4} {:<40} {:>10} {:>10}{mark}",
            code,
            meaning(code),
            want,
            got
        );
    }
}

fn print_report(report: &Report) {
    if let Some(story) = &report.story {
        print_phase(
            "story: each message sent alone, in order, and answered before the next",
            story,
        );
    }
    if let Some(load) = &report.load {
        let s = &load.summary;
        let mode = match s.rate {
            Some(r) => format!("open loop at {r} per second"),
            None => "closed loop".to_string(),
        };
        let title = format!(
            "load: {} connections x {} in flight, {mode}",
            s.connections, s.in_flight
        );
        print_phase(&title, load);
    }
    println!();
    println!("checks");
    let mut failed = 0;
    for c in &report.checks {
        match &c.failure {
            None => println!("  ok    {}", c.what),
            Some(f) => {
                failed += 1;
                let f = crate::pan::mask_card_numbers(f);
                println!("  FAIL  {}: {f}", c.what);
            }
        }
    }
    println!();
    if failed == 0 {
        println!(
            "every expectation held ({} checks passed)",
            report.checks.len()
        );
    } else {
        println!(
            "{failed} of {} checks failed: see FAIL above",
            report.checks.len()
        );
    }
}

fn print_keep_running(r: &Running) {
    let dir = r.data_dir.display();
    println!();
    println!("running until Ctrl-C or SIGTERM:");
    println!("  network  {} (iso87ascii, len2)", r.network);
    println!(
        "  API      {}  (token {dir}/api-token, certificate {dir}/tls-cert.pem)",
        r.api
    );
    println!("  metrics  {}", r.metrics);
    println!("  cards    {dir}/cards.json (the scenario's names and their vPANs)");
    let vpan = super::this_program();
    println!("try:");
    println!(
        "  {vpan} card --url {} --ca {dir}/tls-cert.pem --token-file {dir}/api-token list",
        r.api
    );
    println!(
        "  {vpan} loadgen --target {} --traffic {dir}/load.jsonl --cards {dir}/cards.json --duration 10s",
        r.network
    );
}

/// A random Luhn-valid 16-digit number starting with `prefix`.
fn random_pan(prefix: &str) -> Result<Pan, String> {
    Pan::from_digits_checked(random_luhn(prefix, 16).as_bytes())
        .map_err(|e| format!("prefix {prefix}: {e}"))
}

/// A fresh directory under the system's temporary directory, for this run only.
fn temp_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "vpan-demo-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    crate::store::create_private_dir(&dir)
        .map_err(|e| format!("cannot make a data directory {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Writes a file only its owner can read: the cards file holds virtual card numbers.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_scenario_reads_and_names_each_card_once() {
        let s = Scenario::builtin().unwrap();
        assert!(s.story.is_some() && s.load.is_some());
        assert!(s.cards.iter().any(|c| c.kind == Kind::Unissued));
        assert!(s.cards.iter().any(|c| c.kind == Kind::Plain));
    }

    #[test]
    fn strangers_are_drawn_inside_the_virtual_range_and_real_cards_outside() {
        let s = Scenario::builtin().unwrap();
        let ranges = s.virtual_ranges();
        let cast = Cast::draw(&s).unwrap();
        for c in &s.cards {
            let pan = cast.number(&c.name).unwrap();
            assert!(pan.len() == 16 && crate::pan::luhn_valid(pan.as_bytes()));
            let inside = ranges
                .iter()
                .any(|r| pan.as_bytes().starts_with(r.as_bytes()));
            assert_eq!(inside, c.kind == Kind::Unissued, "{}", c.name);
        }
    }

    #[test]
    fn a_plain_card_whose_bin_lies_inside_a_virtual_range_is_refused() {
        let cards = r#"[{"name": "v"}, {"name": "p", "kind": "plain", "bin": "4970109"}]"#;
        let s = Scenario::from_texts("t", cards, None, Some(String::new())).unwrap();
        let err = Cast::draw(&s).err().unwrap();
        assert!(
            err.contains("\"p\": bin 4970109 lies inside a virtual range"),
            "{err}"
        );
    }

    #[test]
    fn a_scenario_with_a_name_twice_is_refused_naming_it() {
        let cards = r#"[{"name": "a"}, {"name": "a"}]"#;
        let err = Scenario::from_texts("t", cards, None, Some(String::new())).unwrap_err();
        assert!(err.contains("\"a\" is named twice"), "{err}");
    }
}
