//! Any text as a config file plus environment overrides, through the loader `vpan serve`
//! uses (`Config::from_toml`: TOML, `VPAN_<SECTION>_<KEY>` overrides read as the key's type,
//! validation). It must never panic, and an accepted config must survive a round trip:
//! written back as TOML and read again, it is the same config.
//!
//! Input: the TOML text, then a NUL byte, then environment lines `NAME=value`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpan::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml_text, env_text) = text.split_once('\0').unwrap_or((text, ""));
    let env: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let Ok(config) = Config::from_toml(toml_text, "fuzz", env) else {
        return;
    };
    let written = match toml::to_string(&config) {
        Ok(w) => w,
        Err(e) => panic!("an accepted config does not serialize: {e}"),
    };
    match Config::from_toml(&written, "round trip", Vec::new()) {
        Ok(again) => assert_eq!(again, config, "the config changed in a round trip"),
        Err(e) => panic!("an accepted config, written back, is refused: {e}"),
    }
});
