//! Bytes to [`Message`]: a pure function of the frame and the spec.
//!
//! Everything the spec says is checked while the bytes are in cache: MTI digits, bitmap
//! characters, every length prefix against its field's maximum, digits in numeric fields,
//! no trailing bytes. Failures name the field and the byte offset, never the field's bytes
//! (one of them is a card number). Nothing here indexes input without a bounds check, so
//! hostile frames give errors, not panics. The primitives are nom parsers over `&[u8]`;
//! the field loop walks the bitmap bits.
//!
//! When a frame does not parse, [`recover_header`] still tries to read its MTI and DE 11,
//! because the switch answers such frames with DE 39 = 30 when it can say to what.

use bytes::Bytes;
use nom::Parser;

use super::encoding::{
    all_ascii_digits, all_bcd_digits, all_hex, ascii_decimal, bcd_decimal, ebcdic_decimal,
    hex16_to_u64,
};
use super::message::{FieldText, Layout, Message, bit, decode};
use super::spec::{
    BitmapEncoding, Check, Encoding, FieldSpec, Length, MAX_FIELD, Pad, Plan, PrefixEncoding, Spec,
    SubSpec,
};

/// Where a parse error is: the MTI, the bitmap, a field, or the message as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorLocation {
    /// The message type indicator.
    Mti,
    /// A primary, secondary or tertiary bitmap.
    Bitmap,
    /// This data element.
    Field(u16),
    /// The message as a whole (e.g. bytes after the last field).
    Message,
}

/// Why a frame is not a valid message of its spec. Carries positions, never field bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Longer than the 65535 bytes offsets are kept in.
    #[error("message of {len} bytes is longer than 65535")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The frame ends inside the MTI.
    #[error("message ends inside the MTI at byte {offset}")]
    MtiTruncated {
        /// Where the MTI starts.
        offset: usize,
    },
    /// The MTI is not four digits.
    #[error("MTI at byte {offset} is not four digits")]
    MtiInvalid {
        /// Where the MTI starts.
        offset: usize,
    },
    /// The frame ends inside a bitmap.
    #[error("message ends inside a bitmap at byte {offset}")]
    BitmapTruncated {
        /// Where that bitmap starts.
        offset: usize,
    },
    /// A bitmap character is not hex, or a bitmap names more fields than the spec has.
    #[error("bitmap at byte {offset} is malformed")]
    BitmapInvalid {
        /// Where that bitmap starts.
        offset: usize,
    },
    /// The bitmap names a field the spec does not define.
    #[error("field {field} at byte {offset} is not defined by the spec")]
    UndefinedField {
        /// Field number.
        field: u16,
        /// Where it would start.
        offset: usize,
    },
    /// The frame ends inside the field (its prefix or its content).
    #[error("field {field} at byte {offset} is cut short")]
    FieldTruncated {
        /// Field number.
        field: u16,
        /// Where the field starts.
        offset: usize,
    },
    /// The length prefix is not a number in its encoding.
    #[error("field {field}: length prefix at byte {offset} is not a number")]
    BadLengthPrefix {
        /// Field number.
        field: u16,
        /// Where the prefix starts.
        offset: usize,
    },
    /// The length prefix says more than the field's maximum.
    #[error("field {field}: length {len} at byte {offset} is over the maximum {max}")]
    LengthOverMax {
        /// Field number.
        field: u16,
        /// Where the prefix starts.
        offset: usize,
        /// The length read.
        len: u32,
        /// The spec's maximum.
        max: u32,
    },
    /// Content that the field's type does not allow (e.g. a letter in a numeric field).
    #[error("field {field}: content at byte {offset} does not match its type")]
    BadContent {
        /// Field number.
        field: u16,
        /// Where the content starts.
        offset: usize,
    },
    /// Bytes after the last field the bitmap names.
    #[error("{count} bytes after the last field, at byte {offset}")]
    TrailingBytes {
        /// Where they start.
        offset: usize,
        /// How many.
        count: usize,
    },
}

