//! The `vpan` command line: one binary, one subcommand per role.
//!
//! Exit status: 0 on success, 2 on a usage error (clap's own), 1 on any other error, with
//! one line on stderr that says what to fix.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vpan::app::App;
use vpan::config::Config;
use vpan::logging::{self, LogFormat};
use vpan::tools;

/// mimalloc rather than glibc's allocator: the switch allocates and frees small buffers
/// per message from two worker threads and the journal thread, where glibc's arenas cost
/// about a tenth of the switch's CPU under load (measured with `perf`: benches/RESULTS.md,
/// "End to end, in detail").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// vpan: ISO 8583 authorization switch for controlled virtual card numbers.
#[derive(Parser)]
// No help in place of a missing command (clap's default): a usage error, said in one line
// like the others (`vpan card` alone too: see its variant).
#[command(
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("VPAN_BUILD"), ")"),
    about,
    propagate_version = true,
    arg_required_else_help = false
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The switch: network listener, issuer link, HTTPS issuance API, metrics.
    Serve(ServeArgs),
    /// An issuer authorization host with accounts and balances, to point the switch at.
    IssuerSim(tools::issuer_sim::Args),
    /// Replays a traffic file over many connections and reports throughput and latency.
    Loadgen(tools::loadgen::Args),
    /// The whole system on this machine: issuer simulator, switch and API in one process,
    /// cards issued over HTTPS, fixture traffic replayed, and a report (exit 1 if any
    /// expectation failed).
    Demo(tools::demo::Args),
    /// Writes a scenario of any size (cards.json: the cards to issue; load.jsonl) for `vpan
    /// demo --scenario`, which issues them and writes their numbers for `vpan loadgen --cards`.
    Traffic(tools::generate::Args),
    /// A client of the HTTPS issuance API: create, show, pause, resume, close, list, search.
    #[command(arg_required_else_help = false)]
    Card(Box<vpan::api::client::CardArgs>),
    /// Copies the data directory under a new PAN key, into a new directory, with the
    /// switch stopped; the old one is opened as a start would open it, and marked so that
    /// no switch starts on it again.
    Rekey(vpan::rekey::Args),
    /// Asks a running switch's GET /healthz: exit 0 when it is up, 1 naming what is down
    /// (for a container's health check).
    Health(vpan::api::client::HealthArgs),
}

/// Options of `vpan serve`.
#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file; without it the built-in defaults are used. Any key can be
    /// overridden by VPAN_<SECTION>_<KEY>.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log one JSON object per line instead of human-readable lines.
    #[arg(long)]
    log_json: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::IssuerSim(args) => {
            logging::init(LogFormat::Human);
            runtime().and_then(|rt| rt.block_on(tools::issuer_sim::run_cli(args)))
        }
        Command::Loadgen(args) => {
            logging::init(LogFormat::Human);
            runtime().and_then(|rt| rt.block_on(tools::loadgen::run_cli(args)))
        }
        Command::Demo(args) => {
            logging::init_quiet(LogFormat::Human);
            let demo = vpan::store::crypto::no_core_dumps()
                .and_then(|()| runtime())
                .and_then(|rt| rt.block_on(tools::demo::run_cli(args)));
            return match demo {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!("vpan: the demo ran, and some of its checks failed (see the report)");
                    ExitCode::from(1)
                }
                Err(message) => {
                    eprintln!("vpan: {}", vpan::pan::mask_card_numbers(&message));
                    ExitCode::from(1)
                }
            };
        }
        Command::Traffic(args) => tools::generate::run_cli(&args),
        Command::Rekey(args) => {
            logging::init(LogFormat::Human);
            vpan::rekey::run_cli(args)
        }
        Command::Card(args) => return vpan::api::client::main(*args),
        Command::Health(args) => return vpan::api::client::health_main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Masked: an error may quote a value from a file or a variable (a virtual range
        // pasted in full, say).
        Err(message) => {
            eprintln!("vpan: {}", vpan::pan::mask_card_numbers(&message));
            ExitCode::from(1)
        }
    }
}

/// Prints clap's usage error as one line on stderr (the contract's "one clear line that
/// says what to fix"), or its help on stdout, and exits with its status. clap quotes what
/// it could not place, which may be a card number typed where a flag was forgotten:
/// masked, like every other error vpan prints.
fn usage_error(e: &clap::Error) -> ExitCode {
    let text = e.render().to_string();
    // Masked as printed: joined into one line, a number clap quoted across two lines is
    // one number again.
    if e.use_stderr() {
        eprintln!("vpan: {}", vpan::pan::mask_card_numbers(&one_line(&text)));
    } else {
        print!("{}", vpan::pan::mask_card_numbers(&text));
    }
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}

/// clap's error as one line: what is wrong, with the flags it names, and its tips (a
/// similar flag that exists), without the usage block; then where to read more.
fn one_line(rendered: &str) -> String {
    let said: Vec<String> = rendered
        .split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|p| !p.is_empty() && !p.starts_with("Usage:") && !p.starts_with("For more"))
        .collect();
    let said = said.join("; ");
    let said = said.strip_prefix("error: ").unwrap_or(&said);
    format!("{said} (see --help)")
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    runtime_with(0)
}

/// The async runtime with `worker_threads` threads (0: one per core).
fn runtime_with(worker_threads: usize) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let json = args.log_json;
    logging::init(if json {
        LogFormat::Json
    } else {
        LogFormat::Human
    });
    let served = serve_logging(args);
    if let (Err(message), true) = (&served, json) {
        // The one plain line on stderr still follows (main prints it); a collector that
        // reads only JSON lines gets why the switch stopped too.
        tracing::error!(
            error = %vpan::pan::mask_card_numbers(message),
            "vpan stopped on an error"
        );
    }
    served
}

/// `vpan serve` once its logging is set up.
fn serve_logging(args: ServeArgs) -> Result<(), String> {
    vpan::store::crypto::no_core_dumps()?;
    let env = vpan::config::vpan_env_vars().map_err(|e| e.to_string())?;
    for var in vpan::config::env_vars_naming_no_section(&env) {
        // Masked here too, not left to the log writer alone: the name is outside text.
        tracing::warn!(
            var = %vpan::pan::mask_card_numbers(&var),
            "this VPAN_ variable names no configuration section; ignored"
        );
    }
    let config = Config::load(args.config.as_deref(), env).map_err(|e| e.to_string())?;
    let runtime = runtime_with(config.runtime.worker_threads)?;
    tracing::info!(
        worker_threads = runtime.metrics().num_workers(),
        "async runtime started"
    );
    runtime.block_on(async {
        // Before recovery, which takes seconds on a large store: a hangup then would kill
        // the start half way.
        vpan::app::ignore_hangups();
        let stop = vpan::app::shutdown_signal();
        let app = App::build(config).await.map_err(|e| e.to_string())?;
        app.run(stop).await.map_err(|e| e.to_string())
    })
}
