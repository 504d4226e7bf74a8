//! Shared pieces of the reliability tests that drive the real binaries: `vpan serve` as a
//! child process (its addresses read from its JSON log), `vpan loadgen` with `--record`,
//! the `/metrics` page scraped over real TCP, the child's memory from `/proc`, and the
//! data directory opened in-process the way a restarted switch recovers it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use vpan::cards::{CardSpec, CardView, Cards, CardsConfig, Controls, Expiry, LedgerConfig};
use vpan::cards::{MerchantLock, OpenError, Recovered};
use vpan::pan::Pan;
use vpan::store::{StoreConfig, StoreError};

/// The binary under test.
pub const VPAN: &str = env!("CARGO_BIN_EXE_vpan");

// Every test crate that uses these helpers also declares `mod rig`: one copy of the
// clock and of the test card generator.
pub use crate::rig::{now, test_pan};

/// A running `vpan serve`.
pub struct Serve {
    /// The process.
    pub child: Child,
    /// Its pid, for `/proc` and signals.
    pub pid: u32,
    /// The network listener.
    pub network: SocketAddr,
    /// The metrics listener.
    pub metrics: SocketAddr,
    /// The API listener (HTTPS; its token and certificate are in the data directory).
    pub api: SocketAddr,
    /// Its log lines after start-up, as JSON.
    pub log: mpsc::UnboundedReceiver<serde_json::Value>,
    /// The `store recovered` line.
    pub recovered: serde_json::Value,
}

/// Starts `vpan serve` on `data_dir` toward `issuer`, with `env` as extra `VPAN_*`
/// overrides; returns once its network and metrics listeners are bound.
pub async fn start_serve(data_dir: &Path, issuer: &str, env: &[(&str, &str)]) -> Serve {
    let mut cmd = Command::new(VPAN);
    cmd.args(["serve", "--log-json"])
        .env("VPAN_NETWORK_LISTEN", "127.0.0.1:0")
        .env("VPAN_METRICS_LISTEN", "127.0.0.1:0")
        .env("VPAN_API_LISTEN", "127.0.0.1:0")
        .env("VPAN_ISSUER_CONNECT", issuer)
        // Redial a lost issuer quickly: the tests restart it and wait for the link.
        .env("VPAN_ISSUER_RECONNECT_MAX_MS", "200")
        .env("VPAN_STORE_DATA_DIR", data_dir)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, log) = mpsc::unbounded_channel();
    let (mut network, mut metrics, mut api, mut recovered) = (None, None, None, None);
    tokio::time::timeout(Duration::from_secs(60), async {
        while network.is_none() || metrics.is_none() || api.is_none() {
            let Some(line) = lines.next_line().await.unwrap() else {
                panic!("vpan serve exited before binding");
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            match v["message"].as_str() {
                Some("network listener bound (ISO 8583)") => {
                    network = v["addr"].as_str().map(|a| a.parse().unwrap())
                }
                Some("metrics listener bound (GET /metrics)") => {
                    metrics = v["addr"].as_str().map(|a| a.parse().unwrap())
                }
                Some("API listener bound (HTTPS)") => {
                    api = v["addr"].as_str().map(|a| a.parse().unwrap())
                }
                Some("store recovered") => recovered = Some(v.clone()),
                _ => {}
            }
            let _ = tx.send(v);
        }
    })
    .await
    .expect("vpan serve bound its listeners within 60 s");
    // Keep reading its log so it never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    Serve {
        child,
        pid,
        network: network.unwrap(),
        metrics: metrics.unwrap(),
        api: api.unwrap(),
        log,
        recovered: recovered.unwrap_or_default(),
    }
}

impl Serve {
    /// Waits (at most `within`) until `count` log lines with this message have come;
    /// returns the last of them.
    pub async fn wait_log(
        &mut self,
        message: &str,
        count: usize,
        within: Duration,
    ) -> serde_json::Value {
        let mut seen = 0;
        tokio::time::timeout(within, async {
            let mut last = serde_json::Value::Null;
            while seen < count {
                match self.log.recv().await {
                    Some(v) if v["message"] == message => {
                        seen += 1;
                        last = v;
                    }
                    Some(_) => {}
                    None => panic!("vpan serve ended before logging {message:?}"),
                }
            }
            last
        })
        .await
        .unwrap_or_else(|_| panic!("{message:?} logged {count} times within {within:?}"))
    }

    /// Sends `signal` (e.g. `"KILL"`, `"TERM"`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.pid);
    }

    /// Sends `signal` and waits for the process to end.
    pub async fn stop(mut self, signal: &str) {
        self.signal(signal);
        let _ = self.child.wait().await;
    }

    /// Resident memory of the process in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid)
    }
}

