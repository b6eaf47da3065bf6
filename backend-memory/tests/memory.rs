//! Memory-specific behaviour the shared suite does not pin down: faults
//! combined with each other, cancelled lock waits, named clusters, drop.

use std::time::Duration;

use futures::StreamExt;
use sharedstate_core::backend::Bytes;
use sharedstate_core::{
    CoordinationBackend, ErrorKind, Key, LockOptions, PutMode, SessionState, SessionStatus,
    WatchEvent,
};
use sharedstate_memory::{MemoryCluster, DEFAULT_MAX_VALUE_BYTES};

const WAIT: Duration = Duration::from_secs(5);

fn key(path: &str) -> Key {
    Key::new(path).expect("valid key")
}

fn connected(epoch: u64) -> SessionStatus {
    SessionStatus {
        state: SessionState::Connected,
        epoch,
    }
}

fn status(client: &dyn CoordinationBackend) -> SessionStatus {
    *client.session().borrow()
}

fn lock_for(timeout: Duration) -> LockOptions {
    LockOptions::with_timeout(timeout)
}

#[tokio::test]
async fn defaults_and_capabilities() {
    let cluster = MemoryCluster::default();
    assert_eq!(cluster.max_value_bytes(), DEFAULT_MAX_VALUE_BYTES);
    let client = cluster.client();
    let caps = client.capabilities();
    assert_eq!(client.name(), "memory");
    assert!(caps.linearizable_reads && caps.watch && caps.locks);
    assert!(caps.fenced_writes && caps.registrations && caps.delete_requires_no_children);
    assert_eq!(status(&client), connected(0));
}

#[tokio::test]
async fn named_clusters_share_data() {
    let a = MemoryCluster::named("memory-tests-shared").client();
    let b = MemoryCluster::named("memory-tests-shared").client();
    let other = MemoryCluster::named("memory-tests-other").client();
    let k = key("/named/k");
    a.put(&k, Bytes::from_static(b"v"), PutMode::Overwrite)
        .await
        .unwrap();
    assert!(b.get(&k).await.unwrap().is_some());
    assert!(other.get(&k).await.unwrap().is_none());
}

#[tokio::test]
async fn versions_come_from_one_cluster_wide_counter() {
    let cluster = MemoryCluster::new();
    let (a, b) = (cluster.client(), cluster.client());
    let v1 = a
        .put(&key("/x"), Bytes::new(), PutMode::Create)
        .await
        .unwrap();
    let v2 = b
        .put(&key("/y"), Bytes::new(), PutMode::Create)
        .await
        .unwrap();
    let v3 = a
        .put(&key("/x"), Bytes::new(), PutMode::Overwrite)
        .await
        .unwrap();
    assert!(v1 < v2 && v2 < v3);
}

#[tokio::test]
async fn ephemeral_keys_cannot_have_children() {
    let client = MemoryCluster::new().client();
    let _registration = client
        .register(&key("/members/me"), Bytes::new())
        .await
        .unwrap();
    let err = client
        .put(&key("/members/me/child"), Bytes::new(), PutMode::Create)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(client.list(&key("/members/me")).await.unwrap().is_empty());
}

#[tokio::test]
async fn dropping_the_client_ends_its_session() {
    let cluster = MemoryCluster::new();
    let (a, b) = (cluster.client(), cluster.client());
    let status_rx = a.session();
    let registration = a.register(&key("/m/a"), Bytes::new()).await.unwrap();
    let guard = a.lock(&key("/lock"), lock_for(WAIT)).await.unwrap();
    drop(a);
    assert_eq!(status_rx.borrow().state, SessionState::Closed);
    assert!(b.get(&key("/m/a")).await.unwrap().is_none());
    assert!(guard.is_lost(), "a closed session's locks are lost");
    b.lock(&key("/lock"), lock_for(WAIT)).await.unwrap();
    // Handles outliving their client close and release quietly.
    registration.close().await.unwrap();
    guard.release().await.unwrap();
}