impl ParseError {
    /// Where the error is, as the vectors' `error_field` names it.
    pub fn location(&self) -> ErrorLocation {
        match *self {
            ParseError::MtiTruncated { .. } | ParseError::MtiInvalid { .. } => ErrorLocation::Mti,
            ParseError::BitmapTruncated { .. } | ParseError::BitmapInvalid { .. } => {
                ErrorLocation::Bitmap
            }
            ParseError::UndefinedField { field, .. }
            | ParseError::FieldTruncated { field, .. }
            | ParseError::BadLengthPrefix { field, .. }
            | ParseError::LengthOverMax { field, .. }
            | ParseError::BadContent { field, .. } => ErrorLocation::Field(field),
            ParseError::TooLong { .. } | ParseError::TrailingBytes { .. } => ErrorLocation::Message,
        }
    }

    /// The field number, when the error is in a field.
    pub fn field(&self) -> Option<u16> {
        match self.location() {
            ErrorLocation::Field(n) => Some(n),
            _ => None,
        }
    }
}

/// Parses a whole frame (without its framing header) with full validation.
#[inline]
pub fn parse(spec: &'static Spec, frame: Bytes) -> Result<Message, ParseError> {
    parse_message::<true>(spec, frame)
}

/// [`parse`] without the per-bitmap fast path: every field walked and checked one by one.
/// The reference the fast path is tested and fuzzed against; same results, only slower.
#[doc(hidden)]
pub fn parse_field_by_field(spec: &'static Spec, frame: Bytes) -> Result<Message, ParseError> {
    parse_message::<false>(spec, frame)
}

/// A whole frame to a validated [`Message`], with or without the fast path. Always inlined:
/// callgrind counted 1,014 instructions per parse this way and 1,098 with `#[inline]`.
#[inline(always)]
fn parse_message<const SHAPED: bool>(
    spec: &'static Spec,
    frame: Bytes,
) -> Result<Message, ParseError> {
    // Filled in place: the offset table is not copied after parsing.
    let mut m = Message::from_parts(spec, frame, Layout::new());
    parse_layout::<true, SHAPED>(spec, &m.buf, &mut m.layout)?;
    m.mti = m.layout.mti;
    m.present = m.layout.mask;
    Ok(m)
}

impl Message {
    /// Parses a frame; see [`parse`].
    #[inline]
    pub fn parse(spec: &'static Spec, frame: Bytes) -> Result<Message, ParseError> {
        parse(spec, frame)
    }
}

/// What could be read from a frame that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveredHeader {
    /// The MTI, when its four digits are there.
    pub mti: Option<[u8; 4]>,
    /// DE 11, when the frame's structure is whole and it is six digits.
    pub stan: Option<[u8; 6]>,
}

/// Reads the MTI and DE 11 from a frame that may be malformed. Content checks are skipped,
/// only structure is followed, so a bad amount in DE 4 still leaves DE 11 readable. DE 11
/// is read when the frame's structure holds up to DE 11's end (every length prefix before
/// it a length within its field's maximum, every field up to it there), as the contract
/// asks (30 "when MTI and DE 11 can be read"): a frame cut short after it, or with bytes
/// left over, still says to what it is answered. Where the structure breaks before it,
/// it is not read. (A wrong length on DE 2 that the structure absorbs shifts DE 11 too:
/// the 30 then goes under six digits the network did not send as a STAN. A network that
/// matches answers on DE 11 alone may take it for a request of its own that has those
/// digits; one that matches on DE 41 too cannot, since [`readable_part`] keeps no field
/// after DE 11 of a broken frame.)
pub fn recover_header(spec: &'static Spec, frame: &[u8]) -> RecoveredHeader {
    let mut layout = Layout::new();
    let res = parse_layout::<false, false>(spec, frame, &mut layout);
    let mti_ok = !matches!(
        res,
        Err(ParseError::MtiInvalid { .. } | ParseError::MtiTruncated { .. })
    ) && layout.mti.iter().all(u8::is_ascii_digit);
    let mut stan = None;
    let (w, m) = bit(11);
    // On an error, the mask holds only the fields read whole before it.
    if layout.mask[w] & m != 0 {
        let r = super::message::rank(&layout.mask, 11);
        if let (Some(&a), Some(&b), Some(f)) = (
            layout.starts.get(r),
            layout.starts.get(r + 1),
            spec.field(11),
        ) && let Some(wire) = frame.get(usize::from(a)..usize::from(b))
        {
            let t = decode(f, wire);
            stan = <[u8; 6]>::try_from(t.as_bytes())
                .ok()
                .filter(|s| s.iter().all(u8::is_ascii_digit));
        }
    }
    RecoveredHeader {
        mti: mti_ok.then_some(layout.mti),
        stan,
    }
}