/// `VmRSS` of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A client of the API of the `vpan serve` on `data_dir`, with the token and certificate
/// it made there.
pub fn api_client(serve: &Serve, data_dir: &Path) -> vpan::api::client::ApiClient {
    let token = std::fs::read_to_string(data_dir.join("api-token")).unwrap();
    vpan::api::client::ApiClient::new(
        &format!("https://127.0.0.1:{}", serve.api.port()),
        token.trim().to_string(),
        Some(&data_dir.join("tls-cert.pem")),
    )
    .unwrap()
}

/// `GET /metrics` over plain TCP.
pub async fn scrape(metrics: SocketAddr) -> String {
    let mut s = TcpStream::connect(metrics).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: vpan\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut page))
        .await
        .expect("/metrics answered within 10 s")
        .unwrap();
    page
}

/// The value of the series `name` whose labels contain every `label="value"` of `labels`
/// (0 when absent; several matching series are added up).
pub fn metric(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Every `reason` of `vpan_frames_rejected_total` with its count.
pub fn rejected(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter_map(|l| l.strip_prefix("vpan_frames_rejected_total{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            let reason = labels.split("reason=\"").nth(1)?.split('"').next()?;
            Some((reason.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Opens the data directory the way a restarted switch recovers it.
pub fn open_cards(data_dir: &Path) -> (Cards, Recovered) {
    let store = StoreConfig {
        data_dir: data_dir.to_path_buf(),
        key_file: Default::default(),
        ..Default::default()
    };
    // A child another test of this binary is starting holds, until its exec, a copy of
    // every descriptor of this process (fork shares them; close-on-exec closes them only
    // at the exec), and a flock belongs to the open file, not the descriptor: for that
    // instant the directory reads as locked although its last holder here is gone (seen
    // once in `restart_under_load`, reopening right after the cards were issued).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Cards::open(&CardsConfig::default(), &store, LedgerConfig::default()) {
            Err(OpenError::Store(StoreError::Locked)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened.unwrap(),
        }
    }
}

/// Issues `n` cards capped at `cap` (EUR) in `data_dir`, before any switch runs there;
/// returns each card with its real PAN.
pub async fn issue_cards(data_dir: &Path, n: usize, cap: u64) -> Vec<(CardView, Pan)> {
    let (cards, _) = open_cards(data_dir);
    let mut out = Vec::new();
    for _ in 0..n {
        let real = test_pan("497010", 16);
        let spec = CardSpec {
            pan: real.clone(),
            pan_expiry: Expiry(*b"2912"),
            controls: Controls {
                currency: 978,
                amount_limit: cap,
                per_transaction_limit: None,
                max_uses: None,
                valid_until: now() + 86_400,
                merchant_lock: MerchantLock::None,
                mcc_allow: vec![],
                mcc_block: vec![],
            },
        };
        out.push((cards.issue_durable(&spec, now()).await.unwrap(), real));
    }
    out
}

/// A traffic-file line: an e-commerce `mti` for `amount` on `card`, or its reversal.
pub fn traffic_line(mti: &str, card: &CardView, amount: u64, reverses: Option<usize>) -> String {
    let fields = serde_json::json!({
        "t": mti,
        "2": card.vpan.expose(),
        "3": "000000",
        "4": format!("{amount:012}"),
        "12": "143015",
        "13": "1126",
        "14": card.expiry.as_str(),
        "18": "5734",
        "22": "812",
        "32": "12345678901",
        "37": "633014000123",
        "41": "TERM0001",
        "42": "SHOP00000000001",
        "43": "EXAMPLE SHOP             PARIS        FR",
        "49": "978",
    });
    let mut line = serde_json::json!({ "fields": fields });
    if let Some(r) = reverses {
        line["reverses"] = r.into();
    }
    line.to_string()
}

/// One line of a `vpan loadgen --record` file.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Recorded {
    /// Traffic file line (1-based).
    pub line: usize,
    /// Request MTI.
    pub mti: String,
    /// Masked card.
    pub card: Option<String>,
    /// DE 4.
    pub amount: Option<u64>,
    /// `answered`, `timeout` or `lost`.
    pub outcome: String,
    /// DE 39 when answered.
    pub code: Option<String>,
}

/// Reads a `--record` file.
pub fn read_record(path: &Path) -> Vec<Recorded> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Starts `vpan loadgen` against `target` with `traffic`, recording into `record`.
pub fn start_loadgen(target: SocketAddr, traffic: &Path, record: &Path, extra: &[&str]) -> Child {
    Command::new(VPAN)
        .arg("loadgen")
        .arg("--target")
        .arg(target.to_string())
        .arg("--traffic")
        .arg(traffic)
        .arg("--record")
        .arg(record)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A scratch path inside `dir`.
pub fn path_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