#[tokio::test]
async fn expiry_while_suspended_waits_for_resume() {
    let cluster = MemoryCluster::new();
    let (a, b) = (cluster.client(), cluster.client());
    let member = key("/m/a");
    let _registration = a.register(&member, Bytes::from_static(b"a")).await.unwrap();
    let before = b.get(&member).await.unwrap().unwrap();
    a.suspend().unwrap();
    assert_eq!(status(&a).state, SessionState::Suspended);
    a.expire_session().unwrap();
    assert_eq!(
        status(&a),
        SessionStatus {
            state: SessionState::Lost,
            epoch: 0
        }
    );
    assert!(
        b.get(&member).await.unwrap().is_none(),
        "ephemeral gone at expiry"
    );
    let err = a.get(&member).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    a.resume().unwrap();
    assert_eq!(status(&a), connected(1));
    let after = b.get(&member).await.unwrap().expect("re-created on resume");
    assert!(after.version > before.version);
}

#[tokio::test]
async fn faults_are_idempotent_and_fail_after_close() {
    let client = MemoryCluster::new().client();
    client.resume().unwrap();
    assert_eq!(status(&client), connected(0));
    client.suspend().unwrap();
    client.suspend().unwrap();
    client.resume().unwrap();
    assert_eq!(status(&client), connected(0));
    client.close().await.unwrap();
    client.close().await.unwrap();
    for result in [client.expire_session(), client.suspend(), client.resume()] {
        assert_eq!(result.unwrap_err().kind(), ErrorKind::Closed);
    }
}

#[tokio::test]
async fn watch_delivers_nothing_while_suspended_then_resyncs() {
    let cluster = MemoryCluster::new();
    let (a, b) = (cluster.client(), cluster.client());
    let k = key("/w");
    let mut events = a.watch(&k).await.unwrap();
    assert_eq!(
        events.next().await.unwrap().unwrap(),
        WatchEvent::Initial(None)
    );
    // Written, not yet polled, then suspended: not delivered while away.
    b.put(&k, Bytes::from_static(b"1"), PutMode::Create)
        .await
        .unwrap();
    a.suspend().unwrap();
    let v2 = b
        .put(&k, Bytes::from_static(b"2"), PutMode::Overwrite)
        .await
        .unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
    assert!(quiet.is_err(), "delivered while suspended: {quiet:?}");
    a.resume().unwrap();
    match events.next().await.unwrap().unwrap() {
        WatchEvent::Resync(Some(found)) => assert_eq!(found.version, v2),
        other => panic!("expected Resync(v2), got {other:?}"),
    }
}

#[tokio::test]
async fn lock_waiter_fails_when_its_session_expires() {
    let cluster = MemoryCluster::new();
    let (a, b) = (cluster.client(), cluster.client());
    let lock = key("/lock");
    let _held = a.lock(&lock, lock_for(WAIT)).await.unwrap();
    let (result, ()) = tokio::join!(b.lock(&lock, lock_for(WAIT)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.expire_session().unwrap();
    });
    assert_eq!(result.unwrap_err().kind(), ErrorKind::SessionLost);
}

#[tokio::test]
async fn lock_waiter_fails_when_its_client_closes() {
    let cluster = MemoryCluster::new();
    let (a, b) = (cluster.client(), cluster.client());
    let lock = key("/lock");
    let _held = a.lock(&lock, lock_for(WAIT)).await.unwrap();
    let (result, ()) = tokio::join!(b.lock(&lock, lock_for(WAIT)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.close().await.unwrap();
    });
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Closed);
}

#[tokio::test]
async fn cancelled_lock_wait_leaves_the_queue() {
    let cluster = MemoryCluster::new();
    let (a, b, c) = (cluster.client(), cluster.client(), cluster.client());
    let lock = key("/lock");
    let held = a.lock(&lock, lock_for(WAIT)).await.unwrap();
    // b gives up by dropping its future (not through the timeout).
    let cancelled =
        tokio::time::timeout(Duration::from_millis(100), b.lock(&lock, lock_for(WAIT))).await;
    assert!(cancelled.is_err());
    held.release().await.unwrap();
    let quick = lock_for(Duration::from_millis(500));
    let guard = c.lock(&lock, quick).await.expect("c is not stuck behind b");
    drop(guard);
}

#[tokio::test]
async fn lock_is_not_reentrant() {
    let client = MemoryCluster::new().client();
    let lock = key("/lock");
    let _held = client.lock(&lock, lock_for(WAIT)).await.unwrap();
    let again = client
        .lock(&lock, lock_for(Duration::from_millis(50)))
        .await;
    assert_eq!(again.unwrap_err().kind(), ErrorKind::LockTimeout);
}

