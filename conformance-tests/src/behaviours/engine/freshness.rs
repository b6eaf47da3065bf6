//! Engine freshness behaviours: the copy is served only while proven
//! current, whatever the watch or the session pretend; linearizable reads;
//! updates dropped mid-way leave the lock free.

use std::time::{Duration, Instant};

use futures::StreamExt;
use sharedstate_core::{ErrorKind, LockOptions, SessionState, SharedState, StateEvent, WriteMode};

use super::{eventually, fixture, open, Fixture, WAIT};
use crate::behaviours::{call, ok, wait_for_session, SESSION_TIMEOUT};
use crate::{unique_key, BackendFactory, TestClient};

/// A short staleness bound, so the behaviours run in seconds.
const MAX_STALENESS: Duration = Duration::from_millis(900);

async fn open_fresh(client: &TestClient, path: &sharedstate_core::Key) -> SharedState<Fixture> {
    SharedState::builder(client.backend.clone(), path.as_str())
        .initial(fixture(&["a"]))
        .max_staleness(MAX_STALENESS)
        .open()
        .await
        .unwrap_or_else(|e| panic!("opening {path} failed: {e}"))
}

/// Samples `reader` every 20 ms until it holds `counter == target` (and
/// `read()` is Ok), asserting on the way that no read older than
/// `max_staleness` after `acked` was served without `Stale`. Returns how
/// long after `acked` the copy converged.
async fn converge_without_stale_reads(
    reader: &SharedState<Fixture>,
    target: u64,
    acked: Instant,
    what: &str,
) -> Duration {
    let deadline = acked + WAIT;
    loop {
        match reader.read() {
            Ok(copy) if copy.counter == target => return acked.elapsed(),
            Ok(copy) => {
                // Served without the acknowledged write: only allowed
                // within the staleness bound (plus one sampling step).
                let age = acked.elapsed();
                assert!(
                    age <= MAX_STALENESS + Duration::from_millis(150),
                    "{what}: read() served counter {} {age:?} after the write of {target} was \
                     acknowledged, without Stale (max_staleness {MAX_STALENESS:?})",
                    copy.counter
                );
            }
            Err(e) if e.kind() == ErrorKind::Stale => {}
            Err(e) => panic!("{what}: read() failed: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no convergence within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a reconnect that kept the session, the instance is live again and
/// a write made after the reconnect reaches it, within the staleness bound
/// and never served stale.
pub async fn engine_fresh_after_reconnect(f: &dyn BackendFactory) {
    let (reader_client, writer_client) = (f.client().await, f.client().await);
    let path = unique_key("engine_fresh_after_reconnect");
    let reader = open_fresh(&reader_client, &path).await;
    let writer = open(&writer_client, &path, fixture(&["a"])).await;
    for round in 1..=2u64 {
        ok(
            "suspend",
            call("suspend", reader_client.faults.suspend()).await,
        );
        wait_for_session(
            &*reader_client.backend,
            |s| s.state == SessionState::Suspended,
            SESSION_TIMEOUT,
            "Suspended",
        )
        .await;
        ok(
            "resume",
            call("resume", reader_client.faults.resume()).await,
        );
        wait_for_session(
            &*reader_client.backend,
            |s| s.state == SessionState::Connected,
            SESSION_TIMEOUT,
            "Connected",
        )
        .await;
        eventually("the reader is live again after the reconnect", async || {
            reader.status().live
        })
        .await;
        ok(
            "write after the reconnect",
            call("update", writer.update(|s| s.counter = round)).await,
        );
        let acked = Instant::now();
        converge_without_stale_reads(&reader, round, acked, "after a reconnect").await;
    }
    reader.close().await;
    writer.close().await;
}

/// While the client's traffic is held (a frozen server: the session still
/// looks connected), `read()` turns `Stale` once the copy cannot be proven
/// current for `max_staleness`, before the session notices anything; it
/// serves again once the traffic flows.
pub async fn engine_stale_while_unverifiable(f: &dyn BackendFactory) {
    let client = f.client().await;
    let path = unique_key("engine_stale_while_unverifiable");
    let state = open_fresh(&client, &path).await;
    ok("read", state.read());
    match client.faults.stall().await {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            state.close().await;
            return;
        }
        Err(e) => panic!("stall: {e}"),
    }
    let stalled_at = Instant::now();
    let mut stale_while_connected = false;
    while stalled_at.elapsed() < MAX_STALENESS * 4 {
        let connected = client.backend.session().borrow().state == SessionState::Connected;
        match state.read() {
            Err(e) if e.kind() == ErrorKind::Stale => {
                stale_while_connected |= connected;
                break;
            }
            Err(e) => panic!("read failed with {e}"),
            Ok(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let turned_stale = stalled_at.elapsed();
    assert!(
        turned_stale <= MAX_STALENESS * 3,
        "read() still served {turned_stale:?} into a stall (max_staleness {MAX_STALENESS:?})"
    );
    assert!(
        stale_while_connected,
        "read() must turn Stale on evidence, not on the session state: it turned stale only \
         after the session said it was disconnected"
    );
    assert!(!state.status().live);
    ok("resume", call("resume", client.faults.resume()).await);
    eventually("read() serves again after the stall", async || {
        state.read().is_ok()
    })
    .await;
    state.close().await;
}

/// A watch that dies silently while the session looks healthy (a
/// dependency bug) is caught by the engine's own verification: a change
/// reaches the instance within the staleness bound, and no stale read is
/// served meanwhile.
pub async fn engine_silent_watch_is_caught(f: &dyn BackendFactory) {
    let (reader_client, writer_client) = (f.client().await, f.client().await);
    let path = unique_key("engine_silent_watch");
    let reader = open_fresh(&reader_client, &path).await;
    let writer = open(&writer_client, &path, fixture(&["a"])).await;
    match reader_client.faults.silence_watches().await {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            reader.close().await;
            writer.close().await;
            return;
        }
        Err(e) => panic!("silence_watches: {e}"),
    }
    for round in 1..=3u64 {
        ok(
            "update",
            call("update", writer.update(|s| s.counter = round)).await,
        );
        let acked = Instant::now();
        let took = converge_without_stale_reads(&reader, round, acked, "with a silent watch").await;
        assert!(
            took <= MAX_STALENESS * 2,
            "round {round}: converged after {took:?}"
        );
    }
    reader.close().await;
    writer.close().await;
}

/// `read_consistent()` started after another instance's update was
/// acknowledged always shows that update (many rounds).
pub async fn engine_read_consistent_sees_acknowledged_writes(f: &dyn BackendFactory) {
    let (a_client, b_client) = (f.client().await, f.client().await);
    let path = unique_key("engine_read_consistent_acked");
    let a = open(&a_client, &path, fixture(&["a"])).await;
    let b = open(&b_client, &path, fixture(&["a"])).await;
    for round in 1..=150u64 {
        ok(
            "update",
            call("update", a.update(|s| s.counter = round)).await,
        );
        let seen = ok(
            "read_consistent",
            call("read_consistent", b.read_consistent()).await,
        );
        assert_eq!(
            seen.counter, round,
            "round {round}: read_consistent() started after the update was acknowledged \
             returned an older copy"
        );
    }
    a.close().await;
    b.close().await;
}

/// Updates dropped while they wait for the lock (200 short timeouts
/// against a held lock) leave nothing behind: once the holder releases,
/// a normal update of another instance succeeds at once. Updates dropped at
/// random points of their write leave the lock free too.
pub async fn engine_dropped_updates_leave_the_lock_free(f: &dyn BackendFactory) {
    let (holder, waiter_client, other_client) =
        (f.client().await, f.client().await, f.client().await);
    if !holder.backend.capabilities().locks {
        return;
    }
    let path = unique_key("engine_dropped_updates");
    let lock_timeout = Duration::from_secs(60);
    let waiter = SharedState::builder(waiter_client.backend.clone(), path.as_str())
        .initial(fixture(&["a"]))
        .write_mode(WriteMode::Locked)
        .lock_timeout(lock_timeout)
        .open()
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    let other = SharedState::builder(other_client.backend.clone(), path.as_str())
        .initial(fixture(&["a"]))
        .lock_timeout(Duration::from_secs(10))
        .open()
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    let lock_key = ok("lock key", path.child("lock"));
    let held = ok(
        "holder locks",
        holder
            .backend
            .lock(&lock_key, LockOptions::with_timeout(WAIT))
            .await,
    );
    for round in 0..200u64 {
        let limit = Duration::from_millis(1 + round % 20);
        let dropped = tokio::time::timeout(limit, waiter.update(|s| s.counter += 1)).await;
        assert!(
            !matches!(dropped, Ok(Ok(_))),
            "round {round}: the update got a held lock"
        );
    }
    ok("release", held.release().await);
    let started = Instant::now();
    ok(
        "update after 200 dropped updates",
        call(
            "update",
            other.update(|s| s.flags.insert("after".into(), true)),
        )
        .await,
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the update waited {:?} for a lock nobody held",
        started.elapsed()
    );
    // Dropped at random points of a write on a free lock.
    for round in 0..50u64 {
        let limit = Duration::from_micros(300 * (round % 30));
        let _ = tokio::time::timeout(limit, waiter.update(|s| s.counter += 1)).await;
    }
    let started = Instant::now();
    ok(
        "update after 50 updates dropped mid-write",
        call(
            "update",
            other.update(|s| s.flags.insert("last".into(), true)),
        )
        .await,
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    waiter.close().await;
    other.close().await;
}

/// A subscriber that lagged behind gets `Lagged`, the net change and the
/// payload's current problem once: never a replayed notice after its
/// resync.
pub async fn engine_lagged_subscriber_gets_each_notice_once(f: &dyn BackendFactory) {
    let client = f.client().await;
    let path = unique_key("engine_lagged_notice");
    let state = SharedState::builder(client.backend.clone(), path.as_str())
        .initial(fixture(&["a"]))
        .change_buffer(2)
        .open()
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    let mut lagging = state.subscribe();
    for i in 1..=6u64 {
        ok(
            "update",
            call("update", state.update(|s| s.counter = i)).await,
        );
    }
    let payload = ok("payload key", path.child("payload"));
    ok(
        "delete",
        call("delete", client.backend.delete(&payload, None)).await,
    );
    eventually("the deletion is seen", async || {
        state.status().problem.is_some()
    })
    .await;
    let mut events = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(700), lagging.next()).await
    {
        events.push(event);
    }
    assert!(
        matches!(events.first(), Some(StateEvent::Lagged { .. })),
        "expected Lagged first, got {events:?}"
    );
    let deleted = events
        .iter()
        .filter(|e| matches!(e, StateEvent::PayloadDeleted))
        .count();
    assert_eq!(
        deleted, 1,
        "PayloadDeleted must arrive exactly once: {events:?}"
    );
    assert!(
        matches!(events.last(), Some(StateEvent::PayloadDeleted)),
        "the deletion is the latest state: {events:?}"
    );
    state.close().await;
}
