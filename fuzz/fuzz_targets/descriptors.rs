//! Descriptor parsing: any bytes either load as a snapshot or are refused with an error, never a
//! panic; a loaded snapshot is deterministic (the same bytes give the same flags and hash).
#![no_main]

use pbflags_evaluator::core::registry::Snapshot;

libfuzzer_sys::fuzz_target!(
    // libFuzzer's hook aborts on every panic, even one the code under test contains on purpose
    // (descriptor parsing does); with the default hook, only a panic escaping the target crashes.
    init: {
        drop(std::panic::take_hook());
    },
    |data: &[u8]| {
    if let Ok(s) = Snapshot::from_bytes(data) {
        let again = Snapshot::from_bytes(data).expect("the same bytes load again");
        assert_eq!(s.hash(), again.hash());
        assert_eq!(s.len(), again.len());
        assert!(s.diff(&again).added.is_empty() && s.diff(&again).removed.is_empty());
    }
});
