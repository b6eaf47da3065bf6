//! Watch behaviours: the first event, ordering, level-triggering, deletes,
//! and `Resync` after session faults.

use futures::StreamExt;
use sharedstate_core::{ErrorKind, Key, PutMode, SessionState, Version, WatchEvent, WatchStream};

use super::{
    bytes, call, child, event_state, expect_kind, next_event, ok, wait_for_event,
    wait_for_new_session, wait_for_session, within, EVENT_TIMEOUT, QUIET_PERIOD, SESSION_TIMEOUT,
};
use crate::{unique_key, BackendFactory, TestClient};

/// Opens a watch, or asserts `Unsupported` and returns `None` when the
/// backend has no watches.
async fn open_watch(client: &TestClient, key: &Key) -> Option<WatchStream> {
    let opened = call("watch", client.backend.watch(key)).await;
    if !client.backend.capabilities().watch {
        expect_kind(
            "watch without the capability",
            opened.map(|_| ()),
            ErrorKind::Unsupported,
        );
        return None;
    }
    Some(ok("watch", opened))
}

/// The first event for a present key is `Initial` with its value and
/// version.
pub async fn watch_initial_present(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("watch_initial_present"), "k");
    let put = client.backend.put(&key, bytes("v1"), PutMode::Create);
    let version = ok("create", call("put", put).await);
    let Some(mut stream) = open_watch(&client, &key).await else {
        return;
    };
    match next_event(&mut stream).await {
        WatchEvent::Initial(Some(found)) => {
            assert_eq!((found.value, found.version), (bytes("v1"), version));
        }
        other => panic!("expected Initial(Some(v1)), got {other:?}"),
    }
}

/// The first event for a missing key is `Initial(None)`, and creating the
/// key is then seen as `Changed`.
pub async fn watch_initial_missing(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("watch_initial_missing"), "k");
    let Some(mut stream) = open_watch(&client, &key).await else {
        return;
    };
    assert_eq!(next_event(&mut stream).await, WatchEvent::Initial(None));
    let put = client.backend.put(&key, bytes("new"), PutMode::Create);
    let version = ok("create", call("put", put).await);
    match next_event(&mut stream).await {
        WatchEvent::Changed(found) => {
            assert_eq!((found.value, found.version), (bytes("new"), version))
        }
        other => panic!("expected Changed after create, got {other:?}"),
    }
}

/// A burst of writes from another client: events come in increasing
/// version order, each with the value written at that version, and the
/// final version always arrives (intermediate ones may be folded).
pub async fn watch_burst_ends_with_latest(f: &dyn BackendFactory) {
    let (watcher, writer) = (f.client().await, f.client().await);
    let key = child(&unique_key("watch_burst_ends_with_latest"), "k");
    let Some(mut stream) = open_watch(&watcher, &key).await else {
        return;
    };
    assert_eq!(next_event(&mut stream).await, WatchEvent::Initial(None));
    let mut written = Vec::new();
    for i in 0..25 {
        let value = bytes_of(format!("value-{i}"));
        let put = writer.backend.put(&key, value.clone(), PutMode::Overwrite);
        written.push((ok("put", call("put", put).await), value));
    }
    let last = written.last().map(|(v, _)| *v).expect("writes done");
    let (_, skipped) = wait_for_event(
        &mut stream,
        "the last version of the burst",
        |e| matches!(event_state(e), Some(Some(found)) if found.version == last),
    )
    .await;
    let mut previous: Option<Version> = None;
    for event in &skipped {
        let Some(Some(found)) = event_state(event) else {
            panic!("unexpected event during a burst of writes: {event:?}");
        };
        assert!(
            written.contains(&(found.version, found.value.clone())),
            "event {event:?} does not match any write"
        );
        assert!(
            previous.is_none_or(|p| p < found.version),
            "out of order: {skipped:?}"
        );
        previous = Some(found.version);
    }
    assert!(
        previous.is_none_or(|p| p < last),
        "out of order: {skipped:?}"
    );
}

