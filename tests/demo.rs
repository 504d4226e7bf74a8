//! `vpan demo` as an operator runs it: the real binary, its own simulator, switch and API
//! in one process, real TCP and HTTPS. The built-in scenario must pass with exit 0, and a
//! scenario whose expectation is wrong must fail with exit 1 and name the line, so the
//! report is known to be a check and not a rubber stamp.

#![allow(clippy::expect_used)] // the helper outside #[test] fns panics on purpose

mod procs;
mod rig;

use std::path::Path;
use std::process::{Command, Output};

/// Runs `vpan demo` in `cwd`, with its temporary directory under `cwd/tmp`.
fn demo(args: &[&str], cwd: &Path) -> Output {
    demo_command(args, cwd).output().expect("vpan demo runs")
}

/// `vpan demo` with `args`, to run in `cwd` with its temporary directory under `cwd/tmp`
/// (made here).
fn demo_command(args: &[&str], cwd: &Path) -> Command {
    let tmp = cwd.join("tmp");
    std::fs::create_dir_all(&tmp).expect("a temporary directory for the demo");
    let mut command = Command::new(env!("CARGO_BIN_EXE_vpan"));
    command
        .arg("demo")
        .args(args)
        .current_dir(cwd)
        .env("TMPDIR", &tmp);
    command
}

