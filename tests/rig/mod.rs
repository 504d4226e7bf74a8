//! Shared pieces of the end-to-end tests: a switch (`App` on port 0) in front of the real
//! issuer simulator on another port, a temporary data dir, a network-side client over real
//! TCP, and generated Luhn-valid test cards.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use vpan::app::App;
use vpan::cards::vpan::random_luhn;
use vpan::cards::{CardSpec, CardView, Cards, Controls, Expiry, MerchantLock};
use vpan::config::Config;
use vpan::iso8583::{Frame, FrameCodec, Framing, Message, Spec};
use vpan::pan::Pan;
use vpan::tools::issuer_sim::{IssuerSim, IssuerSimHandle, Received, SimConfig};

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A random Luhn-valid test PAN of `len` digits starting with `bin`.
pub fn test_pan(bin: &str, len: usize) -> Pan {
    Pan::from_digits_checked(random_luhn(bin, len).as_bytes()).unwrap()
}

/// A switch and its issuer simulator, torn down on drop of the token.
pub struct Rig {
    /// Where the network connects.
    pub network: SocketAddr,
    /// Metrics endpoint.
    pub metrics: SocketAddr,
    /// The issuer simulator, for checking what reached the issuer.
    pub sim: Option<IssuerSimHandle>,
    /// The switch's cards.
    pub cards: Arc<Cards>,
    /// The switch's issuer link, to see it up.
    pub issuer: vpan::switch::issuer::IssuerLink,
    /// Stops the switch.
    pub stop: CancellationToken,
    /// The switch task.
    pub task: tokio::task::JoinHandle<()>,
    /// The data dir, removed at the end.
    pub dir: tempfile::TempDir,
}

