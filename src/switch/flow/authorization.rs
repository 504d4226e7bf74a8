//! 0100/0200 on a vPAN, and their repeats: the cards decide; a decline is answered at
//! once; an approval goes to the issuer while its hold is made durable. A repeat of a
//! purchase a crash left in doubt asks the issuer, marked as a repeat, what it answered.

use std::time::{Duration, Instant};

use crate::cards::card::unix_now as now;
use crate::cards::{
    Admit, Approval, AuthCode, AuthRequest, Cards, DecidedBy, Decision, Hold, IssuerOutcome,
    Replay, ResponseCode,
};
use crate::iso8583::Message;
use crate::store::journal::Durable;
use crate::switch::issuer::{IssuerError, Owed, may_approve, undecided};

use super::forward::{NotSent, OnCard, unanswered_code};
use super::{Flow, Msg, Serving, VirtualPan, auth_request, fields, fields_of, put_back};

/// First and longest pause between two looks at a repeat's first request still with the
/// issuer.
const REPEAT_POLL_FIRST: Duration = Duration::from_millis(1);
const REPEAT_POLL_MAX: Duration = Duration::from_millis(50);
/// How long past the issuer's timeout a repeat waits for its first request's answer: the
/// sweep gives the timeout at most 25 ms late.
const REPEAT_WAIT_SLACK: Duration = Duration::from_millis(100);

impl Flow {
    /// 0100/0200 (and repeats); only repeats of what the cards hold once `Stopping`.
    pub(super) async fn authorization(
        &self,
        request: Msg,
        serving: Serving,
    ) -> (Option<Msg>, DecidedBy) {
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
    pub(super) async fn once_the_issuer_answered<T>(
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
    pub(super) async fn ask_in_doubt(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::Spec;

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
