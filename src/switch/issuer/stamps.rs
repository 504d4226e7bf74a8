//! Which request is whose: the stamp (DE 11) each request goes out under, the network
//! identity of a transaction (what DE 90 names, and the terminal), how a request meets
//! another waiting under the stamp it wants (its repeat, a clash, or a stranger), and the
//! STANs changed toward the issuer, remembered for a while (and across restarts) so that a
//! reversal names its original as the issuer knows it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::ConcurrentMap;
use crate::cards::card::unix_now;
use crate::cards::request::original_data_elements;
use crate::iso8583::{Message, Spec};
use crate::store::owed::Stamp;

use super::{IssuerError, IssuerLink, Pending};

/// How long a changed STAN is remembered: for rewriting a reversal's DE 90, and for sending
/// a repeat under it again. Only the network's requests whose STAN was in flight already
/// are remembered, so this stays small.
pub const RESTAMPED_KEPT: Duration = Duration::from_secs(3600);

impl IssuerLink {
    /// Takes back the STANs an earlier run changed within the last [`RESTAMPED_KEPT`], each
    /// remembered for what is left of that time.
    pub(super) fn remember_earlier_stamps(&self, stamps: Vec<Stamp>) {
        let (now, unix) = (Instant::now(), unix_now());
        for Stamp { key, stamp, at } in stamps {
            let age = Duration::from_secs(unix.saturating_sub(at));
            if let Some(identity) = Identity::from_key(&key)
                && let Some(at) = now.checked_sub(age)
            {
                self.inner.restamped.insert_at(identity, stamp, at);
            }
        }
    }

    /// A reversal (or any message with DE 90) naming an original that went out under
    /// another STAN: DE 90 gets that STAN, so the issuer finds the original it saw.
    ///
    /// A reversal without DE 90 names its original by its own DE 11, DE 7, DE 32 and DE 41.
    /// Under the network's STAN the issuer would not find it when the original went out
    /// under another STAN (it would find the other transaction that held the STAN), nor
    /// when the original is still waiting under the STAN, since the reversal then goes out
    /// under another one (the acquirer's timeout reversal, the usual case). Either way it
    /// gets a DE 90 naming the original as the issuer knows it, which also queues it behind
    /// a waiting original. Returns the network's DE 90 (`None`: it had none) when it changed
    /// it, to be put back in the answer.
    pub(super) fn rewrite_original(
        &self,
        request: &mut Message,
    ) -> Result<Option<Option<Vec<u8>>>, IssuerError> {
        if request.mti()[1] == b'4' && !request.has(90) {
            return self.name_original(request);
        }
        if !self.inner.restamped.any() {
            return Ok(None);
        }
        let terminal = request.terminal();
        let terminal = terminal.as_deref();
        if let Some(de90) = request.text(90).map(|d| d.as_bytes().to_vec()) {
            let Some(stamp) = self.inner.restamped.get(|| Identity::of(&de90, terminal)) else {
                return Ok(None);
            };
            let mut named = de90.clone();
            if let Some(stan) = named.get_mut(4..10) {
                stan.copy_from_slice(&stamp);
            }
            request.set(90, &named).map_err(|_| IssuerError::Encode)?;
            return Ok(Some(Some(de90)));
        }
        Ok(None)
    }

