//! Engine behaviours about the instance's life: freshness, listeners,
//! session loss, failed updates, subscribers, close.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use sharedstate_core::{ErrorKind, Origin, SharedState, StateEvent};

use super::{
    added, eventually, fixture, modified, next_change_set, next_event, open, raw_put, Fixture, WAIT,
};
use crate::{unique_key, BackendFactory};

/// `read()` turns `Stale` once the session has been suspended longer than
/// `max_staleness`, and recovers after the connection returns.
pub async fn engine_read_stale_when_suspended(f: &dyn BackendFactory) {
    let client = f.client().await;
    let path = unique_key("engine-stale");
    let state = SharedState::builder(client.backend.clone(), path.as_str())
        .initial(fixture(&["x"]))
        .max_staleness(Duration::from_millis(500))
        .open()
        .await
        .expect("open");
    assert!(state.read().is_ok());
    client.faults.suspend().await.expect("suspend");
    eventually(
        "read() turns Stale",
        async || matches!(state.read(), Err(e) if e.kind() == ErrorKind::Stale),
    )
    .await;
    assert!(!state.status().live);
    client.faults.resume().await.expect("resume");
    eventually("read() recovers", async || state.read().is_ok()).await;
    // Live once the watch has resynced too (a verification may prove the
    // copy a little earlier).
    eventually("status() is live again", async || state.status().live).await;
    state.close().await;
}

/// Listeners appear when instances open and disappear on close and drop.
pub async fn engine_listeners_appear_and_disappear(f: &dyn BackendFactory) {
    let path = unique_key("engine-listeners");
    let a = open(&f.client().await, &path, Fixture::default()).await;
    let b = open(&f.client().await, &path, Fixture::default()).await;
    let c = open(&f.client().await, &path, Fixture::default()).await;
    let ids = |list: Vec<sharedstate_core::InstanceInfo>| {
        list.into_iter().map(|l| l.id).collect::<Vec<_>>()
    };
    let mut all = vec![
        a.instance_id().to_owned(),
        b.instance_id().to_owned(),
        c.instance_id().to_owned(),
    ];
    all.sort();
    assert_eq!(ids(a.instances().await.expect("instances")), all);
    // The old (deprecated) name reads the same registrations.
    #[allow(deprecated)]
    let by_old_name = a.listeners().await.expect("listeners");
    assert_eq!(ids(by_old_name), all);
    let me = &a.instances().await.expect("instances")[0];
    assert_eq!(me.pid, std::process::id());
    b.close().await;
    let c_id = c.instance_id().to_owned();
    drop(c);
    eventually("closed and dropped instances disappear", async || {
        ids(a.instances().await.expect("instances")) == vec![a.instance_id().to_owned()]
    })
    .await;
    assert!(!all.is_empty() && !c_id.is_empty());
    a.close().await;
}

/// After a session loss, the instance re-registers, resyncs, and emits the
/// changes made while it was away; updates work again.
pub async fn engine_session_loss_recovery(f: &dyn BackendFactory) {
    let path = unique_key("engine-session-loss");
    let writer = open(&f.client().await, &path, fixture(&["systemd*"])).await;
    let victim_client = f.client().await;
    let victim = open(&victim_client, &path, fixture(&[])).await;
    let mut events = victim.subscribe();
    let epoch = victim.status().session.epoch;

    victim_client.faults.suspend().await.expect("suspend");
    writer
        .update(|s| s.globs.push("rsync*".into()))
        .await
        .expect("update while away");
    victim_client.faults.expire_session().await.expect("expire");
    victim_client.faults.resume().await.expect("resume");

    let set = next_change_set(&mut events, "the change made while away").await;
    assert_eq!(set.origin, Origin::Remote);
    assert_eq!(set.changes, vec![added("/globs/1", json!("rsync*"))]);
    eventually("a new session", async || {
        victim.status().session.epoch > epoch
    })
    .await;
    let id = victim.instance_id().to_owned();
    eventually("the instance re-registered", async || {
        writer
            .instances()
            .await
            .map(|l| l.iter().any(|l| l.id == id))
            .unwrap_or(false)
    })
    .await;
    victim
        .update(|s| s.counter = 1)
        .await
        .expect("update after recovery");
    eventually("the writer sees it", async || {
        writer.read().map(|s| s.counter).ok() == Some(1)
    })
    .await;
    writer.close().await;
    victim.close().await;
}

