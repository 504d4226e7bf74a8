//! The files the tools read from their users, as any text: a traffic file (`vpan loadgen`,
//! `vpan demo`), in either built-in layout and with a cards file bound to its placeholders,
//! and an accounts file (`vpan issuer-sim --accounts`). Each must be read or refused with
//! an error naming the line, never panic; a traffic file read must hold at least one
//! message, each of which packs and parses back to the same fields.
//!
//! Input: a selector byte (modulo 3: 0 traffic in iso87ascii, 1 traffic in iso87binary,
//! 2 accounts), then the text. For traffic, a NUL byte may separate the traffic from a
//! cards file (JSON) for its `${vpan.NAME}` / `${expiry.NAME}` placeholders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpan::iso8583::{Message, Spec};
use vpan::tools::issuer_sim::parse_accounts;
use vpan::tools::traffic::{Bindings, Traffic};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let spec = match which % 3 {
        0 => Spec::iso87ascii(),
        1 => Spec::iso87binary(),
        _ => {
            let _ = parse_accounts(text);
            return;
        }
    };
    let traffic = match text.split_once('\0') {
        None => Traffic::parse(text, spec),
        Some((traffic, cards)) => match serde_json::from_str::<Bindings>(cards) {
            Ok(cards) => Traffic::parse_bound(traffic, spec, &cards),
            Err(_) => return,
        },
    };
    let Ok(traffic) = traffic else {
        return;
    };
    assert!(!traffic.is_empty(), "a traffic file read holds a message");
    for entry in traffic.entries() {
        let again = match Message::parse(spec, entry.message.pack()) {
            Ok(m) => m,
            Err(e) => panic!("line {}: built message does not parse: {e}", entry.line),
        };
        assert_eq!(again.mti(), entry.message.mti());
        for n in 2..=128 {
            assert_eq!(
                again.text(n).map(|t| t.to_vec()),
                entry.message.text(n).map(|t| t.to_vec()),
                "line {}: field {n} changed in a round trip",
                entry.line
            );
        }
    }
});
