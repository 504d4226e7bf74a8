//! The iso87ascii layout as an `iso_8583_rs` 0.2.2 spec (the fastest Rust competitor), so
//! the codec benches put both parsers on the same messages. Shared by `benches/codec.rs`
//! and `benches/parse_loop.rs`.

use std::collections::HashMap;

use iso_8583_rs::specfile::{FieldDescription, Spec as YSpec};
use vpan::iso8583::{Encoding, Kind, Length, Spec};

/// vpan's iso87ascii, field by field, in `iso_8583_rs`'s terms; `None` if it refuses it.
pub fn competitor_spec() -> Option<iso_8583_rs::CompiledSpec> {
    let ours = Spec::iso87ascii();
    let mut fields = HashMap::new();
    for n in 2..=128usize {
        let Some(f) = ours.field(n) else { continue };
        let content_type = match (f.kind, f.encoding) {
            (_, Encoding::HexAscii) => "b",
            (Kind::N, _) => "n",
            (Kind::An, _) => "an",
            (Kind::Ans, _) => "ans",
            _ => "b",
        };
        let (len_type, max_len) = match f.length {
            Length::Fixed => ("fixed", f.wire_len(f.max_len as usize)),
            Length::Var { digits: 2, .. } => ("llvar", f.max_len as usize),
            Length::Var { digits: 3, .. } => ("lllvar", f.max_len as usize),
            Length::Var { .. } => ("llllvar", f.max_len as usize),
        };
        fields.insert(
            n as i64,
            FieldDescription {
                content_type: content_type.into(),
                max_len,
                min_len: 0,
                len_type: len_type.into(),
                label: String::new(),
            },
        );
    }
    iso_8583_rs::CompiledSpec::compile(&YSpec { fields }).ok()
}
