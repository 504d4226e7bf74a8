//! [`Message`] to bytes: MTI, bitmaps rebuilt from the fields present, then the fields.
//!
//! A pure function of the message and its spec. Fields that were received and not changed
//! are copied back byte for byte, in runs (a parsed and untouched message is the MTI, the
//! bitmaps and one copy), so parse-then-pack gives back the same bytes and a response built
//! by changing a few fields costs little more than a copy. Edited fields were encoded and
//! validated when set ([`encode_field`]), so packing itself cannot fail.

use bytes::{BufMut, Bytes, BytesMut};

use super::encoding::{LATIN1_TO_EBCDIC, hex_value, u64_to_hex16, write_ascii_decimal};
use super::message::Message;
use super::parse::content_ok;
use super::spec::{BitmapEncoding, Encoding, FieldSpec, Kind, Length, Pad, PrefixEncoding};

/// Why a field could not be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The spec defines no such field (or it is a bitmap marker).
    #[error("field {field} is not defined by the spec")]
    NoSuchField {
        /// Field number.
        field: u16,
    },
    /// Wrong length for the field (fixed length differs, or over the maximum). Lengths are
    /// in the spec's units: characters, digits or bytes.
    #[error(
        "field {field}: the value is {len} long, {} {max}",
        if *fixed { "where the field is fixed at" } else { "over the field's maximum of" }
    )]
    BadLength {
        /// Field number.
        field: u16,
        /// Units given.
        len: usize,
        /// The spec's length (exact for fixed fields).
        max: u32,
        /// Whether the field is fixed at `max`.
        fixed: bool,
    },
    /// Characters the field's type does not allow (e.g. a letter in a numeric field).
    #[error("field {field}: value does not match the field's type")]
    BadValue {
        /// Field number (0 for the MTI).
        field: u16,
    },
    /// The encoded field is too long to keep.
    #[error("field {field}: value too long")]
    TooLong {
        /// Field number.
        field: u16,
    },
}

/// A track-data character as a text layout writes it. Track 2 read from packed BCD has
/// its separator as the nibble D, so it reads as `D`; a text layout's separator is `=`
/// (jPOS's `bcd2str`, and what ASCII and EBCDIC hosts parse), so a message moved from a
/// binary link to a text one must not carry the `D` across.
fn track_text(b: u8) -> u8 {
    if matches!(b, b'D' | b'd') { b'=' } else { b }
}

