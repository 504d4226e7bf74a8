//! The PAN swaps and the layouts: a request rewritten for the issuer with the real card
//! (DE 2, DE 14, DE 35) in the issuer's layout, and its answer rewritten for the network
//! with the vPAN and the virtual expiry put back, in the network's layout.

use crate::iso8583::{Message, Spec};
use crate::pan::Pan;
use crate::switch::issuer::may_approve;
use crate::switch::scrub;

use super::{Flow, Msg, VirtualPan};

impl Flow {
    /// The request in the issuer's layout with the real card in DE 2, 14 and 35.
    pub(super) fn to_real(&self, request: &Message, pan: &Pan, expiry: &[u8; 4]) -> Option<Msg> {
        let mut out = self.in_issuer_layout(request)?;
        // DE 2 where the network put one; a request that carried the card in track 2 only
        // goes out the same way.
        if out.has(2) {
            out.set_pan(pan).ok()?;
        }
        if out.has(14) {
            out.set_expiry(expiry).ok()?;
        }
        // The extended PAN, where the network repeats the card there, is the card too. (DE 34
        // looked at first: most requests have none, and pay nothing more.)
        if let Some(extended) = request.text(34)
            && let Some(Ok(card)) = request.card_number()
            && *extended == *card.as_bytes()
        {
            out.set(34, pan.as_bytes()).ok()?;
        }
        // Track 2 carries the card too: one that cannot be read, and so not rewritten,
        // must not reach the issuer with the vPAN in it (the caller answers 30). A
        // reversal has given the amount back already, and an advice has been counted: both
        // must reach the issuer, and go without track 2, which they do not need.
        if request.has(35) {
            let mti = request.mti();
            let recorded_already = mti[1] == b'4' || mti[2] == b'2';
            // Only the card's own track: another card's, beside the vPAN in DE 2, is not
            // the vPAN's to rewrite (a request is refused before it gets here).
            let card = request.card_number().and_then(Result::ok);
            match request
                .track2()
                .filter(|t| card.is_some_and(|c| t.pan_digits() == c.as_bytes()))
                .and_then(|t| t.with_pan_and_expiry(pan, expiry))
            {
                Some(track2) => out.set_track2(&track2).ok()?,
                None if recorded_already => out.remove(35),
                None => return None,
            }
        }
        // Tracks 1 and 3 are not rewritten: they go no further than vpan, the issuer has
        // the card in DE 2 and DE 35.
        out.remove(45);
        out.remove(36);
        Some(out)
    }

    /// For the rare reversal after a journal failure: the request as the issuer saw it.
    pub(super) fn to_real_again(&self, request: &Message, answer: &Message) -> Option<Msg> {
        let vpan = self.virtual_pan(request)?;
        let (pan, expiry, _) = self.cards.real_card(vpan.key)?;
        let mut out = self.to_real(request, &pan, &expiry.0)?;
        if let Some(stan) = answer.stan() {
            out.set(11, &stan).ok()?;
        }
        Some(out)
    }

