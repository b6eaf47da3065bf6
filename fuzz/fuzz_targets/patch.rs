//! The CLI's patches (`sharedstate patch`): merge patches (RFC 7396) always
//! apply and are idempotent; JSON Patches (RFC 6902) parse or are refused,
//! and apply or fail without a panic (a failed one is dropped whole).
#![no_main]

mod json;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (json::Json, json::Json)| {
    let (doc, patch) = (input.0 .0, input.1 .0);
    let mut once = doc.clone();
    json_patch::merge(&mut once, &patch);
    let mut twice = once.clone();
    json_patch::merge(&mut twice, &patch);
    assert_eq!(once, twice);
    if let Ok(operations) = serde_json::from_value::<json_patch::Patch>(patch) {
        // As the command applies them: `patch_unsafe` on its own copy, which
        // a failure drops whole (json-patch 5.0.0's `patch` panics undoing
        // some failed patches: cli/src/commands/write.rs). No panic here.
        let mut patched = doc.clone();
        let _ = json_patch::patch_unsafe(&mut patched, &operations);
    }
});
