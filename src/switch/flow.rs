//! The authorization flow: what vpan does with each network request, by message type.
//!
//! This is the contract's "Message handling" table in code, and holds the business rules
//! and no socket code: a request comes in as bytes, an answer goes out as a [`Message`]
//! (or nothing, for a frame too broken to answer). The cards decide ([`Cards`]), the issuer
//! link forwards ([`IssuerLink`]); this file only puts them in order:
//!
//! - 0100/0200 on a vPAN: decide under the card's lock; a decline is answered at once; an
//!   approval holds its amount, and the hold's journal record is made durable *while* the
//!   request goes to the issuer with the real PAN (DE 2, DE 35, DE 14), so the fdatasync
//!   hides behind the issuer's own latency. The answer goes back with the vPAN restored
//!   only once both are done: no approval reaches the network before it is durable.
//! - 0120/0220 advices: recorded durably, forwarded, answered.
//! - 0400/0420 reversals: amount given back durably, forwarded, answered; idempotent.
//! - 0800: answered here.
//! - Any PAN that is not a vPAN: forwarded and answered untouched (14 inside
//!   `cards.virtual_ranges`).
//!
//! Beside it: `fields.rs` reads the cards' view of a request from its fields, `swap.rs`
//! rewrites messages between the network's card and layout and the issuer's, and
//! `counts.rs` counts and times each answer for the metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::cards::card::unix_now as now;
use crate::cards::{
    Admit, AdviceOutcome, Approval, AuthCode, AuthRequest, CardKey, Cards, DecidedBy, Decision,
    Expiry, Hold, IssuerOutcome, Replay, ResponseCode, ReversalOutcome,
};
use crate::iso8583::{Message, Spec, readable_part, recover_header};
use crate::metrics as m;
use crate::pan::Pan;
use crate::store::StoreError;
use crate::store::journal::Durable;

use super::issuer::{
    IssuerError, IssuerLink, Owed, Unanswered, is_known_decline, may_approve, reversal_for,
    reversal_undone, undecided,
};
use super::mac::{MAC_FAILURE_CODE, MacCheck, MacKey, mac_field};
use super::tracks;

mod counts;
mod fields;
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

/// First and longest pause between two looks at a repeat's first request still with the
/// issuer.
const REPEAT_POLL_FIRST: Duration = Duration::from_millis(1);
const REPEAT_POLL_MAX: Duration = Duration::from_millis(50);
/// How long past the issuer's timeout a repeat waits for its first request's answer: the
/// sweep gives the timeout at most 25 ms late.
const REPEAT_WAIT_SLACK: Duration = Duration::from_millis(100);