#[test]
fn the_builtin_demo_passes_every_expectation_and_exits_0() {
    // From an empty directory: the demo needs nothing beside the binary.
    let dir = tempfile::tempdir().unwrap();
    let out = demo(&["--duration", "1s", "--connections", "2"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for part in [
        "story: each message sent alone",
        "load: 2 connections",
        "latency (µs): p50",
        "91   issuer unavailable or too slow",
        "94   same transaction key, other content",
        "30   format error",
        "ok    issuer host:",
        "ok    metrics: all 9 metrics",
    ] {
        assert!(stdout.contains(part), "missing {part:?} in\n{stdout}");
    }
    assert!(
        stdout.trim_end().ends_with("checks passed)"),
        "last line:\n{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // Its report and its logs name cards masked only (first 6, last 4): no run of 12
    // digits or more, the shortest a card number has.
    let everything = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let longest = everything
        .split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(
        longest < 12,
        "a card-number-long digit run in:\n{everything}"
    );
    // The load's malformed requests (hundreds a second) are logged at most once a second.
    let malformed_answered: u64 = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("30   format error"))
        .filter_map(|l| l.split_whitespace().nth(3)?.parse().ok())
        .max()
        .unwrap_or(0);
    let malformed_lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("malformed request answered 30"))
        .count();
    assert!(malformed_answered >= 20, "{stdout}");
    assert!(
        (1..=5).contains(&malformed_lines),
        "{malformed_lines} log lines for {malformed_answered} malformed requests"
    );
    // The temporary data directory is gone: nothing of the run is left behind.
    let leftover: Vec<_> = std::fs::read_dir(dir.path().join("tmp"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(leftover.is_empty(), "left behind: {leftover:?}");
}

#[test]
fn a_demo_stopped_by_a_signal_stops_its_parts_and_removes_its_temporary_directory() {
    // Review of stop 51: a Ctrl-C or SIGTERM killed the demo outright, leaving its
    // temporary directory behind, the card key beside the numbers it seals.
    for signal in ["INT", "TERM"] {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        let mut child = demo_command(&["--duration", "60s"], dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Once it names its parts' addresses they are all up; a moment later its 60 s
        // load runs, its directory full.
        let stdout = child.stdout.take().unwrap();
        let (said, heard) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut all = String::new();
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("issuer simulator ") {
                    let _ = said.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        heard
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the demo starts its parts");
        std::thread::sleep(std::time::Duration::from_secs(2));
        let made: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
        assert_eq!(made.len(), 1, "its temporary directory");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        let stdout = reader.join().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{signal}: {stdout}{stderr}");
        assert!(
            stdout.contains("stopped by a signal before the end"),
            "{signal}: {stdout}"
        );
        assert!(
            stderr.contains("stopped by a signal before the end"),
            "{signal}: {stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
        assert!(left.is_empty(), "{signal}: left behind: {left:?}");
    }
}

#[test]
fn a_wrong_expectation_fails_the_demo_with_exit_1_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("scenario");
    std::fs::create_dir(&scenario).unwrap();
    std::fs::write(
        scenario.join("cards.json"),
        r#"[{"name": "gift", "controls": {"currency": "978", "amount_limit": 1000}, "expect": {"spent": 999}}]"#,
    )
    .unwrap();
    // The purchase is over the cap: the switch answers 61, the file claims 00.
    let story = r#"# a wrong claim
{"fields": {"t": "0100", "2": "${vpan.gift}", "3": "000000", "4": "000000005000", "14": "${expiry.gift}", "32": "123456", "41": "TERM0001", "49": "978"}, "expect": "00"}
"#;
    std::fs::write(scenario.join("story.jsonl"), story).unwrap();
    let out = demo(&["--scenario", scenario.to_str().unwrap()], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  story: every answer has the expected response code: 1 mismatched: line 2 got {\"61\": 1}"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  card \"gift\" after the story: spent 999: got active, spent 0"),
        "{stdout}"
    );
    assert!(stdout.contains("2 of "), "{stdout}");
}

#[test]
fn a_scenario_directory_without_cards_is_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = demo(&["--scenario", dir.path().to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no cards.json there"), "{stderr}");
}

/// The README's quick start past the demo: the simulator with the sample accounts, the real
/// `vpan serve`, a card made by `vpan card create --json` for the accounts file's first
/// card (single use), and the two purchases of `fixtures/traffic/one-card.jsonl` sent to it
/// by `vpan loadgen --cards`, one at a time: 00 from the issuer, then 46 from vpan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_starts_card_gets_its_purchase_then_46() {
    use vpan::tools::issuer_sim::{IssuerSim, SimConfig, load_accounts};
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/traffic");
    let accounts = load_accounts(&fixtures.join("accounts.json")).expect("the sample accounts");
    let pan = accounts[0].0.clone();
    let sim = IssuerSim::start(SimConfig {
        accounts,
        default_balance: None,
        ..SimConfig::default()
    })
    .await
    .expect("the simulator");
    let dir = tempfile::tempdir().expect("a directory");
    let data = dir.path().join("vpan-data");
    let mut serve = procs::start_serve(&data, &sim.local_addr().to_string(), &[]).await;
    serve
        .wait_log("issuer link up", 2, std::time::Duration::from_secs(30))
        .await;
    let vpan = env!("CARGO_BIN_EXE_vpan");
    let url = format!("https://127.0.0.1:{}", serve.api.port());
    let created = Command::new(vpan)
        .args([
            "card",
            "create",
            "--pan",
            "-",
            "--pan-expiry",
            "2912",
            "--currency",
            "978",
        ])
        .args([
            "--amount-limit",
            "5000",
            "--max-uses",
            "1",
            "--json",
            "--url",
            &url,
        ])
        .arg("--ca")
        .arg(data.join("tls-cert.pem"))
        .arg("--token-file")
        .arg(data.join("api-token"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(pan.expose().as_bytes())?;
            drop(stdin);
            child.wait_with_output()
        })
        .expect("vpan card create runs");
    assert!(created.status.success(), "{created:?}");
    let card: serde_json::Value = serde_json::from_slice(&created.stdout).expect("JSON");
    let cards = dir.path().join("cards.json");
    std::fs::write(
        &cards,
        serde_json::json!({"mine": {"vpan": card["vpan"], "expiry": card["expiry"]}}).to_string(),
    )
    .expect("cards.json");
    let out = Command::new(vpan)
        .args([
            "loadgen",
            "--target",
            &serve.network.to_string(),
            "--traffic",
        ])
        .arg(fixtures.join("one-card.jsonl"))
        .arg("--cards")
        .arg(&cards)
        .args([
            "--connections",
            "1",
            "--in-flight",
            "1",
            "--count",
            "2",
            "--json",
        ])
        .output()
        .expect("vpan loadgen runs");
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        report["response_codes"],
        serde_json::json!({"00": 1, "46": 1}),
        "{report}"
    );
    serve.stop("TERM").await;
    sim.shutdown().await;
}