/// A delete is seen as `Deleted`, and a re-create after it as `Changed`
/// with a larger version.
pub async fn watch_sees_delete_and_recreate(f: &dyn BackendFactory) {
    let (watcher, writer) = (f.client().await, f.client().await);
    let key = child(&unique_key("watch_sees_delete_and_recreate"), "k");
    let w = &writer.backend;
    let v1 = ok(
        "create",
        call("put", w.put(&key, bytes("1"), PutMode::Create)).await,
    );
    let Some(mut stream) = open_watch(&watcher, &key).await else {
        return;
    };
    assert!(matches!(
        next_event(&mut stream).await,
        WatchEvent::Initial(Some(_))
    ));
    ok("delete", call("delete", w.delete(&key, None)).await);
    assert_eq!(next_event(&mut stream).await, WatchEvent::Deleted);
    let v2 = ok(
        "re-create",
        call("put", w.put(&key, bytes("2"), PutMode::Create)).await,
    );
    assert!(v2 > v1);
    match next_event(&mut stream).await {
        WatchEvent::Changed(found) => assert_eq!((found.value, found.version), (bytes("2"), v2)),
        other => panic!("expected Changed after re-create, got {other:?}"),
    }
}

/// Writes to a child key do not show up on the parent's watch.
pub async fn watch_ignores_children(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("watch_ignores_children"), "k");
    let b = &client.backend;
    ok(
        "create",
        call("put", b.put(&key, bytes("parent"), PutMode::Create)).await,
    );
    let Some(mut stream) = open_watch(&client, &key).await else {
        return;
    };
    assert!(matches!(
        next_event(&mut stream).await,
        WatchEvent::Initial(Some(_))
    ));
    let kid = child(&key, "kid");
    ok(
        "put child",
        call("put", b.put(&kid, bytes("c"), PutMode::Create)).await,
    );
    ok(
        "put child",
        call("put", b.put(&kid, bytes("d"), PutMode::Overwrite)).await,
    );
    let v2 = ok(
        "put",
        call("put", b.put(&key, bytes("p2"), PutMode::Overwrite)).await,
    );
    match next_event(&mut stream).await {
        WatchEvent::Changed(found) => assert_eq!((found.value, found.version), (bytes("p2"), v2)),
        other => panic!("expected the parent's own change, got {other:?}"),
    }
}

/// After the watching client's session expires and a new one starts, the
/// watch yields `Resync` with the current state and keeps delivering.
pub async fn watch_resync_after_session_expiry(f: &dyn BackendFactory) {
    let (watcher, writer) = (f.client().await, f.client().await);
    let key = child(&unique_key("watch_resync_after_session_expiry"), "k");
    let w = &writer.backend;
    let v1 = ok(
        "create",
        call("put", w.put(&key, bytes("1"), PutMode::Create)).await,
    );
    let Some(mut stream) = open_watch(&watcher, &key).await else {
        return;
    };
    assert!(matches!(
        next_event(&mut stream).await,
        WatchEvent::Initial(Some(_))
    ));
    let epoch = watcher.backend.session().borrow().epoch;
    ok(
        "expire_session",
        call("expire_session", watcher.faults.expire_session()).await,
    );
    wait_for_new_session(&*watcher.backend, epoch).await;
    let (resync, skipped) = wait_for_event(&mut stream, "Resync after expiry", |e| {
        matches!(e, WatchEvent::Resync(_))
    })
    .await;
    assert!(skipped.is_empty(), "events before the Resync: {skipped:?}");
    match resync {
        WatchEvent::Resync(Some(found)) => {
            assert_eq!((found.value, found.version), (bytes("1"), v1))
        }
        other => panic!("expected Resync(Some(v1)), got {other:?}"),
    }
    let v2 = ok(
        "put",
        call("put", w.put(&key, bytes("2"), PutMode::Overwrite)).await,
    );
    match next_event(&mut stream).await {
        WatchEvent::Changed(found) => assert_eq!(found.version, v2),
        other => panic!("expected Changed after the Resync, got {other:?}"),
    }
}

