//! Engine behaviours: `SharedState<T>` on top of each backend. The change
//! sets asserted here are exact, so every backend must produce the same ones
//! for the same updates.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sharedstate_core::{
    Change, ChangeSet, CoordinationBackend, ErrorKind, Key, Origin, PayloadProblem, PutMode,
    SharedState, StateEvent, Subscription, WriteMode,
};

use crate::{unique_key, BackendFactory, TestClient};

mod fleet;
mod freshness;
mod lifecycle;
pub use fleet::*;
pub use freshness::*;
pub use lifecycle::*;

/// The state every engine behaviour shares.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fixture {
    /// A list, to check array alignment in change sets.
    pub globs: Vec<String>,
    /// A counter, for lost-update checks.
    pub counter: u64,
    /// A map, for added/removed keys.
    pub flags: BTreeMap<String, bool>,
}

pub(crate) fn fixture(globs: &[&str]) -> Fixture {
    Fixture {
        globs: globs.iter().map(|g| g.to_string()).collect(),
        counter: 0,
        flags: BTreeMap::new(),
    }
}

/// Session events on real servers take seconds; everything waits at most this.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) async fn open(
    client: &TestClient,
    path: &Key,
    initial: Fixture,
) -> SharedState<Fixture> {
    SharedState::builder(client.backend.clone(), path.as_str())
        .initial(initial)
        .open()
        .await
        .unwrap_or_else(|e| panic!("opening {path} failed: {e}"))
}

pub(crate) async fn open_with_mode(
    client: &TestClient,
    path: &Key,
    initial: Fixture,
    mode: WriteMode,
) -> SharedState<Fixture> {
    SharedState::builder(client.backend.clone(), path.as_str())
        .initial(initial)
        .write_mode(mode)
        .open()
        .await
        .unwrap_or_else(|e| panic!("opening {path} ({mode:?}) failed: {e}"))
}

/// The next event, or a panic naming what was awaited.
pub(crate) async fn next_event(subscription: &mut Subscription, what: &str) -> StateEvent {
    match tokio::time::timeout(WAIT, subscription.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("subscription ended while waiting for {what}"),
        Err(_) => panic!("no event within {WAIT:?} while waiting for {what}"),
    }
}

pub(crate) async fn next_change_set(subscription: &mut Subscription, what: &str) -> ChangeSet {
    match next_event(subscription, what).await {
        StateEvent::Changed(set) => set,
        other => panic!("expected a change set ({what}), got {other:?}"),
    }
}

/// Polls `check` every 20 ms until it is true, at most `WAIT`.
pub(crate) async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "not true within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn added(path: &str, value: serde_json::Value) -> Change {
    Change::Added {
        path: path.into(),
        value,
    }
}

pub(crate) fn modified(path: &str, old: serde_json::Value, new: serde_json::Value) -> Change {
    Change::Modified {
        path: path.into(),
        old,
        new,
    }
}

pub(crate) fn removed(path: &str, old: serde_json::Value) -> Change {
    Change::Removed {
        path: path.into(),
        old,
    }
}

/// Opening with `initial` creates the payload as plain JSON.
pub async fn engine_open_creates_payload_from_initial(f: &dyn BackendFactory) {
    let client = f.client().await;
    let path = unique_key("engine-open-creates");
    let state = open(&client, &path, fixture(&["systemd*"])).await;
    assert_eq!(*state.read().expect("read"), fixture(&["systemd*"]));
    let payload = path.child("payload").expect("key");
    let raw = client
        .backend
        .get(&payload)
        .await
        .expect("get")
        .expect("payload exists");
    let decoded: serde_json::Value = serde_json::from_slice(&raw.value).expect("payload is JSON");
    assert_eq!(
        decoded,
        json!({"globs": ["systemd*"], "counter": 0, "flags": {}})
    );
    assert_eq!(raw.version, state.version());
    state.close().await;
}