/// Fields that carry card-verification data and never go back in an answer.
const NOT_ECHOED: [usize; 4] = [35, 45, 52, 55];

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
            // The MAC belongs to this link: the issuer link does not get the network's.
            request.remove(mac_field(&request));
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
    /// the repeat from its own books), or one the cards cannot read. On a card vpan
    /// issued, whether the cards hold its transaction is asked under the card's lock, by
    /// [`Cards::authorize_admitting`]: asked here, the ledger could forget it before then.
    fn new_purchase(&self, request: &Message) -> bool {
        let mti = request.mti();
        if !(matches!(mti[1], b'1' | b'2') && mti[2] == b'0') {
            return false;
        }
        match self.on_card(request, auth_request) {
            Ok(_) => false,
            Err(NotOnCard::NotIssued) => !request.is_repeat(),
            Err(NotOnCard::Malformed) => true,
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

    /// 0100/0200 (and repeats); only repeats of what the cards hold once `Stopping`.
    async fn authorization(&self, request: Msg, serving: Serving) -> (Option<Msg>, DecidedBy) {
        let (vpan, req) = match self.on_card(&request, auth_request) {
            Ok(on_card) => on_card,
            Err(not) => return self.not_on_card(request, not).await,
        };
        let admit = match serving {
            Serving::Open => Admit::Any,
            Serving::Stopping => Admit::RepeatsOnly,
        };
        // A repeat of a request still with the issuer waits for its answer, then gets it.
        let decision = self
            .once_the_issuer_answered(
                || self.cards.authorize_admitting(vpan.key, &req, now(), admit),
                |d| matches!(d, Decision::Replay(Replay::Pending)),
            )
            .await;
        match decision {
            Decision::Unknown => self.unknown_or_passthrough(request).await,
            Decision::Decline(code) => (self.local_answer(&request, code), DecidedBy::Switch),
            Decision::NotAdmitted => (
                self.local_answer(&request, ResponseCode::ISSUER_UNAVAILABLE),
                DecidedBy::Switch,
            ),
            Decision::Replay(Replay::Answer {
                code,
                auth,
                decided_by,
                partial,
            }) => {
                if let Err(e) = self.cards.recorded_so_far().await {
                    return self.fail_closed(&request, &vpan, &e, "repeat");
                }
                let mut answer = self.local_answer(&request, code);
                if let Some(a) = answer.as_mut() {
                    // The fields the first answer had; a layout without them cannot get
                    // them.
                    if let Some(auth) = auth {
                        let _ = a.set(38, &auth);
                    }
                    if let Some(partial) = partial {
                        // The first answer had the issuer's DE 4 and DE 6 (or no DE 6),
                        // not the request's whole amount: a field the layout cannot take,
                        // or the answer lacked, is removed rather than left at the whole.
                        let mut set_or_remove = |n, amount: Option<u64>| {
                            let written = amount
                                .is_some_and(|v| a.set(n, format!("{v:012}").as_bytes()).is_ok());
                            if !written {
                                a.remove(n);
                            }
                        };
                        set_or_remove(4, Some(partial.transaction));
                        set_or_remove(6, partial.billing);
                    }
                }
                (answer, decided_by)
            }
            // Still with the issuer past its timeout (the sweep is late): dropped, and the
            // network will repeat again.
            Decision::Replay(Replay::Pending) => (None, DecidedBy::Switch),
            // Its answer was lost when vpan stopped; the issuer knows it. Nothing is
            // counted again (it is counted as spent already), and its answer settles it.
            Decision::Replay(Replay::AskIssuer(hold)) => {
                self.repeat_in_doubt(request, &vpan, &req, hold).await
            }
            Decision::Approve(approval) => self.forward_approval(request, &vpan, approval).await,
        }
    }

    /// The network's repeat of a purchase in doubt: its answer was lost when vpan stopped,
    /// and the issuer knows it. Asked about it (marked as a repeat), the issuer's answer
    /// settles it; nothing is counted again (it is counted as spent already).
    async fn repeat_in_doubt(
        &self,
        request: Msg,
        vpan: &VirtualPan,
        req: &AuthRequest,
        hold: Hold,
    ) -> (Option<Msg>, DecidedBy) {
        let whole = request;
        let mut repeat = whole.clone();
        repeat.mark_repeat();
        // Reversed in part by the acquirer since, it is asked for what stands, as an
        // advice's ask is: an issuer that never had it decides it now, and told the whole
        // it would charge the part reversed too.
        let told = self.tell_what_stands(&mut repeat, vpan, req);
        let (sent, settled_as) = self.ask_in_doubt(&repeat, &whole, vpan, hold, false).await;
        // Kept as the stand-in's approval though the issuer declined the repeat: the network
        // hears the approval the card counts, as its next repeat does (the replay of what
        // was recorded), not the issuer's decline. Left unanswered, it gets its 91: the
        // issuer link reverses at the issuer whatever the issuer approved, which may have
        // been the approval the acquirer holds (no stand-in then, and no advice to come);
        // the card keeps counting what stands, the safe side.
        if settled_as == IssuerOutcome::Advised && matches!(&sent, Ok(Some(a)) if !may_approve(a)) {
            return (
                self.local_answer(&whole, ResponseCode::APPROVED),
                DecidedBy::Switch,
            );
        }
        let (mut answer, by) = self.answer_on_card(repeat, sent).await;
        // The network's answer carries the amounts the network sent (but a partial
        // approval's own).
        if told
            && let Some(a) = answer.as_mut()
            && a.response_code() != Some(ResponseCode::PARTIAL_APPROVAL.0)
        {
            put_back(a, fields_of(&whole, [4, 6]));
        }
        (answer, by)
    }

    /// `look`'s answer once it is not `pending`, a transaction still with the issuer: looked
    /// at again until the issuer has answered, or its timeout has released the hold (and
    /// the sweep's tick after that), then the last look's answer, pending or not.
    async fn once_the_issuer_answered<T>(
        &self,
        mut look: impl FnMut() -> T,
        pending: impl Fn(&T) -> bool,
    ) -> T {
        let mut seen = look();
        if !pending(&seen) {
            return seen;
        }
        let until = Instant::now() + self.issuer.timeout() + REPEAT_WAIT_SLACK;
        let mut pause = REPEAT_POLL_FIRST;
        while pending(&seen) && Instant::now() < until {
            // Polled: a message about a transaction in flight is rare, and a waiter list
            // per transaction would cost every approval.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(REPEAT_POLL_MAX);
            seen = look();
        }
        seen
    }

    /// Asks the issuer about `hold`, held in doubt, with `repeat`, its request marked as a
    /// repeat (0101, 0201): the issuer answers what it answered the first time rather than
    /// deciding (and charging) it again. The hold is settled by the answer; what came back,
    /// and what it was settled as (`TimedOut`: nothing that decides it, left in doubt;
    /// `Advised`: the stand-in's approval, see [`Cards::settle_asked`], whose
    /// `stand_in_approved` says a stand-in's advice of it asks).
    /// `whole`: the request as the network sent it, before it was told what stands: a
    /// partial approval (10) is read against its DE 4, as the issuer's first answer, which
    /// it replays, was (read against what stands, a first 10 of more than stands would
    /// count as a whole approval of what stands, and the stand-in's advice as news).
    async fn ask_in_doubt(
        &self,
        repeat: &Message,
        whole: &Message,
        vpan: &VirtualPan,
        hold: Hold,
        stand_in_approved: bool,
    ) -> (OnCard, IssuerOutcome) {
        let mut asking = AskingIssuer {
            cards: &self.cards,
            hold,
            outcome: IssuerOutcome::TimedOut,
            stand_in_approved,
            settled: false,
        };
        let mut sent = self.send_on_card(repeat, vpan).await;
        asking.outcome = in_doubt_outcome(&sent, whole);
        // Approved in part, while the stand-in approved what stands (its advice asks): it
        // is to be settled as the stand-in's approval (`Cards::settle_asked`), whose advice
        // is then told to the issuer as news, in place of the part, which is reversed there
        // first: the other way round, a crash between the settlement and the reversal
        // would leave the advice's resend told beside the part. This way the purchase is
        // still in doubt after such a crash, and the resend asks again.
        if stand_in_approved
            && matches!(asking.outcome, IssuerOutcome::ApprovedInPart { .. })
            && !self.reverse_the_part(repeat, vpan).await
        {
            // Not reversed there (yet): left in doubt, and the advice gets 91. Its resend
            // asks again, and reverses again.
            asking.outcome = IssuerOutcome::TimedOut;
        }
        let (settled, outcome) = asking.settle();
        let owed = match &mut sent {
            Err(NotSent::Issuer(unanswered)) => unanswered.owed.take(),
            _ => None,
        };
        record_owed_after(owed, settled).await;
        (sent, outcome)
    }

    /// [`Flow::reverse_the_part`] of the request `advice` reports; until it is reversed
    /// there the advice is not told, and gets 91 (its resend reverses again).
    async fn part_reversed(&self, advice: &Message, vpan: &VirtualPan) -> bool {
        match request_of_advice(advice) {
            Some(asked) => self.reverse_the_part(&asked, vpan).await,
            None => false,
        }
    }

    /// The issuer's approval of `request` (a request, network side), reversed there before
    /// a stand-in's advice of it is told in its place: the issuer's part of a purchase it
    /// approved in part, which it would otherwise book beside the advice. Owed, on disk,
    /// before it goes (a kill while it is out sends it at the next start), and waited for:
    /// only the issuer's answer says the part is gone. Whether it answered 00: anything
    /// else (no answer yet, a refusal) may leave the part standing there, and the advice is
    /// not to be told, which the network then sends again (a second reversal finds
    /// nothing left to reverse).
    async fn reverse_the_part(&self, request: &Message, vpan: &VirtualPan) -> bool {
        let reversal = self
            .toward_issuer(request, vpan, None)
            .ok()
            .and_then(|prepared| reversal_for(&prepared.message).ok());
        let Some(reversal) = reversal else {
            tracing::error!(
                pan = %vpan.pan.masked(),
                "cannot build the reversal of the issuer's partial approval that a stand-in's advice replaces; the advice is not told; the issuer must reconcile"
            );
            return false;
        };
        let answer = self.issuer.reverse_now(Box::new(reversal)).await;
        let code = answer.as_ref().and_then(|a| a.response_code());
        if code.is_some_and(|c| c != *b"00") {
            tracing::error!(
                pan = %vpan.pan.masked(),
                code = %String::from_utf8_lossy(&code.unwrap_or_default()),
                "the issuer did not reverse its partial approval that a stand-in's advice replaces; the advice is not told, so that it is not booked beside it; the issuer must reconcile"
            );
        }
        code == Some(*b"00")
    }

    /// Forwards an approval to the issuer while its hold is made durable.
    async fn forward_approval(
        &self,
        request: Msg,
        vpan: &VirtualPan,
        approval: Approval,
    ) -> (Option<Msg>, DecidedBy) {
        let Approval {
            hold,
            real_pan,
            real_expiry,
            virtual_expiry,
            durable,
            ..
        } = approval;
        let toward_issuer = match self.to_real(&request, &real_pan, &real_expiry.0) {
            Some(m) => m,
            None => {
                // Recorded as the 30 it is, so that a repeat is answered the same.
                let _released = self.cards.complete(
                    &hold,
                    IssuerOutcome::Refused(ResponseCode::FORMAT_ERROR),
                    now(),
                );
                return (
                    self.local_answer(&request, ResponseCode::FORMAT_ERROR),
                    DecidedBy::Switch,
                );
            }
        };
        let (stored, answer) = tokio::join!(durable, self.issuer.send(toward_issuer));
        match (stored, answer) {
            (Ok(()), Ok(answer)) => {
                let outcome = issuer_outcome(&answer, &request);
                // The hold is durable: were vpan to die now, recovery counts it as spent,
                // so the outcome record need not be waited for.
                let _outcome_durable = self.cards.complete(&hold, outcome, now());
                (
                    self.to_virtual(answer, &request, vpan, &virtual_expiry.0, &real_pan),
                    DecidedBy::Issuer,
                )
            }
            (Ok(()), Err(unanswered)) => {
                // A release need not be waited for: lost in a crash, the hold counts as
                // spent, which is the safe side. A clash was never sent, and is answered
                // so again if repeated.
                let e = unanswered.error;
                let code = unanswered_code(e);
                let outcome = match e {
                    IssuerError::Clash => IssuerOutcome::Refused(code),
                    _ => IssuerOutcome::TimedOut,
                };
                // Except when a reversal is owed: see `record_owed_after`.
                let released = self.cards.complete(&hold, outcome, now());
                record_owed_after(unanswered.owed, released).await;
                crate::logging::throttled!(warn, card = %vpan.pan, error = %e, code = %code, "issuer did not answer");
                (self.local_answer(&request, code), DecidedBy::Switch)
            }
            (Err(e), answer) => {
                // Fail closed: not durable, not approved. The issuer may have approved:
                // reverse it there so the real account is not charged.
                let failed = self.cards.complete(&hold, IssuerOutcome::Failed, now());
                crate::logging::throttled!(error, card = %vpan.pan, error = %e, "journal failed: answered 96");
                match answer {
                    Ok(answer) => {
                        drop(failed);
                        if may_approve(&answer)
                            && let Some(sent) = self.to_real_again(&request, &answer)
                        {
                            self.issuer.reverse(&sent);
                        }
                    }
                    Err(unanswered) => record_owed_after(unanswered.owed, failed).await,
                }
                (
                    self.local_answer(&request, ResponseCode::SYSTEM_ERROR),
                    DecidedBy::Switch,
                )
            }
        }
    }

    /// 0120/0220 (and repeats): recorded (spent, unless its DE 39 reports a decline),
    /// forwarded, answered.
    async fn advice(&self, request: Msg) -> (Option<Msg>, DecidedBy) {
        let (vpan, req) = match self.on_card(&request, auth_request) {
            Ok(on_card) => on_card,
            Err(not) => return self.not_on_card(request, not).await,
        };
        if let Some(code) = request.response_code()
            && is_known_decline(code)
        {
            // A stand-in's advice of a decline: nothing was spent. Any other DE 39 (an
            // offline approval such as Y1, a code vpan does not know) counts as spent.
            if !self
                .cards
                .advice_of_decline(vpan.key, &req, ResponseCode(code), now())
            {
                return self.unknown_or_passthrough(request).await;
            }
            return self.forward_on_card(request, &vpan).await;
        }
        // An advice of a request still with the issuer waits for its answer, and one of a
        // request held in doubt asks it first: told of the advice as well, an issuer that
        // books advices would charge the account twice should it approve the request.
        let mut asked = false;
        // The ask found the advice news to the issuer: its first telling is no repeat.
        let mut news = false;
        // The issuer's part of the request it restates has been reversed: it replaces it.
        let mut part_done = false;
        let outcome = loop {
            let outcome = self
                .once_the_issuer_answered(
                    || self.cards.advice(vpan.key, &req, now()),
                    |o| matches!(o, AdviceOutcome::Pending),
                )
                .await;
            let hold = match outcome {
                AdviceOutcome::AskIssuer(hold) => hold,
                AdviceOutcome::InPlaceOfPart(durable) => {
                    if let Err(e) = durable.await {
                        return self.fail_closed(&request, &vpan, &e, "advice");
                    }
                    if !self.part_reversed(&request, &vpan).await {
                        return (
                            self.local_answer(&request, ResponseCode::ISSUER_UNAVAILABLE),
                            DecidedBy::Switch,
                        );
                    }
                    // Told in the part's place, as news. Looked at again first: the
                    // acquirer may have reversed the purchase while the part's reversal
                    // was out (its reversal named the advice, which the issuer did not
                    // have yet): the advice is then told what stands, or acknowledged
                    // here when nothing does.
                    part_done = true;
                    news = true;
                    continue;
                }
                other => break other,
            };
            // The answer settles the hold, and goes no further: the network asked nothing.
            let decided = match request_of_advice(&request) {
                Some(mut repeat) if !asked => {
                    let whole = repeat.clone();
                    self.tell_what_stands(&mut repeat, &vpan, &req);
                    let (_, said) = self.ask_in_doubt(&repeat, &whole, &vpan, hold, true).await;
                    news = said == IssuerOutcome::Advised;
                    !matches!(said, IssuerOutcome::TimedOut | IssuerOutcome::Failed)
                }
                _ => {
                    drop(
                        self.cards
                            .settle_in_doubt(&hold, IssuerOutcome::TimedOut, now()),
                    );
                    false
                }
            };
            if !decided {
                // Nothing decided it: the issuer may have the request, and told the advice
                // as news it would book it a second time. Still in doubt (and counted),
                // the advice gets 91, and its resend asks again.
                return (
                    self.local_answer(&request, ResponseCode::ISSUER_UNAVAILABLE),
                    DecidedBy::Switch,
                );
            }
            asked = true;
        };
        // DE 4 and DE 6 as the network sent them, when the issuer is told what stands.
        let mut amounts_sent = None;
        let request = match outcome {
            AdviceOutcome::Unknown => return self.unknown_or_passthrough(request).await,
            // Still with the issuer past its timeout (the sweep is late): dropped, and the
            // network will repeat it, as it does an advice it has no answer to.
            // (Asked in the loop above, never here.)
            AdviceOutcome::Pending
            | AdviceOutcome::AskIssuer(_)
            | AdviceOutcome::InPlaceOfPart(_) => {
                return (None, DecidedBy::Switch);
            }
            AdviceOutcome::Conflict => {
                return (
                    self.local_answer(&request, ResponseCode::DUPLICATE),
                    DecidedBy::Switch,
                );
            }
            AdviceOutcome::Recorded(durable) => {
                if let Err(e) = durable.await {
                    return self.fail_closed(&request, &vpan, &e, "advice");
                }
                request
            }
            AdviceOutcome::Repeat { issuer_has_it } => {
                // Acknowledged twice and then lost in a crash, an advice would leave its
                // amount uncounted for good: the network would not send it again.
                if let Err(e) = self.cards.recorded_so_far().await {
                    return self.fail_closed(&request, &vpan, &e, "advice repeat");
                }
                if issuer_has_it {
                    // The issuer approved this very request itself, or acknowledged this
                    // advice: acknowledged here, as a repeat is answered, rather than told
                    // again as news.
                    return (
                        self.local_answer(&request, ResponseCode::APPROVED),
                        DecidedBy::Switch,
                    );
                }
                // In place of the issuer's part: a crash may have come between the
                // record of the restatement and the debt of the part's reversal, which is
                // owed again (the issuer, having reversed it once, finds nothing left).
                if !part_done
                    && self.cards.replaces_part(vpan.key, &req)
                    && !self.part_reversed(&request, &vpan).await
                {
                    return (
                        self.local_answer(&request, ResponseCode::ISSUER_UNAVAILABLE),
                        DecidedBy::Switch,
                    );
                }
                // Its first telling may not have reached the issuer (a 91): told again,
                // marked as a repeat (0121), so an issuer that books advices does not
                // book it twice. Unless this is its first telling: the hold it reports,
                // just settled as the stand-in's approval, which the issuer does not have.
                let mut request = request;
                if !news {
                    request.mark_repeat();
                }
                let sent = fields_of(&request, [4, 6]);
                if self.tell_what_stands(&mut request, &vpan, &req) {
                    amounts_sent = Some(sent);
                }
                request
            }
        };
        let (mut answer, decided_by) = self.forward_on_card(request, &vpan).await;
        if answer
            .as_deref()
            .is_some_and(|a| decided_by == DecidedBy::Issuer && a.response_code() == Some(*b"00"))
        {
            self.cards.advice_acknowledged(vpan.key, &req);
        }
        // Told what stands, the issuer echoes that: the network's answer carries the
        // amounts the network sent.
        if let (Some(sent), Some(a)) = (amounts_sent, answer.as_mut()) {
            put_back(a, sent);
        }
        (answer, decided_by)
    }

    /// An advice's resend, or the ask it makes, in what stands of its transaction when the
    /// acquirer has reversed part of it since ([`Cards::standing`]): DE 4 that amount, and
    /// DE 6, when billed in the card's currency, the advice's own in the same proportion,
    /// else left for the issuer to work out. Told the whole, an issuer that never had it
    /// (so could not apply the partial reversal) would charge the whole. Whether it did.
    fn tell_what_stands(
        &self,
        message: &mut Message,
        vpan: &VirtualPan,
        req: &AuthRequest,
    ) -> bool {
        let Some((de4, de6)) = self.cards.standing(vpan.key, req) else {
            return false;
        };
        if message.set(4, format!("{de4:012}").as_bytes()).is_err() {
            return false;
        }
        match de6 {
            Some(de6) if message.set(6, format!("{de6:012}").as_bytes()).is_ok() => {}
            _ => message.remove(6),
        }
        true
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

    /// 0400/0420 (and repeats): the amount given back, forwarded, answered.
    async fn reversal(&self, request: Msg) -> (Option<Msg>, DecidedBy) {
        let (vpan, req) = match self.on_card(&request, reversal_request) {
            Ok(on_card) => on_card,
            Err(not) => return self.not_on_card(request, not).await,
        };
        // A reversal that names its original by its own key is sent naming it in DE 90,
        // from the original vpan recorded: the issuer finds it so whatever STAN either goes
        // out under. The network's answer carries no DE 90, as its reversal had none. Read
        // before the reversal is applied, which may void the original's entry (one the
        // issuer declined, or vpan released on its 91).
        // One that names a request in DE 90 under whose key vpan recorded a stand-in's
        // advice instead names the advice: the issuer booked that, and the request was
        // declined there or reversed by the link after vpan's 91.
        let original = if request.has(90) {
            self.cards
                .advice_booked_as(vpan.key, &req)
                .map(Original::BookedAs)
        } else {
            self.cards
                .original_mti(vpan.key, &req)
                .map(Original::ByOwnKey)
        };
        // Written for the issuer before anything is given back: one that its layout or its
        // frames cannot hold is answered 30, which the network does not send again, so
        // given back first it would leave the issuer charging what the card counts as
        // free.
        let toward_issuer = match self.toward_issuer(&request, &vpan, original) {
            Ok(prepared) if self.issuer.fits(&prepared.message) => prepared,
            Ok(_) => return self.answer_on_card(request, Err(NotSent::Format)).await,
            Err(not) => return self.answer_on_card(request, Err(not)).await,
        };
        let outcome = self.cards.reverse(vpan.key, &req, now());
        // The card's amount given back by this telling, or, for a repeat (0401, 0421) that
        // finds nothing left of an original that stands, by its first, whose debt may have
        // been lost in a crash while the issuer had it: the reversal must reach the issuer
        // whatever the network does next, so it is kept to be owed should the issuer not
        // hear it. (A void has nothing at the issuer to reverse: its original never went
        // there, was declined there, or timed out and is reversed by the link already.
        // Another reversal that finds nothing left, such as a second one under its own key,
        // is forwarded as ever, and not owed: only what this switch gave back is.)
        let to_owe = match outcome {
            ReversalOutcome::Reversed { .. } => true,
            ReversalOutcome::NothingLeft { original_stands } => {
                original_stands && request.is_repeat()
            }
            _ => false,
        }
        .then(|| toward_issuer.message.clone());
        match outcome {
            ReversalOutcome::Reversed { durable, .. } | ReversalOutcome::Voided { durable } => {
                if let Err(e) = durable.await {
                    // Fail closed: not forwarded, answered 96, so the network sends it
                    // again. Given back (or voided) in memory already, the repeat then
                    // finds nothing left and goes to the issuer once the record is on disk;
                    // after a restart that lost it, it is applied afresh then.
                    return self.fail_closed(&request, &vpan, &e, "reversal");
                }
            }
            ReversalOutcome::NotRecorded(e) => {
                return self.fail_closed(&request, &vpan, &e, "reversal");
            }
            ReversalOutcome::NothingLeft { .. } => {
                // A repeat: what the first gave back (or voided) may not be on disk yet,
                // and acknowledged now, it would never be sent again.
                if let Err(e) = self.cards.recorded_so_far().await {
                    return self.fail_closed(&request, &vpan, &e, "reversal repeat");
                }
            }
            ReversalOutcome::NotFound => {}
        }
        let sent = self
            .send_toward_issuer(toward_issuer, &request, &vpan)
            .await;
        if let Some(reversal) = to_owe
            && !heard(&sent)
            && let Some(owed) = self.issuer.owe_reversal(reversal)
        {
            // On disk before the network hears its answer.
            owed.record().await;
        }
        // The network's answer names the original as its reversal did (DE 90 or none), not
        // as the issuer was told.
        let network_de90 = original.map(|_| fields_of(&request, [90]));
        let (mut answer, decided_by) = self.answer_on_card(request, sent).await;
        if let (Some(de90), Some(answer)) = (network_de90, answer.as_mut()) {
            put_back(answer, de90);
        }
        (answer, decided_by)
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

    /// Forwards a request on a known vPAN with the real card, answers with the vPAN back.
    async fn forward_on_card(&self, request: Msg, vpan: &VirtualPan) -> (Option<Msg>, DecidedBy) {
        let sent = self.send_on_card(&request, vpan).await;
        self.answer_on_card(request, sent).await
    }

    /// The issuer's answer to `request` sent with the real card (the vPAN back in it; `None`
    /// when it cannot be put back), or why there is none.
    async fn send_on_card(&self, request: &Message, vpan: &VirtualPan) -> OnCard {
        let prepared = self.toward_issuer(request, vpan, None)?;
        self.send_toward_issuer(prepared, request, vpan).await
    }

    /// `request` in the issuer's layout with the real card, ready to go; for a reversal,
    /// naming its original of MTI `original` in DE 90 (as it came where the layout cannot).
    fn toward_issuer(
        &self,
        request: &Message,
        vpan: &VirtualPan,
        original: Option<Original>,
    ) -> Result<TowardIssuer, NotSent> {
        let Some((real_pan, real_expiry, virtual_expiry)) = self.cards.real_card(vpan.key) else {
            return Err(NotSent::UnknownCard);
        };
        let mut message = self
            .to_real(request, &real_pan, &real_expiry.0)
            .ok_or(NotSent::Format)?;
        match original {
            Some(Original::ByOwnKey(mti)) => name_original(&mut message, mti),
            Some(Original::BookedAs(mti)) => rename_original(&mut message, mti),
            None => {}
        }
        Ok(TowardIssuer {
            message,
            real_pan,
            virtual_expiry,
        })
    }

    /// Sends what [`Flow::toward_issuer`] made of `request`; the answer with the vPAN back.
    async fn send_toward_issuer(
        &self,
        prepared: TowardIssuer,
        request: &Message,
        vpan: &VirtualPan,
    ) -> OnCard {
        let TowardIssuer {
            message,
            real_pan,
            virtual_expiry,
        } = prepared;
        match self.issuer.send(message).await {
            Ok(answer) => Ok(self.to_virtual(answer, request, vpan, &virtual_expiry.0, &real_pan)),
            Err(e) => Err(NotSent::Issuer(e)),
        }
    }

    /// The network's answer to `request` from what [`Flow::send_on_card`] came to.
    async fn answer_on_card(&self, request: Msg, sent: OnCard) -> (Option<Msg>, DecidedBy) {
        match sent {
            Ok(answer) => (answer, DecidedBy::Issuer),
            Err(NotSent::UnknownCard) => self.unknown_or_passthrough(request).await,
            Err(NotSent::Format) => (
                self.local_answer(&request, ResponseCode::FORMAT_ERROR),
                DecidedBy::Switch,
            ),
            Err(NotSent::Issuer(e)) => self.issuer_failed(&request, e).await,
        }
    }

    /// A PAN vpan does not know: 14 inside a virtual range, 30 when it cannot be read and
    /// may be vpan's own, else forwarded untouched.
    async fn unknown_or_passthrough(&self, request: Msg) -> (Option<Msg>, DecidedBy) {
        let refused = match request.card_number() {
            Some(Ok(pan)) if self.cards.in_virtual_range(pan.as_bytes()) => {
                Some(ResponseCode::UNKNOWN_CARD)
            }
            // Unreadable, or in no field vpan reads a card from (a track 2 it cannot parse,
            // track 1 or 3 alone): forwarded, a vPAN's controls would be skipped.
            Some(Err(_)) | None if self.may_be_virtual(&request) => {
                Some(ResponseCode::FORMAT_ERROR)
            }
            // A request to decide on another card in DE 2 with a vPAN in a track: which card
            // is meant cannot be told. (An advice or a reversal of it tells of money that
            // moved on DE 2's card, and goes on.)
            Some(Ok(pan))
                if is_to_decide(request.mti())
                    && tracks::may_name_another_card(&request, &pan)
                    && self.may_be_virtual(&request) =>
            {
                Some(ResponseCode::FORMAT_ERROR)
            }
            _ => None,
        };
        match refused {
            Some(code) => (self.local_answer(&request, code), DecidedBy::Switch),
            None => self.passthrough(request).await,
        }
    }

    /// Whether a card number vpan cannot read (DE 2 not a PAN, a track 2 it cannot parse or
    /// whose account number does not end at a separator, track 1 or 3 alone), or one in a
    /// track beside another card, may be one of its own: the first digits of DE 2, DE 35,
    /// DE 36 or DE 45 (after a sentinel, a format code or spaces) begin in a virtual range,
    /// or with an issued vPAN. Forwarded, it would skip that card's controls and take the
    /// vPAN to the issuer.
    fn may_be_virtual(&self, request: &Message) -> bool {
        tracks::CARD_FIELDS.into_iter().any(|field| {
            let mut buf = [0; 19];
            let digits = tracks::leading_digits(request, field, &mut buf);
            self.cards.in_virtual_range(digits)
                || (12..=digits.len().min(19)).any(|len| {
                    Pan::from_digits(&digits[..len])
                        .is_ok_and(|pan| self.cards.contains(CardKey::of(&pan)))
                })
        })
    }

    /// Forwards untouched (in the issuer's layout), answers untouched.
    async fn passthrough(&self, request: Msg) -> (Option<Msg>, DecidedBy) {
        let Some(toward_issuer) = self.in_issuer_layout(&request) else {
            return (
                self.local_answer(&request, ResponseCode::FORMAT_ERROR),
                DecidedBy::Switch,
            );
        };
        match self.issuer.send(toward_issuer).await {
            Ok(answer) => (self.answer_in_network_layout(answer), DecidedBy::Issuer),
            Err(e) => self.issuer_failed(&request, e).await,
        }
    }

    /// The answer to a request the issuer did not answer: 94 for one refused because
    /// another transaction under its key is waiting, else 91; given once the reversal the
    /// link owes for it, if any, is on disk.
    async fn issuer_failed(&self, request: &Message, e: Unanswered) -> (Option<Msg>, DecidedBy) {
        if let Some(owed) = e.owed {
            owed.record().await;
        }
        let e = e.error;
        let code = unanswered_code(e);
        tracing::debug!(error = %e, code = %code, "issuer did not answer");
        (self.local_answer(request, code), DecidedBy::Switch)
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
        crate::logging::throttled!(warn, error = why, "malformed request answered 30");
        answer.set_mti(&response_mti(mti)).ok()?;
        // The link's MAC is put on afresh; the request's own does not belong in the answer.
        for n in NOT_ECHOED.into_iter().chain([64, 128]) {
            answer.remove(n);
        }
        answer.set_response_code(b"30").ok()?;
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
        answer.set_mti(&response_mti(request.mti())).ok()?;
        for n in NOT_ECHOED {
            answer.remove(n);
        }
        if answer.set_response_code(&code.0).is_err() {
            // A replayed code the network's layout cannot write (the issuer's N7 where DE 39
            // takes digits): a known decline went out as 05 the first time, and does again.
            if !is_known_decline(code.0) {
                return None;
            }
            answer.set_response_code(b"05").ok()?;
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

/// What the issuer's answer (0110/0210) to `request` did: approved (in part, for a 10 with a
/// smaller DE 4 in the request's currency) with its DE 38, or declined. Only a code known to
/// decline releases the hold ([`may_approve`]): any other, none included (then recorded as
/// 96), leaves it spent.
fn issuer_outcome(answer: &Message, request: &Message) -> IssuerOutcome {
    let code = ResponseCode(answer.response_code().unwrap_or(*b"96"));
    if !may_approve(answer) {
        return IssuerOutcome::Declined(code);
    }
    let auth = answer
        .auth_code()
        .and_then(|a| <AuthCode>::try_from(a.as_bytes()).ok());
    // Any other 10 counts whole: the safe side.
    let in_part = (code == ResponseCode::PARTIAL_APPROVAL)
        .then(|| fields::approved_in_part(answer, request))
        .flatten();
    match in_part {
        Some(amounts) => IssuerOutcome::ApprovedInPart { amounts, auth },
        None => IssuerOutcome::Approved(code, auth),
    }
}

/// What the network hears for a request the issuer link could not get answered.
fn unanswered_code(e: IssuerError) -> ResponseCode {
    match e {
        IssuerError::Clash => ResponseCode::DUPLICATE,
        _ => ResponseCode::ISSUER_UNAVAILABLE,
    }
}

/// What a request sent with the real card came to: the issuer's answer (`None` when the
/// vPAN could not be put back in it), or why there is none.
type OnCard = Result<Option<Msg>, NotSent>;

/// A request on a known vPAN as the issuer gets it, with what its answer needs back.
struct TowardIssuer {
    /// In the issuer's layout, with the real card.
    message: Msg,
    /// Looked for in the answer, to be replaced.
    real_pan: Pan,
    /// Put back in the answer.
    virtual_expiry: Expiry,
}

/// Why a request on a known vPAN got no answer from the issuer.
enum NotSent {
    /// The card is not there (after all).
    UnknownCard,
    /// The request does not fit the issuer's layout with the real card.
    Format,
    /// The issuer link's error.
    Issuer(Unanswered),
}

/// Whether the issuer has had its say on a reversal the flow forwarded, so that nothing is
/// owed for it: an answer with any code but 91 or 96 (a front end for a host that is down,
/// a host that failed: nothing applied). Not heard: no connection up, no answer in time,
/// the connection lost under it, its stamp held by another request ([`IssuerError::Busy`]),
/// a layout it does not fit after all ([`IssuerError::Encode`]: owed, the link then logs
/// it for the issuer to reconcile), or an answer vpan could not put the vPAN back in. One
/// the link did not send because another transaction under its key waits at the issuer
/// (94, which the network does not send again) is not owed either: sent later under that
/// key, the host could take it for that other one.
fn heard(sent: &OnCard) -> bool {
    match sent {
        Ok(Some(answer)) => !reversal_undone(answer),
        Err(NotSent::Issuer(unanswered)) => unanswered.error == IssuerError::Clash,
        Ok(None) | Err(NotSent::UnknownCard | NotSent::Format) => false,
    }
}

/// Records the reversal the issuer link owes for a request (if it owes one) once `own`,
/// this side's record of the request's outcome (its hold released, or settled), is on
/// disk; then the network may hear its 91. A crash between the two leaves the purchase
/// released (its repeats get 91 here) without the debt, as before there was a book of
/// debts; the other order could leave a debt on a purchase that a restart takes for in
/// doubt, whose repeat it then asks the issuer about while the reversal goes out. If the
/// release failed (the journal is down), the debt is not written either: the reversal goes
/// out from memory only.
async fn record_owed_after(owed: Option<Box<Owed>>, own: Durable) {
    let Some(mut owed) = owed else {
        return;
    };
    match own.await {
        Ok(()) => owed.record().await,
        Err(e) => owed.forget(&e),
    }
}

/// What the repeat of a purchase in doubt, sent to the issuer, says of it:
///
/// - the issuer approved or declined it: settled so;
/// - sent, and no answer in time (or its connection lost): the network gets 91, and the
///   issuer link reverses whatever the issuer does with it (a late approval or a late
///   answer without a decision, see [`undecided`], or the request once forgotten, as for
///   any purchase that got 91), so it does not stand: given back;
/// - not sent, or answered without a decision (no DE 39, or 91, 96, 94, 30, 06 or 12: the
///   issuer, or a host in front of it, did not decide, or did not take a repeat at all):
///   left in doubt (`TimedOut`), and spent. Giving it back on such an answer would let the
///   card spend again what the issuer may well have charged the first time.
fn in_doubt_outcome(sent: &OnCard, request: &Message) -> IssuerOutcome {
    let answer = match sent {
        Ok(Some(answer)) => answer,
        Err(NotSent::Issuer(u))
            if matches!(u.error, IssuerError::Timeout | IssuerError::ConnectionLost) =>
        {
            return IssuerOutcome::Refused(ResponseCode::ISSUER_UNAVAILABLE);
        }
        _ => return IssuerOutcome::TimedOut,
    };
    if undecided(answer) {
        IssuerOutcome::TimedOut
    } else {
        issuer_outcome(answer, request)
    }
}

/// A purchase in doubt while a repeat of it is with the issuer: settled with `outcome`
/// when dropped, also when the request's task is cancelled (then `TimedOut`: left in doubt
/// for the next repeat to ask).
struct AskingIssuer<'a> {
    cards: &'a Cards,
    hold: Hold,
    outcome: IssuerOutcome,
    /// See [`Cards::settle_asked`].
    stand_in_approved: bool,
    settled: bool,
}

impl AskingIssuer<'_> {
    /// Settles it now with `outcome`: the record's durability, to wait for when the
    /// caller must, and what it was settled as.
    fn settle(mut self) -> (Durable, IssuerOutcome) {
        self.settled = true;
        self.cards
            .settle_asked(&self.hold, self.outcome, self.stand_in_approved, now())
    }
}

impl Drop for AskingIssuer<'_> {
    fn drop(&mut self) {
        // Not waited for: lost in a crash, the purchase stays in doubt and spent, and the
        // next repeat asks again.
        if !self.settled {
            drop(self.cards.settle_in_doubt(&self.hold, self.outcome, now()));
        }
    }
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

/// The repeat (0101, 0201) of the request an advice (0120, 0220, or a repeat) reports:
/// its fields but DE 39, which the stand-in set. `None` if its MTI cannot be written.
fn request_of_advice(advice: &Message) -> Option<Message> {
    let mut request = advice.clone();
    let [version, class, ..] = advice.mti();
    request.set_mti(&[version, class, b'0', b'0']).ok()?;
    request.remove(39);
    request.mark_repeat();
    Some(request)
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

/// How a reversal toward the issuer names its original (DE 90) otherwise than the network's
/// did, and the original's MTI.
#[derive(Clone, Copy, Debug)]
enum Original {
    /// The network's named none: named under the reversal's own key.
    ByOwnKey([u8; 4]),
    /// The network's DE 90 named the request, where the issuer booked its advice: that MTI
    /// in place of its own.
    BookedAs([u8; 4]),
}

/// Sets the MTI in DE 90 of `reversal` (its first four digits) to `mti`'s first telling.
fn rename_original(reversal: &mut Message, mut mti: [u8; 4]) {
    mti[3] = b'0';
    let Some(mut de90) = reversal.text(90).map(|t| t.as_bytes().to_vec()) else {
        return;
    };
    if let Some(named) = de90.get_mut(..4) {
        named.copy_from_slice(&mti);
        // A layout that cannot take it: it goes as it came.
        let _ = reversal.set(90, &de90);
    }
}

/// Sets DE 90 of `reversal` to name its original, of MTI `mti`, under the reversal's own
/// DE 11, DE 7 and DE 32.
fn name_original(reversal: &mut Message, mut mti: [u8; 4]) {
    // A repeat's first MTI (0100 for a 0101), as the issuer booked it.
    mti[3] = b'0';
    let (Some(stan), Some(sent_at)) = (reversal.stan(), reversal.transmission_time()) else {
        return;
    };
    let acquirer = reversal.acquirer();
    let de90 = crate::cards::request::original_data_elements(
        &mti,
        &stan,
        &sent_at,
        acquirer.as_deref().unwrap_or_default(),
    );
    // A layout without DE 90: it goes as it came.
    let _ = reversal.set(90, &de90);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reversal_is_heard_when_the_issuer_answers_it_with_anything_but_91_or_96() {
        let answered = |code: &[u8; 2]| -> OnCard {
            let mut m = Message::new(Spec::iso87ascii(), b"0410").unwrap();
            m.set_response_code(code).unwrap();
            Ok(Some(Box::new(m)))
        };
        for code in [b"00", b"25", b"12", b"05"] {
            assert!(heard(&answered(code)), "{code:?}");
        }
        for code in [b"91", b"96"] {
            assert!(!heard(&answered(code)), "{code:?}");
        }
        // Refused because another transaction under its key waits: not owed (counted as
        // heard), since sent later under that key it could be taken for that one.
        assert!(heard(&Err(NotSent::Issuer(IssuerError::Clash.into()))));
        for unheard in [
            IssuerError::Unavailable,
            IssuerError::Timeout,
            IssuerError::ConnectionLost,
            IssuerError::Busy,
            IssuerError::Encode,
        ] {
            assert!(!heard(&Err(NotSent::Issuer(unheard.into()))), "{unheard:?}");
        }
        // Answered, but not in a form vpan could pass on: whether it was applied is
        // unknown, so it goes again (as a repeat, which a host that applied it answers).
        assert!(!heard(&Ok(None)));
    }

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

    #[test]
    fn only_a_10_for_less_in_the_requests_currency_is_a_partial_approval() {
        use crate::cards::Amounts;

        let message = |mti: &[u8; 4], code: Option<&[u8; 2]>, de4: &[u8], de49: Option<&[u8]>| {
            let mut m = Message::new(Spec::iso87ascii(), mti).unwrap();
            m.set(4, de4).unwrap();
            if let Some(c) = de49 {
                m.set(49, c).unwrap();
            }
            if let Some(c) = code {
                m.set_response_code(c).unwrap();
            }
            m
        };
        let request = message(b"0100", None, b"000000010000", Some(b"978"));
        let outcome =
            |code, de4, de49| issuer_outcome(&message(b"0110", code, de4, de49), &request);
        let in_part = |transaction| IssuerOutcome::ApprovedInPart {
            amounts: Amounts {
                transaction,
                transaction_currency: 978,
                billing: None,
            },
            auth: None,
        };
        assert_eq!(
            outcome(Some(b"10"), b"000000006000", Some(b"978")),
            in_part(6_000)
        );
        // DE 49 left out of the answer: the request's.
        assert_eq!(outcome(Some(b"10"), b"000000000001", None), in_part(1));
        // Anything else counts whole.
        let partial = ResponseCode::PARTIAL_APPROVAL;
        for (code, de4, de49, whole) in [
            (b"10", b"000000000000", Some(b"978"), partial),
            (b"10", b"000000010000", Some(b"978"), partial),
            (b"10", b"000000020000", Some(b"978"), partial),
            (b"10", b"000000006000", Some(b"840"), partial),
            (b"00", b"000000006000", Some(b"978"), ResponseCode::APPROVED),
        ] {
            assert_eq!(
                outcome(Some(code), de4, de49.map(|c| c.as_slice())),
                IssuerOutcome::Approved(whole, None),
                "{code:?} {de4:?}"
            );
        }
        assert_eq!(
            outcome(Some(b"51"), b"000000006000", None),
            IssuerOutcome::Declined(ResponseCode(*b"51"))
        );
    }

    #[test]
    fn only_an_approval_or_a_real_decline_settles_a_purchase_in_doubt() {
        let answer = |code: Option<&[u8; 2]>, auth: Option<&[u8]>| {
            let mut m = Message::new(Spec::iso87ascii(), b"0110").unwrap();
            m.set(11, b"000001").unwrap();
            if let Some(c) = code {
                m.set_response_code(c).unwrap();
            }
            if let Some(a) = auth {
                m.set(38, a).unwrap();
            }
            m
        };
        let request = Message::new(Spec::iso87ascii(), b"0101").unwrap();
        let answered =
            |code, auth| in_doubt_outcome(&Ok(Some(Box::new(answer(code, auth)))), &request);
        assert_eq!(
            answered(Some(b"00"), Some(b"A1B2C3")),
            IssuerOutcome::Approved(ResponseCode::APPROVED, Some(*b"A1B2C3"))
        );
        assert_eq!(
            answered(Some(b"51"), None),
            IssuerOutcome::Declined(ResponseCode(*b"51"))
        );
        for undecided in [
            None,
            Some(b"91"),
            Some(b"96"),
            Some(b"94"),
            Some(b"30"),
            Some(b"06"),
            Some(b"12"),
        ] {
            assert_eq!(
                answered(undecided, None),
                IssuerOutcome::TimedOut,
                "{undecided:?}"
            );
        }
        // Sent and unanswered: the link reverses it at the issuer, so it does not stand.
        for lost in [IssuerError::Timeout, IssuerError::ConnectionLost] {
            assert_eq!(
                in_doubt_outcome(&Err(NotSent::Issuer(lost.into())), &request),
                IssuerOutcome::Refused(ResponseCode::ISSUER_UNAVAILABLE)
            );
        }
        // Never sent: whatever the issuer did with the first stands, so it stays in doubt.
        for unsent in [
            NotSent::Issuer(IssuerError::Unavailable.into()),
            NotSent::Issuer(IssuerError::Encode.into()),
            NotSent::Issuer(IssuerError::Clash.into()),
            NotSent::Issuer(IssuerError::Busy.into()),
            NotSent::Format,
            NotSent::UnknownCard,
        ] {
            assert_eq!(
                in_doubt_outcome(&Err(unsent), &request),
                IssuerOutcome::TimedOut
            );
        }
    }
}
