//! The QoE header parser and the decision on whatever it accepts: never a panic, and every
//! accepted value is in range.
#![no_main]

use hydrus_filters::hydrus::qoe;
use hydrus_filters::hydrus::decide::decide_per_resource;
use hydrus_filters::resource::PerResource;
use hydrus_filters::{decide, QoeRange, Strategy, StrategySet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let strategies = vec![
        Strategy { name: "s10".into(), cost: 6.0.into(), qoe_scale: 0.9 },
        Strategy { name: "s20".into(), cost: 10.0.into(), qoe_scale: 1.0 },
        Strategy { name: "s40".into(), cost: 18.0.into(), qoe_scale: 1.08 },
    ];
    let Ok(set) = StrategySet::new(strategies, "s20") else { return };
    let range = QoeRange::default();
    if let Ok(v) = qoe::parse(data, &set, range) {
        assert!(!v.is_empty());
        let j = decide(&set, &v, 0.004).expect("a candidate");
        assert!(v.get(j).is_some());
    }
    // The same names costing two resources: one k each.
    let two = |l: f64, s: f64| {
        PerResource::Many([("large".to_string(), l), ("small".to_string(), s)].into())
    };
    let strategies = vec![
        Strategy { name: "s10".into(), cost: two(0.0, 6.0), qoe_scale: 0.9 },
        Strategy { name: "s20".into(), cost: two(0.0, 10.0), qoe_scale: 1.0 },
        Strategy { name: "s40".into(), cost: two(18.0, 1.0), qoe_scale: 1.08 },
    ];
    let Ok(set) = StrategySet::new(strategies, "s20") else { return };
    if let Ok(v) = qoe::parse(data, &set, range) {
        let j = decide_per_resource(&set, &v, &[0.004, 0.002]).expect("a candidate");
        assert!(v.get(j).is_some());
    }
});
