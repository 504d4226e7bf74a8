//! The authorization flow: what vpan does with each network request, by message type.
//!
//! This is the contract's "Message handling" table in code, and holds the business rules
//! and no socket code: a request comes in as bytes, an answer goes out as a [`Message`]
//! (or nothing, for a frame too broken to answer). The cards decide ([`Cards`]), the issuer
//! link forwards ([`IssuerLink`]); the flow only puts them in order. This file reads a
//! frame (parse, MAC, layout), sends each request to its message type's room, and makes
//! the answers vpan gives itself:
//!
//! - `authorization.rs`, 0100/0200 on a vPAN: decide under the card's lock; a decline is
//!   answered at once; an approval holds its amount, and the hold's journal record is made
//!   durable *while* the request goes to the issuer with the real PAN (DE 2, DE 35,
//!   DE 14), so the fdatasync hides behind the issuer's own latency. The answer goes back
//!   with the vPAN restored only once both are done: no approval reaches the network
//!   before it is durable.
//! - `advice.rs`, 0120/0220 advices: recorded durably, forwarded, answered.
//! - `reversal.rs`, 0400/0420 reversals: amount given back durably, forwarded, answered;
//!   idempotent.
//! - 0800: answered here.
//! - `forward.rs`, any PAN that is not a vPAN: forwarded and answered untouched (14
//!   inside `cards.virtual_ranges`); and the sending of a request on a vPAN, which the
//!   three rooms above share.
//!
//! Beside them: `fields.rs` reads the cards' view of a request from its fields, `swap.rs`
//! rewrites messages between the network's card and layout and the issuer's, and
//! `counts.rs` counts and times each answer for the metrics.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::cards::{CardKey, Cards, DecidedBy, ResponseCode};
use crate::iso8583::{CARD_VERIFICATION_DATA, Message, Spec, readable_part, recover_header};
use crate::metrics as m;
use crate::pan::Pan;
use crate::store::StoreError;

use super::issuer::{IssuerLink, is_known_decline};
use super::mac::{MAC_FAILURE_CODE, MacCheck, MacKey};
use super::tracks;

mod advice;
mod authorization;
mod counts;
mod fields;
mod forward;
mod reversal;
mod swap;

use counts::record;
pub use fields::{auth_request, reversal_request};

/// The flow's shared state: one per switch, used by every network connection.
pub struct Flow {
    /// The virtual cards and their journal.
    pub cards: Arc<Cards>,
    /// The issuer host.
    pub issuer: IssuerLink,
    /// The network side's layout.
    pub network_spec: &'static Spec,
    /// The network link's MAC key (`network.mac`): checked on every request before
    /// anything else, put on every answer. `None`: no MAC on the link.
    pub network_mac: Option<MacKey>,
}

/// An answer on its way to the network, with what its metrics need once it is out.
pub struct Answer {
    /// The message, MACed when the link has a MAC.
    pub message: Msg,
    /// The request's MTI.
    mti: [u8; 4],
    /// Who decided it.
    by: DecidedBy,
    /// When its request's frame was read.
    received: Instant,
}

impl Answer {
    fn new(message: Msg, mti: [u8; 4], by: DecidedBy, received: Instant) -> Answer {
        Answer {
            message,
            mti,
            by,
            received,
        }
    }

    /// Counts it (`vpan_requests_total`) and its time since the request's frame was read
    /// (`vpan_request_duration_seconds`): called once it is framed for the connection's
    /// write, so an answer dropped before that is not counted, and the time includes the
    /// MAC and the framing.
    pub fn counted(&self) {
        record(&self.mti, &self.message, self.by, self.received);
    }
}

/// Whether the switch takes new purchases, or has begun to stop.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Serving {
    /// As ever.
    Open,
    /// A shutdown began: new purchases are answered 91.
    Stopping,
}

/// A message on its way through the flow. Boxed: a `Message` is about 500 bytes, and each
/// async layer holding one by value made the per-request future 6.5 KB, copied at every
/// layer (a sixth of the switch's CPU under load, measured with `perf`).
type Msg = Box<Message>;

