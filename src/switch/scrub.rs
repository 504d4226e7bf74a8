//! The real card number kept out of the network's answer, wherever the issuer put it.
//!
//! The flow rewrites the fields that carry the card by definition (DE 2, track 2) and drops
//! track 1 and the PIN block. An issuer host may still echo or add the real card number in
//! another field: the extended PAN (DE 34), its additional response data (DE 44), a private
//! field. The network must never see it, so every issuer answer on a vPAN is searched for
//! it, in each form a field may hold it in, before it goes back.
//!
//! A field is read only if it is long enough to hold a card number and it does not echo
//! the request's value (an echo holds what the network sent, which never held the real
//! card): on a usual answer, none. It is read as vpan reads any field (digits for numerics,
//! BCD included; text, EBCDIC translated; binary as hex, in which a packed card number reads
//! as its digits, as in the chip data of DE 55), and a binary field's bytes are searched
//! for the number as ASCII and EBCDIC text too.

use crate::iso8583::Message;
use crate::iso8583::spec::{Encoding, FieldSpec, Kind};
use crate::pan::Pan;

/// Fields the flow rewrites itself: the card number and track 2.
const REWRITTEN: [usize; 2] = [2, 35];

/// The fields of `answer` that hold the real card number `real`, other than DE 2 and
/// DE 35 and those that echo `request` (the network's, which vpan sent on). Empty, without
/// allocating, in the usual case (no field then reaches the search).
pub fn fields_holding(answer: &Message, request: &Message, real: &Pan) -> Vec<usize> {
    let digits = real.as_bytes();
    let spec = answer.spec();
    answer
        .field_numbers()
        .filter(|n| !REWRITTEN.contains(n))
        // The layout alone rules out most fields (amounts, dates, codes), unread.
        .filter(|&n| {
            spec.field(n)
                .is_some_and(|f| digits_in(f, f.max_len as usize) >= digits.len())
        })
        .filter(|&n| room_for(answer, n) >= digits.len())
        .filter(|&n| !echoes(answer, request, n))
        .filter(|&n| holds(answer, n, digits))
        .collect()
}

/// Whether field `n` of `answer` is the request's, as it was.
fn echoes(answer: &Message, request: &Message, n: usize) -> bool {
    if std::ptr::eq(answer.spec(), request.spec()) {
        return request
            .raw(n)
            .is_some_and(|sent| answer.raw(n) == Some(sent));
    }
    match (request.text(n), answer.text(n)) {
        (Some(sent), Some(got)) => *sent == *got,
        _ => false,
    }
}

/// Whether field `n` holds the card number `digits`: in its decoded form, written in
/// groups (`5412 7512 …`, `5412-7512-…`), or, where the field holds hex (a binary field
/// as read, or text that carries chip data or bytes as hex, as DE 55 does in ASCII
/// layouts, or a dump with spaces between the bytes), as ASCII or EBCDIC text in the bytes
/// the hex stands for, grouped there too.
fn holds(answer: &Message, n: usize, digits: &[u8]) -> bool {
    let Some(text) = answer.text(n) else {
        return false;
    };
    let squeezed = without(TEXT_SEPARATORS, &text);
    if occurs(&text, digits) || occurs(&squeezed, digits) {
        return true;
    }
    let mut ebcdic = [0u8; 19];
    for (e, d) in ebcdic.iter_mut().zip(digits) {
        *e = 0xF0 | (d - b'0');
    }
    let ebcdic = &ebcdic[..digits.len().min(19)];
    // Hex in text need not start at an even place: both are tried.
    [&text[..], &squeezed[..]].into_iter().any(|hex| {
        (0..2).any(|from| {
            let bytes = hex_bytes(hex.get(from..).unwrap_or_default());
            occurs(&bytes, digits)
                || occurs(&bytes, ebcdic)
                || occurs(&without(TEXT_SEPARATORS, &bytes), digits)
                || occurs(&without(EBCDIC_SEPARATORS, &bytes), ebcdic)
        })
    })
}

