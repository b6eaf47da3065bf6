//! What outside writers can store, and the engine must survive: arbitrary
//! JSON (the differ's changes rebuild the new document exactly), a payload
//! nested 10,000 deep (refused as a payload problem, no stack overflow),
//! a 100,000-element array (taken, its change sets in bounded time).
//! Property cases: 256 by default, `PROPTEST_CASES=N` for more
//! (`scripts/test.sh` step `fuzz`).

use std::time::Duration;

use futures::StreamExt;
use proptest::prelude::*;
use serde_json::{json, Value};
use sharedstate_conformance::apply_changes;
use sharedstate_core::backend::Bytes;
use sharedstate_core::{
    diff, Change, CoordinationBackend, ErrorKind, PutMode, SharedState, StateEvent,
};
use sharedstate_memory::MemoryCluster;

/// Keys with the characters JSON Pointers escape (`~`, `/`).
fn key() -> impl Strategy<Value = String> {
    "[ab~/]{0,3}"
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1.0e9f64..1.0e9).prop_map(|f| json!(f)),
        "[a-z~/]{0,4}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `doc` with `insert` put at `at` of every array it holds (front, middle,
/// end), and its first element dropped: the edits alignment must get right.
fn edited(doc: &Value, insert: &Value, at: usize) -> Value {
    match doc {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(|v| edited(v, insert, at)).collect();
            if at.is_multiple_of(3) && !items.is_empty() {
                items.remove(0);
            }
            items.insert(at.min(items.len()), insert.clone());
            Value::Array(items)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), edited(v, insert, at)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn round_trip(old: &Value, new: &Value) -> Result<(), TestCaseError> {
    let changes: Vec<Change> = diff(old, new);
    let mut doc = old.clone();
    apply_changes(&mut doc, &changes)
        .map_err(|e| TestCaseError::fail(format!("{e}; changes {changes:?}")))?;
    prop_assert_eq!(&doc, new, "changes {:?}", changes);
    prop_assert_eq!(changes.is_empty(), old == new);
    Ok(())
}

proptest! {
    // Cases from PROPTEST_CASES (default 256); no regression files.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_diff_applied_to_old_gives_new(old in json(), new in json()) {
        round_trip(&old, &new)?;
    }

    #[test]
    fn prop_diff_of_edited_arrays_applied_gives_new(
        old in json(), insert in json(), at in 0usize..6,
    ) {
        let new = edited(&old, &insert, at);
        round_trip(&old, &new)?;
        round_trip(&new, &old)?;
    }

    #[test]
    fn prop_diff_survives_serialisation(old in json(), new in json()) {
        // Change sets travel as JSON (the CLI's `watch --json`).
        let changes = diff(&old, &new);
        let text = serde_json::to_string(&changes).expect("changes serialise");
        let back: Vec<Change> = serde_json::from_str(&text).expect("and deserialise");
        let mut doc = old.clone();
        apply_changes(&mut doc, &back).map_err(TestCaseError::fail)?;
        // serde_json's text form of a float may differ in the last digit
        // (no `float_roundtrip`): compare both as they read back.
        let reread = |v: &Value| -> Value {
            serde_json::from_str(&v.to_string()).expect("reads back")
        };
        prop_assert_eq!(reread(&doc), reread(&new));
    }
}

const BOUND: Duration = Duration::from_secs(30);

async fn open(cluster: &MemoryCluster, path: &str) -> SharedState<Value> {
    SharedState::<Value>::builder(std::sync::Arc::new(cluster.client()), path)
        .initial(json!({"n": 1}))
        .open()
        .await
        .expect("open")
}

async fn next_event(events: &mut sharedstate_core::Subscription) -> StateEvent {
    tokio::time::timeout(BOUND, events.next())
        .await
        .expect("an event in bounded time")
        .expect("the stream goes on")
}

#[tokio::test]
async fn a_payload_nested_10000_deep_is_refused_without_overflowing() {
    let cluster = MemoryCluster::new();
    let state = open(&cluster, "/hostile/deep").await;
    let mut events = state.subscribe();
    let outside = cluster.client();
    let depth = 10_000;
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let payload = sharedstate_core::Key::new("/hostile/deep/payload").expect("key");
    outside
        .put(&payload, Bytes::from(deep), PutMode::Overwrite)
        .await
        .expect("an outside writer stores it");
    match next_event(&mut events).await {
        StateEvent::Rejected { error, .. } => {
            assert!(error.contains("recursion limit"), "{error}")
        }
        other => panic!("expected the payload refused, got {other:?}"),
    }
    assert_eq!(*state.read().expect("the last good copy"), json!({"n": 1}));
    let refused = state
        .update(|v| v["n"] = json!(2))
        .await
        .expect_err("refused");
    assert_eq!(refused.kind(), ErrorKind::Decode, "{refused}");
    // 127 levels is as deep as a payload decodes; it still diffs.
    let nested = format!("{}{}", "[".repeat(127), "]".repeat(127));
    outside
        .put(&payload, Bytes::from(nested.clone()), PutMode::Overwrite)
        .await
        .expect("store");
    let StateEvent::Changed(set) = next_event(&mut events).await else {
        panic!("expected the 127-deep payload taken");
    };
    assert_eq!(set.changes.len(), 1, "{:?}", set.changes);
    let taken: Value = serde_json::from_str(&nested).expect("json");
    assert_eq!(*state.read().expect("read"), taken);
    state.close().await;
}

#[tokio::test]
async fn a_100000_element_array_is_taken_in_bounded_time() {
    let cluster = MemoryCluster::new();
    let state = open(&cluster, "/hostile/wide").await;
    let mut events = state.subscribe();
    let outside = cluster.client();
    let payload = sharedstate_core::Key::new("/hostile/wide/payload").expect("key");
    let wide: Vec<u64> = (0..100_000).collect();
    let put = |value: Value| {
        let bytes = Bytes::from(serde_json::to_vec(&value).expect("json"));
        outside.put(&payload, bytes, PutMode::Overwrite)
    };
    put(json!({"n": 1, "items": wide})).await.expect("store");
    let StateEvent::Changed(set) = next_event(&mut events).await else {
        panic!("expected the array taken");
    };
    assert_eq!(set.changes.len(), 1, "one Added for the new array");
    // One element changed: one change, not a cascade.
    let mut one_changed = wide.clone();
    one_changed[50_000] = 7;
    put(json!({"n": 1, "items": one_changed}))
        .await
        .expect("store");
    let StateEvent::Changed(set) = next_event(&mut events).await else {
        panic!("expected the change");
    };
    assert_eq!(
        set.changes.len(),
        1,
        "{:?}",
        &set.changes[..set.changes.len().min(3)]
    );
    assert_eq!(set.changes[0].path(), "/items/50000");
    // Every element different: the alignment gives up at its deadline and
    // reports the array replaced instead of stalling the instance.
    let shifted: Vec<u64> = (1_000_000..1_100_000).collect();
    put(json!({"n": 1, "items": shifted.clone()}))
        .await
        .expect("store");
    let StateEvent::Changed(set) = next_event(&mut events).await else {
        panic!("expected the change");
    };
    let mut doc = json!({"n": 1, "items": one_changed_again(&wide)});
    apply_changes(&mut doc, &set.changes).expect("the change set applies");
    assert_eq!(doc, json!({"n": 1, "items": shifted}));
    state
        .update(|v| v["n"] = json!(2))
        .await
        .expect("updates still work");
    state.close().await;
}

fn one_changed_again(wide: &[u64]) -> Vec<u64> {
    let mut items = wide.to_vec();
    items[50_000] = 7;
    items
}
