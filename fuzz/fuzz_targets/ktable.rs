//! The k-table parser on arbitrary text: a validated table or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(t) = hydrus_filters::KTable::parse(text) {
        let w = t.window_of(u64::from(data.len() as u32) * 1_000);
        for i in 0..t.scenario_names().len() {
            let ks = t.ks(i, w).expect("every window has a k per resource");
            assert_eq!(ks.len(), t.resources().len());
            assert!(ks.iter().all(|k| k.is_finite() && *k >= 0.0));
            for r in 0..t.resources().len() {
                let _ = t.expected_cost_of(i, w, r);
            }
        }
    }
});
