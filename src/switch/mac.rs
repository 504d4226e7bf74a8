//! Message authentication on a link: the ISO 8583 MAC in DE 64 (or DE 128).
//!
//! Off by default (`network.mac = "none"`). With `network.mac = "iso9797-1-alg3"` every
//! message that arrives on the network link must carry a MAC computed with the link's key,
//! and every answer vpan sends there carries one. The rules, as most ISO 8583 networks
//! apply them:
//!
//! - **Where the MAC is.** The last field of the last bitmap present: DE 64 when the message
//!   has no field above 64 (a primary bitmap only), DE 128 when it has a secondary bitmap
//!   (any field 65–128), DE 192 with a tertiary one. The MAC field is therefore the last
//!   field of the message.
//! - **What it covers.** The message bytes exactly as they are on the wire, from the first
//!   byte of the MTI up to (excluding) the MAC field: MTI, bitmaps (with the MAC field's
//!   bit set), and every field before the MAC with its length prefix. The framing's length
//!   header and any fixed header (TPDU, `header_hex`) are not covered: they belong to the
//!   transport, not to the message.
//! - **The algorithm.** ISO/IEC 9797-1 MAC algorithm 3 with DES (the "retail MAC" of ANSI
//!   X9.19): CBC-MAC under the left key half K, then the last block decrypted under the
//!   right half K' and encrypted again under K. 8-byte MAC, all of it compared. Padding
//!   method 1 (zeros to a whole block, as X9.19) by default, or method 2 (one 0x80 byte,
//!   then zeros) with `network.mac_padding = 2`.
//! - **The key** is double-length (16 bytes, K || K'), read from `network.mac_key_file` as 32
//!   hex digits. It never appears in a log line or in `Debug` output.
//! - **A wrong or missing MAC** is answered with the response MTI and DE 39 = 63 (security
//!   violation) before anything else is done with the message (no card lookup, nothing
//!   forwarded, nothing recorded), and counted in
//!   `vpan_frames_rejected_total{reason="bad_mac"}`. The code is [`MAC_FAILURE_CODE`].
//!
//! DES itself and the MAC construction come from RustCrypto's `des` and `retail-mac`
//! crates; the comparison is constant time (`subtle`).

use std::fmt;
use std::path::Path;

use des::Des;
use retail_mac::{KeyInit, Mac, RetailMac};
use subtle::ConstantTimeEq;

use crate::iso8583::{EditError, Encoding, Length, Message, Spec};

/// DE 39 answered to a message whose MAC is wrong or missing: 63, "security violation".
/// A network that wants another code (some use 12 or 96) changes it here.
pub const MAC_FAILURE_CODE: [u8; 2] = *b"63";

/// MAC length in bytes (the whole last block of DES).
pub const MAC_LEN: usize = 8;

/// How the last block is padded before the MAC is computed (ISO/IEC 9797-1 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Method 1: zeros up to a whole block (none when the data fills the last block);
    /// ANSI X9.19's padding.
    Method1,
    /// Method 2: one 0x80 byte, then zeros up to a whole block (always at least one byte).
    Method2,
}

impl Padding {
    /// Method 1 or 2, from `network.mac_padding`.
    pub fn from_number(n: u8) -> Option<Padding> {
        match n {
            1 => Some(Padding::Method1),
            2 => Some(Padding::Method2),
            _ => None,
        }
    }
}

/// Why a MAC key cannot be used. The messages never hold the key or any part of it.
#[derive(Debug, thiserror::Error)]
pub enum MacKeyError {
    /// The file could not be read.
    #[error("cannot read the MAC key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The content is not 32 hex digits.
    #[error(
        "the MAC key must be 32 hex digits (a 16-byte double-length DES key), found {found} characters that are not that"
    )]
    Format {
        /// How many characters the file holds (whitespace trimmed), never which.
        found: usize,
    },
    /// K and K' are the same, which reduces the retail MAC to single DES.
    #[error("the two halves of the MAC key are equal: that is single DES, use a double-length key")]
    SingleLength,
}