/// Starts a simulator (unless `sim` is `None`) and a switch in front of it.
pub async fn rig(sim: Option<SimConfig>, tweak: impl FnOnce(&mut Config)) -> Rig {
    let sim = match sim {
        Some(c) => Some(IssuerSim::start(c).await.unwrap()),
        None => None,
    };
    let dir = tempfile::tempdir().unwrap();
    let issuer = match &sim {
        Some(s) => s.local_addr().to_string(),
        // Nothing listens there: a port taken and released at once.
        None => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        }
    };
    let mut config = Config::local(&dir.path().join("data"), &issuer);
    // Room for a loaded CI machine; tests that want a 91 from a timeout set their own.
    config.issuer.timeout_ms = 3000;
    tweak(&mut config);
    let connections = config.issuer.connections;
    let app = App::build(config).await.unwrap();
    let addrs = app.addresses();
    let cards = app.cards();
    let issuer = app.issuer();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        app.run(async move { token.cancelled().await })
            .await
            .unwrap();
    });
    if sim.is_some() {
        // The link dials in the background: wait until every connection is up. Bounded
        // generously: a simulator with a share of timeouts may leave a sign-on unanswered,
        // which the link waits out (5 s) before it dials again, and then another.
        tokio::time::timeout(Duration::from_secs(30), async {
            while issuer.connected() < connections {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("issuer link up");
    }
    Rig {
        network: addrs.network.unwrap(),
        metrics: addrs.metrics,
        sim,
        cards,
        issuer,
        stop,
        task,
        dir,
    }
}

impl Rig {
    /// Stops the switch and waits for it to drain.
    pub async fn stop(self) {
        self.stop.cancel();
        // The switch's stop waits for the last other handle on the cards: not this one.
        drop(self.cards);
        let _ = self.task.await;
        if let Some(sim) = self.sim {
            sim.shutdown().await;
        }
    }

    /// The simulator.
    pub fn sim(&self) -> &IssuerSimHandle {
        self.sim.as_ref().unwrap()
    }

    /// The newest request of MTI `mti` among the last ten the simulator received.
    pub fn last_at_issuer(&self, mti: &[u8; 4]) -> Received {
        self.sim()
            .recent(10)
            .into_iter()
            .find(|r| r.mti() == *mti)
            .unwrap_or_else(|| {
                panic!(
                    "no {} among the issuer's last ten requests",
                    String::from_utf8_lossy(mti)
                )
            })
    }

    /// Issues a card with `tweak`ed controls (default: EUR, 100.00 cap, 30 days).
    pub async fn issue(&self, tweak: impl FnOnce(&mut Controls)) -> (CardView, Pan) {
        // Outside the virtual range some tests set (4970109): a real card is never in one.
        let real = test_pan("4970100", 16);
        let mut controls = Controls {
            currency: 978,
            amount_limit: 10_000,
            per_transaction_limit: None,
            max_uses: None,
            valid_until: now() + 30 * 86_400,
            merchant_lock: MerchantLock::None,
            mcc_allow: vec![],
            mcc_block: vec![],
        };
        tweak(&mut controls);
        let spec = CardSpec {
            pan: real.clone(),
            pan_expiry: Expiry(*b"2912"),
            controls,
        };
        let view = self.cards.issue_durable(&spec, now()).await.unwrap();
        (view, real)
    }
}

/// What most end-to-end tests start from: a switch in front of a default simulator, one
/// card issued with `tweak`ed controls (with the real card behind it), and a connection
/// on the network side.
pub async fn one_card(tweak: impl FnOnce(&mut Controls)) -> (Rig, CardView, Pan, Client) {
    let rig = rig(Some(SimConfig::default()), |_| {}).await;
    let (card, real) = rig.issue(tweak).await;
    let net = Client::connect(rig.network).await;
    (rig, card, real, net)
}

/// Single-use controls.
pub fn single_use(c: &mut Controls) {
    c.max_uses = NonZeroU32::new(1);
}

/// A message frame with no fixed header.
fn unheaded(body: Bytes) -> Frame {
    Frame::Message {
        header: Bytes::new(),
        body,
    }
}

/// A network-side client: sends requests, collects answers by STAN.
pub struct Client {
    framed: Framed<TcpStream, FrameCodec>,
    stan: u32,
    /// Answers read but not asked for yet.
    early: HashMap<[u8; 6], Message>,
}

impl Client {
    /// Connects with `len2` framing.
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).await.unwrap())
    }

    /// The network side of a connection already open (one the switch dialled), `len2`.
    pub fn over(stream: TcpStream) -> Client {
        Client {
            framed: Framed::new(stream, FrameCodec::new(Framing::Len2, 0, 8192)),
            stan: rand::random_range(1..500_000),
            early: HashMap::new(),
        }
    }

    /// A fresh STAN.
    pub fn next_stan(&mut self) -> [u8; 6] {
        self.stan += 1;
        let s = format!("{:06}", self.stan % 1_000_000);
        s.as_bytes().try_into().unwrap()
    }

    /// Sends raw message bytes as one frame.
    pub async fn send_raw(&mut self, body: Bytes) {
        self.framed.send(unheaded(body)).await.unwrap();
    }

    /// Writes `bytes` as they are, outside any frame (a broken length header, say).
    pub async fn send_unframed(&mut self, bytes: &[u8]) {
        self.try_send_unframed(bytes).await.unwrap();
    }

    /// [`Client::send_unframed`], saying whether the write failed (the switch closed the
    /// connection whole).
    pub async fn try_send_unframed(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::io::AsyncWriteExt::write_all(self.framed.get_mut(), bytes).await
    }

    /// Sends `msgs` in one write, so that they reach the switch together.
    pub async fn send_together(&mut self, msgs: &[Message]) {
        for msg in msgs {
            self.framed.feed(unheaded(msg.pack())).await.unwrap();
        }
        self.framed.flush().await.unwrap();
    }

    /// Sends `msg`.
    pub async fn send(&mut self, msg: &Message) {
        self.send_raw(msg.pack()).await;
    }

    /// Waits (at most 5 s) for the answer with DE 11 = `stan`.
    pub async fn answer(&mut self, stan: [u8; 6]) -> Message {
        tokio::time::timeout(Duration::from_secs(5), self.try_answer(stan))
            .await
            .expect("an answer within 5 s")
            .expect("the connection ended while waiting for an answer")
    }

    /// The answer with DE 11 = `stan`, or `None` when the connection ends first.
    pub async fn try_answer(&mut self, stan: [u8; 6]) -> Option<Message> {
        if let Some(m) = self.early.remove(&stan) {
            return Some(m);
        }
        loop {
            match self.framed.next().await {
                Some(Ok(Frame::Message { body, .. })) => {
                    let m = Message::parse(Spec::iso87ascii(), body).unwrap();
                    let s = m.stan().unwrap();
                    if s == stan {
                        return Some(m);
                    }
                    self.early.insert(s, m);
                }
                Some(Ok(Frame::KeepAlive)) => {}
                _ => return None,
            }
        }
    }

    /// The STANs of answers read and not asked for (yet).
    #[allow(dead_code)] // not every test binary that has the rig asks
    pub fn unclaimed(&self) -> Vec<[u8; 6]> {
        self.early.keys().copied().collect()
    }

    /// Sends `msg` and waits for its answer.
    pub async fn call(&mut self, msg: &Message) -> Message {
        self.send(msg).await;
        self.answer(msg.stan().unwrap()).await
    }

    /// Reads the next frame (at most 5 s).
    pub async fn next_frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(5), self.framed.next())
            .await
            .expect("a frame within 5 s")
            .map(|r| r.unwrap())
    }
}