/// What can be read of a frame that does not parse, for a 30 that echoes what a network
/// matches its answers on (DE 7, 32, 37, 41 beside DE 11), less the fields whose content
/// is wrong. `None` when not even its MTI and bitmap read.
///
/// When only a field's content is wrong, every field is where the bitmap and the lengths
/// put it. When the structure breaks (a field cut short, a length over its maximum, bytes
/// left over), a wrong length before the break may have moved the bytes of any field into
/// those after it: a track's discretionary data (its card verification value) read as
/// DE 37 or DE 41, say. Then only the fields up to DE 11 are kept, which no track or PIN
/// block comes before (DE 2's length, the one variable before DE 11 in ISO 8583, moves
/// them by a few digits at most).
pub fn readable_part(spec: &'static Spec, frame: Bytes) -> Option<Message> {
    let mut layout = Layout::new();
    let whole = match parse_layout::<false, false>(spec, &frame, &mut layout) {
        Ok(()) => true,
        Err(
            ParseError::TooLong { .. }
            | ParseError::MtiTruncated { .. }
            | ParseError::MtiInvalid { .. }
            | ParseError::BitmapTruncated { .. }
            | ParseError::BitmapInvalid { .. },
        ) => return None,
        Err(_) => false,
    };
    let mut part = Message::from_parts(spec, frame, layout);
    let wrong: Vec<usize> = part
        .field_numbers()
        .filter(|&n| !content_ok_at(&part, n) || (!whole && n > 11))
        .collect();
    for n in wrong {
        part.remove(n);
    }
    Some(part)
}

/// Whether field `n` of a message read without content checks holds what its kind allows.
fn content_ok_at(m: &Message, n: usize) -> bool {
    let (Some(f), Some(wire)) = (m.spec().field(n), m.received_wire(n)) else {
        return false;
    };
    let p = Plan::of(f);
    let Some((prefix, v)) = wire.split_at_checked(usize::from(p.prefix_bytes)) else {
        return false;
    };
    let units = if p.prefix_bytes == 0 {
        Some(p.max)
    } else {
        prefix_value(prefix, p.prefix)
    };
    units.is_some_and(|units| check(&p, v, units as usize))
}

/// `n` bytes off the front of `input`, as a nom parser: `(rest, taken)`.
#[inline(always)]
fn take(input: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    nom::bytes::complete::take::<usize, &[u8], ()>(n)
        .parse(input)
        .ok()
}

/// The number a length prefix holds, `None` when it is not one in its encoding.
#[inline]
pub(crate) fn prefix_value(p: &[u8], enc: PrefixEncoding) -> Option<u32> {
    match enc {
        PrefixEncoding::Ascii => ascii_decimal(p),
        PrefixEncoding::Bcd => bcd_decimal(p),
        PrefixEncoding::Ebcdic => ebcdic_decimal(p),
        PrefixEncoding::Binary => Some(p.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b))),
    }
}