/// A link's MAC key, ready to compute (the DES key schedules are made once).
#[derive(Clone)]
pub struct MacKey {
    /// The keyed MAC state, cloned for each message.
    mac: RetailMac<Des>,
    /// The padding method of the link.
    padding: Padding,
}

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacKey(***, {:?})", self.padding)
    }
}

/// What checking a message's MAC found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacCheck {
    /// The MAC is there and right.
    Valid,
    /// The MAC field where it should be is absent.
    Missing,
    /// The MAC is there and wrong (or not 8 bytes).
    Invalid,
}

impl MacKey {
    /// A key from its 16 bytes (K || K').
    pub fn new(key: &[u8; 16], padding: Padding) -> Result<MacKey, MacKeyError> {
        if bool::from(key[..8].ct_eq(&key[8..])) {
            return Err(MacKeyError::SingleLength);
        }
        let mac = RetailMac::<Des>::new_from_slice(key).map_err(|_| MacKeyError::Format {
            found: key.len() * 2,
        })?;
        Ok(MacKey { mac, padding })
    }

    /// A key from 32 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str, padding: Padding) -> Result<MacKey, MacKeyError> {
        let text = text.trim();
        let mut key = zeroize::Zeroizing::new([0u8; 16]);
        let bytes = text.as_bytes();
        if bytes.len() != 32 {
            return Err(MacKeyError::Format { found: bytes.len() });
        }
        for (k, pair) in key.iter_mut().zip(bytes.chunks_exact(2)) {
            let (Some(h), Some(l)) = (hex_nibble(pair[0]), hex_nibble(pair[1])) else {
                return Err(MacKeyError::Format { found: bytes.len() });
            };
            *k = (h << 4) | l;
        }
        MacKey::new(&key, padding)
    }

    /// The key in `path` (32 hex digits).
    pub fn load(path: &Path, padding: Padding) -> Result<MacKey, MacKeyError> {
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            MacKeyError::Read {
                path: path.display().to_string(),
                source,
            }
        })?);
        MacKey::from_hex(&text, padding)
    }

    /// The padding method of this key's link.
    pub fn padding(&self) -> Padding {
        self.padding
    }

    /// The MAC of `data` (ISO/IEC 9797-1 algorithm 3, this key's padding).
    pub fn compute(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.mac.clone();
        mac.update(data);
        if self.padding == Padding::Method2 {
            // The crate fills the rest of the block with zeros: 0x80 first is method 2.
            mac.update(&[0x80]);
        }
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// True when `mac` is the MAC of `data`, compared in constant time.
    pub fn verify(&self, data: &[u8], mac: &[u8]) -> bool {
        mac.len() == MAC_LEN && bool::from(self.compute(data).ct_eq(mac))
    }

    /// Checks the MAC of a message as received (the bytes as they came, not re-packed).
    pub fn check(&self, msg: &Message) -> MacCheck {
        let n = received_mac_field(msg);
        let (Some(f), Some(raw), Some(text)) = (msg.spec().field(n), msg.raw(n), msg.text(n))
        else {
            return MacCheck::Missing;
        };
        // The MAC field is the last field, so what it covers is the frame up to it.
        let frame = msg.frame();
        let frame_start = frame.as_ptr() as usize;
        let raw_start = raw.as_ptr() as usize;
        let Some(field_start) = raw_start
            .checked_sub(frame_start)
            .and_then(|o| o.checked_sub(f.prefix_bytes()))
        else {
            return MacCheck::Invalid;
        };
        if msg.is_edited() || field_start + f.prefix_bytes() + raw.len() != frame.len() {
            return MacCheck::Invalid;
        }
        let Some(covered) = frame.get(..field_start) else {
            return MacCheck::Invalid;
        };
        let mut received = [0u8; MAC_LEN];
        if !decode_hex8(text.as_bytes(), &mut received) {
            return MacCheck::Invalid;
        }
        if self.verify(covered, &received) {
            MacCheck::Valid
        } else {
            MacCheck::Invalid
        }
    }

    /// Puts the right MAC into `msg`: any stale MAC field (e.g. the request's, echoed) is
    /// dropped, the MAC field for the message's bitmaps is set, and its value is computed
    /// over the packed bytes before it.
    pub fn sign(&self, msg: &mut Message) -> Result<(), EditError> {
        for n in [64, 128, 192] {
            msg.remove(n);
        }
        let n = mac_field(msg);
        // A placeholder first, so the bitmap has the MAC's bit when the MAC is computed.
        msg.set(n, &[b'0'; 2 * MAC_LEN])?;
        let packed = msg.pack();
        let f = msg
            .spec()
            .field(n)
            .ok_or(EditError::NoSuchField { field: n as u16 })?;
        let wire = f.prefix_bytes() + msg.raw(n).map_or(0, <[u8]>::len);
        let covered = packed
            .get(..packed.len().saturating_sub(wire))
            .unwrap_or_default();
        let mac = self.compute(covered);
        msg.set(n, &hex_upper(&mac))
    }
}

