//! Payload decoding, the engine's own path: an outside writer stores any
//! bytes; the instance takes them (a change set that rebuilds the new
//! document) or refuses them (`Rejected`, the last good copy kept, updates
//! refused), and never panics or stalls.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use sharedstate_core::backend::Bytes;
use sharedstate_core::{CoordinationBackend, Key, PutMode, SharedState, StateEvent, Subscription};
use sharedstate_memory::MemoryCluster;

struct Harness {
    runtime: tokio::runtime::Runtime,
    cluster: MemoryCluster,
    state: SharedState<Value>,
    events: tokio::sync::Mutex<Subscription>,
    payload: Key,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let cluster = MemoryCluster::with_max_value_bytes(64 * 1024);
        let state = runtime.block_on(async {
            SharedState::<Value>::builder(Arc::new(cluster.client()), "/fuzz")
                .initial(json!({"n": 0}))
                // Between inputs the runtime idles: no Stale from that.
                .max_staleness(Duration::from_secs(24 * 3600))
                .open()
                .await
                .expect("open")
        });
        let events = tokio::sync::Mutex::new(state.subscribe());
        Harness {
            runtime,
            cluster,
            state,
            events,
            payload: Key::new("/fuzz/payload").expect("key"),
        }
    })
}

fuzz_target!(|bytes: &[u8]| {
    let h = harness();
    h.runtime.block_on(async {
        let before = (*h.state.read().expect("fresh")).clone();
        let outside = h.cluster.client();
        if outside
            .put(&h.payload, Bytes::copy_from_slice(bytes), PutMode::Overwrite)
            .await
            .is_err()
        {
            return; // larger than the backend takes
        }
        let mut events = h.events.lock().await;
        // serde_json's own limits (128 levels) are the engine's.
        let expected: Option<Value> = serde_json::from_slice(bytes).ok();
        if expected.as_ref() == Some(&before) {
            return; // the same document: no change set
        }
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("an event in bounded time")
                .expect("events go on");
            match event {
                StateEvent::Changed(set) => {
                    let mut doc = before.clone();
                    sharedstate_conformance::apply_changes(&mut doc, &set.changes).expect("applies");
                    assert_eq!(Some(&doc), expected.as_ref());
                    break;
                }
                StateEvent::Rejected { .. } => {
                    assert!(expected.is_none(), "refused valid JSON {expected:?}");
                    assert_eq!(*h.state.read().expect("last good copy"), before);
                    let refused = h.state.update(|v| v["n"] = json!(1)).await;
                    assert!(refused.is_err(), "no update on a refused payload");
                    break;
                }
                _ => {}
            }
        }
    });
});
