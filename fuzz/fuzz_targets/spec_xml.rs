//! Any text as a jPOS GenericPackager document: the loader must not panic, and a spec it
//! accepts must survive a trip through vpan's own XML writer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpan::iso8583::jpos;

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = jpos::from_xml("fuzz", xml) {
        let again = jpos::to_xml(&spec);
        let _ = jpos::from_xml("again", &again);
    }
});