/// Reads one bitmap word.
#[inline]
fn bitmap_word(
    input: &[u8],
    enc: BitmapEncoding,
    offset: usize,
) -> Result<(&[u8], u64), ParseError> {
    match enc {
        BitmapEncoding::Binary => {
            let (b, rest) = input
                .split_first_chunk::<8>()
                .ok_or(ParseError::BitmapTruncated { offset })?;
            Ok((rest, u64::from_be_bytes(*b)))
        }
        BitmapEncoding::HexAscii => {
            let (b, rest) = input
                .split_first_chunk::<16>()
                .ok_or(ParseError::BitmapTruncated { offset })?;
            let x = hex16_to_u64(b).ok_or(ParseError::BitmapInvalid { offset })?;
            Ok((rest, x))
        }
    }
}

/// Decodes a 4-digit MTI.
#[inline]
fn mti(spec: &Spec, input: &[u8]) -> Result<(usize, [u8; 4]), ParseError> {
    let f = &spec.mti;
    if f.encoding == Encoding::Ascii {
        let head = input
            .first_chunk::<4>()
            .ok_or(ParseError::MtiTruncated { offset: 0 })?;
        if !all_ascii_digits(head) {
            return Err(ParseError::MtiInvalid { offset: 0 });
        }
        return Ok((4, *head));
    }
    if matches!(f.encoding, Encoding::Bcd(_)) {
        let [a, b] = *input
            .first_chunk::<2>()
            .ok_or(ParseError::MtiTruncated { offset: 0 })?;
        let out = [a >> 4, a & 0x0F, b >> 4, b & 0x0F];
        if out.iter().any(|&d| d > 9) {
            return Err(ParseError::MtiInvalid { offset: 0 });
        }
        return Ok((2, out.map(|d| b'0' + d)));
    }
    let wl = f.wire_len(4);
    let (_, raw) = take(input, wl).ok_or(ParseError::MtiTruncated { offset: 0 })?;
    let t = decode(f, raw);
    let out =
        <[u8; 4]>::try_from(t.as_bytes()).map_err(|_| ParseError::MtiInvalid { offset: 0 })?;
    if !all_ascii_digits(&out) {
        return Err(ParseError::MtiInvalid { offset: 0 });
    }
    Ok((wl, out))
}

