//! jPOS GenericPackager files as specs.
//!
//! Always: vpan's own packager files under `fixtures/packagers/` (an iso87 layout in both
//! encodings, and a binary dialect with LLH prefixes, EBCDIC and nested subfields). When
//! `../shared/jpos-packagers` is there (CI clones the repo beside `shared/`): jPOS's own
//! files, which are AGPL and therefore never copied into this repository.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns

mod codec_common;
use codec_common as common;

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use common::{check_spec_against_vectors, fixture};
use tokio_util::codec::Decoder;
use vpan::iso8583::{Frame, FrameCodec, Framing, Message, Spec, SpecError, jpos};
use vpan::pan::Pan;

fn load(path: &str) -> &'static Spec {
    jpos::load_file(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .leak()
}

#[test]
fn our_own_iso87_packager_files_are_the_built_ins_written_out() {
    for (file, spec) in [
        ("vpan-iso87ascii.xml", Spec::iso87ascii()),
        ("vpan-iso87binary.xml", Spec::iso87binary()),
    ] {
        let written = std::fs::read_to_string(fixture(&format!("packagers/{file}"))).unwrap();
        assert_eq!(written, jpos::to_xml(spec), "{file}");
    }
}

#[test]
fn our_own_iso87_packager_files_behave_like_the_built_ins_on_every_vector() {
    for vectors in ["iso87ascii.json", "iso87ascii-where-layouts-differ.json"] {
        check_spec_against_vectors(load(&fixture("packagers/vpan-iso87ascii.xml")), vectors);
    }
    check_spec_against_vectors(
        load(&fixture("packagers/vpan-iso87binary.xml")),
        "iso87binary.json",
    );
}

#[test]
fn spec_by_name_loads_a_packager_file_from_a_path() {
    let spec = Spec::by_name(&fixture("packagers/vpan-iso87ascii.xml")).unwrap();
    assert_eq!(spec.max_field, 128);
    // A path that is not there is said to be missing, not an unknown name.
    let missing = Spec::by_name("/no/such/file.xml").unwrap_err();
    assert!(matches!(missing, SpecError::Io { .. }), "{missing:?}");
    assert!(
        missing.to_string().contains("/no/such/file.xml")
            && missing.to_string().contains("No such file"),
        "{missing}"
    );
    assert!(matches!(
        Spec::by_name("iso87ebcdic"),
        Err(SpecError::Unknown(_))
    ));
}

