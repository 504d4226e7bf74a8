//! Byte-level encodings shared by parse, pack and the accessors: ASCII digit checks, BCD
//! nibbles, hex text and EBCDIC (IBM-1047, the code page jPOS uses for its `IFE_` classes).
//!
//! Kept apart from the spec and the parser so each is a small pure function that can be
//! tested and optimised alone; the digit checks work on eight bytes at a time because they
//! run on every numeric field of every message.

/// EBCDIC (IBM-1047) byte to its ISO-8859-1 byte.
pub(crate) const EBCDIC_TO_LATIN1: [u8; 256] = [
    0x00, 0x01, 0x02, 0x03, 0x9C, 0x09, 0x86, 0x7F, 0x97, 0x8D, 0x8E, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F,
    0x10, 0x11, 0x12, 0x13, 0x9D, 0x0A, 0x08, 0x87, 0x18, 0x19, 0x92, 0x8F, 0x1C, 0x1D, 0x1E, 0x1F,
    0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x17, 0x1B, 0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x05, 0x06, 0x07,
    0x90, 0x91, 0x16, 0x93, 0x94, 0x95, 0x96, 0x04, 0x98, 0x99, 0x9A, 0x9B, 0x14, 0x15, 0x9E, 0x1A,
    0x20, 0xA0, 0xE2, 0xE4, 0xE0, 0xE1, 0xE3, 0xE5, 0xE7, 0xF1, 0xA2, 0x2E, 0x3C, 0x28, 0x2B, 0x7C,
    0x26, 0xE9, 0xEA, 0xEB, 0xE8, 0xED, 0xEE, 0xEF, 0xEC, 0xDF, 0x21, 0x24, 0x2A, 0x29, 0x3B, 0x5E,
    0x2D, 0x2F, 0xC2, 0xC4, 0xC0, 0xC1, 0xC3, 0xC5, 0xC7, 0xD1, 0xA6, 0x2C, 0x25, 0x5F, 0x3E, 0x3F,
    0xF8, 0xC9, 0xCA, 0xCB, 0xC8, 0xCD, 0xCE, 0xCF, 0xCC, 0x60, 0x3A, 0x23, 0x40, 0x27, 0x3D, 0x22,
    0xD8, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0xAB, 0xBB, 0xF0, 0xFD, 0xFE, 0xB1,
    0xB0, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x6F, 0x70, 0x71, 0x72, 0xAA, 0xBA, 0xE6, 0xB8, 0xC6, 0xA4,
    0xB5, 0x7E, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0xA1, 0xBF, 0xD0, 0x5B, 0xDE, 0xAE,
    0xAC, 0xA3, 0xA5, 0xB7, 0xA9, 0xA7, 0xB6, 0xBC, 0xBD, 0xBE, 0xDD, 0xA8, 0xAF, 0x5D, 0xB4, 0xD7,
    0x7B, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0xAD, 0xF4, 0xF6, 0xF2, 0xF3, 0xF5,
    0x7D, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F, 0x50, 0x51, 0x52, 0xB9, 0xFB, 0xFC, 0xF9, 0xFA, 0xFF,
    0x5C, 0xF7, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0xB2, 0xD4, 0xD6, 0xD2, 0xD3, 0xD5,
    0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0xB3, 0xDB, 0xDC, 0xD9, 0xDA, 0x9F,
];

/// ISO-8859-1 byte to its EBCDIC (IBM-1047) byte; the inverse of [`EBCDIC_TO_LATIN1`].
pub(crate) const LATIN1_TO_EBCDIC: [u8; 256] = invert(&EBCDIC_TO_LATIN1);

const fn invert(t: &[u8; 256]) -> [u8; 256] {
    let mut out = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        out[t[i] as usize] = i as u8;
        i += 1;
    }
    out
}

const ONES: u64 = 0x0101_0101_0101_0101;

/// True when eight bytes are all ASCII digits. Branch-free: after xor with `'0'` a digit has
/// a zero high nibble, and adding 6 to its low nibble does not carry into the high one.
#[inline(always)]
fn word_is_digits(x: u64) -> bool {
    let y = x ^ (ONES * 0x30);
    ((y | y.wrapping_add(ONES * 0x06)) & (ONES * 0xF0)) == 0
}