/// Encodes `value` (decoded form: digits, text, hex for binary) as field `n`'s wire bytes,
/// length prefix included, appending to `out`. Validates like the parser does.
pub(crate) fn encode_field(
    f: &FieldSpec,
    n: usize,
    value: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EditError> {
    let field = n as u16;
    let is_bytes = matches!(f.encoding, Encoding::Binary | Encoding::HexAscii);
    let units = if is_bytes {
        if !value.len().is_multiple_of(2) {
            return Err(EditError::BadValue { field });
        }
        value.len() / 2
    } else {
        value.len()
    };
    let fixed = matches!(f.length, Length::Fixed);
    if (fixed && units != f.max_len as usize) || units > f.max_len as usize {
        return Err(EditError::BadLength {
            field,
            len: units,
            max: f.max_len,
            fixed,
        });
    }
    if let Length::Var { digits, encoding } = f.length {
        write_prefix(units as u32, digits, encoding, out).ok_or(EditError::TooLong { field })?;
    }
    let start = out.len();
    match f.encoding {
        Encoding::Ascii if f.kind == Kind::Z => out.extend(value.iter().map(|&b| track_text(b))),
        Encoding::Ascii => out.extend_from_slice(value),
        Encoding::HexAscii => {
            if !value.iter().all(u8::is_ascii_hexdigit) {
                return Err(EditError::BadValue { field });
            }
            out.extend_from_slice(value);
        }
        Encoding::Ebcdic => out.extend(value.iter().map(|&b| {
            let b = if f.kind == Kind::Z { track_text(b) } else { b };
            LATIN1_TO_EBCDIC[usize::from(b)]
        })),
        Encoding::Binary => {
            for pair in value.chunks_exact(2) {
                let (Some(h), Some(l)) = (
                    pair.first().copied().and_then(hex_value),
                    pair.get(1).copied().and_then(hex_value),
                ) else {
                    return Err(EditError::BadValue { field });
                };
                out.push((h << 4) | l);
            }
        }
        Encoding::Bcd(pad) => {
            let (sign, digits) = match (f.kind, value.split_first()) {
                (Kind::Xn, Some((&s, rest))) => (Some(s), rest),
                _ => (None, value),
            };
            if let Some(s) = sign {
                out.push(s);
            }
            // Nibbles are paired as they come, so no buffer is needed.
            let odd = digits.len() % 2 == 1;
            let pad_nibble = match pad {
                Pad::Left0 | Pad::Right0 => 0,
                Pad::LeftF | Pad::RightF => 0xF,
            };
            let mut high: Option<u8> = None;
            let mut put = |nib: u8, out: &mut Vec<u8>| match high.take() {
                Some(h) => out.push((h << 4) | nib),
                None => high = Some(nib),
            };
            if odd && matches!(pad, Pad::Left0 | Pad::LeftF) {
                put(pad_nibble, out);
            }
            for &c in digits {
                let nib = match c {
                    b'0'..=b'9' => c - b'0',
                    b'=' | b'D' | b'd' if matches!(f.kind, Kind::Z) => 0xD,
                    _ => return Err(EditError::BadValue { field }),
                };
                put(nib, out);
            }
            if odd && matches!(pad, Pad::Right0 | Pad::RightF) {
                put(pad_nibble, out);
            }
        }
    }
    if !content_ok(f, out.get(start..).unwrap_or_default(), units) {
        return Err(EditError::BadValue { field });
    }
    Ok(())
}

/// Writes a length prefix; `None` when `len` does not fit in it.
fn write_prefix(len: u32, digits: u8, enc: PrefixEncoding, out: &mut Vec<u8>) -> Option<()> {
    let d = usize::from(digits);
    match enc {
        PrefixEncoding::Ascii | PrefixEncoding::Ebcdic => {
            let mut buf = [0u8; 9];
            let s = buf.get_mut(..d)?;
            if !write_ascii_decimal(len, s) {
                return None;
            }
            if matches!(enc, PrefixEncoding::Ebcdic) {
                s.iter_mut()
                    .for_each(|c| *c = LATIN1_TO_EBCDIC[usize::from(*c)]);
            }
            out.extend_from_slice(s);
        }
        PrefixEncoding::Bcd => {
            let bytes = d.div_ceil(2);
            let mut buf = [0u8; 10];
            let s = buf.get_mut(..bytes * 2)?;
            if !write_ascii_decimal(len, s) {
                return None;
            }
            if s.len() > d && s.first() != Some(&b'0') {
                return None;
            }
            for pair in s.chunks_exact(2) {
                if let [h, l] = pair {
                    out.push(((h - b'0') << 4) | (l - b'0'));
                }
            }
        }
        PrefixEncoding::Binary => {
            if digits <= 2 {
                out.push(u8::try_from(len).ok()?);
            } else {
                out.extend_from_slice(&u16::try_from(len).ok()?.to_be_bytes());
            }
        }
    }
    Some(())
}

impl Message {
    /// Appends the message's bytes to `dst`: MTI, bitmaps rebuilt from the fields present,
    /// then the fields in order. Untouched received fields are copied verbatim, in runs.
    pub fn pack_into(&self, dst: &mut BytesMut) {
        let spec = self.spec;
        dst.reserve(4 + 48 + self.buf.len() + self.edits.len());

        // MTI: validated digits, so every encoding below succeeds.
        match spec.mti.encoding {
            Encoding::Bcd(_) => {
                let [a, b, c, d] = self.mti.map(|x| x.wrapping_sub(b'0') & 0x0F);
                dst.put_slice(&[(a << 4) | b, (c << 4) | d]);
            }
            Encoding::Ebcdic => dst.put_slice(&self.mti.map(|c| LATIN1_TO_EBCDIC[usize::from(c)])),
            _ => dst.put_slice(&self.mti),
        }

        // Fields. The common case (nothing edited) is one copy of the received bitmaps and
        // fields: the bitmaps as they came too (a secondary bitmap of zeros, lower-case
        // hex), so that what vpan passes on untouched is the bytes it received.
        let starts = &self.layout.starts;
        let count = self.layout.count;
        if self.edits.is_empty() && self.present == self.layout.mask && count > 0 {
            let a = spec.mti.wire_len(4);
            let b = usize::from(starts.get(count).copied().unwrap_or(0));
            dst.put_slice(self.buf.get(a..b).unwrap_or_default());
            return;
        }

        // Bitmaps from the fields present now.
        let mut words = self.present;
        let tertiary = spec.max_field > 128;
        if tertiary && words[2] != 0 {
            words[1] |= 1 << 63;
        }
        if words[1] != 0 || (tertiary && words[2] != 0) {
            words[0] |= 1 << 63;
        }
        let nwords = if words[0] >> 63 == 0 {
            1
        } else if tertiary && words[1] >> 63 == 1 {
            3
        } else {
            2
        };
        for w in words.iter().take(nwords) {
            match spec.bitmap {
                BitmapEncoding::Binary => dst.put_slice(&w.to_be_bytes()),
                BitmapEncoding::HexAscii => dst.put_slice(&u64_to_hex16(*w)),
            }
        }

        // One pass over the edit records: which fields are edited. With few records their
        // wire bytes are looked up again when needed; with many (a message built from
        // scratch), a table of each field's last record avoids a quadratic walk.
        let mut edited = [0u64; 3];
        let mut records = 0usize;
        let mut rest = self.edits.as_slice();
        while let [f, l0, l1, tail @ ..] = rest {
            let len = u16::from_le_bytes([*l0, *l1]);
            let (w, m) = super::message::bit(usize::from(*f));
            edited[w] |= m;
            records += 1;
            let take = if len == u16::MAX { 0 } else { usize::from(len) };
            rest = tail.get(take..).unwrap_or_default();
        }
        let table = (records > 8).then(|| {
            let mut last = [u32::MAX; 256];
            let mut rest = self.edits.as_slice();
            let mut at = 0usize;
            while let [f, l0, l1, tail @ ..] = rest {
                let len = u16::from_le_bytes([*l0, *l1]);
                last[usize::from(*f)] = at as u32;
                let take = if len == u16::MAX { 0 } else { usize::from(len) };
                rest = tail.get(take..).unwrap_or_default();
                at += 3 + take;
            }
            last
        });
        // Only the changed fields are visited: everything received between two changes is
        // contiguous in the frame and goes out as one copy.
        let parsed = self.layout.mask;
        let changed = [
            edited[0] | (parsed[0] & !self.present[0]),
            edited[1] | (parsed[1] & !self.present[1]),
            edited[2] | (parsed[2] & !self.present[2]),
        ];
        let at = |r: usize| usize::from(starts.get(r).copied().unwrap_or(0));
        let mut cursor = at(0);
        for (wi, &word) in changed.iter().enumerate() {
            let mut bits = word;
            let mut n = wi * 64;
            while bits != 0 {
                let lz = bits.leading_zeros();
                bits = (bits << lz) << 1;
                n += lz as usize + 1;
                let (w, m) = super::message::bit(n);
                let r = super::message::rank(&parsed, n);
                if count > 0 {
                    dst.put_slice(self.buf.get(cursor..at(r)).unwrap_or_default());
                    cursor = if parsed[w] & m != 0 { at(r + 1) } else { at(r) };
                }
                if self.present[w] & m != 0 && !(tertiary && n == 65) {
                    let wire = match &table {
                        Some(last) => self.record(last[n & 0xFF] as usize),
                        None => self.edit(n).flatten().unwrap_or_default(),
                    };
                    dst.put_slice(wire);
                }
            }
        }
        if count > 0 {
            dst.put_slice(self.buf.get(cursor..at(count)).unwrap_or_default());
        }
    }

    /// The wire bytes of the edit record at `at` (empty for a removal).
    fn record(&self, at: usize) -> &[u8] {
        let Some([_, l0, l1]) = self.edits.get(at..at + 3) else {
            return &[];
        };
        let len = u16::from_le_bytes([*l0, *l1]);
        if len == u16::MAX {
            return &[];
        }
        self.edits
            .get(at + 3..at + 3 + usize::from(len))
            .unwrap_or_default()
    }

    /// The message's bytes in a new buffer (see [`Message::pack_into`]).
    pub fn pack(&self) -> Bytes {
        let mut dst = BytesMut::new();
        self.pack_into(&mut dst);
        dst.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::Message;
    use crate::iso8583::spec::Spec;

    #[test]
    fn track_2_read_from_bcd_is_written_to_a_text_layout_with_its_equals_sign() {
        // Passed through from a binary network link to an ASCII issuer: the `D` that BCD
        // track data reads as becomes the `=` a text host parses.
        let pan = crate::pan::test_pan("497010");
        let track = format!("{pan}D29121011234");
        let track = track.as_bytes();
        let mut binary = Message::new(Spec::iso87binary(), b"0100").unwrap();
        binary.set(35, track).unwrap();
        let binary = Message::parse(Spec::iso87binary(), binary.pack()).unwrap();
        let read = binary.text(35).unwrap().to_vec();
        assert_eq!(read, track, "read from BCD as D");
        let mut ascii = Message::new(Spec::iso87ascii(), b"0100").unwrap();
        ascii.set(35, &read).unwrap();
        let packed = ascii.pack();
        let separator = pan.len();
        let at = packed
            .windows(pan.len())
            .position(|w| w == pan.as_bytes())
            .unwrap();
        assert_eq!(packed[at + separator], b'=');
    }

    #[test]
    fn an_untouched_message_packs_to_the_bytes_it_came_in_bitmaps_included() {
        let cases: [&[u8]; 3] = [
            // A secondary bitmap of zeros, which a rebuild would drop.
            b"080080200000000000000000000000000000000001",
            // Lower-case hex, which a rebuild would write in upper case.
            b"08000e200000000000000000000123450000000123451126143015000100",
            b"08000020000000000000000001",
        ];
        for bytes in cases {
            let m = Message::parse(Spec::iso87ascii(), Bytes::from_static(bytes)).unwrap();
            assert_eq!(m.pack(), bytes, "{}", String::from_utf8_lossy(bytes));
            // Answered (a new MTI, no field changed), only the MTI differs.
            let mut answer = m.clone();
            answer.set_mti(b"0810").unwrap();
            assert_eq!(answer.pack()[4..], bytes[4..]);
        }
        // Edited, the bitmaps are rebuilt from the fields present.
        let mut m = Message::parse(Spec::iso87ascii(), Bytes::from_static(cases[0])).unwrap();
        m.set(39, b"00").unwrap();
        assert_eq!(&m.pack()[..], b"0800002000000200000000000100" as &[u8]);
    }

    #[test]
    fn prefixes_are_written_in_their_encoding() {
        let cases: &[(u32, u8, PrefixEncoding, &[u8])] = &[
            (16, 2, PrefixEncoding::Ascii, b"16"),
            (38, 3, PrefixEncoding::Ascii, b"038"),
            (19, 2, PrefixEncoding::Bcd, &[0x19]),
            (19, 3, PrefixEncoding::Bcd, &[0x00, 0x19]),
            (200, 2, PrefixEncoding::Binary, &[200]),
            (300, 3, PrefixEncoding::Binary, &[0x01, 0x2C]),
            (12, 2, PrefixEncoding::Ebcdic, &[0xF1, 0xF2]),
        ];
        for &(len, digits, enc, want) in cases {
            let mut out = Vec::new();
            write_prefix(len, digits, enc, &mut out).unwrap();
            assert_eq!(out, want, "{len} {digits} {enc:?}");
        }
        assert!(write_prefix(100, 2, PrefixEncoding::Ascii, &mut Vec::new()).is_none());
        assert!(write_prefix(100, 2, PrefixEncoding::Bcd, &mut Vec::new()).is_none());
    }

    #[test]
    fn odd_digit_counts_are_padded_on_the_side_the_spec_says() {
        let cases = [
            (Pad::Left0, vec![0x08, 0x12]),
            (Pad::LeftF, vec![0xF8, 0x12]),
            (Pad::Right0, vec![0x81, 0x20]),
            (Pad::RightF, vec![0x81, 0x2F]),
        ];
        for (pad, want) in cases {
            let f = FieldSpec::fixed(Kind::N, Encoding::Bcd(pad), 3);
            let mut out = Vec::new();
            encode_field(&f, 22, b"812", &mut out).unwrap();
            assert_eq!(out, want, "{pad:?}");
        }
    }

    #[test]
    fn setting_a_value_of_the_wrong_shape_names_the_field() {
        let mut m = Message::new(Spec::iso87ascii(), b"0100").unwrap();
        assert_eq!(
            m.set(4, b"12"),
            Err(EditError::BadLength {
                field: 4,
                len: 2,
                max: 12,
                fixed: true,
            })
        );
        assert_eq!(
            m.set(4, b"12").unwrap_err().to_string(),
            "field 4: the value is 2 long, where the field is fixed at 12"
        );
        assert_eq!(
            m.set(32, b"123456789012").unwrap_err().to_string(),
            "field 32: the value is 12 long, over the field's maximum of 11"
        );
        assert_eq!(
            m.set(4, b"00000000001A"),
            Err(EditError::BadValue { field: 4 })
        );
        assert_eq!(m.set(1, b"x"), Err(EditError::NoSuchField { field: 1 }));
        assert_eq!(m.set_mti(b"01X0"), Err(EditError::BadValue { field: 0 }));
        assert!(!m.has(4));
    }

    #[test]
    fn a_built_message_packs_with_a_secondary_bitmap_only_when_needed() {
        let mut m = Message::new(Spec::iso87ascii(), b"0800").unwrap();
        m.set(11, b"000001").unwrap();
        assert_eq!(&m.pack()[..], b"08000020000000000000000001");
        m.set(70, b"301").unwrap();
        assert_eq!(
            &m.pack()[..],
            b"080080200000000000000400000000000000000001301"
        );
    }

    #[test]
    fn a_tertiary_bitmap_is_written_and_read_when_a_spec_has_192_fields() {
        use crate::iso8583::spec::{BitmapEncoding, PrefixEncoding};
        let mut spec = Spec::empty(
            "t",
            FieldSpec::fixed(Kind::N, Encoding::Ascii, 4),
            BitmapEncoding::HexAscii,
            192,
        );
        spec.set_field(
            2,
            "pan",
            FieldSpec::var(Kind::N, Encoding::Ascii, 2, PrefixEncoding::Ascii, 19),
        );
        spec.set_field(70, "nmic", FieldSpec::fixed(Kind::N, Encoding::Ascii, 3));
        spec.set_field(150, "far", FieldSpec::fixed(Kind::Ans, Encoding::Ascii, 2));
        let spec = spec.leak();
        let mut m = Message::new(spec, b"0100").unwrap();
        m.set(2, crate::pan::test_pan("497010").as_bytes()).unwrap();
        m.set(150, b"OK").unwrap();
        let wire = m.pack();
        // Bit 1 (secondary), bit 65 (tertiary) and field 150 are all set.
        assert_eq!(&wire[4..20], b"C000000000000000");
        assert_eq!(&wire[20..36], b"8000000000000000");
        assert_eq!(&wire[36..52], b"0000040000000000");
        let parsed = Message::parse(spec, wire.clone()).unwrap();
        assert_eq!(parsed.field_numbers().collect::<Vec<_>>(), vec![2, 150]);
        assert_eq!(&*parsed.text(150).unwrap(), b"OK");
        assert_eq!(parsed.pack(), wire);
        assert_eq!(m.set(65, b"x"), Err(EditError::NoSuchField { field: 65 }));
        // Without field 150 the tertiary bitmap goes away again.
        let mut small = parsed.clone();
        small.remove(150);
        small.set(70, b"301").unwrap();
        let back = Message::parse(spec, small.pack()).unwrap();
        assert_eq!(back.field_numbers().collect::<Vec<_>>(), vec![2, 70]);
    }
}