impl Flow {
    /// Handles one network request frame; `None` when nothing can be answered (a frame
    /// without a readable MTI and DE 11 is dropped, and counted).
    ///
    /// Once the switch is [`Serving::Stopping`], an authorization or financial request
    /// that is not a repeat of one the cards hold is answered 91 (switch inoperative) at
    /// once, with nothing recorded and nothing sent to the issuer, so that the network
    /// stands in or declines now rather than at its timeout, and no new work outlasts the
    /// drain. Whatever its MTI says: a 0101 whose first request vpan never saw would be a
    /// new purchase. A repeat of one the cards hold gets its answer as ever (a 91 would
    /// stand against an approval already counted); reversals, advices and network
    /// management are served as ever: they move no new money onto a card, and the network
    /// sends them again if their answer is cut off.
    pub async fn handle(&self, body: Bytes, received: Instant, serving: Serving) -> Option<Answer> {
        let answer = match self.read_request(body, received) {
            Err(answer) => answer,
            Ok(request) if serving == Serving::Stopping && self.new_purchase(&request) => {
                self.switch_answer(&request, ResponseCode::ISSUER_UNAVAILABLE, received)
            }
            Ok(request) => self.answer(request, received, serving).await,
        };
        self.signed(answer)
    }

    /// `answer` with the link's MAC put on it.
    fn signed(&self, mut answer: Option<Answer>) -> Option<Answer> {
        if let (Some(key), Some(a)) = (&self.network_mac, answer.as_mut())
            && let Err(e) = key.sign(&mut a.message)
        {
            // Only a layout without room for the MAC gets here, and start-up refuses those.
            tracing::error!(error = %e, "answer could not be MACed; dropped");
            return None;
        }
        answer
    }