/// The parser proper. `STRICT` adds content checks; without it only structure is followed
/// (used by [`recover_header`]). `SHAPED` tries the bitmap's cached plan first (see
/// [`super::shape`]). On error, `layout` holds the fields completed before it, and without
/// `SHAPED` nothing more ([`recover_header`] relies on that; with it, a failed fast path may
/// have left offsets past them, which [`parse`] discards with the layout).
#[inline]
pub(crate) fn parse_layout<const STRICT: bool, const SHAPED: bool>(
    spec: &Spec,
    buf: &[u8],
    layout: &mut Layout,
) -> Result<(), ParseError> {
    if buf.len() > usize::from(u16::MAX) {
        return Err(ParseError::TooLong { len: buf.len() });
    }
    let total = buf.len();
    let (mti_len, mti) = mti(spec, buf)?;
    layout.mti = mti;
    let mut input = buf.get(mti_len..).unwrap_or_default();

    // Bitmaps: bit 1 announces the secondary, bit 65 the tertiary (only in 192-field specs).
    let mut words = [0u64; 3];
    let (rest, w0) = bitmap_word(input, spec.bitmap, total - input.len())?;
    let bm_offset = total - input.len();
    input = rest;
    words[0] = w0;
    if w0 >> 63 == 1 {
        if spec.max_field < 128 {
            return Err(ParseError::BitmapInvalid { offset: bm_offset });
        }
        let (rest, w1) = bitmap_word(input, spec.bitmap, total - input.len())?;
        input = rest;
        words[1] = w1;
        if spec.max_field > 128 && w1 >> 63 == 1 {
            let (rest, w2) = bitmap_word(input, spec.bitmap, total - input.len())?;
            input = rest;
            words[2] = w2;
        }
    }
    words[0] &= !(1 << 63);
    if spec.max_field > 128 {
        words[1] &= !(1 << 63);
    }

    // The common case: a bitmap this thread has seen, checked run by run. Anything wrong
    // falls through to the field-by-field walk below, which names it.
    if STRICT
        && SHAPED
        && let Some(count) =
            super::shape::parse_fields(spec, words, buf, total - input.len(), &mut layout.starts)
    {
        layout.mask = words;
        layout.count = count;
        return Ok(());
    }

    let mut count = 0usize;
    let plans = &*spec.plans;
    for (wi, &word) in words.iter().enumerate() {
        // Shifted left past each field found: `lzcnt` and two shifts per field.
        let mut bits = word;
        let mut n = wi * 64;
        while bits != 0 {
            let lz = bits.leading_zeros();
            bits = (bits << lz) << 1;
            n += lz as usize + 1;
            let offset = total - input.len();
            let field = n as u16;
            // A byte-sized index into a 256-entry table: no bounds check, no panic path.
            let p = &plans[n & 0xFF];
            if !p.defined {
                return Err(ParseError::UndefinedField { field, offset });
            }
            // Slices are split with `split_at_checked`, not nom: in this loop nom's `take`
            // cost a call and a `Result` per field (measured with callgrind).
            let (units, wire) = if p.prefix_bytes == 0 {
                (p.max as usize, p.fixed_wire as usize)
            } else {
                let (pre, rest) = input
                    .split_at_checked(usize::from(p.prefix_bytes))
                    .ok_or(ParseError::FieldTruncated { field, offset })?;
                let len = prefix_value(pre, p.prefix)
                    .ok_or(ParseError::BadLengthPrefix { field, offset })?;
                if len > p.max {
                    return Err(ParseError::LengthOverMax {
                        field,
                        offset,
                        len,
                        max: p.max,
                    });
                }
                input = rest;
                (len as usize, p.wire_len(len as usize))
            };
            let (v, rest) = input
                .split_at_checked(wire)
                .ok_or(ParseError::FieldTruncated { field, offset })?;
            if STRICT && !check(p, v, units) {
                return Err(ParseError::BadContent {
                    field,
                    offset: total - input.len(),
                });
            }
            input = rest;
            if let Some(s) = layout.starts.get_mut(count) {
                *s = offset as u16;
            }
            count += 1;
            if !STRICT {
                // For recovery: where this field ends and that it is complete, in case a
                // later field fails.
                if let Some(s) = layout.starts.get_mut(count) {
                    *s = (total - input.len()) as u16;
                }
                let (w, m) = bit(n);
                layout.mask[w] |= m;
                layout.count = count;
            }
        }
    }
    if let Some(s) = layout.starts.get_mut(count) {
        *s = (total - input.len()) as u16;
    }
    layout.mask = words;
    layout.count = count;
    if !input.is_empty() {
        return Err(ParseError::TrailingBytes {
            offset: total - input.len(),
            count: input.len(),
        });
    }
    Ok(())
}

/// True when a field's content matches its kind in its encoding.
#[inline]
pub(crate) fn content_ok(f: &FieldSpec, v: &[u8], units: usize) -> bool {
    check(&Plan::of(f), v, units)
}

