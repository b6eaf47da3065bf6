//! Keys: any text is a key or an `InvalidKey`, and an accepted key is its
//! own text, rebuilt by its segments and by its parent and name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sharedstate_core::{ErrorKind, Key};

fuzz_target!(|text: &str| {
    match Key::new(text) {
        Ok(key) => {
            assert_eq!(key.as_str(), text);
            let rebuilt: String = key.segments().map(|s| format!("/{s}")).collect();
            assert_eq!(rebuilt, text);
            if let Some(parent) = key.parent() {
                assert_eq!(parent.child(key.name()).expect("child").as_str(), text);
            }
        }
        Err(error) => assert_eq!(error.kind(), ErrorKind::InvalidKey),
    }
    if let Ok(root) = Key::new("/root") {
        let _ = root.child(text);
    }
});
