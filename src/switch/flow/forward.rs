//! Sending to the issuer: a request on a vPAN with the real card, and its answer with the
//! vPAN back; a card number vpan does not know answered 14 or 30 here, or passed through
//! untouched; what the network hears when the issuer does not answer.

use crate::cards::{CardKey, DecidedBy, Expiry, ResponseCode};
use crate::iso8583::Message;
use crate::pan::Pan;
use crate::switch::issuer::{IssuerError, Unanswered};
use crate::switch::tracks;

use super::reversal::{Original, name_original, rename_original};
use super::{Flow, Msg, VirtualPan, is_to_decide};

impl Flow {
    /// Forwards a request on a known vPAN with the real card, answers with the vPAN back.
    pub(super) async fn forward_on_card(
        &self,
        request: Msg,
        vpan: &VirtualPan,
    ) -> (Option<Msg>, DecidedBy) {
        let sent = self.send_on_card(&request, vpan).await;
        self.answer_on_card(request, sent).await
    }

    /// The issuer's answer to `request` sent with the real card (the vPAN back in it; `None`
    /// when it cannot be put back), or why there is none.
    pub(super) async fn send_on_card(&self, request: &Message, vpan: &VirtualPan) -> OnCard {
        let prepared = self.toward_issuer(request, vpan, None)?;
        self.send_toward_issuer(prepared, request, vpan).await
    }

    /// `request` in the issuer's layout with the real card, ready to go; for a reversal,
    /// naming its original of MTI `original` in DE 90 (as it came where the layout cannot).
    pub(super) fn toward_issuer(
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
    pub(super) async fn send_toward_issuer(
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
    pub(super) async fn answer_on_card(
        &self,
        request: Msg,
        sent: OnCard,
    ) -> (Option<Msg>, DecidedBy) {
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
    pub(super) async fn unknown_or_passthrough(&self, request: Msg) -> (Option<Msg>, DecidedBy) {
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
    pub(super) async fn passthrough(&self, request: Msg) -> (Option<Msg>, DecidedBy) {
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
}

/// What the network hears for a request the issuer link could not get answered.
pub(super) fn unanswered_code(e: IssuerError) -> ResponseCode {
    match e {
        IssuerError::Clash => ResponseCode::DUPLICATE,
        _ => ResponseCode::ISSUER_UNAVAILABLE,
    }
}

/// What a request sent with the real card came to: the issuer's answer (`None` when the
/// vPAN could not be put back in it), or why there is none.
pub(super) type OnCard = Result<Option<Msg>, NotSent>;

/// A request on a known vPAN as the issuer gets it, with what its answer needs back.
pub(super) struct TowardIssuer {
    /// In the issuer's layout, with the real card.
    pub(super) message: Msg,
    /// Looked for in the answer, to be replaced.
    real_pan: Pan,
    /// Put back in the answer.
    virtual_expiry: Expiry,
}

/// Why a request on a known vPAN got no answer from the issuer.
pub(super) enum NotSent {
    /// The card is not there (after all).
    UnknownCard,
    /// The request does not fit the issuer's layout with the real card.
    Format,
    /// The issuer link's error.
    Issuer(Unanswered),
}