    /// The issuer's answer to `request` in the network's layout with the vPAN (and virtual
    /// expiry) back in DE 2, 14 and 35, and the real card `real` nowhere else.
    pub(super) fn to_virtual(
        &self,
        answer: Msg,
        request: &Message,
        vpan: &VirtualPan,
        expiry: &[u8; 4],
        real: &Pan,
    ) -> Option<Msg> {
        let track2 = answer
            .track2()
            .and_then(|t| t.with_pan_and_expiry(&vpan.pan, expiry));
        let strays = scrub::fields_holding(&answer, request, real);
        let mut out = self.answer_in_network_layout(answer)?;
        for n in strays {
            // The extended PAN echoed is the card, and the network knows it as the vPAN;
            // anywhere else the number has no place that vpan could rewrite.
            if n == 34 && out.text(34).is_some_and(|t| *t == *real.as_bytes()) {
                out.set(34, vpan.pan.as_bytes()).ok()?;
            } else {
                out.remove(n);
                crate::logging::throttled!(
                    warn,
                    field = n,
                    "the issuer's answer held the real card number in a field vpan does not rewrite: removed before the network's answer"
                );
            }
        }
        // Also where the host left DE 2 out (ISO 8583 lets it): the network sent one, and
        // matches its answers on it.
        if out.has(2) || request.has(2) {
            out.set_pan(&vpan.pan).ok()?;
        }
        if out.has(14) {
            out.set_expiry(expiry).ok()?;
        }
        // A track 2 echoed back is rewritten; one that cannot be (it holds the real card
        // in a form vpan does not read) is dropped, as are track 1 and a PIN block, rather
        // than the answer: the network gets its answer, never the real card.
        match track2 {
            Some(track2) if out.has(35) => out.set_track2(&track2).ok()?,
            _ => out.remove(35),
        }
        out.remove(45);
        out.remove(52);
        Some(out)
    }

    /// The issuer's answer in the network's layout (the two links' specs may differ). A
    /// field of it with no place there (a DE 54 longer than the network's layout allows)
    /// is left out, said by number, rather than the answer: the network must hear the
    /// issuer's decision, which vpan has counted already.
    pub(super) fn answer_in_network_layout(&self, answer: Msg) -> Option<Msg> {
        let to = self.network_spec;
        if std::ptr::eq(answer.spec(), to) {
            return Some(answer);
        }
        let Some((mut out, mut left_out)) = copied_field_by_field(&answer, to) else {
            crate::logging::throttled!(
                error,
                "an issuer's answer has an MTI network.spec cannot write; not answered"
            );
            return None;
        };
        // Without its STAN the network cannot match the answer: none is sent.
        if left_out.contains(&11) {
            crate::logging::throttled!(
                error,
                "an issuer's answer has a DE 11 network.spec cannot write; not answered"
            );
            return None;
        }
        // A DE 39 the network's layout cannot write: a known decline (N7 where the layout
        // takes digits) was counted as one, and the network hears 05; any other may have
        // been an approval, which vpan counted as spent, and an 05 would leave it so for
        // good: not answered, the network reverses it on its timeout.
        if left_out.contains(&39) {
            if may_approve(&answer) {
                crate::logging::throttled!(
                    error,
                    "an issuer's answer has a DE 39 network.spec cannot write, not a known decline; not answered"
                );
                return None;
            }
            out.set_response_code(b"05").ok()?;
            left_out.retain(|&n| n != 39);
        }
        if !left_out.is_empty() {
            crate::logging::throttled!(
                warn,
                fields = ?left_out,
                "fields of an issuer's answer with no place in network.spec left out of the network's answer"
            );
        }
        Some(out)
    }

    /// A request in the issuer's layout; `None`, said with the field, when a field of it
    /// has no place there (a request from the network is then answered 30).
    pub(super) fn in_issuer_layout(&self, request: &Message) -> Option<Msg> {
        let to = self.issuer.spec();
        if std::ptr::eq(request.spec(), to) {
            return Some(Box::new(request.clone()));
        }
        let (out, left_out) = copied_field_by_field(request, to)?;
        if let Some(n) = left_out.first() {
            crate::logging::throttled!(
                warn,
                field = n,
                "a request's field has no place in issuer.spec; not sent to the issuer"
            );
            return None;
        }
        Some(out)
    }
}

/// `msg` written in layout `to` field by field, with the fields that have no place there
/// (left out); `None` when its MTI cannot be written.
fn copied_field_by_field(msg: &Message, to: &'static Spec) -> Option<(Msg, Vec<usize>)> {
    let mut out = Box::new(Message::new(to, &msg.mti()).ok()?);
    let left_out = msg
        .field_numbers()
        .filter(|&n| {
            msg.text(n)
                .is_none_or(|t| out.set(n, t.as_bytes()).is_err())
        })
        .collect();
    Some((out, left_out))
}