/// Eight bytes from `v` at `at`, little-endian; 0 (which fails every check) when out of
/// range, which the callers' arithmetic never is.
#[inline(always)]
fn load8(v: &[u8], at: usize) -> u64 {
    v.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_le_bytes)
}

/// Four bytes from `v` at `at`, little-endian, in the low half; 0 when out of range.
#[inline(always)]
fn load4(v: &[u8], at: usize) -> u64 {
    v.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, |b| u64::from(u32::from_le_bytes(b)))
}

/// Applies an eight-byte test to all of `v` without copying: whole words, then one last
/// word overlapping the end; short inputs are padded with `fill` (which passes the test).
#[inline(always)]
fn all_words(v: &[u8], fill: u8, test: impl Fn(u64) -> bool) -> bool {
    let n = v.len();
    if n >= 8 {
        let mut ok = true;
        let mut i = 0;
        while i + 8 <= n {
            ok &= test(load8(v, i));
            i += 8;
        }
        ok & test(load8(v, n - 8))
    } else if n >= 4 {
        let fill4 = u64::from(u32::from_le_bytes([fill; 4])) << 32;
        test(load4(v, 0) | fill4) & test(load4(v, n - 4) | fill4)
    } else {
        let mut w = [fill; 8];
        for (d, s) in w.iter_mut().zip(v) {
            *d = *s;
        }
        test(u64::from_le_bytes(w))
    }
}

/// True when every byte is an ASCII digit (`0`..=`9`). Empty input is all digits.
///
/// From 16 bytes on, sixteen at a time: a fold with no early exit over a `[u8; 16]` is what
/// LLVM turns into one SIMD subtract-compare-or per chunk. On the e-commerce authorization,
/// whose fixed numeric fields are one 57-byte check, that took parse from 1,234 to 1,192
/// instructions (callgrind) against eight-byte words. Shorter input stays on the words.
#[inline]
pub fn all_ascii_digits(v: &[u8]) -> bool {
    let Some(last) = v.last_chunk::<16>() else {
        return all_words(v, b'0', word_is_digits);
    };
    let (chunks, _) = v.as_chunks::<16>();
    // The last chunk overlaps the others when the length is not a multiple of 16.
    let bad = chunks
        .iter()
        .fold(not_digits(last), |a, c| a | not_digits(c));
    bad == 0
}

/// Non-zero when one of sixteen bytes is not an ASCII digit.
#[inline(always)]
fn not_digits(c: &[u8; 16]) -> u8 {
    c.iter()
        .fold(0u8, |a, &b| a | u8::from(b.wrapping_sub(b'0') > 9))
}

/// True when eight bytes hold sixteen nibbles that are all 0..=9.
#[inline(always)]
fn word_is_bcd(x: u64) -> bool {
    let lo = x & (ONES * 0x0F);
    let hi = (x >> 4) & (ONES * 0x0F);
    ((lo.wrapping_add(ONES * 0x06) | hi.wrapping_add(ONES * 0x06)) & (ONES * 0xF0)) == 0
}

/// True when every nibble of `v` is a decimal digit.
#[inline]
pub fn all_bcd_digits(v: &[u8]) -> bool {
    all_words(v, 0, word_is_bcd)
}

/// True when every byte is a hex digit, either case.
#[inline]
pub fn all_hex(v: &[u8]) -> bool {
    v.iter()
        .fold(0u8, |bad, &b| bad | HEX_VALUES[usize::from(b)])
        & 0x80
        == 0
}

/// Hex digit values; `0xFF` for bytes that are not hex digits.
const HEX_VALUES: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'A' as usize + i] = 10 + i as u8;
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// The value of one hex digit, or `None`.
#[inline(always)]
pub fn hex_value(b: u8) -> Option<u8> {
    let v = HEX_VALUES[usize::from(b)];
    (v != 0xFF).then_some(v)
}

/// Upper-case hex digit for a nibble (0..=15).
#[inline(always)]
pub fn hex_digit(n: u8) -> u8 {
    const DIGITS: [u8; 16] = *b"0123456789ABCDEF";
    DIGITS[usize::from(n & 0x0F)]
}

/// Per byte, the high bit set where the byte (below 0x80) is greater than `k`.
#[inline(always)]
const fn gt(x: u64, k: u8) -> u64 {
    x.wrapping_add(ONES * (127 - k as u64)) & (ONES * 0x80)
}