    /// [`IssuerLink::rewrite_original`] for a reversal without DE 90: its original, by the
    /// reversal's own key, still waiting under the network's STAN, or sent under another.
    fn name_original(&self, request: &mut Message) -> Result<Option<Option<Vec<u8>>>, IssuerError> {
        let (Some(stan), Some(sent_at)) = (request.stan(), request.transmission_time()) else {
            return Ok(None);
        };
        let acquirer = request.acquirer();
        let acquirer = acquirer.as_deref().unwrap_or_default();
        let terminal = request.terminal();
        let terminal = terminal.as_deref();
        let waiting = self.inner.pending.get(&stan).and_then(|p| {
            let sent = Message::parse(self.inner.settings.spec, p.sent.clone()).ok()?;
            let original = matches!(p.mti[1], b'1' | b'2')
                && p.network_stan == Some(stan)
                && sent.transmission_time() == Some(sent_at)
                && sent.acquirer().as_deref().unwrap_or_default() == acquirer
                && sent.terminal().as_deref() == terminal;
            original.then_some(p.mti)
        });
        // DE 90 naming an original of MTI `mti` sent under `stamp`.
        let naming =
            |mti: &[u8; 4], stamp: &[u8; 6]| original_data_elements(mti, stamp, &sent_at, acquirer);
        let named = match waiting {
            Some(mut mti) => {
                // A repeat's first MTI (0100 for a 0101), as the issuer booked it.
                mti[3] = b'0';
                let named = naming(&mti, &stan);
                // Remembered (under its own STAN) for the reversal's repeats, which may
                // come once the original is answered and no longer waiting, and go out
                // under the reversal's stamp.
                if let Some(identity) = Identity::of(&named, terminal) {
                    self.inner.named_waiting.insert(identity, stan);
                }
                named
            }
            None => {
                let earlier = [b"0100", b"0200", b"0120", b"0220"]
                    .into_iter()
                    .find_map(|mti| {
                        let own = naming(mti, &stan);
                        let id = || Identity::of(&own, terminal);
                        // Restamped: under the network's STAN the issuer would find another.
                        match self.inner.restamped.get(id) {
                            Some(stamp) => Some((naming(mti, &stamp), true)),
                            None => self.inner.named_waiting.get(id).map(|_| (own, false)),
                        }
                    });
                match earlier {
                    Some((named, true)) => {
                        // Without a DE 90 to name it by, the issuer would reverse the other
                        // transaction under its STAN: not sent (the network gets 91, and
                        // repeats it).
                        request.set(90, &named).map_err(|_| IssuerError::Encode)?;
                        return Ok(Some(None));
                    }
                    Some((named, false)) => named,
                    None => return Ok(None),
                }
            }
        };
        if request.set(90, &named).is_err() {
            // A layout without DE 90 (or no room for it): it goes as it came.
            crate::logging::throttled!(
                warn,
                "a reversal without DE 90 could not be given one naming its original; sent as it came"
            );
            return Ok(None);
        }
        Ok(Some(None))
    }

    pub(super) fn next_stamp(&self) -> [u8; 6] {
        let n = self.inner.next_stan.fetch_add(1, Ordering::Relaxed) % 999_999 + 1;
        let mut out = [b'0'; 6];
        let mut v = n;
        for d in out.iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out
    }
}

/// How much of DE 90 names the original: MTI, STAN, DE 7 and the acquirer (DE 32), which
/// tells apart two acquirers whose STANs meet in the same second (the forwarder is left).
pub(super) const ORIGINAL_KEY: usize = 31;

/// A transaction's network identity: what DE 90 names (MTI, STAN, DE 7, DE 32), with the
/// MTI's last digit as 0 (a repeat is the same transaction as its first), and the
/// terminal (DE 41), which DE 90 does not carry: two terminals of one acquirer may send
/// the same STAN in the same second, and a reversal comes from its original's terminal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) struct Identity([u8; ORIGINAL_KEY], [u8; 8]);

impl Identity {
    /// From DE 90's text (or its first [`ORIGINAL_KEY`] bytes) and DE 41.
    pub(super) fn of(de90: &[u8], terminal: Option<&[u8]>) -> Option<Identity> {
        let mut key = <[u8; ORIGINAL_KEY]>::try_from(de90.get(..ORIGINAL_KEY)?).ok()?;
        key[3] = b'0';
        let mut t = [b' '; 8];
        let terminal = terminal.unwrap_or_default();
        t.get_mut(..terminal.len())?.copy_from_slice(terminal);
        Some(Identity(key, t))
    }

    /// Its bytes, for the book ([`Stamp::key`]).
    pub(super) fn key(&self) -> [u8; IDENTITY_BYTES] {
        let mut out = [0u8; IDENTITY_BYTES];
        out[..ORIGINAL_KEY].copy_from_slice(&self.0);
        out[ORIGINAL_KEY..].copy_from_slice(&self.1);
        out
    }

