//! Any text as a jPOS GenericPackager document: the loader must not panic, and a spec it
//! accepts must survive a trip through vpan's own XML writer.
#![no_main]

// vpan's codec, compiled from its sources (see fuzz/Cargo.toml for why).
#[path = "../../src/iso8583/mod.rs"]
#[allow(dead_code, unused_imports)]
mod iso8583;
#[path = "../../src/pan.rs"]
#[allow(dead_code, unused_imports)]
mod pan;

use crate::iso8583::jpos;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = jpos::from_xml("fuzz", xml) {
        let again = jpos::to_xml(&spec);
        let _ = jpos::from_xml("again", &again);
    }
});