/// A failing update (value too large) leaves the local copy and the
/// service untouched and publishes nothing.
pub async fn engine_failed_update_changes_nothing(f: &dyn BackendFactory) {
    let client = f.client().await;
    let path = unique_key("engine-failed-update");
    let state = open(&client, &path, fixture(&["keep"])).await;
    let mut events = state.subscribe();
    let version = state.version();
    let huge = "x".repeat(client.backend.capabilities().max_value_bytes + 1);
    let err = state
        .update(|s| s.globs.push(huge.clone()))
        .await
        .expect_err("too large");
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    assert_eq!(*state.read().expect("read"), fixture(&["keep"]));
    assert_eq!(state.version(), version);
    state
        .update(|s| s.counter = 5)
        .await
        .expect("a later update works");
    let set = next_change_set(&mut events, "the later update").await;
    assert_eq!(
        set.changes,
        vec![modified("/counter", json!(0), json!(5))],
        "nothing from the failed one"
    );
    state.close().await;
}

/// Every subscriber gets every change set in version order; a subscriber
/// that falls behind gets `Lagged` then the net difference.
pub async fn engine_subscribers_ordered_and_lagged(f: &dyn BackendFactory) {
    let client = f.client().await;
    let path = unique_key("engine-subscribers");
    let state = SharedState::builder(client.backend.clone(), path.as_str())
        .initial(Fixture::default())
        .change_buffer(4)
        .open()
        .await
        .expect("open");
    let mut first = state.subscribe();
    let mut lagging = state.subscribe();
    // `first` keeps up (one change set per update); `lagging` never polls
    // until the end, so it overflows the 4-event buffer.
    let mut last = None;
    for i in 0..10u64 {
        state.update(|s| s.counter += 1).await.expect("update");
        let set = next_change_set(&mut first, "an update").await;
        assert!(last.is_none_or(|l| set.version > l), "version order");
        last = Some(set.version);
        assert_eq!(
            set.changes,
            vec![modified("/counter", json!(i), json!(i + 1))]
        );
    }
    match next_event(&mut lagging, "the lag notice").await {
        StateEvent::Lagged { missed } => assert!(missed >= 6, "missed {missed}"),
        other => panic!("expected Lagged, got {other:?}"),
    }
    let resync = next_change_set(&mut lagging, "the resync").await;
    assert_eq!(resync.origin, Origin::Rebuilt);
    assert_eq!(
        resync.changes,
        vec![modified("/counter", json!(0), json!(10))]
    );
    state.close().await;
}

/// `close()` ends subscriptions, makes `read()` fail with `Closed` and
/// removes the listener; `read_consistent` reflects outside writes at once.
pub async fn engine_close_and_read_consistent(f: &dyn BackendFactory) {
    let client = f.client().await;
    let path = unique_key("engine-close");
    let state = open(&client, &path, fixture(&["a"])).await;
    let operator = f.client().await;
    raw_put(
        &operator.backend,
        &path,
        br#"{"globs": ["b"], "counter": 3, "flags": {}}"#,
    )
    .await;
    assert_eq!(
        *state.read_consistent().await.expect("read_consistent"),
        Fixture {
            counter: 3,
            ..fixture(&["b"])
        }
    );
    let mut events = state.subscribe();
    let watcher = SharedState::<Fixture>::builder(operator.backend.clone(), path.as_str())
        .register_instance(false)
        .open()
        .await
        .expect("open");
    state.close().await;
    assert!(tokio::time::timeout(WAIT, events.next())
        .await
        .expect("stream ends")
        .is_none());
    assert_eq!(state.read().expect_err("closed").kind(), ErrorKind::Closed);
    assert!(watcher.instances().await.expect("instances").is_empty());
    watcher.close().await;
}