/// Where the MAC of `msg` goes: the last field of its last bitmap (64, 128 or 192).
pub fn mac_field(msg: &Message) -> usize {
    let highest = (65..=msg.spec().max_field)
        .rev()
        .find(|&n| msg.has(n) && n % 64 != 0)
        .unwrap_or(0);
    // A field between 65 and 127 means a secondary bitmap; 129 to 191 a tertiary one.
    highest.div_ceil(64).max(1) * 64
}

/// Where the MAC of a received `msg` is: the last field of its last bitmap as it came. A
/// sender whose every message carries a secondary bitmap (some dialects do) puts it in
/// DE 128 even when no field from 65 to 127 is present, and that field's presence shows
/// the bitmap was sent; [`mac_field`] alone would look for it in DE 64 and answer 63.
pub fn received_mac_field(msg: &Message) -> usize {
    let by_fields = mac_field(msg);
    [192, 128]
        .into_iter()
        .find(|&n| n > by_fields && msg.has(n))
        .unwrap_or(by_fields)
}

/// Checks that `spec` can carry a MAC: DE 64, and DE 128 with a secondary bitmap (DE 192
/// with a tertiary one), are fixed 8-byte binary fields (raw bytes, or 16 hex characters).
pub fn check_spec(spec: &Spec) -> Result<(), String> {
    for n in (64..=spec.max_field.max(64)).step_by(64) {
        let ok = spec.field(n).is_some_and(|f| {
            matches!(f.encoding, Encoding::Binary | Encoding::HexAscii)
                && matches!(f.length, Length::Fixed)
                && f.max_len as usize == MAC_LEN
        });
        if !ok {
            return Err(format!(
                "field {n} of the {} layout is not a fixed 8-byte binary field, so it cannot carry a MAC",
                spec.name
            ));
        }
    }
    Ok(())
}

