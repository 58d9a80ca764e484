//! The config loader on arbitrary text: an error with a location or a config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Filters register their metric families in a registry of their own, per input.
    let metrics = hydrus::metrics::Metrics::new();
    if let Err(errors) = hydrus::config::load_str(std::path::Path::new("fuzz.yaml"), text, &metrics) {
        for e in &errors.0 {
            let _ = e.to_string();
        }
    }
});