/// While the watching client is suspended another client writes; after
/// `resume` the watch yields `Resync`, and it reaches the latest version.
pub async fn watch_resync_after_suspend_resume(f: &dyn BackendFactory) {
    let (watcher, writer) = (f.client().await, f.client().await);
    let key = child(&unique_key("watch_resync_after_suspend_resume"), "k");
    let w = &writer.backend;
    ok(
        "create",
        call("put", w.put(&key, bytes("1"), PutMode::Create)).await,
    );
    let Some(mut stream) = open_watch(&watcher, &key).await else {
        return;
    };
    assert!(matches!(
        next_event(&mut stream).await,
        WatchEvent::Initial(Some(_))
    ));
    ok("suspend", call("suspend", watcher.faults.suspend()).await);
    let suspended = |s: &sharedstate_core::SessionStatus| s.state == SessionState::Suspended;
    wait_for_session(&*watcher.backend, suspended, SESSION_TIMEOUT, "Suspended").await;
    let v2 = ok(
        "put",
        call("put", w.put(&key, bytes("2"), PutMode::Overwrite)).await,
    );
    ok("resume", call("resume", watcher.faults.resume()).await);
    let (resync, _) = wait_for_event(&mut stream, "Resync after resume", |e| {
        matches!(e, WatchEvent::Resync(_))
    })
    .await;
    let reached = matches!(event_state(&resync), Some(Some(found)) if found.version == v2);
    if !reached {
        wait_for_event(
            &mut stream,
            "the write made during the suspension",
            |e| matches!(event_state(e), Some(Some(found)) if found.version == v2),
        )
        .await;
    }
}

/// Closing the client ends its watch streams (possibly after one `Closed`
/// error item).
pub async fn watch_ends_on_close(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("watch_ends_on_close"), "k");
    let Some(mut stream) = open_watch(&client, &key).await else {
        return;
    };
    assert_eq!(next_event(&mut stream).await, WatchEvent::Initial(None));
    ok("close", call("close", client.backend.close()).await);
    within(
        EVENT_TIMEOUT,
        "the watch stream to end after close",
        async {
            while let Some(item) = stream.next().await {
                match item {
                    Err(error) if error.kind() == ErrorKind::Closed => {}
                    other => panic!("after close, expected the end of the stream, got {other:?}"),
                }
            }
        },
    )
    .await;
}

/// A suspended client's watch delivers nothing until it resumes.
pub async fn watch_quiet_while_suspended(f: &dyn BackendFactory) {
    let (watcher, writer) = (f.client().await, f.client().await);
    let key = child(&unique_key("watch_quiet_while_suspended"), "k");
    let Some(mut stream) = open_watch(&watcher, &key).await else {
        return;
    };
    assert_eq!(next_event(&mut stream).await, WatchEvent::Initial(None));
    ok("suspend", call("suspend", watcher.faults.suspend()).await);
    let suspended = |s: &sharedstate_core::SessionStatus| s.state == SessionState::Suspended;
    wait_for_session(&*watcher.backend, suspended, SESSION_TIMEOUT, "Suspended").await;
    let put = writer.backend.put(&key, bytes("x"), PutMode::Create);
    let version = ok("put", call("put", put).await);
    if let Ok(item) = tokio::time::timeout(QUIET_PERIOD, stream.next()).await {
        panic!("a suspended client's watch delivered {item:?}");
    }
    ok("resume", call("resume", watcher.faults.resume()).await);
    wait_for_event(
        &mut stream,
        "the write after resume",
        |e| matches!(event_state(e), Some(Some(found)) if found.version == version),
    )
    .await;
}

fn bytes_of(text: String) -> bytes::Bytes {
    bytes::Bytes::from(text)
}
