//! 0400/0420 on a vPAN, and their repeats: the amount given back durably, the reversal
//! forwarded naming its original as the issuer booked it, and owed (sent again until
//! heard) when the issuer does not hear it.

use crate::cards::card::unix_now as now;
use crate::cards::{DecidedBy, ResponseCode, ReversalOutcome};
use crate::iso8583::Message;
use crate::switch::issuer::{IssuerError, reversal_undone};

use super::forward::{NotSent, OnCard};
use super::{Flow, Msg, fields_of, put_back, reversal_request};

impl Flow {
    /// 0400/0420 (and repeats): the amount given back, forwarded, answered.
    pub(super) async fn reversal(&self, request: Msg) -> (Option<Msg>, DecidedBy) {
        let (vpan, req) = match self.on_card(&request, reversal_request) {
            Ok(on_card) => on_card,
            Err(not) => return self.not_on_card(request, not).await,
        };
        // A reversal that names its original by its own key is sent naming it in DE 90,
        // from the original vpan recorded: the issuer finds it so whatever STAN either goes
        // out under. The network's answer carries no DE 90, as its reversal had none. Read
        // before the reversal is applied, which may void the original's entry (one the
        // issuer declined, or vpan released on its 91).
        // One whose DE 90 names a request or an advice where the issuer booked the other
        // names what the issuer booked: the advice, where vpan recorded a stand-in's after
        // the request was declined at the issuer or reversed by the link after vpan's 91;
        // the request, where the issuer approved it itself and the stand-in's advice of it
        // was acknowledged here, never sent.
        let original = if request.has(90) {
            self.cards
                .booked_as(vpan.key, &req)
                .filter(|&booked| names_otherwise(&request, booked))
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
        // Nothing of the original stands on the card: declined, or released (on vpan's own
        // 91 among others), or voided before it came.
        let nothing_stands = matches!(
            outcome,
            ReversalOutcome::Voided { .. }
                | ReversalOutcome::NothingLeft {
                    original_stands: false
                }
        );
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
            ReversalOutcome::NotFound => {
                // Nothing of it on the card, but its key was taken (journaled before):
                // forwarded, the issuer takes the key too, so the key must be on disk
                // first, or a crash frees it for another reversal the issuer ignores.
                if let Err(e) = self.cards.recorded_so_far().await {
                    return self.fail_closed(&request, &vpan, &e, "reversal key");
                }
            }
            ReversalOutcome::KeyTaken => {
                // As a request under a key used with other content: the acquirer's error,
                // which the issuer, keying reversals by their own key, would not apply.
                crate::logging::throttled!(
                    warn,
                    card = %vpan.pan,
                    "a reversal under the key of another reversal, asking otherwise (another original or amount left, or another card), declined 94: nothing given back, not forwarded"
                );
                return (
                    self.local_answer(&request, ResponseCode::DUPLICATE),
                    DecidedBy::Switch,
                );
            }
        }
        if nothing_stands && self.issuer.answers_in_its_place(&toward_issuer.message) {
            // Released on vpan's 91, and the link reverses it at the issuer itself (its
            // debt on disk): answered here, so that the issuer gets one reversal of it, not
            // two under two keys; kept, to go after all should the issuer refuse the
            // link's.
            tracing::debug!(card = %vpan.pan, "reversal of a purchase the issuer link reverses itself answered by the switch");
            return (
                self.local_answer(&request, ResponseCode::APPROVED),
                DecidedBy::Switch,
            );
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

/// Whether `reversal`'s DE 90 is to name its original as `booked` in place of the MTI it
/// names: where the issuer booked an advice (MTI function 2), whatever DE 90 names; and
/// where DE 90 names an advice of a request the issuer booked. Between a request and its
/// repeat (0100, 0101) it goes as the network named it.
fn names_otherwise(reversal: &Message, booked: [u8; 4]) -> bool {
    let named = reversal.text(90).and_then(|t| t.as_bytes().get(2).copied());
    booked[2] == b'2' || named == Some(b'2') && named != Some(booked[2])
}

/// How a reversal toward the issuer names its original (DE 90) otherwise than the network's
/// did, and the original's MTI.
#[derive(Clone, Copy, Debug)]
pub(super) enum Original {
    /// The network's named none: named under the reversal's own key.
    ByOwnKey([u8; 4]),
    /// The network's DE 90 named the request where the issuer booked its advice, or the
    /// advice where it booked the request: that MTI in place of the one named.
    BookedAs([u8; 4]),
}

/// Sets the MTI in DE 90 of `reversal` (its first four digits) to `mti`'s first telling.
pub(super) fn rename_original(reversal: &mut Message, mut mti: [u8; 4]) {
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
pub(super) fn name_original(reversal: &mut Message, mut mti: [u8; 4]) {
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
    use crate::iso8583::Spec;

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
}