/// The parser's content check, one `match` on a precomputed [`Check`], with the common case
/// (ASCII digits) tested first so that most fields skip the dispatch.
#[inline(always)]
pub(super) fn check(p: &Plan, v: &[u8], units: usize) -> bool {
    if p.check == Check::AsciiDigits {
        return all_ascii_digits(v);
    }
    let ebcdic_digit = |b: &u8| (0xF0..=0xF9).contains(b);
    match p.check {
        Check::None => true,
        Check::AsciiDigits => all_ascii_digits(v),
        Check::Hex => all_hex(v),
        Check::AsciiTrack => v
            .iter()
            .all(|&b| b.is_ascii_digit() || b == b'=' || b == b'D'),
        Check::AsciiSigned => match v.split_first() {
            Some((s, d)) => (*s == b'C' || *s == b'D') && all_ascii_digits(d),
            None => true,
        },
        Check::EbcdicDigits => v.iter().all(ebcdic_digit),
        Check::EbcdicTrack => v
            .iter()
            .all(|b| ebcdic_digit(b) || *b == 0x7E || *b == 0xC4),
        Check::EbcdicSigned => match v.split_first() {
            Some((s, d)) => (*s == 0xC3 || *s == 0xC4) && d.iter().all(ebcdic_digit),
            None => true,
        },
        Check::BcdDigits => bcd_ok(v, units, p.pad, false),
        Check::BcdNibbles => bcd_ok(v, units, p.pad, true),
        Check::BcdPadded => bcd_ok(v, units, p.pad, false),
        Check::BcdSigned => match v.split_first() {
            Some((s, d)) => {
                (*s == b'C' || *s == b'D') && bcd_ok(d, units.saturating_sub(1), p.pad, false)
            }
            None => true,
        },
    }
}

/// Checks packed digits: every digit nibble 0..=9 (or `D` for track data) and, for an odd
/// count, the pad nibble, on the spec's side, is 0 or F whichever the spec writes: the pad
/// carries nothing, and jPOS reads either (a 15-digit card number padded with F by one
/// peer is a card number all the same).
#[inline]
fn bcd_ok(v: &[u8], digits: usize, pad: Pad, track: bool) -> bool {
    let odd = digits % 2 == 1;
    if !track && (!odd || matches!(pad, Pad::Left0 | Pad::Right0)) {
        let pad_nibble = if odd {
            match pad {
                Pad::Left0 => v.first().map(|b| b >> 4),
                _ => v.last().map(|b| b & 0x0F),
            }
        } else {
            None
        };
        match pad_nibble {
            None | Some(0) => return all_bcd_digits(v),
            // Another peer's F pad: checked nibble by nibble below.
            Some(0xF) => {}
            Some(_) => return false,
        }
    }
    let total = v.len() * 2;
    let skip = match pad {
        Pad::Left0 | Pad::LeftF => 0,
        Pad::Right0 | Pad::RightF => total.wrapping_sub(1),
    };
    let mut ok = true;
    for (i, &b) in v.iter().enumerate() {
        for (j, nib) in [b >> 4, b & 0x0F].into_iter().enumerate() {
            let pos = i * 2 + j;
            if odd && pos == skip {
                ok &= nib == 0 || nib == 0xF;
            } else {
                ok &= nib <= 9 || (track && nib == 0xD);
            }
        }
    }
    ok
}

