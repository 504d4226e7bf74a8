//! Helpers shared by the integration tests: the vectors and the check that a spec handles
//! them exactly.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use vpan::iso8583::{Message, Spec};

/// One vector: a message's bytes and its decoded fields.
#[derive(Deserialize)]
pub struct Vector {
    pub name: String,
    pub hex: String,
    pub fields: BTreeMap<String, String>,
}

/// One input that must be refused, with the field whose decoding must fail.
#[derive(Deserialize)]
pub struct Malformed {
    pub name: String,
    pub hex: String,
    pub error_field: Option<serde_json::Value>,
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn fixture(rel: &str) -> String {
    format!("{}/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

pub fn vectors(file: &str) -> Vec<Vector> {
    serde_json::from_str(&std::fs::read_to_string(fixture(&format!("vectors/{file}"))).unwrap())
        .unwrap()
}

pub fn malformed() -> Vec<Malformed> {
    serde_json::from_str(
        &std::fs::read_to_string(fixture("vectors/iso87ascii-malformed.json")).unwrap(),
    )
    .unwrap()
}

/// The decoded fields of a message, in the vectors' form: `t` for the MTI, numbers as keys.
pub fn fields_of(m: &Message) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("t".to_owned(), String::from_utf8(m.mti().to_vec()).unwrap());
    for n in m.field_numbers() {
        let t = m.text(n).unwrap();
        out.insert(n.to_string(), t.as_str().unwrap().to_owned());
    }
    out
}

/// Builds a message from the vectors' decoded fields.
pub fn build(spec: &'static Spec, fields: &BTreeMap<String, String>) -> Message {
    let mti: [u8; 4] = fields["t"].as_bytes().try_into().unwrap();
    let mut m = Message::new(spec, &mti).unwrap();
    for (k, v) in fields {
        if k != "t" {
            m.set(k.parse().unwrap(), v.as_bytes())
                .unwrap_or_else(|e| panic!("field {k}: {e}"));
        }
    }
    m
}

/// Every vector of `file` parses to exactly its fields, packs back to exactly its bytes,
/// and a message built from its fields packs to the same bytes.
pub fn check_spec_against_vectors(spec: &'static Spec, file: &str) {
    let vectors = vectors(file);
    // So that a file cut short does not pass.
    let expected = match file {
        "iso87ascii-where-layouts-differ.json" => 3,
        _ => 16,
    };
    assert!(
        vectors.len() >= expected,
        "{file} has {} vectors",
        vectors.len()
    );
    for v in vectors {
        let bytes = Bytes::from(unhex(&v.hex));
        let m = Message::parse(spec, bytes.clone())
            .unwrap_or_else(|e| panic!("{} / {}: {e}", spec.name, v.name));
        assert_eq!(
            fields_of(&m),
            v.fields,
            "{} / {}: decoded fields",
            spec.name,
            v.name
        );
        assert_eq!(
            m.pack(),
            bytes,
            "{} / {}: parse then pack",
            spec.name,
            v.name
        );
        let built = build(spec, &v.fields);
        assert_eq!(
            built.pack(),
            bytes,
            "{} / {}: built from fields",
            spec.name,
            v.name
        );
    }
}

/// The decoded fields as bytes (field 0 for the MTI), for content that may not be UTF-8.
pub fn field_bytes_of(m: &Message) -> BTreeMap<usize, Vec<u8>> {
    let mut out = BTreeMap::new();
    out.insert(0, m.mti().to_vec());
    for n in m.field_numbers() {
        out.insert(n, m.text(n).unwrap().to_vec());
    }
    out
}