/// Eight hex characters (first character in the lowest byte) to their 32-bit value, without
/// a branch or a table per character; `None` if one is not a hex digit.
#[inline(always)]
fn hex8_to_u32(x: u64) -> Option<u32> {
    let high = ONES * 0x80;
    let digit = gt(x, b'0' - 1) & !gt(x, b'9');
    let upper = gt(x, b'A' - 1) & !gt(x, b'F');
    let lower = gt(x, b'a' - 1) & !gt(x, b'f');
    if x & high != 0 || (digit | upper | lower) != high {
        return None;
    }
    // Letters have bit 6 set: their value is the low nibble plus 9.
    let v = (x & (ONES * 0x0F)) + ((x >> 6) & ONES) * 9;
    // First character most significant: reverse the bytes, then pack nibbles pairwise.
    let v = v.swap_bytes();
    let v = (v | (v >> 4)) & 0x00FF_00FF_00FF_00FF;
    let v = (v | (v >> 8)) & 0x0000_FFFF_0000_FFFF;
    let v = (v | (v >> 16)) & 0x0000_0000_FFFF_FFFF;
    Some(v as u32)
}

/// Reads eight bytes written as sixteen hex characters; `None` if one is not hex.
#[inline]
pub fn hex16_to_u64(v: &[u8; 16]) -> Option<u64> {
    let (a, b) = v.split_at(8);
    let a = u64::from_le_bytes(<[u8; 8]>::try_from(a).ok()?);
    let b = u64::from_le_bytes(<[u8; 8]>::try_from(b).ok()?);
    Some((u64::from(hex8_to_u32(a)?) << 32) | u64::from(hex8_to_u32(b)?))
}

/// A 32-bit value as eight upper-case hex characters, first character in the lowest byte.
#[inline(always)]
fn u32_to_hex8(x: u32) -> u64 {
    let v = u64::from(x);
    let v = ((v & 0xFFFF_0000) << 16) | (v & 0xFFFF);
    let v = ((v & 0x0000_FF00_0000_FF00) << 8) | (v & 0x0000_00FF_0000_00FF);
    let v = ((v & 0x00F0_00F0_00F0_00F0) << 4) | (v & 0x000F_000F_000F_000F);
    // One nibble per byte, least significant in the lowest byte: reverse for text order.
    let v = v.swap_bytes();
    let letters = ((v + ONES * 0x06) >> 4) & ONES;
    v + ONES * b'0' as u64 + letters * 7
}

/// Writes eight bytes as sixteen upper-case hex characters.
#[inline]
pub fn u64_to_hex16(x: u64) -> [u8; 16] {
    let hi = u32_to_hex8((x >> 32) as u32).to_le_bytes();
    let lo = u32_to_hex8(x as u32).to_le_bytes();
    let mut out = [0u8; 16];
    let (a, b) = out.split_at_mut(8);
    a.copy_from_slice(&hi);
    b.copy_from_slice(&lo);
    out
}

/// The value of ASCII decimal digits, `None` if one is not a digit. At most 9 digits.
#[inline]
pub fn ascii_decimal(v: &[u8]) -> Option<u32> {
    let mut acc = 0u32;
    let mut bad = false;
    for &b in v {
        let d = b.wrapping_sub(b'0');
        bad |= d > 9;
        acc = acc.wrapping_mul(10).wrapping_add(u32::from(d));
    }
    if bad { None } else { Some(acc) }
}

/// The value of BCD digits (two per byte), `None` if a nibble is not 0..=9.
#[inline]
pub fn bcd_decimal(v: &[u8]) -> Option<u32> {
    let mut acc = 0u32;
    let mut bad = false;
    for &b in v {
        let (h, l) = (b >> 4, b & 0x0F);
        bad |= h > 9 || l > 9;
        acc = acc
            .wrapping_mul(100)
            .wrapping_add(u32::from(h) * 10 + u32::from(l));
    }
    if bad { None } else { Some(acc) }
}

/// The value of EBCDIC decimal digits (`F0`..=`F9`), `None` otherwise.
#[inline]
pub fn ebcdic_decimal(v: &[u8]) -> Option<u32> {
    let mut acc = 0u32;
    let mut bad = false;
    for &b in v {
        let d = b.wrapping_sub(0xF0);
        bad |= d > 9;
        acc = acc.wrapping_mul(10).wrapping_add(u32::from(d));
    }
    if bad { None } else { Some(acc) }
}

