//! Contract behaviours across the whole trait: exact conditional writes
//! against re-created keys, one key rule list, errors that say whether a
//! write may have happened, cancellation safety, and reconnects that keep
//! the session.

use std::time::{Duration, Instant};

use futures::StreamExt;
use sharedstate_core::{
    CoordinationBackend, ErrorKind, Key, LockOptions, Outcome, PutMode, SessionState, WatchEvent,
};

use super::{
    bytes, call, child, event_state, expect_kind, ok, wait_for_event, wait_for_session, within,
    EVENT_TIMEOUT, SESSION_TIMEOUT,
};
use crate::{unique_key, BackendFactory};

/// Rounds of delete and re-create in [`contract_update_never_lands_on_a_recreated_key`].
const RECREATE_ROUNDS: usize = 50;

/// A key deleted and re-created by another client is a new key: `Update`
/// and `delete` at a version read before, by a client that watches the key
/// (and so has seen every version), fail with `Conflict`, every time, and
/// the re-created value is untouched.
pub async fn contract_update_never_lands_on_a_recreated_key(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let key = child(&unique_key("contract_recreate"), "k");
    let mut version = ok(
        "create",
        call("put", b.backend.put(&key, bytes("b0"), PutMode::Create)).await,
    );
    let mut stream = ok("watch", call("watch", a.backend.watch(&key)).await);
    for round in 0..RECREATE_ROUNDS {
        // A has seen the current version, through its own read and watch.
        let seen = ok("get", call("get", a.backend.get(&key)).await).expect("present");
        assert_eq!(seen.version, version, "round {round}");
        ok("delete", call("delete", b.backend.delete(&key, None)).await);
        let value = bytes(if round % 2 == 0 { "b1" } else { "b2" });
        let recreated = ok(
            "re-create",
            call("put", b.backend.put(&key, value.clone(), PutMode::Create)).await,
        );
        let put = a
            .backend
            .put(&key, bytes("stale"), PutMode::Update(version));
        let err = expect_kind(
            &format!("round {round}: update at the version before the re-create"),
            call("put", put).await,
            ErrorKind::Conflict,
        );
        assert_eq!(err.outcome(), Outcome::NotApplied, "round {round}");
        let found = ok("get", call("get", b.backend.get(&key)).await).expect("kept");
        assert_eq!(
            (found.value, found.version),
            (value, recreated),
            "round {round}: the re-created key was overwritten"
        );
        version = recreated;
    }
    // Delete at an old version too.
    let old = version;
    ok("delete", call("delete", b.backend.delete(&key, None)).await);
    ok(
        "re-create",
        call("put", b.backend.put(&key, bytes("last"), PutMode::Create)).await,
    );
    expect_kind(
        "delete at the version before the re-create",
        call("delete", a.backend.delete(&key, Some(old))).await,
        ErrorKind::Conflict,
    );
    // The watch kept up all along.
    let (_, _) = wait_for_event(
        &mut stream,
        "the last re-create",
        |e| matches!(event_state(e), Some(Some(found)) if found.value == bytes("last")),
    )
    .await;
}

