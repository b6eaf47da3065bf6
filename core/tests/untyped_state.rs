//! The untyped state primitive (`sharedstate_core::state`) on the memory
//! backend: what the CLI's writes rely on.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sharedstate_core::backend::Bytes;
use sharedstate_core::state::{
    locked_update, optimistic_update, StateKeys, UpdateError, UpdateOptions, Written,
};
use sharedstate_core::{CoordinationBackend, Key, LockOptions, PutMode, SharedState, Versioned};
use sharedstate_memory::MemoryCluster;

fn options() -> UpdateOptions {
    UpdateOptions::new(Duration::from_millis(300), Duration::from_secs(5), 3)
}

fn keys(path: &str) -> StateKeys {
    StateKeys::new(Key::new(path).expect("key")).expect("layout")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Counter {
    n: u32,
}

#[test]
fn the_layout_is_payload_lock_and_listeners_under_the_path() {
    let keys = keys("/app/flags");
    assert_eq!(keys.root.as_str(), "/app/flags");
    assert_eq!(keys.payload.as_str(), "/app/flags/payload");
    assert_eq!(keys.lock.as_str(), "/app/flags/lock");
    assert_eq!(keys.listeners.as_str(), "/app/flags/listeners");
}

/// An untyped locked update writes where an engine instance reads, and
/// the instance sees it.
#[tokio::test]
async fn a_locked_update_reaches_an_engine_instance() {
    let cluster = MemoryCluster::new();
    let state = SharedState::builder(std::sync::Arc::new(cluster.client()), "/app/counter")
        .initial(Counter { n: 1 })
        .open()
        .await
        .expect("open");
    let tool = cluster.client();
    let written = locked_update(&tool, &keys("/app/counter"), &options(), |current| {
        let mut doc: serde_json::Value = serde_json::from_slice(&current.value).expect("json");
        doc["n"] = 2.into();
        Ok::<_, ()>(Some(Bytes::from(doc.to_string())))
    })
    .await
    .expect("locked update");
    let Written::Changed(version) = written else {
        panic!("expected a write, got {written:?}");
    };
    let seen = state.read_consistent().await.expect("read");
    assert_eq!((*seen).clone(), Counter { n: 2 });
    assert_eq!(state.version(), version);
    state.close().await;
}

#[tokio::test]
async fn nothing_to_change_writes_nothing_and_releases_the_lock() {
    let client = MemoryCluster::new().client();
    let keys = keys("/app/same");
    let v1 = client
        .put(&keys.payload, Bytes::from_static(b"{}"), PutMode::Create)
        .await
        .expect("create");
    let written = locked_update(&client, &keys, &options(), |_| Ok::<_, ()>(None)).await;
    assert!(
        matches!(written, Ok(Written::Unchanged(v)) if v == v1),
        "{written:?}"
    );
    let refused = locked_update(&client, &keys, &options(), |_| Err("no")).await;
    assert!(
        matches!(refused, Err(UpdateError::Refused("no"))),
        "{refused:?}"
    );
    // Both released the lock: it can be taken at once.
    let guard = client
        .lock(
            &keys.lock,
            LockOptions::with_timeout(Duration::from_millis(50)),
        )
        .await
        .expect("lock free");
    guard.release().await.expect("release");
}

#[tokio::test]
async fn a_missing_payload_is_missing() {
    let client = MemoryCluster::new().client();
    let keys = keys("/app/none");
    let locked = locked_update(&client, &keys, &options(), |_| Ok::<_, ()>(None)).await;
    assert!(matches!(locked, Err(UpdateError::Missing)), "{locked:?}");
    let optimistic = optimistic_update(&client, &keys, &options(), |_| Ok::<_, ()>(None)).await;
    assert!(
        matches!(optimistic, Err(UpdateError::Missing)),
        "{optimistic:?}"
    );
}

/// A writer that ignores the lock moves the payload on between the read
/// and the write, every time: the update retries with a fresh read per
/// attempt, and gives up after `max_attempts`.
#[tokio::test]
async fn outside_writes_are_retried_then_given_up() {
    let cluster = MemoryCluster::new();
    let (client, outsider) = (cluster.client(), cluster.client());
    let keys = keys("/app/raced");
    client
        .put(&keys.payload, Bytes::from_static(b"0"), PutMode::Create)
        .await
        .expect("create");
    for locked in [true, false] {
        let mut calls = 0;
        let mut race = |current: &Versioned| {
            calls += 1;
            // The memory cluster answers without waiting: the outside
            // write has landed when this returns.
            futures::executor::block_on(outsider.put(
                &keys.payload,
                Bytes::from(format!("outside {calls}")),
                PutMode::Overwrite,
            ))
            .expect("outside write");
            Ok::<_, ()>(Some(Bytes::from(format!("{}", current.version.as_u64()))))
        };
        let result = if locked {
            locked_update(&client, &keys, &options(), &mut race).await
        } else {
            optimistic_update(&client, &keys, &options(), &mut race).await
        };
        assert!(
            matches!(result, Err(UpdateError::GaveUp { attempts: 3 })),
            "{result:?}"
        );
        assert_eq!(calls, 3, "one fresh read per attempt (locked: {locked})");
        let stored = client
            .get(&keys.payload)
            .await
            .expect("get")
            .expect("payload");
        assert_eq!(
            stored.value,
            Bytes::from("outside 3"),
            "nothing of ours was written"
        );
    }
}

#[tokio::test]
async fn an_optimistic_update_writes_at_the_version_read() {
    let client = MemoryCluster::new().client();
    let keys = keys("/app/opt");
    let v1 = client
        .put(&keys.payload, Bytes::from_static(b"1"), PutMode::Create)
        .await
        .expect("create");
    let written = optimistic_update(&client, &keys, &options(), |current| {
        assert_eq!(current.version, v1);
        Ok::<_, ()>(Some(Bytes::from_static(b"2")))
    })
    .await
    .expect("update");
    let stored = client
        .get(&keys.payload)
        .await
        .expect("get")
        .expect("payload");
    assert_eq!(written, Written::Changed(stored.version));
    assert_eq!(stored.value, Bytes::from_static(b"2"));
}