#[tokio::test]
async fn release_while_suspended_fails_and_keeps_the_lock() {
    let cluster = MemoryCluster::new();
    let (a, b) = (cluster.client(), cluster.client());
    let lock = key("/lock");
    let held = a.lock(&lock, lock_for(WAIT)).await.unwrap();
    a.suspend().unwrap();
    assert_eq!(
        held.release().await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    let denied = b.lock(&lock, lock_for(Duration::from_millis(50))).await;
    assert_eq!(denied.unwrap_err().kind(), ErrorKind::LockTimeout);
    a.expire_session().unwrap();
    a.resume().unwrap();
    b.lock(&lock, lock_for(WAIT))
        .await
        .expect("free after expiry");
}

#[tokio::test]
async fn fenced_put_with_another_clients_guard_is_lock_lost() {
    let cluster = MemoryCluster::new();
    let (a, b) = (cluster.client(), cluster.client());
    let guard = a.lock(&key("/lock"), lock_for(WAIT)).await.unwrap();
    let err = b
        .fenced_put(&key("/data"), Bytes::new(), PutMode::Overwrite, &guard)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LockLost);
    assert!(a.get(&key("/data")).await.unwrap().is_none());
}

#[tokio::test]
async fn registration_blocked_by_another_key_is_not_recreated() {
    let cluster = MemoryCluster::new();
    let (a, b) = (cluster.client(), cluster.client());
    let member = key("/m/a");
    let _registration = a.register(&member, Bytes::from_static(b"a")).await.unwrap();
    a.suspend().unwrap();
    a.expire_session().unwrap();
    // Someone else takes the key while a has no session.
    b.put(&member, Bytes::from_static(b"b"), PutMode::Create)
        .await
        .unwrap();
    a.resume().unwrap();
    let found = b.get(&member).await.unwrap().unwrap();
    assert_eq!(found.value, Bytes::from_static(b"b"));
}

#[tokio::test]
async fn watches_of_many_clients_and_dropped_streams() {
    let cluster = MemoryCluster::new();
    let (a, b) = (cluster.client(), cluster.client());
    let k = key("/shared");
    let dropped = a.watch(&k).await.unwrap();
    drop(dropped);
    let mut wa = a.watch(&k).await.unwrap();
    let mut wb = b.watch(&k).await.unwrap();
    let v = a
        .put(&k, Bytes::from_static(b"x"), PutMode::Create)
        .await
        .unwrap();
    for events in [&mut wa, &mut wb] {
        assert_eq!(
            events.next().await.unwrap().unwrap(),
            WatchEvent::Initial(None)
        );
        match events.next().await.unwrap().unwrap() {
            WatchEvent::Changed(found) => assert_eq!(found.version, v),
            other => panic!("expected Changed, got {other:?}"),
        }
    }
    // b's expiry resyncs only b's watch.
    b.expire_session().unwrap();
    assert!(matches!(
        wb.next().await.unwrap().unwrap(),
        WatchEvent::Resync(Some(_))
    ));
    let quiet = tokio::time::timeout(Duration::from_millis(100), wa.next()).await;
    assert!(quiet.is_err(), "a's watch must not resync: {quiet:?}");
}

/// A dropped `ChangeHandler` stops its task (and releases its closure); a
/// detached one runs until the state closes, and `close()` waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_handlers_are_guards() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let cluster = MemoryCluster::new();
    let backend: Arc<dyn sharedstate_core::CoordinationBackend> = Arc::new(cluster.client());
    let state = sharedstate_core::SharedState::builder(backend, "/handlers")
        .initial(0u64)
        .open()
        .await
        .expect("open");
    let calls = Arc::new(AtomicUsize::new(0));
    // 200 handlers dropped at once: none keeps running or holds its closure.
    for _ in 0..200 {
        let calls = calls.clone();
        drop(state.on_change(move |_| {
            calls.fetch_add(1, Ordering::Relaxed);
        }));
    }
    let detached_calls = Arc::new(AtomicUsize::new(0));
    let counted = detached_calls.clone();
    state
        .on_change(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .detach();
    state.update(|n| *n += 1).await.expect("update");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while detached_calls.load(Ordering::Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the detached handler never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(calls.load(Ordering::Relaxed), 0, "dropped handlers ran");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&calls) > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} dropped handlers still hold their closure",
            Arc::strong_count(&calls) - 1
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    state.close().await;
    assert_eq!(
        Arc::strong_count(&detached_calls),
        1,
        "close() waited for the detached handler to end"
    );
}
