//! Any bytes, in either built-in spec or a jPOS dialect: parse must not panic, whatever it
//! accepts must pack to bytes that parse to the same fields (and its nested fields must
//! read or fail cleanly), the per-bitmap fast path must read the bytes exactly as the
//! field-by-field walk does (same fields at the same offsets, or the same error), and
//! header recovery must not panic either.
//! The first byte picks the spec, modulo 3: ascii, binary, or vpan's own dialect file
//! `fixtures/packagers/tpdu-ebcdic-subfields.xml` (LLH prefixes, EBCDIC text, IFB_AMOUNT,
//! nested layouts with and without a bitmap), the classes only a jPOS file brings. Seeds
//! from `seed.sh` start with 0, 1 and 2.
#![no_main]

// vpan's codec, compiled from its sources (see fuzz/Cargo.toml for why).
#[path = "../../src/iso8583/mod.rs"]
#[allow(dead_code, unused_imports)]
mod iso8583;
#[path = "../../src/pan.rs"]
#[allow(dead_code, unused_imports)]
mod pan;

use std::sync::LazyLock;

use crate::iso8583::parse::parse_field_by_field;
use crate::iso8583::{Message, Spec, recover_header};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

static DIALECT: LazyLock<&'static Spec> = LazyLock::new(|| {
    let xml = include_str!("../../fixtures/packagers/tpdu-ebcdic-subfields.xml");
    match crate::iso8583::jpos::from_xml("tpdu-ebcdic-subfields", xml) {
        Ok(spec) => spec.leak(),
        Err(e) => panic!("the dialect fixture does not load: {e}"),
    }
});

fuzz_target!(|data: &[u8]| {
    let Some((&which, frame)) = data.split_first() else {
        return;
    };
    let spec = match which % 3 {
        0 => Spec::iso87ascii(),
        1 => Spec::iso87binary(),
        _ => *DIALECT,
    };
    let fields = 2..=spec.max_field;
    let _ = recover_header(spec, frame);
    let bytes = Bytes::copy_from_slice(frame);
    let reference = parse_field_by_field(spec, bytes.clone());
    // Twice: the first parse of a bitmap makes its shape, the second uses it.
    for _ in 0..2 {
        let fast = Message::parse(spec, bytes.clone());
        match (&fast, &reference) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.mti(), b.mti());
                for n in fields.clone() {
                    assert_eq!(
                        a.raw(n).map(|r| (r.as_ptr(), r.len())),
                        b.raw(n).map(|r| (r.as_ptr(), r.len())),
                        "field {n} read differently by the fast path"
                    );
                }
            }
            (Err(a), Err(b)) => assert_eq!(a, b, "the fast path names another error"),
            _ => panic!("the fast path and the field-by-field walk disagree on validity"),
        }
    }
    if let Ok(m) = Message::parse(spec, Bytes::copy_from_slice(frame)) {
        let again = match Message::parse(spec, m.pack()) {
            Ok(a) => a,
            Err(e) => panic!("packed message does not parse: {e}"),
        };
        for n in fields.clone() {
            assert_eq!(
                m.text(n).map(|t| t.to_vec()),
                again.text(n).map(|t| t.to_vec()),
                "field {n} changed in a round trip"
            );
        }
        assert_eq!(m.mti(), again.mti());
        let _ = (
            m.pan(),
            m.track2(),
            m.original_data(),
            m.replacement_amounts(),
        );
        for n in fields.clone() {
            let _ = m.subfields(n);
        }
        // Edited (a field set again to its own value), it is packed field by field with its
        // bitmaps rebuilt, not copied as it came: the same fields must come back.
        if let Some(n) = m.field_numbers().next()
            && let Some(text) = m.text(n).map(|t| t.to_vec())
        {
            let mut edited = m.clone();
            if edited.set(n, &text).is_ok() {
                let again = match Message::parse(spec, edited.pack()) {
                    Ok(a) => a,
                    Err(e) => panic!("an edited message packs to bytes that do not parse: {e}"),
                };
                for f in fields {
                    assert_eq!(
                        m.text(f).map(|t| t.to_vec()),
                        again.text(f).map(|t| t.to_vec()),
                        "field {f} changed when packed after an edit"
                    );
                }
            }
        }
    }
});
