//! The real card number kept out of the network's answer, wherever the issuer put it.
//!
//! The flow rewrites the fields that carry the card by definition (DE 2, track 2) and drops
//! track 1 and the PIN block. An issuer host may still echo or add the real card number in
//! another field: the extended PAN (DE 34), its additional response data (DE 44), a private
//! field. The network must never see it, so every issuer answer on a vPAN is searched for
//! it, in each form a field may hold it in, before it goes back.
//!
//! The search is one pass over the received frame per form: ASCII digits, EBCDIC digits,
//! and packed BCD at either nibble (a binary field, such as the chip data of DE 55, holds
//! a card number packed even on an ASCII link). Only when it finds the card outside DE 2
//! and DE 35 are the fields read one by one, decoded (binary as hex, in which packed
//! digits read as themselves).

use memchr::memmem;

use crate::iso8583::Message;
use crate::pan::Pan;

/// Fields the flow rewrites itself: the card number and track 2.
const REWRITTEN: [usize; 2] = [2, 35];

/// The real card number was found in the answer but in no one field (across two, say): the
/// answer cannot be cleaned, and must not go to the network.
#[derive(Debug, PartialEq, Eq)]
pub struct Unplaced;

/// The fields of `answer` (as received from the issuer), other than DE 2 and DE 35, that
/// hold the real card number `real`. Empty, without allocating, in the usual case.
pub fn fields_holding(answer: &Message, real: &Pan) -> Result<Vec<usize>, Unplaced> {
    let forms = Forms::of(real);
    let frame = answer.frame();
    let spans = REWRITTEN.map(|n| answer.received_span(n));
    let outside = |at: usize| !spans.iter().flatten().any(|s| s.contains(&at));
    if !forms
        .needles()
        .any(|n| memmem::find_iter(frame, n).any(outside))
    {
        return Ok(Vec::new());
    }
    // Each field as it is on the wire (any form), and decoded (binary as hex, in which
    // packed digits read as themselves).
    let found: Vec<usize> = answer
        .field_numbers()
        .filter(|n| !REWRITTEN.contains(n))
        .filter(|&n| {
            answer.raw(n).is_some_and(|wire| forms.found_in(wire))
                || answer
                    .text(n)
                    .is_some_and(|t| memmem::find(&t, real.as_bytes()).is_some())
        })
        .collect();
    if found.is_empty() {
        Err(Unplaced)
    } else {
        Ok(found)
    }
}

/// The card number in each form a field may write it in: ASCII and EBCDIC digits, packed
/// BCD from a byte's high nibble and from its low one. On the stack: this runs for every
/// answer on a vPAN.
struct Forms<'a> {
    ascii: &'a [u8],
    ebcdic: [u8; 19],
    aligned: ([u8; 10], usize),
    shifted: ([u8; 10], usize),
}

impl Forms<'_> {
    fn of(real: &Pan) -> Forms<'_> {
        let digits = real.as_bytes();
        let mut ebcdic = [0u8; 19];
        for (e, d) in ebcdic.iter_mut().zip(digits) {
            *e = 0xF0 | (d - b'0');
        }
        Forms {
            ascii: digits,
            ebcdic,
            aligned: packed(digits),
            shifted: packed(digits.get(1..).unwrap_or_default()),
        }
    }

    fn needles(&self) -> impl Iterator<Item = &[u8]> {
        [
            self.ascii,
            &self.ebcdic[..self.ascii.len()],
            &self.aligned.0[..self.aligned.1],
            &self.shifted.0[..self.shifted.1],
        ]
        .into_iter()
    }

    fn found_in(&self, bytes: &[u8]) -> bool {
        self.needles().any(|n| memmem::find(bytes, n).is_some())
    }
}