/// Without a payload and without `initial`, open fails with `NotFound`;
/// `expect_existing` waits for a creator and times out with `NotFound`.
pub async fn engine_open_missing_payload(f: &dyn BackendFactory) {
    let client = f.client().await;
    let path = unique_key("engine-open-missing");
    let err = SharedState::<Fixture>::builder(client.backend.clone(), path.as_str())
        .open()
        .await
        .expect_err("no payload, no initial");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = SharedState::<Fixture>::builder(client.backend.clone(), path.as_str())
        .expect_existing(Duration::from_millis(300))
        .open()
        .await
        .expect_err("nobody creates it");
    assert_eq!(err.kind(), ErrorKind::NotFound);

    let waiter_backend = client.backend.clone();
    let waiter_path = path.clone();
    let waiter = tokio::spawn(async move {
        SharedState::<Fixture>::builder(waiter_backend, waiter_path.as_str())
            .expect_existing(WAIT)
            .open()
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let creator = open(&f.client().await, &path, fixture(&["created"])).await;
    let opened = waiter
        .await
        .expect("join")
        .expect("expect_existing sees the creator");
    assert_eq!(*opened.read().expect("read"), fixture(&["created"]));
    opened.close().await;
    creator.close().await;
}

/// Several instances opening a missing payload at once all succeed and
/// agree on one initial value.
pub async fn engine_concurrent_open(f: &dyn BackendFactory) {
    let path = unique_key("engine-concurrent-open");
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(f.client().await);
    }
    let opens = clients.iter().enumerate().map(|(i, client)| {
        let initial = fixture(&[&format!("instance-{i}")]);
        open(client, &path, initial)
    });
    let states = futures::future::join_all(opens).await;
    let first = states[0].read().expect("read");
    assert_eq!(first.globs.len(), 1);
    for state in &states {
        assert_eq!(*state.read().expect("read"), *first, "all instances agree");
        assert_eq!(state.version(), states[0].version());
    }
    for state in states {
        state.close().await;
    }
}

/// Two instances on two clients see each other's updates as exact `Remote`
/// change sets, and their own as `Local` ones.
pub async fn engine_two_instances_see_each_other(f: &dyn BackendFactory) {
    let path = unique_key("engine-two-instances");
    let a = open(&f.client().await, &path, fixture(&["systemd*", "rsync*"])).await;
    let b = open(&f.client().await, &path, fixture(&["ignored"])).await;
    let mut a_events = a.subscribe();
    let mut b_events = b.subscribe();

    a.update(|s| s.globs.push("firefox*".into()))
        .await
        .expect("a updates");
    let expected = vec![added("/globs/2", json!("firefox*"))];
    let local = next_change_set(&mut a_events, "a's own update").await;
    assert_eq!((local.origin, &local.changes), (Origin::Local, &expected));
    let remote = next_change_set(&mut b_events, "a's update at b").await;
    assert_eq!(
        (remote.origin, &remote.changes),
        (Origin::Remote, &expected)
    );
    assert_eq!(local.version, remote.version);

    b.update(|s| {
        s.flags.insert("beta".into(), true);
    })
    .await
    .expect("b updates");
    let at_a = next_change_set(&mut a_events, "b's update at a").await;
    assert_eq!(at_a.origin, Origin::Remote);
    assert_eq!(at_a.changes, vec![added("/flags/beta", json!(true))]);
    assert!(at_a.version > local.version);
    assert_eq!(*a.read().expect("read"), *b.read().expect("read"));
    a.close().await;
    b.close().await;
}

/// One update applied by a behaviour.
type Step = Box<dyn Fn(&mut Fixture) + Send + Sync>;

/// A sequence of updates yields exactly these change sets, in order: deep
/// paths, array alignment (insert at front is one `Added`), removals.
pub async fn engine_change_sets_are_exact(f: &dyn BackendFactory) {
    let path = unique_key("engine-change-sets");
    let writer = open(&f.client().await, &path, fixture(&["systemd*", "rsync*"])).await;
    let reader = open(&f.client().await, &path, Fixture::default()).await;
    let mut events = reader.subscribe();
    let steps: Vec<(Step, Vec<Change>)> = vec![
        (
            Box::new(|s| s.globs.insert(0, "cron*".into())),
            vec![added("/globs/0", json!("cron*"))],
        ),
        (
            Box::new(|s| {
                s.counter = 7;
                s.flags.insert("a/b".into(), false);
            }),
            vec![
                modified("/counter", json!(0), json!(7)),
                added("/flags/a~1b", json!(false)),
            ],
        ),
        (
            Box::new(|s| {
                s.globs.remove(1);
                s.flags.clear();
            }),
            vec![
                removed("/flags/a~1b", json!(false)),
                removed("/globs/1", json!("systemd*")),
            ],
        ),
    ];
    let mut last = writer.version();
    for (i, (step, expected)) in steps.into_iter().enumerate() {
        writer.update(|s| step(s)).await.expect("update");
        let set = next_change_set(&mut events, &format!("step {i}")).await;
        assert_eq!(set.origin, Origin::Remote);
        assert_eq!(set.changes, expected, "step {i}");
        assert!(set.version > last, "versions increase");
        last = set.version;
    }
    assert_eq!(reader.read().expect("read").globs, ["cron*", "rsync*"]);
    writer.close().await;
    reader.close().await;
}

async fn no_lost_updates(f: &dyn BackendFactory, mode: WriteMode, name: &str) {
    const INSTANCES: usize = 4;
    const INCREMENTS: u64 = 50;
    let path = unique_key(name);
    let mut states = Vec::new();
    for _ in 0..INSTANCES {
        states.push(open_with_mode(&f.client().await, &path, Fixture::default(), mode).await);
    }
    let writers = states.iter().map(|state| async move {
        for _ in 0..INCREMENTS {
            state
                .update(|s| s.counter += 1)
                .await
                .unwrap_or_else(|e| panic!("increment failed ({mode:?}): {e}"));
        }
    });
    futures::future::join_all(writers).await;
    let expected = INSTANCES as u64 * INCREMENTS;
    let checker = f.client().await;
    let payload = path.child("payload").expect("key");
    let raw = checker
        .backend
        .get(&payload)
        .await
        .expect("get")
        .expect("payload");
    let stored: Fixture = serde_json::from_slice(&raw.value).expect("decode");
    assert_eq!(
        stored.counter, expected,
        "final count on the service ({mode:?})"
    );
    for state in &states {
        eventually("every instance converges", async || {
            state.read().map(|s| s.counter).ok() == Some(expected)
        })
        .await;
    }
    for state in states {
        state.close().await;
    }
}

/// 4 instances x 50 concurrent increments in Locked mode lose nothing.
pub async fn engine_no_lost_updates_locked(f: &dyn BackendFactory) {
    no_lost_updates(f, WriteMode::Locked, "engine-lost-locked").await;
}

/// 4 instances x 50 concurrent increments in Optimistic mode lose nothing.
pub async fn engine_no_lost_updates_optimistic(f: &dyn BackendFactory) {
    no_lost_updates(f, WriteMode::Optimistic, "engine-lost-optimistic").await;
}

pub(crate) async fn raw_put(backend: &Arc<dyn CoordinationBackend>, path: &Key, body: &[u8]) {
    let payload = path.child("payload").expect("key");
    backend
        .put(
            &payload,
            bytes::Bytes::copy_from_slice(body),
            PutMode::Overwrite,
        )
        .await
        .expect("outside write");
}

/// `try_update` never runs `f` on a copy older than the service's: after an
/// outside write, it either sees the new value or fails with `Stale` (and
/// then the copy is refreshed, so a retry succeeds), in both write modes.
pub async fn engine_try_update_never_runs_on_stale_copy(f: &dyn BackendFactory) {
    for mode in [WriteMode::Locked, WriteMode::Optimistic] {
        let path = unique_key("engine-try-update");
        let state = open_with_mode(&f.client().await, &path, Fixture::default(), mode).await;
        let outside = f.client().await;
        let mut stale = 0;
        for round in 1..=10u64 {
            let body = serde_json::to_vec(&Fixture {
                counter: round * 10,
                ..Fixture::default()
            })
            .expect("encode");
            raw_put(&outside.backend, &path, &body).await;
            match state.try_update(|s| s.counter).await {
                Ok(seen) => assert_eq!(seen, round * 10, "f ran on a stale copy ({mode:?})"),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Stale, "{e}");
                    stale += 1;
                    assert_eq!(state.read().expect("read").counter, round * 10, "refreshed");
                    let retried = state.try_update(|s| s.counter).await.expect("retry");
                    assert_eq!(retried, round * 10);
                }
            }
        }
        tracing::info!(?mode, stale, "try_update rounds that found a stale copy");
        state.close().await;
    }
}

