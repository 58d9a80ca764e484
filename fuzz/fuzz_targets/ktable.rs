//! The k-table parser on arbitrary text: a validated table or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(t) = hydrus_filters::KTable::parse(text) {
        let w = t.window_of(u64::from(data.len() as u32) * 1_000);
        for i in 0..t.scenario_names().len() {
            let k = t.k(i, w).expect("every window has a k");
            assert!(k.is_finite() && k >= 0.0);
        }
    }
});