/// Keys every backend treats alike: `Key` refuses what any backend would
/// refuse (with the reason), and every key it accepts works end to end.
pub async fn contract_tricky_keys(f: &dyn BackendFactory) {
    let client = f.client().await;
    let base = unique_key("contract_tricky_keys");
    let accepted = [
        "ünïcode-ключ-キー",
        "combining-e\u{0301}",
        "with space",
        "punct!$&'()*+,;=:@",
        "bmp-edge-\u{D7FF}\u{F900}\u{FFEF}",
        "x-sharedstate-fence-1",
    ];
    let refused = [
        "rocket-\u{1F680}",
        "math-\u{1D518}",
        "private-\u{E000}",
        "private-\u{F8FF}",
        "replacement-\u{FFFD}",
        "nonchar-\u{FFFE}",
        "nonchar-\u{FFFF}",
        "control-\u{0007}",
        "c1-\u{0085}",
        "sharedstate-fence-0000000001",
    ];
    for name in accepted {
        let key = ok(&format!("Key for {name:?}"), base.child(name));
        let v = ok(
            &format!("put {name:?}"),
            call("put", client.backend.put(&key, bytes("v"), PutMode::Create)).await,
        );
        let found = ok("get", call("get", client.backend.get(&key)).await);
        assert_eq!(found.map(|f| f.version), Some(v), "{name:?}");
        let listed = ok("list", call("list", client.backend.list(&base)).await);
        assert!(
            listed.iter().any(|n| n == name),
            "{name:?} not listed: {listed:?}"
        );
        ok(
            "delete",
            call("delete", client.backend.delete(&key, Some(v))).await,
        );
    }
    for name in refused {
        let err = base
            .child(name)
            .map(|k| k.as_str().to_owned())
            .expect_err(&format!("{name:?} must be refused by Key"));
        assert_eq!(err.kind(), ErrorKind::InvalidKey, "{name:?}");
        assert!(
            err.message().is_some_and(|m| !m.is_empty()),
            "{name:?}: no reason"
        );
    }
    let long = format!("/{}", "k".repeat(sharedstate_core::MAX_KEY_BYTES - 1));
    let key = ok("a key at the length limit", Key::new(long.as_str()));
    let v = ok(
        "put at the length limit",
        call(
            "put",
            client.backend.put(&key, bytes("v"), PutMode::Overwrite),
        )
        .await,
    );
    ok(
        "delete",
        call("delete", client.backend.delete(&key, Some(v))).await,
    );
    let too_long = format!("/{}", "k".repeat(sharedstate_core::MAX_KEY_BYTES));
    assert_eq!(
        Key::new(too_long).map(|_| ()).unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
}

/// Refusals say that nothing was applied.
pub async fn contract_refusals_are_not_applied(f: &dyn BackendFactory) {
    let client = f.client().await;
    let b = &client.backend;
    let key = child(&unique_key("contract_refusals"), "k");
    let v1 = ok(
        "create",
        call("put", b.put(&key, bytes("1"), PutMode::Create)).await,
    );
    let exists = expect_kind(
        "create again",
        call("put", b.put(&key, bytes("2"), PutMode::Create)).await,
        ErrorKind::AlreadyExists,
    );
    let v2 = ok(
        "update",
        call("put", b.put(&key, bytes("2"), PutMode::Update(v1))).await,
    );
    let conflict = expect_kind(
        "stale update",
        call("put", b.put(&key, bytes("3"), PutMode::Update(v1))).await,
        ErrorKind::Conflict,
    );
    let huge = bytes::Bytes::from(vec![b'x'; b.capabilities().max_value_bytes + 1]);
    let too_large = expect_kind(
        "oversized put",
        call("put", b.put(&key, huge, PutMode::Overwrite)).await,
        ErrorKind::ValueTooLarge,
    );
    let missing = child(&key, "missing");
    let not_found = expect_kind(
        "delete missing",
        call("delete", b.delete(&missing, None)).await,
        ErrorKind::NotFound,
    );
    for (what, err) in [
        ("AlreadyExists", exists),
        ("Conflict", conflict),
        ("ValueTooLarge", too_large),
        ("NotFound", not_found),
    ] {
        assert_eq!(err.outcome(), Outcome::NotApplied, "{what}: {err:?}");
        assert!(!err.is_retryable(), "{what} is not transient");
    }
    let found = ok("get", call("get", b.get(&key)).await).expect("present");
    assert_eq!((found.value, found.version), (bytes("2"), v2));
}

/// A lock waiter whose future is dropped mid-wait (a `timeout`, a
/// `select!`) does not become the holder: the next client gets the lock as
/// soon as the holder releases it.
pub async fn contract_dropped_lock_waiter_does_not_block(f: &dyn BackendFactory) {
    let (h, q, c) = (f.client().await, f.client().await, f.client().await);
    let key = child(&unique_key("contract_dropped_waiter"), "lock");
    if !h.backend.capabilities().locks {
        return;
    }
    let long = LockOptions::with_timeout(Duration::from_secs(60));
    let held = ok(
        "H locks",
        within(
            EVENT_TIMEOUT,
            "H's lock",
            h.backend.lock(&key, long.clone()),
        )
        .await,
    );
    for round in 0..3 {
        let waited = tokio::time::timeout(
            Duration::from_millis(300 + 100 * round),
            q.backend.lock(&key, long.clone()),
        )
        .await;
        assert!(waited.is_err(), "Q must still be waiting when dropped");
    }
    ok(
        "H releases",
        within(EVENT_TIMEOUT, "release", held.release()).await,
    );
    let started = Instant::now();
    let quick = LockOptions::with_timeout(Duration::from_secs(10));
    let taken = within(EVENT_TIMEOUT, "C's lock", c.backend.lock(&key, quick)).await;
    let guard = ok(
        "C locks after Q gave up (Q's dropped waiters must be gone)",
        taken,
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "C waited {:?} for a lock nobody held",
        started.elapsed()
    );
    ok("C releases", guard.release().await);
}

/// A loop of lock calls dropped at random points (before, during and
/// after the request) against a free lock leaves nothing behind.
pub async fn contract_lock_cancelled_at_any_point(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let key = child(&unique_key("contract_lock_cancelled"), "lock");
    if !a.backend.capabilities().locks {
        return;
    }
    let options = LockOptions::with_timeout(Duration::from_secs(30));
    for round in 0..100u64 {
        let limit = Duration::from_micros(200 * (round % 25));
        if let Ok(Ok(guard)) =
            tokio::time::timeout(limit, a.backend.lock(&key, options.clone())).await
        {
            drop(guard);
        }
    }
    let taken = within(
        EVENT_TIMEOUT,
        "a second client's lock after 100 cancelled attempts",
        b.backend
            .lock(&key, LockOptions::with_timeout(Duration::from_secs(15))),
    )
    .await;
    ok("the lock is free after cancelled attempts", taken)
        .release()
        .await
        .unwrap_or_else(|e| panic!("release: {e}"));
}

/// A reconnect that keeps the session (the connection dropped and came
/// back in time) leaves the watch working: a write made *after* the
/// reconnect arrives, several reconnects in a row.
pub async fn contract_watch_survives_reconnects(f: &dyn BackendFactory) {
    let (watcher, writer) = (f.client().await, f.client().await);
    let key = child(&unique_key("contract_watch_reconnect"), "k");
    let w = &writer.backend;
    ok(
        "create",
        call("put", w.put(&key, bytes("0"), PutMode::Create)).await,
    );
    let mut stream = ok("watch", call("watch", watcher.backend.watch(&key)).await);
    assert!(matches!(
        within(EVENT_TIMEOUT, "Initial", stream.next()).await,
        Some(Ok(WatchEvent::Initial(Some(_))))
    ));
    let epoch = watcher.backend.session().borrow().epoch;
    for round in 1..=3u32 {
        ok("suspend", call("suspend", watcher.faults.suspend()).await);
        let suspended = |s: &sharedstate_core::SessionStatus| s.state == SessionState::Suspended;
        wait_for_session(&*watcher.backend, suspended, SESSION_TIMEOUT, "Suspended").await;
        ok("resume", call("resume", watcher.faults.resume()).await);
        let back = wait_for_session(
            &*watcher.backend,
            |s| s.state == SessionState::Connected,
            SESSION_TIMEOUT,
            "Connected again",
        )
        .await;
        assert_eq!(back.epoch, epoch, "round {round}: the session must survive");
        // Let the reconnect settle (the backend may resync first).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let value = bytes::Bytes::from(format!("after-reconnect-{round}"));
        let version = ok(
            "write after the reconnect",
            call("put", w.put(&key, value, PutMode::Overwrite)).await,
        );
        wait_for_event(
            &mut stream,
            &format!("round {round}: the write made after the reconnect"),
            |e| matches!(event_state(e), Some(Some(found)) if found.version == version),
        )
        .await;
    }
}

/// A write through `put` that loses its answer while the connection is
/// cut says so: `Unavailable`/`Timeout` with an unknown outcome, or it
/// was refused before sending (`NotApplied`); a call refused because the
/// client is suspended was never sent.
pub async fn contract_writes_while_cut_say_their_outcome(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("contract_cut_outcome"), "k");
    let b: &dyn CoordinationBackend = &*client.backend;
    ok(
        "create",
        call("put", b.put(&key, bytes("0"), PutMode::Create)).await,
    );
    ok("suspend", call("suspend", client.faults.suspend()).await);
    wait_for_session(
        b,
        |s| s.state == SessionState::Suspended,
        SESSION_TIMEOUT,
        "Suspended",
    )
    .await;
    let err = match within(
        EVENT_TIMEOUT,
        "a write while cut",
        b.put(&key, bytes("1"), PutMode::Overwrite),
    )
    .await
    {
        Ok(v) => panic!("a write while the connection is cut succeeded at {v}"),
        Err(err) => err,
    };
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{err:?}"
    );
    assert!(err.is_retryable(), "{err:?}");
    ok("resume", call("resume", client.faults.resume()).await);
    wait_for_session(
        b,
        |s| s.state == SessionState::Connected,
        SESSION_TIMEOUT,
        "Connected",
    )
    .await;
    if err.outcome() == Outcome::NotApplied {
        // Never sent: the value is the old one.
        let found =
            super::wait_for_value(b, &key, EVENT_TIMEOUT, "the old value", |f| f.is_some()).await;
        assert_eq!(found.map(|f| f.value), Some(bytes("0")), "{err:?}");
    }
}