/// An e-commerce 0100 (or `mti`) for `amount` EUR cents on `pan`, merchant `acceptor`,
/// with a fresh STAN and DE 14 `expiry`.
pub fn purchase(
    client: &mut Client,
    mti: &[u8; 4],
    pan: &Pan,
    expiry: &[u8; 4],
    amount: u64,
) -> Message {
    let spec = Spec::iso87ascii();
    let mut m = Message::new(spec, mti).unwrap();
    m.set(2, pan.as_bytes()).unwrap();
    m.set(3, b"000000").unwrap();
    m.set(4, format!("{amount:012}").as_bytes()).unwrap();
    m.set(7, b"1126143015").unwrap();
    m.set(11, &client.next_stan()).unwrap();
    m.set(12, b"143015").unwrap();
    m.set(13, b"1126").unwrap();
    m.set(14, expiry).unwrap();
    m.set(18, b"5734").unwrap();
    m.set(22, b"812").unwrap();
    m.set(32, b"12345678901").unwrap();
    m.set(37, b"633014000123").unwrap();
    m.set(41, b"TERM0001").unwrap();
    m.set(42, b"SHOP00000000001").unwrap();
    m.set(43, b"EXAMPLE SHOP             PARIS        FR")
        .unwrap();
    m.set(49, b"978").unwrap();
    // Re-parse so the message is exactly what the wire carries.
    Message::parse(spec, m.pack()).unwrap()
}

/// `original` sent again by a network that heard no answer: the same message as a repeat
/// (its MTI ending in 1).
pub fn repeat_of(original: &Message) -> Message {
    let mut m = original.clone();
    let mut mti = original.mti();
    mti[3] = b'1';
    m.set_mti(&mti).unwrap();
    Message::parse(Spec::iso87ascii(), m.pack()).unwrap()
}

/// The advice (0120, DE 39 00) a network's stand-in sends of `request`, which it
/// approved in the issuer's place: the request's key, card and amount.
pub fn stand_in_advice_of(request: &Message) -> Message {
    let mut m = request.clone();
    m.set_mti(b"0120").unwrap();
    m.set_response_code(b"00").unwrap();
    Message::parse(Spec::iso87ascii(), m.pack()).unwrap()
}

/// A 0400 reversing `original` in full, naming it in DE 90.
pub fn reversal_of(client: &mut Client, original: &Message) -> Message {
    let spec = Spec::iso87ascii();
    let mut m = original.clone();
    m.set_mti(b"0400").unwrap();
    m.set(11, &client.next_stan()).unwrap();
    let mut de90 = Vec::new();
    de90.extend_from_slice(&original.mti());
    de90.extend_from_slice(&original.stan().unwrap());
    de90.extend_from_slice(&original.transmission_time().unwrap());
    de90.extend_from_slice(
        format!("{:0>11}", original.acquirer().unwrap().as_str().unwrap()).as_bytes(),
    );
    de90.extend_from_slice(b"00000000000");
    m.set(90, &de90).unwrap();
    Message::parse(spec, m.pack()).unwrap()
}

/// DE 39 of an answer as text.
pub fn code(m: &Message) -> String {
    String::from_utf8(m.response_code().unwrap().to_vec()).unwrap()
}