    /// From [`Identity::key`]'s bytes.
    pub(super) fn from_key(key: &[u8]) -> Option<Identity> {
        let (original, terminal) = key.split_first_chunk::<ORIGINAL_KEY>()?;
        Some(Identity(*original, terminal.try_into().ok()?))
    }
}

/// An [`Identity`]'s bytes.
pub(super) const IDENTITY_BYTES: usize = ORIGINAL_KEY + 8;

/// Network identities (see [`Identity`]) of originals that went out under another STAN
/// than the network's, to the stamp used.
pub(super) type Restamped = Remembered<Identity, [u8; 6]>;

/// What the link remembers for a while, by key, with when: rare entries, looked for on
/// every request, so an empty map costs one atomic read.
pub(super) struct Remembered<K, V> {
    map: ConcurrentMap<K, (V, Instant)>,
    /// Entries in `map`, read before every lookup: the map is almost always empty, and a
    /// lookup (the key's fields, then its hash) cost 3 % of an approval's instructions.
    len: AtomicUsize,
}

impl<K: Eq + std::hash::Hash, V> Default for Remembered<K, V> {
    fn default() -> Self {
        Remembered {
            map: ConcurrentMap::default(),
            len: AtomicUsize::new(0),
        }
    }
}

impl<K: Eq + std::hash::Hash, V: Copy> Remembered<K, V> {
    /// Whether anything is remembered: one atomic read.
    pub(super) fn any(&self) -> bool {
        self.len.load(Ordering::Acquire) > 0
    }

