//! The differ: applying `diff(old, new)` to `old` gives `new`, for any two
//! documents, also after the changes travel as JSON.
#![no_main]

mod json;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|docs: (json::Json, json::Json)| {
    let (old, new) = (docs.0 .0, docs.1 .0);
    let changes = sharedstate_core::diff(&old, &new);
    assert_eq!(changes.is_empty(), old == new);
    let mut doc = old.clone();
    sharedstate_conformance::apply_changes(&mut doc, &changes)
        .unwrap_or_else(|e| panic!("{e}: {changes:?}"));
    assert_eq!(doc, new);
    let text = serde_json::to_string(&changes).expect("changes serialise");
    let back: Vec<sharedstate_core::Change> = serde_json::from_str(&text).expect("and read back");
    assert_eq!(back.len(), changes.len());
});