/// Bytes that may stand between a card number's groups as an issuer writes it: space,
/// dash, dot, slash, underscore, tab, and Latin-1's no-break space (EBCDIC text reads as
/// Latin-1; in UTF-8 it is 0xC2 0xA0). Left out, a grouped number reads as its digits; a
/// letter between groups still breaks it.
const TEXT_SEPARATORS: &[u8] = b" -./_\t\xa0\xc2";

/// The same in EBCDIC, for bytes a hex field stands for: space, dash, dot, slash,
/// underscore.
const EBCDIC_SEPARATORS: &[u8] = &[0x40, 0x60, 0x4B, 0x61, 0x6D];

/// `bytes` without any of `separators`.
fn without(separators: &[u8], bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .copied()
        .filter(|b| !separators.contains(b))
        .collect()
}

/// The bytes hex text stands for (pairs that are not hex are left out).
fn hex_bytes(text: &[u8]) -> Vec<u8> {
    text.chunks_exact(2)
        .filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// How many digits field `n` of `answer` could hold, from its length on the wire.
fn room_for(answer: &Message, n: usize) -> usize {
    match (answer.spec().field(n), answer.raw(n)) {
        (Some(f), Some(wire)) => match f.encoding {
            // Its bytes, two digits to a byte where they are packed.
            Encoding::Bcd(_) | Encoding::Binary => wire.len() * 2,
            _ => wire.len(),
        },
        _ => 0,
    }
}

/// How many digits `units` of field `f` (its layout's units: bytes for binary, digits for
/// BCD numerics, characters for text) could hold: a byte of binary holds two packed.
fn digits_in(f: &FieldSpec, units: usize) -> usize {
    if f.kind == Kind::B { units * 2 } else { units }
}

/// Whether `needle` occurs in `haystack`: candidates found by their first byte
/// (`memchr`), then compared. A `memmem` searcher built per search cost more than the
/// search on haystacks this short.
fn occurs(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return false;
    };
    haystack.len() >= needle.len()
        && memchr::memchr_iter(first, haystack).any(|at| {
            haystack
                .get(at + 1..at + needle.len())
                .is_some_and(|tail| tail == rest)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::Spec;
    use crate::pan::test_pan;

    /// A request with DE 2, 3, 4, 11 and 34 (the card number as the network wrote it).
    fn request(spec: &'static Spec, card: &[u8]) -> Message {
        answer(
            spec,
            &[
                (2, card),
                (3, b"000000"),
                (4, b"000000001000"),
                (11, b"000001"),
                (34, card),
            ],
        )
    }

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
            let sent = request(spec, test_pan("497019").as_bytes());
            let usual = answer(spec, &[(2, digits), (35, &track), (39, b"00")]);
            assert_eq!(
                fields_holding(&usual, &sent, &real),
                Vec::<usize>::new(),
                "{}",
                spec.name
            );
            let leaky = answer(
                spec,
                &[(2, digits), (34, digits), (39, b"00"), (44, &extra)],
            );
            assert_eq!(
                fields_holding(&leaky, &sent, &real),
                vec![34, 44],
                "{}",
                spec.name
            );
            // A field echoed as the network sent it is not read; one the issuer changed is.
            let name = format!("{:<40}", String::from_utf8_lossy(&extra));
            let echoed = answer(spec, &[(3, b"000000"), (39, b"00"), (43, name.as_bytes())]);
            let with_43 = answer(spec, &[(3, b"000000"), (43, name.as_bytes())]);
            assert!(fields_holding(&echoed, &with_43, &real).is_empty());
            let shop = answer(
                spec,
                &[(3, b"000000"), (43, format!("{:<40}", "SHOP").as_bytes())],
            );
            assert_eq!(fields_holding(&echoed, &shop, &real), vec![43]);
        }
        // Another card's number is no concern of this answer's.
        let other = test_pan("411111");
        let unrelated = answer(Spec::iso87binary(), &[(34, other.as_bytes()), (39, b"00")]);
        let sent = request(Spec::iso87binary(), test_pan("497019").as_bytes());
        assert!(fields_holding(&unrelated, &sent, &real).is_empty());
    }

    #[test]
    fn chip_data_the_issuer_answers_in_is_read_though_the_request_had_some() {
        let real = Pan::from_digits(test_pan("497010").as_bytes()).unwrap();
        let digits = real.expose();
        for spec in [Spec::iso87ascii(), Spec::iso87binary()] {
            // A chip request carries DE 55; the issuer's DE 55 is its own (its
            // authentication data), here with the application PAN (tag 5A) in it.
            let sent = answer(spec, &[(3, b"000000"), (55, b"9F2608AABBCCDDEEFF0011")]);
            let leaky = answer(
                spec,
                &[(39, b"00"), (55, format!("5A08{digits}910A00").as_bytes())],
            );
            assert_eq!(
                fields_holding(&leaky, &sent, &real),
                vec![55],
                "{}",
                spec.name
            );
            // Its bytes holding the number as text, ASCII or EBCDIC: where DE 55 is bytes,
            // and where the layout has it as text in which chip data is hex (from an even
            // place or not).
            let ascii: String = digits.bytes().map(|b| format!("{b:02X}")).collect();
            let ebcdic: String = digits.chars().map(|d| format!("F{d}")).collect();
            for text in [ascii, ebcdic] {
                // Bytes come whole in a binary field: an odd place only in text.
                let tags: &[&str] = match spec.name.as_str() {
                    "iso87binary" => &["DF01"],
                    _ => &["DF01", "561"],
                };
                for tag in tags {
                    let de55 = format!("{tag}{text}");
                    let leaky = answer(spec, &[(39, b"00"), (55, de55.as_bytes())]);
                    let found = fields_holding(&leaky, &sent, &real);
                    assert_eq!(found, vec![55], "{de55} {}", spec.name);
                }
            }
        }
    }

    #[test]
    fn a_card_written_in_groups_or_as_hex_text_is_found_in_a_text_field() {
        let real = Pan::from_digits(test_pan("497010").as_bytes()).unwrap();
        let d = real.expose();
        let grouped = |sep: &str| [&d[..4], &d[4..8], &d[8..12], &d[12..]].join(sep);
        let ascii_hex: String = d.bytes().map(|b| format!("{b:02X}")).collect();
        let ebcdic_hex: String = d.chars().map(|c| format!("F{c}")).collect();
        let spaced_hex = d
            .bytes()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(" ");
        let grouped_hex: String = grouped(" ").bytes().map(|b| format!("{b:02X}")).collect();
        let spec = Spec::iso87ascii();
        let sent = request(spec, test_pan("497019").as_bytes());
        for (n, value) in [
            (44, grouped(" ")),
            (44, grouped("-")),
            (48, format!("ACCT {} OK", grouped(" "))),
            (48, format!("ACCT {} OK", grouped("/"))),
            (62, ascii_hex.clone()),
            (63, ebcdic_hex),
            (63, format!("X{ascii_hex}")),
            // A dump with spaces between the bytes, and the hex of the number in groups.
            (62, spaced_hex),
            (62, grouped_hex),
        ] {
            let leaky = answer(spec, &[(39, b"00"), (n, value.as_bytes())]);
            assert_eq!(
                fields_holding(&leaky, &sent, &real),
                vec![n],
                "{n}: {value}"
            );
        }
        // A letter between the groups is not a separator: other text, not this card.
        let apart = format!("ACCT {} X {} OK", &d[..8], &d[8..]);
        let other = answer(spec, &[(39, b"00"), (48, apart.as_bytes())]);
        assert!(fields_holding(&other, &sent, &real).is_empty());
    }

    #[test]
    fn a_card_packed_in_a_binary_field_is_found_from_either_nibble() {
        let real = Pan::from_digits(test_pan("497010").as_bytes()).unwrap();
        let digits = real.expose();
        for spec in [Spec::iso87ascii(), Spec::iso87binary()] {
            // Chip data (DE 55) holding the application PAN (tag 5A) packed, then the same
            // packed from a byte's low nibble.
            for chip in [format!("5A08{digits}9F2701"), format!("0{digits}F")] {
                let leaky = answer(spec, &[(39, b"00"), (55, chip.as_bytes())]);
                let sent = request(spec, test_pan("497019").as_bytes());
                assert_eq!(fields_holding(&leaky, &sent, &real), vec![55], "{chip}");
            }
        }
    }
}
