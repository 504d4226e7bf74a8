//! 0120/0220 on a vPAN, and their repeats: a stand-in's advice recorded, forwarded and
//! answered. One of a purchase left in doubt asks the issuer about it first; one that
//! replaces the issuer's partial approval has that part reversed there first.

use crate::cards::card::unix_now as now;
use crate::cards::{AdviceOutcome, AuthRequest, DecidedBy, IssuerOutcome, ResponseCode};
use crate::iso8583::Message;
use crate::metrics::Reconcile;
use crate::switch::issuer::{is_known_decline, reversal_for};

use super::{Flow, Msg, VirtualPan, auth_request, fields_of, put_back};

impl Flow {
    /// 0120/0220 (and repeats): recorded (spent, unless its DE 39 reports a decline),
    /// forwarded, answered.
    pub(super) async fn advice(&self, request: Msg) -> (Option<Msg>, DecidedBy) {
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
    pub(super) fn tell_what_stands(
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
    pub(super) async fn reverse_the_part(&self, request: &Message, vpan: &VirtualPan) -> bool {
        let reversal = self
            .toward_issuer(request, vpan, None)
            .ok()
            .and_then(|prepared| reversal_for(&prepared.message).ok());
        let Some(reversal) = reversal else {
            Reconcile::ReversalUnbuildable.count();
            tracing::error!(
                pan = %vpan.pan.masked(),
                "cannot build the reversal of the issuer's partial approval that a stand-in's advice replaces; the advice is not told; the issuer must reconcile"
            );
            return false;
        };
        let answer = self.issuer.reverse_now(Box::new(reversal)).await;
        let code = answer.as_ref().and_then(|a| a.response_code());
        if code.is_some_and(|c| c != *b"00") {
            Reconcile::PartialApprovalNotReversed.count();
            tracing::error!(
                pan = %vpan.pan.masked(),
                code = %String::from_utf8_lossy(&code.unwrap_or_default()),
                "the issuer did not reverse its partial approval that a stand-in's advice replaces; the advice is not told, so that it is not booked beside it; the issuer must reconcile"
            );
        }
        code == Some(*b"00")
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
