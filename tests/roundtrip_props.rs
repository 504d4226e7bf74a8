//! Properties of the codec on generated input: random valid messages round-trip in both
//! built-in specs, random or corrupted bytes never make the parser or the frame decoder
//! panic, and the parser's per-bitmap fast path agrees with the field-by-field walk on all
//! of it, accepted or refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns

mod codec_common;
use codec_common as common;

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use common::{field_bytes_of, unhex, vectors};
use proptest::prelude::*;
use tokio_util::codec::Decoder;
use vpan::iso8583::parse::parse_field_by_field;
use vpan::iso8583::{
    BitmapEncoding, Encoding, FieldSpec, FrameCodec, Framing, Kind, Length, Message, Pad,
    ParseError, PrefixEncoding, Spec, recover_header,
};

/// Reads bytes of entropy one by one (0 once exhausted).
struct Entropy<'a>(&'a [u8], usize);

impl Entropy<'_> {
    fn next(&mut self) -> u8 {
        let b = self.0.get(self.1).copied().unwrap_or(0);
        self.1 += 1;
        b
    }
}

/// A value for every chosen field, valid for `spec`, in the decoded form `set` takes.
fn values(spec: &Spec, fields: &[usize], e: &mut Entropy) -> BTreeMap<usize, String> {
    let mut out = BTreeMap::new();
    for &n in fields {
        let Some(f) = spec.field(n) else { continue };
        let units = match f.length {
            Length::Fixed => f.max_len as usize,
            Length::Var { .. } => usize::from(e.next()) % (f.max_len.min(60) as usize + 1),
        };
        let v: String = match f.kind {
            _ if matches!(f.encoding, Encoding::Binary | Encoding::HexAscii) => {
                (0..units).map(|_| format!("{:02X}", e.next())).collect()
            }
            Kind::N => (0..units)
                .map(|_| char::from(b'0' + e.next() % 10))
                .collect(),
            Kind::Z => (0..units)
                .map(|i| {
                    if i == 16 {
                        '='
                    } else {
                        char::from(b'0' + e.next() % 10)
                    }
                })
                .collect(),
            Kind::Xn => (0..units)
                .map(|i| {
                    if i == 0 {
                        if e.next().is_multiple_of(2) { 'C' } else { 'D' }
                    } else {
                        char::from(b'0' + e.next() % 10)
                    }
                })
                .collect(),
            Kind::An | Kind::Ans | Kind::B => (0..units)
                .map(|_| char::from(b' ' + e.next() % 95))
                .collect(),
        };
        out.insert(n, v);
    }
    out
}

fn roundtrip(spec: &'static Spec, mti: [u8; 4], fields: &[usize], entropy: &[u8]) {
    let vals = values(spec, fields, &mut Entropy(entropy, 0));
    let mut m = Message::new(spec, &mti).unwrap();
    for (n, v) in &vals {
        m.set(*n, v.as_bytes())
            .unwrap_or_else(|e| panic!("{n}={v}: {e}"));
    }
    let wire = m.pack();
    both_paths_agree(spec, &wire).unwrap();
    let parsed = Message::parse(spec, wire.clone()).unwrap();
    assert_eq!(parsed.pack(), wire, "pack, parse, pack");
    let bcd_track = !matches!(spec.field(35).map(|f| f.encoding), Some(Encoding::Ascii));
    for (n, v) in &vals {
        let got = parsed.text(*n).unwrap();
        let want = if *n == 35 && bcd_track {
            v.replace('=', "D")
        } else {
            v.clone()
        };
        assert_eq!(got.as_bytes(), want.as_bytes(), "field {n}");
    }
    assert_eq!(
        parsed.field_numbers().collect::<Vec<_>>(),
        vals.keys().copied().collect::<Vec<_>>()
    );
}

/// Where each field of a parse result sits in the frame (pointer and length), or the error.
fn layout_of(r: &Result<Message, ParseError>) -> Result<Vec<(usize, usize, usize)>, ParseError> {
    match r {
        Ok(m) => Ok(m
            .field_numbers()
            .map(|n| {
                let raw = m.raw(n).unwrap();
                (n, raw.as_ptr() as usize, raw.len())
            })
            .collect()),
        Err(e) => Err(*e),
    }
}

/// The fast path (bitmap shapes cached per thread) and the field-by-field walk read `bytes`
/// the same way: the same fields at the same offsets, or the same error. Parsed twice, so
/// the second parse takes a shape made by the first.
fn both_paths_agree(spec: &'static Spec, bytes: &[u8]) -> Result<(), TestCaseError> {
    let frame = Bytes::copy_from_slice(bytes);
    let reference = layout_of(&parse_field_by_field(spec, frame.clone()));
    for _ in 0..2 {
        prop_assert_eq!(&layout_of(&Message::parse(spec, frame.clone())), &reference);
    }
    Ok(())
}

/// One of `items`, chosen by the next byte of entropy.
fn pick<T: Copy>(e: &mut Entropy, items: &[T]) -> T {
    items[usize::from(e.next()) % items.len()]
}