    /// The request in a frame, parsed, its MAC checked and taken off; or, when it is not
    /// one to decide on, the answer it gets (30, 63, or none).
    fn read_request(&self, body: Bytes, received: Instant) -> Result<Msg, Option<Answer>> {
        let mut request = match Message::parse(self.network_spec, body.clone()) {
            Ok(r) => Box::new(r),
            Err(e) => return Err(self.format_error(body, &e.to_string(), received)),
        };
        let mti = request.mti();
        if !is_request(mti) {
            return Err(not_a_request(mti));
        }
        // The MAC first: a message that is not authentic is not looked at any further.
        if let Some(key) = &self.network_mac {
            let check = key.check(&request);
            if check != MacCheck::Valid {
                metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "bad_mac").increment(1);
                crate::logging::throttled!(warn,
                    mti = %String::from_utf8_lossy(&mti),
                    stan = %request.stan().map(|s| String::from_utf8_lossy(&s).into_owned()).unwrap_or_default(),
                    mac = ?check,
                    "message failed its MAC check: answered 63"
                );
                return Err(self.switch_answer(&request, ResponseCode(MAC_FAILURE_CODE), received));
            }
            // The MAC belongs to this link: the issuer link does not get the network's, nor
            // any other MAC field it sent (a DE 64 beside the DE 128 checked).
            for n in [64, 128, 192] {
                request.remove(n);
            }
        }
        if mti[0] != b'0' && is_1987_layout(self.network_spec) {
            // An MTI of ISO 8583:1993 (1), 2003 (2) or private use (9) on a link laid out
            // as 1987's: its fields are not what the layout reads them as.
            return Err(self.switch_answer(&request, ResponseCode::FORMAT_ERROR, received));
        }
        Ok(request)
    }

    /// An authorization or financial request (any origin, repeat or not) off the cards vpan
    /// issued that would be new work: one that is no repeat (vpan keeps nothing of those,
    /// and a repeat's first request may have been approved by the issuer, which answers
    /// the repeat from its own books). On a card vpan issued, whether the cards hold its
    /// transaction is asked under the card's lock, by [`Cards::authorize_admitting`]:
    /// asked here, the ledger could forget it before then. One on such a card that the
    /// cards cannot read is no work: answered 30 at once, as when open (until 2026-12-07 it
    /// got 91 once a stop began, and the network sent the same error on elsewhere).
    fn new_purchase(&self, request: &Message) -> bool {
        let mti = request.mti();
        if !(matches!(mti[1], b'1' | b'2') && mti[2] == b'0') {
            return false;
        }
        match self.on_card(request, auth_request) {
            Ok(_) => false,
            Err(NotOnCard::NotIssued) => !request.is_repeat(),
            Err(NotOnCard::Malformed) => false,
        }
    }

    /// The answer to one request, before the link's MAC is put on it.
    async fn answer(&self, request: Msg, received: Instant, serving: Serving) -> Option<Answer> {
        let mti = request.mti();
        let (answer, by) = match (mti[1], mti[2]) {
            (b'8', b'0') => (
                self.local_answer(&request, ResponseCode(*b"00")),
                DecidedBy::Switch,
            ),
            (b'1' | b'2', b'0') => self.authorization(request, serving).await,
            (b'1' | b'2', b'2') => self.advice(request).await,
            (b'4', b'0' | b'2') => self.reversal(request).await,
            _ => self.passthrough(request).await,
        };
        answer.map(|message| Answer::new(message, mti, by, received))
    }

    /// The 96 of a request whose records could not be made durable (fail closed), logged.
    fn fail_closed(
        &self,
        request: &Message,
        vpan: &VirtualPan,
        e: &StoreError,
        what: &'static str,
    ) -> (Option<Msg>, DecidedBy) {
        crate::logging::throttled!(error, card = %vpan.pan, error = %e, request = what, "journal failed: answered 96");
        (
            self.local_answer(request, ResponseCode::SYSTEM_ERROR),
            DecidedBy::Switch,
        )
    }

    /// The card a request is on (DE 2, or track 2) and the cards' view of it (`fields`), or
    /// why the cards cannot look at it.
    fn on_card<R>(
        &self,
        request: &Message,
        fields: fn(&Message) -> Option<R>,
    ) -> Result<(VirtualPan, R), NotOnCard> {
        let vpan = self.virtual_pan(request).ok_or(NotOnCard::NotIssued)?;
        // Not a card vpan issued: not vpan's to judge, whatever fields it lacks. Looked up
        // before the fields are read, which is most of the cost of this step: on a live
        // link most requests are on the issuer's other cards, and pass through.
        if !self.cards.contains(vpan.key) {
            return Err(NotOnCard::NotIssued);
        }
        if is_to_decide(request.mti()) && tracks::may_name_another_card(request, &vpan.pan) {
            // A track of another card beside the vPAN: which card is meant cannot be told.
            // An advice or a reversal tells of money that moved on the vPAN and goes on,
            // without that track (`to_real`).
            return Err(NotOnCard::Malformed);
        }
        fields(request)
            .map(|req| (vpan, req))
            .ok_or(NotOnCard::Malformed)
    }

    /// The answer to a request the cards cannot look at.
    async fn not_on_card(&self, request: Msg, not: NotOnCard) -> (Option<Msg>, DecidedBy) {
        match not {
            NotOnCard::NotIssued => self.unknown_or_passthrough(request).await,
            NotOnCard::Malformed => (
                self.local_answer(&request, ResponseCode::FORMAT_ERROR),
                DecidedBy::Switch,
            ),
        }
    }

    /// A frame that does not parse: 30 when its MTI and DE 11 can be read, else dropped.
    /// The 30 echoes the fields whose content is right, as any answer of vpan's own does
    /// (a network may match its answers on DE 41 and DE 11, as jPOS's QMUX does).
    fn format_error(&self, body: Bytes, why: &str, received: Instant) -> Option<Answer> {
        let header = recover_header(self.network_spec, &body);
        if let Some(mti) = header.mti.filter(|&mti| !is_request(mti)) {
            return not_a_request(mti);
        }
        let part = readable_part(self.network_spec, body).filter(|p| p.stan().is_some());
        let (Some(mti), Some(mut answer)) = (header.mti, part) else {
            metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "unreadable").increment(1);
            crate::logging::throttled!(warn, error = why, "unreadable frame dropped");
            return None;
        };
        metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "format_error").increment(1);
        // The link's MAC is put on afresh; the request's own does not belong in the answer.
        for n in CARD_VERIFICATION_DATA.into_iter().chain([64, 128]) {
            answer.remove(n);
        }
        // The layout was checked at start to hold a 30 in DE 39, the MTI to be digits.
        if answer.set_mti(&response_mti(mti)).is_err() || answer.set_response_code(b"30").is_err() {
            crate::logging::throttled!(
                warn,
                error = why,
                "malformed request not answered: its 30 could not be written"
            );
            return None;
        }
        crate::logging::throttled!(warn, error = why, "malformed request answered 30");
        Some(Answer::new(
            Box::new(answer),
            mti,
            DecidedBy::Switch,
            received,
        ))
    }

    /// [`Flow::local_answer`], decided by the switch, as the connection writes it.
    fn switch_answer(
        &self,
        request: &Message,
        code: ResponseCode,
        received: Instant,
    ) -> Option<Answer> {
        let message = self.local_answer(request, code)?;
        Some(Answer::new(
            message,
            request.mti(),
            DecidedBy::Switch,
            received,
        ))
    }

    /// The answer vpan gives itself: the request's fields, the response MTI, DE 39.
    fn local_answer(&self, request: &Message, code: ResponseCode) -> Option<Msg> {
        let mut answer = Box::new(request.clone());
        let written = answer.set_mti(&response_mti(request.mti())).is_ok() && {
            for n in CARD_VERIFICATION_DATA {
                answer.remove(n);
            }
            // A replayed code the network's layout cannot write (the issuer's N7 where DE 39
            // takes digits): a known decline went out as 05 the first time, and does again.
            answer.set_response_code(&code.0).is_ok()
                || (is_known_decline(code.0) && answer.set_response_code(b"05").is_ok())
        };
        if !written {
            crate::logging::throttled!(
                warn,
                mti = %String::from_utf8_lossy(&request.mti()),
                response_code = %String::from_utf8_lossy(&code.0),
                "answer of vpan's own not sent: the network's layout cannot write it"
            );
            return None;
        }
        Some(answer)
    }

    /// The card number as a vPAN key, when it is a well-formed PAN.
    fn virtual_pan(&self, request: &Message) -> Option<VirtualPan> {
        // DE 2, or track 2 alone: a vPAN there is as much a vPAN, and its controls apply.
        let pan = request.card_number()?.ok()?;
        let key = CardKey::of(&pan);
        Some(VirtualPan { pan, key })
    }
}