/// Decodes the subfields of one field's content with a nested layout (jPOS
/// `isofieldpackager`). With a bitmap subfield, later subfields follow it; without, every
/// subfield follows in order until the bytes run out. Errors name the outer field and the
/// offset inside it.
pub fn parse_subfields<'a>(
    sub: &SubSpec,
    outer: usize,
    content: &'a [u8],
) -> Result<Vec<(usize, FieldText<'a>)>, ParseError> {
    let field = outer as u16;
    let mut out = Vec::new();
    let mut input = content;
    let total = content.len();
    let mut present: Option<[u64; 3]> = None;
    let mut idx = 0usize;
    while idx < sub.fields.len() && !input.is_empty() {
        let offset = total - input.len();
        if let Some((bm_id, enc, bytes)) = sub.bitmap
            && bm_id == idx
        {
            let mut words = [0u64; 3];
            let (rest, w0) = bitmap_word(input, enc, offset)
                .map_err(|_| ParseError::FieldTruncated { field, offset })?;
            input = rest;
            words[0] = w0;
            if bytes > 8 && w0 >> 63 == 1 {
                let (rest, w1) = bitmap_word(input, enc, offset)
                    .map_err(|_| ParseError::FieldTruncated { field, offset })?;
                input = rest;
                words[1] = w1;
            }
            present = Some(words);
            idx += 1;
            continue;
        }
        if let Some(words) = present {
            // Bit k of the sub-bitmap names subfield k, as in jPOS.
            let k = idx;
            // Bit 1 of a sub-bitmap longer than 8 bytes flags its second word, as in a
            // message's own bitmap: no subfield.
            let second_word_flag = k == 1 && sub.bitmap.is_some_and(|(_, _, b)| b > 8);
            if k == 0 || k > MAX_FIELD || second_word_flag {
                idx += 1;
                continue;
            }
            let (w, m) = bit(k);
            if words[w] & m == 0 {
                idx += 1;
                continue;
            }
        }
        let Some(f) = sub.fields.get(idx).and_then(Option::as_ref) else {
            if present.is_some() {
                // The sub-bitmap names a subfield the layout lacks: its bytes cannot be
                // stepped over, and every later subfield would be read out of step.
                return Err(ParseError::UndefinedField { field, offset });
            }
            idx += 1;
            continue;
        };
        let units = match f.length {
            Length::Fixed => f.max_len as usize,
            Length::Var { encoding, .. } => {
                let (_, p) = take(input, f.prefix_bytes())
                    .ok_or(ParseError::FieldTruncated { field, offset })?;
                let len = prefix_value(p, encoding)
                    .ok_or(ParseError::BadLengthPrefix { field, offset })?;
                if len > f.max_len {
                    return Err(ParseError::LengthOverMax {
                        field,
                        offset,
                        len,
                        max: f.max_len,
                    });
                }
                len as usize
            }
        };
        if units == 0 && f.length == Length::Fixed {
            // A zero-length placeholder (Postilion's subfield 0) holds nothing to report.
            idx += 1;
            continue;
        }
        let wl = f.prefix_bytes() + f.wire_len(units);
        let (rest, wire) = take(input, wl).ok_or(ParseError::FieldTruncated { field, offset })?;
        if !content_ok(f, wire.get(f.prefix_bytes()..).unwrap_or_default(), units) {
            return Err(ParseError::BadContent { field, offset });
        }
        out.push((idx, decode(f, wire)));
        input = rest;
        idx += 1;
    }
    // Bytes no subfield took: a layout that does not fit the content (or a sub-bitmap
    // naming subfields past the layout's last).
    if !input.is_empty() {
        return Err(ParseError::BadContent {
            field,
            offset: total - input.len(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::iso8583::{Message, Spec};

    #[test]
    fn an_odd_count_of_packed_digits_reads_with_an_f_pad_as_with_a_zero() {
        // A 15-digit card number in iso87binary (LL BCD, left-padded with 0 by this spec),
        // sent padded with F by another peer: the same card, as jPOS reads it.
        let pan = crate::cards::vpan::random_luhn("497010", 15);
        let mut m = Message::new(Spec::iso87binary(), b"0100").unwrap();
        m.set(2, pan.as_bytes()).unwrap();
        let packed = m.pack();
        let zero_padded = Message::parse(Spec::iso87binary(), packed.clone()).unwrap();
        assert_eq!(zero_padded.text(2).unwrap().to_vec(), pan.as_bytes());

        // The MTI (2 bytes) and the bitmap (8) come first, then DE 2's prefix (0x15) and
        // its 8 bytes, the pad nibble at one end.
        let mut bytes = packed.to_vec();
        assert_eq!(bytes[10], 0x15);
        let (at, shift) = if bytes[11] >> 4 == 0 {
            (11, 4)
        } else {
            (18, 0)
        };
        assert_eq!((bytes[at] >> shift) & 0x0F, 0, "the spec pads with 0");
        bytes[at] |= 0x0F << shift;
        let f_padded = Message::parse(Spec::iso87binary(), bytes.clone().into()).unwrap();
        assert_eq!(f_padded.text(2).unwrap().to_vec(), pan.as_bytes());

        // Any other pad nibble is not a digit count's pad: refused.
        bytes[at] = (bytes[at] & !(0x0F << shift)) | (0x03 << shift);
        assert!(Message::parse(Spec::iso87binary(), bytes.into()).is_err());
    }
}