/// A dialect drawn from entropy: any MTI and bitmap encoding, a `max_field` that may be none
/// of 64, 128 and 192, and up to 40 fields of any kind, encoding, pad, length and prefix,
/// so the fast path meets EBCDIC, padded BCD, signed amounts and binary prefixes, which the
/// built-in specs do not all have.
fn random_spec(e: &mut Entropy) -> &'static Spec {
    let mti = pick(
        e,
        &[
            FieldSpec::fixed(Kind::N, Encoding::Ascii, 4),
            FieldSpec::fixed(Kind::N, Encoding::Bcd(Pad::Left0), 4),
            FieldSpec::fixed(Kind::N, Encoding::Ebcdic, 4),
        ],
    );
    let bitmap = pick(e, &[BitmapEncoding::HexAscii, BitmapEncoding::Binary]);
    let max_field = pick(e, &[64, 128, 192, 16, 100, 160]);
    let mut spec = Spec::empty("random", mti, bitmap, max_field);
    for _ in 0..2 + e.next() % 40 {
        let n = 2 + usize::from(e.next()) % (max_field - 1);
        let kind = pick(
            e,
            &[
                Kind::N,
                Kind::N,
                Kind::An,
                Kind::Ans,
                Kind::B,
                Kind::Z,
                Kind::Xn,
            ],
        );
        let pad = pick(e, &[Pad::Left0, Pad::LeftF, Pad::Right0, Pad::RightF]);
        let encoding = pick(
            e,
            &[
                Encoding::Ascii,
                Encoding::Ascii,
                Encoding::Ebcdic,
                Encoding::Bcd(pad),
                Encoding::Bcd(pad),
                Encoding::Binary,
                Encoding::HexAscii,
            ],
        );
        let max = pick(e, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 17, 19]);
        let field = if e.next().is_multiple_of(3) {
            let prefix = pick(
                e,
                &[
                    PrefixEncoding::Ascii,
                    PrefixEncoding::Bcd,
                    PrefixEncoding::Binary,
                    PrefixEncoding::Ebcdic,
                ],
            );
            FieldSpec::var(kind, encoding, 1 + e.next() % 3, prefix, max)
        } else {
            FieldSpec::fixed(kind, encoding, max)
        };
        spec.set_field(n, "random", field);
    }
    spec.leak()
}

fn mti() -> impl Strategy<Value = [u8; 4]> {
    prop::array::uniform4(0u8..10).prop_map(|d| d.map(|x| b'0' + x))
}

fn field_set() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::btree_set(2usize..=128, 0..30).prop_map(|s| s.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_valid_ascii_messages_round_trip(
        mti in mti(),
        fields in field_set(),
        entropy in prop::collection::vec(any::<u8>(), 2048),
    ) {
        roundtrip(Spec::iso87ascii(), mti, &fields, &entropy);
    }

    #[test]
    fn random_valid_binary_messages_round_trip(
        mti in mti(),
        fields in field_set(),
        entropy in prop::collection::vec(any::<u8>(), 2048),
    ) {
        roundtrip(Spec::iso87binary(), mti, &fields, &entropy);
    }

    #[test]
    fn random_bytes_never_panic_the_parser(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        for spec in [Spec::iso87ascii(), Spec::iso87binary()] {
            both_paths_agree(spec, &bytes)?;
            if let Ok(m) = Message::parse(spec, Bytes::from(bytes.clone())) {
                // Anything accepted packs to something that parses to the same fields.
                let again = Message::parse(spec, m.pack()).unwrap();
                prop_assert_eq!(field_bytes_of(&again), field_bytes_of(&m));
            }
            let _ = recover_header(spec, &bytes);
        }
    }

    #[test]
    fn corrupted_vectors_never_panic_and_what_is_accepted_round_trips(
        which in 0usize..16,
        binary in any::<bool>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let (spec, file) = if binary {
            (Spec::iso87binary(), "iso87binary.json")
        } else {
            (Spec::iso87ascii(), "iso87ascii.json")
        };
        let all = vectors(file);
        let mut bytes = unhex(&all[which % all.len()].hex);
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        if do_cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        both_paths_agree(spec, &bytes)?;
        if let Ok(m) = Message::parse(spec, Bytes::from(bytes.clone())) {
            let again = Message::parse(spec, m.pack()).unwrap();
            prop_assert_eq!(field_bytes_of(&again), field_bytes_of(&m));
            for n in m.field_numbers() {
                let _ = m.text(n);
            }
            let _ = (m.pan(), m.track2(), m.original_data(), m.replacement_amounts());
        }
        let _ = recover_header(spec, &bytes);
    }

    #[test]
    fn in_any_dialect_the_fast_path_reads_as_the_field_by_field_walk(
        entropy in prop::collection::vec(any::<u8>(), 4096),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        let mut e = Entropy(&entropy, 0);
        let spec = random_spec(&mut e);
        let defined: Vec<usize> = (2..=spec.max_field).filter(|&n| spec.field(n).is_some()).collect();
        // Several messages per dialect, so bitmaps repeat with other lengths and contents.
        for _ in 0..4 {
            let fields: Vec<usize> = defined.iter().copied().filter(|_| e.next() % 2 == 0).collect();
            let mut m = Message::new(spec, b"0100").unwrap();
            for (n, v) in values(spec, &fields, &mut e) {
                // A value this dialect refuses (say, letters in a packed field) is left out.
                let _ = m.set(n, v.as_bytes());
            }
            let mut bytes = m.pack().to_vec();
            for (i, b) in &flips {
                if !bytes.is_empty() {
                    let at = i.index(bytes.len());
                    bytes[at] = *b;
                }
            }
            both_paths_agree(spec, &bytes)?;
        }
    }

    #[test]
    fn random_bytes_never_panic_the_frame_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        framing in 0usize..4,
        header in 0usize..6,
        max in 0usize..200,
    ) {
        let framing: Framing = Framing::NAMES[framing].parse().unwrap();
        let mut codec = FrameCodec::new(framing, header, max);
        let mut src = BytesMut::from(&bytes[..]);
        // Decode until it needs more bytes or fails; every step consumes or stops.
        for _ in 0..400 {
            match codec.decode(&mut src) {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let _ = codec.decode_eof(&mut src);
    }
}