/// A request the cards decide (an 0100 or an 0200, or a repeat of one), not an advice
/// or a reversal, which tell of money that moved and cannot be refused.
fn is_to_decide(mti: [u8; 4]) -> bool {
    matches!(mti[1], b'1' | b'2') && mti[2] == b'0'
}

/// Why the cards cannot look at a request.
enum NotOnCard {
    /// DE 2 is missing, not a PAN, or not a card vpan issued (14 in a virtual range, else
    /// passed through untouched).
    NotIssued,
    /// On a card vpan issued, a field the cards need (DE 11, DE 7) is missing or unusable:
    /// a format error (30).
    Malformed,
}

/// The request's card number, and its index key.
struct VirtualPan {
    /// As received (masked when printed).
    pan: Pan,
    /// Its index key.
    key: CardKey,
}

/// Fields `ns` of `message` as they are (`None` where it has none), for [`put_back`].
fn fields_of<const N: usize>(message: &Message, ns: [usize; N]) -> [(usize, Option<Vec<u8>>); N] {
    ns.map(|n| (n, message.text(n).map(|t| t.as_bytes().to_vec())))
}

/// Sets `fields` (from [`fields_of`]) in `answer` as they were, removing those there were
/// none of: a field the network sent, put back in the answer to it.
fn put_back<const N: usize>(answer: &mut Message, fields: [(usize, Option<Vec<u8>>); N]) {
    for (n, value) in fields {
        match value {
            // As the network sent it: it fits the layout.
            Some(v) => {
                let _ = answer.set(n, &v);
            }
            None => answer.remove(n),
        }
    }
}

/// Whether `spec` is one of the built-in ISO 8583:1987 layouts (a jPOS dialect file may be
/// of any version, and says so itself).
fn is_1987_layout(spec: &'static Spec) -> bool {
    std::ptr::eq(spec, Spec::iso87ascii()) || std::ptr::eq(spec, Spec::iso87binary())
}

/// Whether `mti` asks for something (a request, an advice, a notification: an even
/// message function) rather than answers (0110, 0130, 0410, 0810 ...).
fn is_request(mti: [u8; 4]) -> bool {
    mti[2].is_ascii_digit() && (mti[2] - b'0').is_multiple_of(2)
}

/// A response or acknowledgement from the network: vpan sends it no requests, so this
/// answers nothing here. Dropped and counted, never forwarded to the issuer (which would
/// wait for an answer that does not come) nor answered (an answer to an answer).
fn not_a_request(mti: [u8; 4]) -> Option<Answer> {
    metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "not_a_request").increment(1);
    crate::logging::throttled!(warn, mti = %String::from_utf8_lossy(&mti), "a response from the network, which vpan sent no request, dropped");
    None
}

/// The response MTI: third digit + 1, repeats answered as originals (0101 → 0110).
pub fn response_mti(mti: [u8; 4]) -> [u8; 4] {
    let mut out = mti;
    out[2] = if mti[2].is_ascii_digit() && mti[2] < b'9' {
        mti[2] + 1
    } else {
        mti[2]
    };
    out[3] = b'0';
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_mtis_add_ten_and_answer_repeats_as_originals() {
        for (req, resp) in [
            (b"0100", b"0110"),
            (b"0101", b"0110"),
            (b"0200", b"0210"),
            (b"0120", b"0130"),
            (b"0400", b"0410"),
            (b"0421", b"0430"),
            (b"0800", b"0810"),
        ] {
            assert_eq!(&response_mti(*req), resp);
        }
    }
}