fn hex_nibble(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn decode_hex8(text: &[u8], out: &mut [u8; MAC_LEN]) -> bool {
    if text.len() != 2 * MAC_LEN {
        return false;
    }
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        match (hex_nibble(pair[0]), hex_nibble(pair[1])) {
            (Some(h), Some(l)) => *o = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

fn hex_upper(bytes: &[u8; MAC_LEN]) -> [u8; 2 * MAC_LEN] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = [0u8; 2 * MAC_LEN];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xF)];
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn key_of(hex: &str, padding: Padding) -> MacKey {
        MacKey::from_hex(hex, padding).unwrap()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// ISO/IEC 9797-1:2011 annex B.4 (MAC algorithm 3, DES, padding method 1), as quoted in
    /// the documentation and tests of RustCrypto's `retail-mac` 0.1.0
    /// (https://docs.rs/retail-mac/0.1.0/retail_mac/).
    #[test]
    fn the_iso_9797_1_annex_vectors_give_their_macs_with_padding_method_1() {
        let key = key_of("0123456789ABCDEFFEDCBA9876543210", Padding::Method1);
        assert_eq!(
            key.compute(b"Now is the time for all "),
            unhex("A1C72E74EA3FA9B6")[..]
        );
        assert_eq!(
            key.compute(b"Now is the time for it"),
            unhex("2E2B1428CC78254F")[..]
        );
    }

    /// ICAO Doc 9303 part 11, appendix D.3 (BAC mutual authentication: the MAC M_IFD over
    /// E_IFD with K_MAC), ISO/IEC 9797-1 MAC algorithm 3 with padding method 2; the same
    /// numbers are in the sci.crypt thread quoted by github.com/devinvenable/iso9797algorithm3.
    #[test]
    fn the_icao_9303_vector_gives_its_mac_with_padding_method_2() {
        let key = key_of("7962D9ECE03D1ACD4C76089DCE131543", Padding::Method2);
        let data = unhex("72C29C2371CC9BDB65B779B8E8D37B29ECC154AA56A8799FAE2F498F76ED92F2");
        assert_eq!(key.compute(&data), unhex("5F1448EEA8AD90A7")[..]);
        assert!(key.verify(&data, &unhex("5F1448EEA8AD90A7")));
        assert!(!key.verify(&data, &unhex("5F1448EEA8AD90A6")));
        assert!(!key.verify(&data, &unhex("5F1448EEA8AD90")));
    }

    #[test]
    fn bad_keys_are_refused_without_showing_them() {
        let secret = "0123456789ABCDEF0123456789ABCDEF";
        let err = MacKey::from_hex(secret, Padding::Method1).unwrap_err();
        assert!(matches!(err, MacKeyError::SingleLength));
        for bad in ["", "0123", "0123456789ABCDEFFEDCBA987654321G"] {
            let err = MacKey::from_hex(bad, Padding::Method1)
                .unwrap_err()
                .to_string();
            assert!(!err.contains("0123456789"), "{err}");
        }
        let key = key_of("0123456789ABCDEFFEDCBA9876543210", Padding::Method1);
        assert!(!format!("{key:?}").contains("0123"));
    }

    fn message(fields: &[(usize, &[u8])]) -> Message {
        let spec = Spec::iso87ascii();
        let mut m = Message::new(spec, b"0100").unwrap();
        for (n, v) in fields {
            m.set(*n, v).unwrap();
        }
        m
    }

    #[test]
    fn the_mac_goes_in_64_without_a_secondary_bitmap_and_in_128_with_one() {
        let m = message(&[(3, b"000000"), (11, b"000001")]);
        assert_eq!(mac_field(&m), 64);
        let m = message(&[(3, b"000000"), (11, b"000001"), (90, &[b'0'; 42])]);
        assert_eq!(mac_field(&m), 128);
    }

    #[test]
    fn a_signed_message_checks_and_any_changed_byte_does_not() {
        let key = key_of("0123456789ABCDEFFEDCBA9876543210", Padding::Method1);
        for fields in [
            &[(3, &b"000000"[..]), (4, b"000000001000"), (11, b"000001")][..],
            &[(3, &b"000000"[..]), (11, b"000002"), (70, b"301")][..],
        ] {
            let mut m = message(fields);
            key.sign(&mut m).unwrap();
            let wire = m.pack();
            let parsed = Message::parse(Spec::iso87ascii(), wire.clone()).unwrap();
            assert_eq!(key.check(&parsed), MacCheck::Valid);
            // The MAC covers exactly the bytes before it, as packed.
            let n = mac_field(&parsed);
            let mac = unhex(parsed.text(n).unwrap().as_str().unwrap());
            assert_eq!(key.compute(&wire[..wire.len() - 16]), mac[..]);
            let mut checked = 0;
            for i in 0..wire.len() {
                let mut bad = wire.to_vec();
                bad[i] ^= 0x01;
                // A flip that breaks the message's form is refused before any MAC check.
                if let Ok(p) = Message::parse(Spec::iso87ascii(), Bytes::from(bad)) {
                    assert_ne!(key.check(&p), MacCheck::Valid, "byte {i} flipped");
                    checked += 1;
                }
            }
            assert!(
                checked * 2 > wire.len(),
                "most flips still parse and reach the MAC check: {checked} of {}",
                wire.len()
            );
        }
    }

    #[test]
    fn a_message_without_its_mac_field_is_missing_its_mac() {
        let key = key_of("0123456789ABCDEFFEDCBA9876543210", Padding::Method2);
        let m = message(&[(3, b"000000"), (11, b"000001")]);
        let parsed = Message::parse(Spec::iso87ascii(), m.pack()).unwrap();
        assert_eq!(key.check(&parsed), MacCheck::Missing);
        // A MAC in DE 64 while a secondary bitmap is present is not where it belongs.
        let mut m = message(&[(3, b"000000"), (11, b"000001"), (70, b"301")]);
        m.set(64, b"0000000000000000").unwrap();
        let parsed = Message::parse(Spec::iso87ascii(), m.pack()).unwrap();
        assert_eq!(key.check(&parsed), MacCheck::Missing);
    }

    #[test]
    fn a_sender_that_always_sends_a_secondary_bitmap_has_its_mac_in_128_checked() {
        // Review of stop 51: no field from 65 to 127, but a secondary bitmap all the same
        // and the MAC in DE 128, its last field: it was looked for in DE 64 (63, missing).
        let key = key_of("0123456789ABCDEFFEDCBA9876543210", Padding::Method1);
        let mut m = message(&[(3, b"000000"), (4, b"000000001000"), (11, b"000003")]);
        m.set(128, &[b'0'; 16]).unwrap();
        let wire = m.pack();
        let mac = key.compute(&wire[..wire.len() - 16]);
        m.set(128, &hex_upper(&mac)).unwrap();
        let wire = m.pack();
        let parsed = Message::parse(Spec::iso87ascii(), wire.clone()).unwrap();
        assert_eq!(received_mac_field(&parsed), 128);
        assert_eq!(key.check(&parsed), MacCheck::Valid);
        let mut bad = wire.to_vec();
        bad[wire.len() - 20] ^= 0x01;
        let parsed = Message::parse(Spec::iso87ascii(), Bytes::from(bad)).unwrap();
        assert_eq!(key.check(&parsed), MacCheck::Invalid);
        // Without a field of the secondary bitmap, where fields alone put it.
        let m = message(&[(3, b"000000"), (11, b"000001")]);
        assert_eq!(received_mac_field(&m), 64);
    }

    #[test]
    fn both_built_in_layouts_can_carry_a_mac() {
        check_spec(Spec::iso87ascii()).unwrap();
        check_spec(Spec::iso87binary()).unwrap();
    }

    #[test]
    fn a_layout_whose_mac_field_is_not_eight_binary_bytes_is_refused() {
        use crate::iso8583::{FieldSpec, Kind};
        let mut spec = Spec::iso87ascii().clone();
        spec.set_field(128, "mac", FieldSpec::fixed(Kind::Ans, Encoding::Ascii, 8));
        let err = check_spec(&spec).unwrap_err();
        assert!(err.contains("field 128"), "{err}");
    }

    #[test]
    fn signing_in_the_binary_layout_checks_too() {
        let key = key_of("0123456789ABCDEFFEDCBA9876543210", Padding::Method2);
        let mut m = Message::new(Spec::iso87binary(), b"0810").unwrap();
        m.set(11, b"000001").unwrap();
        m.set(39, b"00").unwrap();
        m.set(70, b"301").unwrap();
        key.sign(&mut m).unwrap();
        let parsed = Message::parse(Spec::iso87binary(), m.pack()).unwrap();
        assert_eq!(key.check(&parsed), MacCheck::Valid);
    }
}
