//! Card numbers where a request may carry them besides DE 2: the tracks.
//!
//! Track 2 (DE 35) holds the account number up to `=` (or `D`), track 1 (DE 45) after its
//! format code `B` up to `^`, track 3 (DE 36) after a two-digit format code up to `=`. A
//! vPAN in any of them is as much a vPAN as in DE 2: beside another card in DE 2, or
//! unreadable, the flow refuses the request rather than forward it past the vPAN's
//! controls (see `Flow::unknown_or_passthrough`).
//!
//! Read on the approval path only when a request carries a track, and without allocating.

use crate::iso8583::Message;
use crate::pan::Pan;

/// The fields that carry a card number, with the digits before it that are not part of
/// it (track 3's format code). A sentinel, or track 1's `B`, is skipped as any character
/// before the first digit is.
pub(super) const CARD_FIELDS: [(usize, usize); 4] = [(2, 0), (35, 0), (36, 2), (45, 0)];

/// The tracks among [`CARD_FIELDS`].
const TRACKS: [(usize, usize); 3] = [(35, 0), (36, 2), (45, 0)];

/// Where an account number lies in `text`: from its first digit, past `code` digits of a
/// format code, to the first character that is neither a digit nor a space (track 1 may
/// group its digits with spaces), with whether such a separator ends it (`false`: the
/// field ends first, and where the number ends cannot be told).
fn account_span(text: &[u8], code: usize) -> (&[u8], bool) {
    let start = text
        .iter()
        .position(u8::is_ascii_digit)
        .map_or(text.len(), |first| (first + code).min(text.len()));
    let rest = &text[start..];
    match rest.iter().position(|&c| !c.is_ascii_digit() && c != b' ') {
        Some(end) => (&rest[..end], true),
        None => (rest, false),
    }
}

/// The digits of an account span, its spaces left out.
fn digits(span: &[u8]) -> impl Iterator<Item = u8> + '_ {
    span.iter().copied().filter(u8::is_ascii_digit)
}

/// Whether a track of `request` may carry another account number than `pan`: read to its
/// separator, it is another; with no separator to end it, its digits do not begin with
/// `pan`'s. A track with no digits there (spaces, say) names no card.
pub(super) fn may_name_another_card(request: &Message, pan: &Pan) -> bool {
    let pan = pan.as_bytes();
    TRACKS.into_iter().any(|(n, code)| {
        request.text(n).is_some_and(|t| {
            let (span, separated) = account_span(&t, code);
            if digits(span).next().is_none() {
                false
            } else if separated {
                !digits(span).eq(pan.iter().copied())
            } else {
                !digits(span).take(pan.len()).eq(pan.iter().copied())
            }
        })
    })
}

/// The first digits of field `n` (at most 19, a PAN's longest), where its account number
/// would be, in `buf`; empty when the request has no such field.
pub(super) fn leading_digits<'b>(
    request: &Message,
    (n, code): (usize, usize),
    buf: &'b mut [u8; 19],
) -> &'b [u8] {
    let Some(text) = request.text(n) else {
        return &[];
    };
    let (span, _) = account_span(&text, code);
    let mut len = 0;
    for (slot, d) in buf.iter_mut().zip(digits(span)) {
        *slot = d;
        len += 1;
    }
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_number_ends_at_its_separator_and_keeps_track_1s_spaces_out() {
        let pan = crate::pan::test_pan("497010");
        let grouped = format!("{} {} {}", &pan[..4], &pan[4..10], &pan[10..]);
        let cases: [(String, usize, String, bool); 8] = [
            (format!("{pan}=2912"), 0, pan.clone(), true),
            (format!("B{grouped}^A/B^2912"), 0, grouped.clone(), true),
            (format!(";{pan}D2912?"), 0, pan.clone(), true),
            (format!("{pan}2912"), 0, format!("{pan}2912"), false),
            ("B^".into(), 0, String::new(), false),
            // Track 3: its format code, after the sentinel if there is one.
            (format!("01{pan}=724"), 2, pan.clone(), true),
            (format!(";01{pan}=724?"), 2, pan.clone(), true),
            (";0".into(), 2, String::new(), false),
        ];
        for (i, (text, code, number, separated)) in cases.iter().enumerate() {
            let read = account_span(text.as_bytes(), *code);
            assert_eq!(read, (number.as_bytes(), *separated), "case {i}");
        }
        assert!(digits(grouped.as_bytes()).eq(pan.bytes()));
    }
}