/// An outside writer's raw put (no lock) arrives as an exact `Remote`
/// change set.
pub async fn engine_external_put_is_remote_change(f: &dyn BackendFactory) {
    let path = unique_key("engine-external");
    let state = open(&f.client().await, &path, fixture(&["systemd*", "rsync*"])).await;
    let mut events = state.subscribe();
    let operator = f.client().await;
    raw_put(
        &operator.backend,
        &path,
        br#"{"globs": ["systemd*", "rsync*", "firefox*"], "counter": 0, "flags": {}}"#,
    )
    .await;
    let set = next_change_set(&mut events, "the operator's write").await;
    assert_eq!(set.origin, Origin::Remote);
    assert_eq!(set.changes, vec![added("/globs/2", json!("firefox*"))]);
    assert_eq!(state.read().expect("read").globs.len(), 3);
    state.close().await;
}

/// A malformed payload keeps the last good copy, is reported (event,
/// status, `Decode` from update and read_consistent), and a valid payload
/// afterwards recovers everything.
pub async fn engine_malformed_payload_then_recovery(f: &dyn BackendFactory) {
    let path = unique_key("engine-malformed");
    let state = open(&f.client().await, &path, fixture(&["good"])).await;
    let mut events = state.subscribe();
    let operator = f.client().await;
    raw_put(&operator.backend, &path, b"{\"globs\": [oops").await;
    match next_event(&mut events, "the rejection").await {
        StateEvent::Rejected { version, .. } => assert!(version > state.version()),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(*state.read().expect("last good copy"), fixture(&["good"]));
    assert!(matches!(
        state.status().problem,
        Some(PayloadProblem::Undecodable { .. })
    ));
    let err = state
        .update(|s| s.counter += 1)
        .await
        .expect_err("update on bad payload");
    assert_eq!(err.kind(), ErrorKind::Decode);
    let err = state
        .read_consistent()
        .await
        .expect_err("read_consistent on bad payload");
    assert_eq!(err.kind(), ErrorKind::Decode);
    // A wrong shape is rejected the same way.
    raw_put(&operator.backend, &path, br#"{"globs": "not a list"}"#).await;
    assert!(matches!(
        next_event(&mut events, "second rejection").await,
        StateEvent::Rejected { .. }
    ));

    raw_put(
        &operator.backend,
        &path,
        br#"{"globs": ["good", "better"], "counter": 0, "flags": {}}"#,
    )
    .await;
    let set = next_change_set(&mut events, "the recovery").await;
    assert_eq!(
        set.changes,
        vec![added("/globs/1", json!("better"))],
        "diff from the last good copy"
    );
    assert_eq!(state.status().problem, None);
    state
        .update(|s| s.counter += 1)
        .await
        .expect("update after recovery");
    assert_eq!(state.read().expect("read").counter, 1);
    state.close().await;
}