/// `digits` (at most 19) as packed BCD, two to a byte, the odd last digit left out (its
/// byte's other nibble belongs to whatever follows), and how many bytes that is.
fn packed(digits: &[u8]) -> ([u8; 10], usize) {
    let mut out = [0u8; 10];
    let mut len = 0;
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = ((pair[0] - b'0') << 4) | (pair[1] - b'0');
        len += 1;
    }
    (out, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::Spec;
    use crate::pan::test_pan;

    fn answer(spec: &'static Spec, fields: &[(usize, &[u8])]) -> Message {
        let mut m = Message::new(spec, b"0110").unwrap();
        for (n, v) in fields {
            m.set(*n, v).unwrap();
        }
        Message::parse(spec, m.pack()).unwrap()
    }

    #[test]
    fn the_real_card_is_found_in_any_field_but_those_the_flow_rewrites() {
        let real = Pan::from_digits(test_pan("497010").as_bytes()).unwrap();
        let digits = real.as_bytes();
        let track = [digits, b"=29121010000012300000"].concat();
        let extra = [b"CARD ", digits, b" OK"].concat();
        for spec in [Spec::iso87ascii(), Spec::iso87binary()] {
            let usual = answer(spec, &[(2, digits), (35, &track), (39, b"00")]);
            assert_eq!(fields_holding(&usual, &real), Ok(vec![]), "{}", spec.name);
            let leaky = answer(
                spec,
                &[(2, digits), (34, digits), (39, b"00"), (44, &extra)],
            );
            assert_eq!(
                fields_holding(&leaky, &real),
                Ok(vec![34, 44]),
                "{}",
                spec.name
            );
        }
        // Another card's number is no concern of this answer's.
        let other = test_pan("411111");
        let unrelated = answer(Spec::iso87binary(), &[(34, other.as_bytes()), (39, b"00")]);
        assert_eq!(fields_holding(&unrelated, &real), Ok(vec![]));
    }

    #[test]
    fn packed_bcd_keeps_whole_bytes_only() {
        let (bytes, len) = packed(b"12345");
        assert_eq!(&bytes[..len], [0x12, 0x34]);
        let (bytes, len) = packed(b"2345");
        assert_eq!(&bytes[..len], [0x23, 0x45]);
    }

    #[test]
    fn a_card_in_a_binary_field_is_found_in_every_form() {
        let real = Pan::from_digits(test_pan("497010").as_bytes()).unwrap();
        let digits = real.expose();
        let ebcdic: String = digits.chars().map(|d| format!("F{d}")).collect();
        for spec in [Spec::iso87ascii(), Spec::iso87binary()] {
            for chip in [
                // Chip data (DE 55) holding the application PAN (tag 5A) packed; as hex
                // text on an ASCII link, where it reads as the digits.
                format!("5A08{digits}9F2701"),
                // Packed from a low nibble.
                format!("0{digits}F"),
            ] {
                let leaky = answer(spec, &[(39, b"00"), (55, chip.as_bytes())]);
                assert_eq!(fields_holding(&leaky, &real), Ok(vec![55]), "{chip}");
            }
        }
        // In EBCDIC digits, in a binary field sent as bytes, whose hex does not show them.
        let chip = format!("DF01{ebcdic}");
        let leaky = answer(Spec::iso87binary(), &[(39, b"00"), (55, chip.as_bytes())]);
        assert_eq!(fields_holding(&leaky, &real), Ok(vec![55]));
    }

    #[test]
    fn a_card_across_two_fields_cannot_be_taken_out_and_says_so() {
        let real = Pan::from_digits(test_pan("497010").as_bytes()).unwrap();
        let digits = real.as_bytes();
        // DE 37 (12 characters) ends with its first 12 digits, DE 38 starts with the rest.
        let (head, tail) = digits.split_at(12);
        let de38 = [tail, b"XX"].concat();
        let split = answer(Spec::iso87ascii(), &[(37, head), (38, &de38), (39, b"00")]);
        assert_eq!(fields_holding(&split, &real), Err(Unplaced));
    }
}