    /// The value remembered under the key `key` gives, if any (`key` is only worked out
    /// when something is remembered at all).
    pub(super) fn get(&self, key: impl FnOnce() -> Option<K>) -> Option<V> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.map.get(&key()?).map(|e| e.0)
    }

    /// Whether anything is remembered under `key`, looked for in the map itself (not
    /// after [`Remembered::any`]): ordered by the map's locks against a change of it.
    pub(super) fn holds(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    pub(super) fn insert(&self, key: K, value: V) {
        self.insert_at(key, value, Instant::now());
    }

    /// [`Remembered::insert`], as of `at`.
    pub(super) fn insert_at(&self, key: K, value: V, at: Instant) {
        // Counted before it is in the map, so that `len` may count one too many for a
        // moment but never too few.
        self.len.fetch_add(1, Ordering::AcqRel);
        if self.map.insert(key, (value, at)).is_some() {
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Forgets every entry whose value `which` selects (a rare path: the whole map is
    /// looked through), and returns their keys.
    pub(super) fn forget_where(&self, which: impl Fn(&V) -> bool) -> Vec<K>
    where
        K: Clone,
    {
        let mut forgotten = Vec::new();
        self.map.retain(|key, (value, _)| {
            let keep = !which(value);
            if !keep {
                forgotten.push(key.clone());
            }
            keep
        });
        self.len.fetch_sub(forgotten.len(), Ordering::AcqRel);
        forgotten
    }

    /// Forgets what was remembered before `horizon`.
    pub(super) fn forget_before(&self, horizon: Instant) {
        let mut forgotten = 0;
        self.map.retain(|_, (_, at)| {
            let keep = *at >= horizon;
            forgotten += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(forgotten, Ordering::Release);
    }
}

/// The network identity of `request` sent under `network_stan`.
pub(super) fn identity(request: &Message, network_stan: &[u8; 6]) -> Option<Identity> {
    let de90 = original_data_elements(
        &request.mti(),
        network_stan,
        &request.transmission_time()?,
        request.acquirer().as_deref().unwrap_or_default(),
    );
    Identity::of(&de90, request.terminal().as_deref())
}

/// How a request meets the one waiting under the stamp it would take.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Meeting {
    /// The same transaction (its first, or a repeat): it waits for that answer.
    Repeat,
    /// The same key, but another card, processing code or amount: refused (94). Sent
    /// under another stamp, it would be a second transaction under one key at the issuer,
    /// and a reversal naming either could reverse the other.
    Clash,
    /// Another transaction that happens to want the same stamp (another acquirer or
    /// terminal under the same STAN, or a STAN that is another request's stamp): it goes
    /// out under a stamp of its own.
    Stranger,
}

/// How `request`, sent by the network under `network_stan`, meets `first`, the request
/// waiting under the stamp `request` would take. Their keys are compared under each one's
/// own network STAN, and for the same key, their card (DE 2, or track 2), processing code
/// and amount. Only reached when two requests meet under one stamp, which is rare, so
/// `first.sent` is read back here rather than its identity kept for every request.
pub(super) fn meeting(
    spec: &'static Spec,
    first: &Pending,
    request: &Message,
    network_stan: &[u8; 6],
) -> Meeting {
    if first.network_stan != Some(*network_stan) {
        return Meeting::Stranger;
    }
    let Ok(sent) = Message::parse(spec, first.sent.clone()) else {
        return Meeting::Stranger;
    };
    let same_key =
        identity(request, network_stan).is_some_and(|id| identity(&sent, network_stan) == Some(id));
    if !same_key {
        return Meeting::Stranger;
    }
    let card = |m: &Message| m.card_number().and_then(Result::ok);
    let same_content = card(&sent) == card(request)
        && sent.raw(3) == request.raw(3)
        && sent.raw(4) == request.raw(4);
    if same_content {
        Meeting::Repeat
    } else {
        Meeting::Clash
    }
}

/// The card (DE 2, or track 2's), DE 32 (acquirer) and DE 41 (terminal) of a message: an
/// answer echoes its request's, so one that carries another value answers another
/// request. Hosts that leave one out of answers are not checked on it; DE 7 and DE 37 are
/// not compared at all, since some hosts put their own values there. The card is compared
/// as its first 6 and last 4 digits and its length, what a host that masks DE 2 in its
/// answers still shows: two cards out of a terminal under one STAN that agree there too
/// are one in ten thousand of the same BIN. Checked on every answer, so kept as they are
/// rather than hashed: a checksum of DE 32 and DE 41, on every request and answer, cost
/// about 1,000 instructions per approval (`benches/instructions.sh`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Echoed {
    card: Option<Held>,
    acquirer: Option<Held>,
    terminal: Option<Held>,
}

impl Echoed {
    pub(super) fn of(m: &Message) -> Echoed {
        let card = match m.text(2) {
            Some(pan) => Some(Held::of_card(&pan)),
            None => m.track2().map(|t| Held::of_card(t.pan_digits())),
        };
        Echoed {
            card,
            acquirer: m.acquirer().map(|f| Held::of(&f)),
            terminal: m.terminal().map(|f| Held::of(&f)),
        }
    }

    /// Whether an answer that echoes `answer` may be this request's: every field both
    /// carry is the same.
    pub(super) fn answered_by(&self, answer: &Echoed) -> bool {
        let agree = |a: Option<Held>, b: Option<Held>| a.zip(b).is_none_or(|(a, b)| a == b);
        agree(self.card, answer.card)
            && agree(self.acquirer, answer.acquirer)
            && agree(self.terminal, answer.terminal)
    }
}

/// A field's decoded value as far as its first [`Held::HEAD`] bytes, and its length: the
/// whole of DE 32 (at most 11 digits) and DE 41 (8 characters) in ISO 8583:1987 layouts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Held {
    len: usize,
    head: [u8; Held::HEAD],
}

impl Held {
    const HEAD: usize = 16;

    /// A card number's first 6 and last 4 digits, and its length.
    fn of_card(digits: &[u8]) -> Held {
        let mut head = [0; Held::HEAD];
        let first = digits.len().min(6);
        head[..first].copy_from_slice(&digits[..first]);
        let last = digits.len().saturating_sub(first).min(4);
        head[6..6 + last].copy_from_slice(&digits[digits.len() - last..]);
        Held {
            len: digits.len(),
            head,
        }
    }

    fn of(value: &[u8]) -> Held {
        let mut head = [0; Held::HEAD];
        let kept = value.len().min(Held::HEAD);
        head[..kept].copy_from_slice(&value[..kept]);
        Held {
            len: value.len(),
            head,
        }
    }
}