/// ASCII decimal digits of `value`, right-aligned in `out`; false if it does not fit.
pub fn write_ascii_decimal(mut value: u32, out: &mut [u8]) -> bool {
    for o in out.iter_mut().rev() {
        *o = b'0' + (value % 10) as u8;
        value /= 10;
    }
    value == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_check_accepts_only_ascii_digits_at_every_position() {
        let cases: &[(&[u8], bool)] = &[
            (b"", true),
            (b"0123456789", true),
            (b"000000000000000000000001", true),
            (b"12345678/", false),
            (b"12345678:", false),
            (b"1234567 ", false),
            (b"A", false),
            (b"\xB0", false),
            (b"\x00", false),
        ];
        for (v, want) in cases {
            assert_eq!(all_ascii_digits(v), *want, "{v:?}");
        }
        for pos in 0..20 {
            let mut v = vec![b'5'; 20];
            v[pos] = b'a';
            assert!(!all_ascii_digits(&v), "letter at {pos}");
        }
    }

    #[test]
    fn bcd_check_refuses_any_nibble_above_nine() {
        assert!(all_bcd_digits(&[
            0x01, 0x23, 0x45, 0x67, 0x89, 0x99, 0x00, 0x12, 0x34
        ]));
        for pos in 0..9 {
            let mut v = vec![0x99u8; 9];
            v[pos] = 0x9A;
            assert!(!all_bcd_digits(&v));
            v[pos] = 0xA9;
            assert!(!all_bcd_digits(&v));
        }
    }

    #[test]
    fn hex_bitmaps_read_and_write_both_ways() {
        let x = hex16_to_u64(b"723C448108E08000").unwrap();
        assert_eq!(x, 0x723C_4481_08E0_8000);
        assert_eq!(&u64_to_hex16(x), b"723C448108E08000");
        assert_eq!(hex16_to_u64(b"723c448108e08000"), Some(x));
        assert_eq!(hex16_to_u64(b"ZZ3C448108E08000"), None);
        // Every byte value at every position: only hex digits are accepted.
        for pos in 0..16 {
            for b in 0..=255u8 {
                let mut v = *b"0123456789abcDEF";
                v[pos] = b;
                assert_eq!(
                    hex16_to_u64(&v).is_some(),
                    b.is_ascii_hexdigit(),
                    "byte {b:#x} at {pos}"
                );
            }
        }
        assert_eq!(
            hex16_to_u64(b"0123456789abcDEF"),
            Some(0x0123_4567_89AB_CDEF)
        );
        assert_eq!(hex16_to_u64(b"FFFFFFFFFFFFFFFF"), Some(u64::MAX));
        for x in [
            0,
            1,
            0x9A,
            0xFEDC_BA98_7654_3210,
            u64::MAX,
            0x8000_0000_0000_0001,
        ] {
            let text = u64_to_hex16(x);
            assert_eq!(std::str::from_utf8(&text).unwrap(), format!("{x:016X}"));
            assert_eq!(hex16_to_u64(&text), Some(x));
        }
    }

    #[test]
    fn ebcdic_tables_are_inverse_and_map_digits_and_letters() {
        for b in 0..=255u8 {
            assert_eq!(
                EBCDIC_TO_LATIN1[usize::from(LATIN1_TO_EBCDIC[usize::from(b)])],
                b
            );
        }
        assert_eq!(LATIN1_TO_EBCDIC[usize::from(b'0')], 0xF0);
        assert_eq!(LATIN1_TO_EBCDIC[usize::from(b'A')], 0xC1);
        assert_eq!(LATIN1_TO_EBCDIC[usize::from(b' ')], 0x40);
        assert_eq!(ebcdic_decimal(&[0xF1, 0xF2]), Some(12));
    }

    #[test]
    fn decimal_readers_refuse_non_digits() {
        assert_eq!(ascii_decimal(b"019"), Some(19));
        assert_eq!(ascii_decimal(b"1X"), None);
        assert_eq!(bcd_decimal(&[0x01, 0x99]), Some(199));
        assert_eq!(bcd_decimal(&[0x1A]), None);
        let mut out = [0u8; 3];
        assert!(write_ascii_decimal(38, &mut out));
        assert_eq!(&out, b"038");
        assert!(!write_ascii_decimal(1000, &mut out));
    }
}