fn ebcdic(s: &str) -> Vec<u8> {
    // Digits, capitals and space: enough for the test values.
    s.bytes()
        .map(|c| match c {
            b'0'..=b'9' => 0xF0 + (c - b'0'),
            b'A'..=b'I' => 0xC1 + (c - b'A'),
            b'J'..=b'R' => 0xD1 + (c - b'J'),
            b'S'..=b'Z' => 0xE2 + (c - b'S'),
            b' ' => 0x40,
            _ => panic!("not in the test alphabet"),
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

#[test]
fn a_nested_field_the_layout_does_not_account_for_is_refused_not_read_out_of_step() {
    let spec = load(&fixture("packagers/tpdu-ebcdic-subfields.xml"));
    let with_63 = |sub63: &[u8]| {
        let mut m = Message::new(spec, b"0100").unwrap();
        m.set(11, b"000123").unwrap();
        m.set(63, hex(sub63).as_bytes()).unwrap();
        Message::parse(spec, m.pack()).unwrap()
    };
    let good = [
        &[0xA0, 0, 0, 0, 0, 0, 0, 0][..],
        &ebcdic("VISANET   "),
        &[0x00, 0x42],
    ]
    .concat();
    assert_eq!(with_63(&good).subfields(63).unwrap().len(), 2);
    // The sub-bitmap names subfield 4, which the layout lacks (bits 1, 3 and 4).
    let mut undefined = good.clone();
    undefined[0] = 0xB0;
    undefined.extend_from_slice(&[0x12, 0x34]);
    assert!(with_63(&undefined).subfields(63).is_err());
    // Bytes after the last subfield named.
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0x99, 0x99]);
    assert!(with_63(&trailing).subfields(63).is_err());
}

#[test]
fn a_binary_dialect_with_llh_prefixes_ebcdic_and_subfields_packs_and_parses_byte_exact() {
    let spec = load(&fixture("packagers/tpdu-ebcdic-subfields.xml"));
    let mut m = Message::new(spec, b"0100").unwrap();
    let sub62 = [
        &[0xE8][..],
        &[0x01, 0x23, 0x45, 0x67, 0x89, 0x01, 0x23, 0x45],
        &ebcdic("AB12"),
    ]
    .concat();
    let sub63 = [
        &[0xA0, 0, 0, 0, 0, 0, 0, 0][..],
        &ebcdic("VISANET   "),
        &[0x00, 0x42],
    ]
    .concat();
    let values: &[(usize, &str)] = &[
        (2, "4970101234567893"),
        (3, "000000"),
        (4, "000000012345"),
        (11, "000123"),
        (28, "D00000100"),
        (35, "4970101234567893=2812101"),
        (37, "633014000123"),
        (41, "TERM0001"),
        (44, "OK"),
        (49, "978"),
        (128, "0011223344556677"),
    ];
    for (n, v) in values {
        m.set(*n, v.as_bytes())
            .unwrap_or_else(|e| panic!("{n}: {e}"));
    }
    m.set(62, hex(&sub62).as_bytes()).unwrap();
    m.set(63, hex(&sub63).as_bytes()).unwrap();
    let wire = m.pack();
    assert_eq!(&wire[..2], &[0x01, 0x00], "BCD MTI");
    // The same bytes seed the `parse` fuzz target's runs in this dialect (fuzz/seed.sh).
    let seed = std::fs::read_to_string(fixture("packagers/tpdu-ebcdic-subfields.message.hex"))
        .unwrap_or_default();
    assert_eq!(seed.trim(), hex(&wire), "the fuzz seed is this message");

    let parsed = Message::parse(spec, wire.clone()).unwrap();
    let raw: &[(usize, Vec<u8>)] = &[
        (2, vec![0x49, 0x70, 0x10, 0x12, 0x34, 0x56, 0x78, 0x93]),
        (28, vec![b'D', 0x00, 0x00, 0x01, 0x00]),
        (
            35,
            vec![
                0x49, 0x70, 0x10, 0x12, 0x34, 0x56, 0x78, 0x93, 0xD2, 0x81, 0x21, 0x01,
            ],
        ),
        (41, ebcdic("TERM0001")),
        (44, ebcdic("OK")),
        (49, vec![0x09, 0x78]),
    ];
    for (n, want) in raw {
        assert_eq!(parsed.raw(*n).unwrap(), &want[..], "field {n} on the wire");
    }
    for (n, v) in values {
        let got = parsed.text(*n).unwrap();
        let want = if *n == 35 {
            v.replace('=', "D")
        } else {
            v.to_string()
        };
        assert_eq!(got.as_str().unwrap(), want, "field {n} decoded");
    }
    assert_eq!(
        parsed.track2().unwrap().as_bytes(),
        b"4970101234567893=2812101"
    );
    assert_eq!(parsed.pack(), wire, "parse then pack");

    // LLH numerics without pad="true" are right-padded, and the prefix counts digits.
    let mut swapped = parsed.clone();
    swapped
        .set_pan(&Pan::from_digits(b"4970101234567890127").unwrap())
        .unwrap();
    let again = Message::parse(spec, swapped.pack()).unwrap();
    let needle = [
        0x13, 0x49, 0x70, 0x10, 0x12, 0x34, 0x56, 0x78, 0x90, 0x12, 0x70,
    ];
    let packed = swapped.pack();
    assert!(
        packed.windows(needle.len()).any(|w| w == needle),
        "LLH 19 digits, right pad 0"
    );
    assert_eq!(again.raw(2).unwrap(), &needle[1..]);

    // Nested layouts: in order without a bitmap, by bitmap with one.
    let s62: Vec<(usize, String)> = parsed
        .subfields(62)
        .unwrap()
        .into_iter()
        .map(|(i, t)| (i, String::from_utf8(t).unwrap()))
        .collect();
    assert_eq!(
        s62,
        vec![
            (0, "Y".to_owned()),
            (1, "123456789012345".to_owned()),
            (2, "AB12".to_owned())
        ]
    );
    let s63: Vec<(usize, String)> = parsed
        .subfields(63)
        .unwrap()
        .into_iter()
        .map(|(i, t)| (i, String::from_utf8(t).unwrap()))
        .collect();
    assert_eq!(
        s63,
        vec![(1, "VISANET   ".to_owned()), (3, "0042".to_owned())]
    );

    // Through the framing with a 5-byte TPDU, counted in the length and kept apart.
    let tpdu = [0x60, 0x00, 0x01, 0x00, 0x00];
    let codec = FrameCodec::new(Framing::Len2, 5, 8192);
    let mut out = BytesMut::new();
    codec.encode_message(&tpdu, &parsed, &mut out).unwrap();
    assert_eq!(
        usize::from(u16::from_be_bytes([out[0], out[1]])),
        5 + wire.len()
    );
    let mut codec = codec;
    match codec.decode(&mut out).unwrap() {
        Some(Frame::Message { header, body }) => {
            assert_eq!(&header[..], &tpdu);
            assert_eq!(body, wire);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unsupported_class_is_refused_with_the_field_id_and_the_class() {
    let xml = r#"<?xml version="1.0"?>
<!DOCTYPE isopackager SYSTEM "genericpackager.dtd">
<isopackager>
  <isofield id="0" length="4" class="org.jpos.iso.IFA_NUMERIC"/>
  <isofield id="1" length="16" class="org.jpos.iso.IFA_BITMAP"/>
  <isofield id="48" length="999" class="org.jpos.iso.IFA_LLLTLV"/>
</isopackager>"#;
    let err = jpos::from_xml("inline", xml).unwrap_err();
    assert!(
        matches!(&err, SpecError::UnsupportedClass { field, class } if field == "48" && class == "IFA_LLLTLV"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "field 48: jPOS class IFA_LLLTLV is not supported"
    );
}

/// `../shared/jpos-packagers`, when present.
fn shared_packagers() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/jpos-packagers");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("SKIPPED: ../shared/jpos-packagers not found");
        None
    }
}

#[test]
fn every_jpos_packager_file_loads() {
    let Some(dir) = shared_packagers() else {
        return;
    };
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "xml") {
            let spec = jpos::load_file(path.to_str().unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(spec.field(2).is_some(), "{}", path.display());
            loaded += 1;
        }
    }
    assert!(loaded >= 5, "only {loaded} files");
}

#[test]
fn jpos_iso87_files_behave_like_the_built_ins_on_every_vector() {
    let Some(dir) = shared_packagers() else {
        return;
    };
    check_spec_against_vectors(
        load(dir.join("iso87ascii.xml").to_str().unwrap()),
        "iso87ascii.json",
    );
    check_spec_against_vectors(
        load(dir.join("iso87binary.xml").to_str().unwrap()),
        "iso87binary.json",
    );
}

#[test]
fn jpos_nested_packagers_are_loaded_as_subfield_layouts() {
    let Some(dir) = shared_packagers() else {
        return;
    };
    let base1 = jpos::load_file(dir.join("base1.xml").to_str().unwrap()).unwrap();
    let s126 = base1.subfields[126].as_ref().unwrap();
    assert_eq!(s126.bitmap.map(|b| b.0), Some(0));
    assert!(s126.fields[1].is_some());
    let s127 = base1.subfields[127].as_ref().unwrap();
    assert_eq!(s127.bitmap, None);
    let post = jpos::load_file(dir.join("postpack.xml").to_str().unwrap()).unwrap();
    let p127 = post.subfields[127].as_ref().unwrap();
    assert_eq!(p127.bitmap.map(|b| b.0), Some(1));
    assert!(p127.fields[25].is_some());
    // Postilion: ASCII MTI with a binary bitmap.
    assert_eq!(post.bitmap, vpan::iso8583::BitmapEncoding::Binary);

    // A Postilion field 127 with subfields 2 and 3 present, decoded by its bitmap.
    let spec = post.leak();
    let mut content = vec![0x60, 0, 0, 0, 0, 0, 0, 0];
    content.extend_from_slice(b"05SWKEY");
    content.extend_from_slice(format!("{:<48}", "ROUTE").as_bytes());
    let mut m = Message::new(spec, b"0100").unwrap();
    m.set(127, hex(&content).as_bytes()).unwrap();
    let parsed = Message::parse(spec, m.pack()).unwrap();
    let subs = parsed.subfields(127).unwrap();
    let got: Vec<(usize, &[u8])> = subs.iter().map(|(i, t)| (*i, t.as_slice())).collect();
    assert_eq!(got[0], (2, &b"SWKEY"[..]));
    assert_eq!(got[1].0, 3);
    let _ = Bytes::new();
}
