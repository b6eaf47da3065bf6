//! The CLI's patches (`sharedstate patch`): merge patches (RFC 7396) always
//! apply and are idempotent; JSON Patches (RFC 6902) parse or are refused,
//! and apply or fail as a whole, leaving the document as it was.
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
        let mut patched = doc.clone();
        if json_patch::patch(&mut patched, &operations).is_err() {
            assert_eq!(patched, doc, "a failed JSON Patch changes nothing");
        }
    }
});
