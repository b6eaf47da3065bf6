//! Lock behaviours: mutual exclusion, timeouts, release, fencing tokens,
//! loss with the session, and fenced writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sharedstate_core::{
    CoordinationBackend, ErrorKind, Key, LockGuard, LockOptions, PutMode, Result,
};
use tokio::task::JoinHandle;

use super::{
    bytes, call, child, expect_kind, ok, wait_for_new_session, within, EVENT_TIMEOUT, QUIET_PERIOD,
    SESSION_TIMEOUT,
};
use crate::{unique_key, BackendFactory, TestClient};

/// A lock wait long enough for real servers.
fn patient() -> LockOptions {
    LockOptions::with_timeout(EVENT_TIMEOUT)
}

/// Takes the lock within [`EVENT_TIMEOUT`], panicking otherwise.
async fn acquire(client: &TestClient, key: &Key, who: &str) -> LockGuard {
    let what = format!("{who} to acquire {key}");
    let taken = within(
        EVENT_TIMEOUT + Duration::from_secs(5),
        &what,
        client.backend.lock(key, patient()),
    )
    .await;
    ok(&what, taken)
}

/// Starts acquiring in the background.
fn acquire_in_background(client: &TestClient, key: &Key) -> JoinHandle<Result<LockGuard>> {
    let backend: Arc<dyn CoordinationBackend> = Arc::clone(&client.backend);
    let key = key.clone();
    tokio::spawn(async move { backend.lock(&key, patient()).await })
}

/// Waits for a background acquisition to succeed.
async fn join(task: JoinHandle<Result<LockGuard>>, who: &str) -> LockGuard {
    let what = format!("{who} to get the lock");
    let joined = within(EVENT_TIMEOUT + Duration::from_secs(5), &what, task).await;
    ok(&what, ok(&format!("{who}'s lock task"), joined))
}

/// True (after asserting `Unsupported`) when the backend has no locks.
async fn locks_unsupported(client: &TestClient, key: &Key) -> bool {
    if client.backend.capabilities().locks {
        return false;
    }
    let taken = call("lock", client.backend.lock(key, patient())).await;
    expect_kind("lock without the capability", taken, ErrorKind::Unsupported);
    true
}

/// True (after asserting `Unsupported`) when the backend has no fenced
/// writes.
async fn fenced_unsupported(client: &TestClient, key: &Key, guard: &LockGuard) -> bool {
    if client.backend.capabilities().fenced_writes {
        return false;
    }
    let put = client
        .backend
        .fenced_put(key, bytes("x"), PutMode::Overwrite, guard);
    expect_kind(
        "fenced_put without the capability",
        call("fenced_put", put).await,
        ErrorKind::Unsupported,
    );
    true
}

/// What the fenced-write behaviours start from: two clients, a lock key and
/// a data key under one fresh prefix, and `a` holding the lock.
struct Fenced {
    a: TestClient,
    b: TestClient,
    key: Key,
    data: Key,
    guard: LockGuard,
}

/// `None` (after asserting `Unsupported`) when the backend has no locks or
/// no fenced writes.
async fn fenced_setup(f: &dyn BackendFactory, behaviour: &str) -> Option<Fenced> {
    let (a, b) = (f.client().await, f.client().await);
    let base = unique_key(behaviour);
    let (key, data) = (child(&base, "lock"), child(&base, "data"));
    if locks_unsupported(&a, &key).await {
        return None;
    }
    let guard = acquire(&a, &key, "a").await;
    if fenced_unsupported(&a, &data, &guard).await {
        return None;
    }
    Some(Fenced {
        a,
        b,
        key,
        data,
        guard,
    })
}

/// While one client holds the lock another waits, and gets it (with a
/// larger fencing token) once the first releases.
pub async fn lock_mutual_exclusion(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let key = child(&unique_key("lock_mutual_exclusion"), "lock");
    if locks_unsupported(&a, &key).await {
        return;
    }
    let held = acquire(&a, &key, "a").await;
    let waiting = acquire_in_background(&b, &key);
    tokio::time::sleep(QUIET_PERIOD).await;
    assert!(!waiting.is_finished(), "b got the lock while a held it");
    let first = held.fencing_token();
    ok("release", call("release", held.release()).await);
    let second = join(waiting, "b").await;
    assert!(second.fencing_token() > first, "tokens must increase");
    ok("release", call("release", second.release()).await);
}

/// A lock not acquired within its timeout fails with `LockTimeout`, not
/// much earlier; the abandoned wait leaves nothing behind, so the same
/// client gets the lock promptly once it is free.
pub async fn lock_timeout(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let key = child(&unique_key("lock_timeout"), "lock");
    if locks_unsupported(&a, &key).await {
        return;
    }
    let held = acquire(&a, &key, "a").await;
    let started = Instant::now();
    let short = LockOptions::with_timeout(Duration::from_millis(500));
    let timed_out = call("lock", b.backend.lock(&key, short)).await;
    expect_kind(
        "lock while held elsewhere",
        timed_out,
        ErrorKind::LockTimeout,
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "LockTimeout came too early"
    );
    ok("release", call("release", held.release()).await);
    let quick = LockOptions::with_timeout(Duration::from_secs(5));
    let again = call("lock", b.backend.lock(&key, quick)).await;
    ok(
        "lock after the holder released (stale waiter left behind?)",
        again,
    );
}

/// `release()` frees the lock for another client at once.
pub async fn lock_released_by_release(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let key = child(&unique_key("lock_released_by_release"), "lock");
    if locks_unsupported(&a, &key).await {
        return;
    }
    let held = acquire(&a, &key, "a").await;
    ok("release", call("release", held.release()).await);
    let quick = LockOptions::with_timeout(Duration::from_secs(5));
    ok(
        "lock after release",
        call("lock", b.backend.lock(&key, quick)).await,
    );
}

/// Dropping the guard releases the lock (in the background).
pub async fn lock_released_by_drop(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let key = child(&unique_key("lock_released_by_drop"), "lock");
    if locks_unsupported(&a, &key).await {
        return;
    }
    let held = acquire(&a, &key, "a").await;
    drop(held);
    acquire(&b, &key, "b after a dropped its guard").await;
}

/// Closing the holder's client frees the lock for another client.
pub async fn lock_released_on_close(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let key = child(&unique_key("lock_released_on_close"), "lock");
    if locks_unsupported(&a, &key).await {
        return;
    }
    let _held = acquire(&a, &key, "a").await;
    ok("close", call("close", a.backend.close()).await);
    acquire(&b, &key, "b after a closed").await;
}

/// Fencing tokens strictly increase across acquisitions of one lock by
/// different clients.
pub async fn lock_fencing_tokens_increase(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let key = child(&unique_key("lock_fencing_tokens_increase"), "lock");
    if locks_unsupported(&a, &key).await {
        return;
    }
    let mut tokens = Vec::new();
    for round in 0..6 {
        let client = if round % 2 == 0 { &a } else { &b };
        let guard = acquire(client, &key, "a client").await;
        tokens.push(guard.fencing_token());
        ok("release", call("release", guard.release()).await);
    }
    for pair in tokens.windows(2) {
        assert!(
            pair[0] < pair[1],
            "fencing tokens must strictly increase: {tokens:?}"
        );
    }
}

/// Waiters get the lock in the order they asked for it.
pub async fn lock_waiters_served_in_order(f: &dyn BackendFactory) {
    let (a, b, c) = (f.client().await, f.client().await, f.client().await);
    let key = child(&unique_key("lock_waiters_served_in_order"), "lock");
    if locks_unsupported(&a, &key).await {
        return;
    }
    let held = acquire(&a, &key, "a").await;
    let b_waits = acquire_in_background(&b, &key);
    tokio::time::sleep(QUIET_PERIOD).await;
    let c_waits = acquire_in_background(&c, &key);
    tokio::time::sleep(QUIET_PERIOD).await;
    ok("release", call("release", held.release()).await);
    let b_holds = join(b_waits, "b (first in line)").await;
    tokio::time::sleep(QUIET_PERIOD).await;
    assert!(!c_waits.is_finished(), "c got the lock while b held it");
    ok("release", call("release", b_holds.release()).await);
    join(c_waits, "c (second in line)").await;
}

/// When the holder's session expires, its guard's `lost()` fires and
/// another client can take the lock.
pub async fn lock_lost_on_session_expiry(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let key = child(&unique_key("lock_lost_on_session_expiry"), "lock");
    if locks_unsupported(&a, &key).await {
        return;
    }
    let held = acquire(&a, &key, "a").await;
    assert!(!held.is_lost());
    ok(
        "expire_session",
        call("expire_session", a.faults.expire_session()).await,
    );
    within(SESSION_TIMEOUT, "lost() after session expiry", held.lost()).await;
    assert!(held.is_lost());
    let taken = within(
        SESSION_TIMEOUT,
        "b to acquire after a's session expired",
        b.backend.lock(&key, patient()),
    )
    .await;
    let taken = ok("lock after the holder's session expired", taken);
    assert!(taken.fencing_token() > held.fencing_token());
}

/// `fenced_put` writes while the guard holds the lock, and a conditional
/// fenced write that loses fails with `Conflict` without losing the lock.
pub async fn lock_fenced_put_while_held(f: &dyn BackendFactory) {
    let Some(Fenced {
        a,
        b,
        key,
        data,
        guard,
    }) = fenced_setup(f, "lock_fenced_put_while_held").await
    else {
        return;
    };
    let put = a
        .backend
        .fenced_put(&data, bytes("1"), PutMode::Create, &guard);
    let v1 = ok("fenced create", call("fenced_put", put).await);
    let put = a
        .backend
        .fenced_put(&data, bytes("2"), PutMode::Update(v1), &guard);
    let v2 = ok("fenced update", call("fenced_put", put).await);
    assert!(v2 > v1);
    let put = a
        .backend
        .fenced_put(&data, bytes("3"), PutMode::Update(v1), &guard);
    let err = expect_kind(
        "fenced update at a stale version",
        call("fenced_put", put).await,
        ErrorKind::Conflict,
    );
    assert_eq!(err.current_version(), Some(v2));
    let found = ok("get", call("get", b.backend.get(&data)).await).expect("written");
    assert_eq!((found.value, found.version), (bytes("2"), v2));
    let busy = LockOptions::with_timeout(Duration::from_millis(300));
    let denied = call("lock", b.backend.lock(&key, busy)).await;
    expect_kind(
        "lock still held after a Conflict",
        denied,
        ErrorKind::LockTimeout,
    );
    ok("release", call("release", guard.release()).await);
}

/// After the lock is lost with the session (and taken by another client),
/// `fenced_put` with the old guard fails with `LockLost` and writes
/// nothing.
pub async fn lock_fenced_put_rejected_after_loss(f: &dyn BackendFactory) {
    let Some(Fenced {
        a,
        b,
        key,
        data,
        guard,
    }) = fenced_setup(f, "lock_fenced_put_rejected_after_loss").await
    else {
        return;
    };
    let epoch = a.backend.session().borrow().epoch;
    ok(
        "expire_session",
        call("expire_session", a.faults.expire_session()).await,
    );
    within(SESSION_TIMEOUT, "lost() after session expiry", guard.lost()).await;
    let _b_holds = acquire(&b, &key, "b").await;
    wait_for_new_session(&*a.backend, epoch).await;
    let put = a
        .backend
        .fenced_put(&data, bytes("late"), PutMode::Overwrite, &guard);
    expect_kind(
        "fenced_put with a lost lock",
        call("fenced_put", put).await,
        ErrorKind::LockLost,
    );
    let put = a
        .backend
        .fenced_put_and_release(&data, bytes("late"), PutMode::Overwrite, guard);
    let put = call("fenced_put_and_release", put).await;
    expect_kind(
        "fenced_put_and_release with a lost lock",
        put,
        ErrorKind::LockLost,
    );
    assert_eq!(
        ok("get", call("get", b.backend.get(&data)).await),
        None,
        "a fenced write leaked"
    );
}

/// `fenced_put_and_release` writes and frees the lock in one step.
pub async fn lock_fenced_put_and_release(f: &dyn BackendFactory) {
    let Some(Fenced {
        a,
        b,
        key,
        data,
        guard,
    }) = fenced_setup(f, "lock_fenced_put_and_release").await
    else {
        return;
    };
    let put = a
        .backend
        .fenced_put_and_release(&data, bytes("v"), PutMode::Create, guard);
    let version = ok(
        "fenced_put_and_release",
        call("fenced_put_and_release", put).await,
    );
    let found = ok("get", call("get", b.backend.get(&data)).await).expect("written");
    assert_eq!((found.value, found.version), (bytes("v"), version));
    let quick = LockOptions::with_timeout(Duration::from_secs(5));
    let b_holds = call("lock", b.backend.lock(&key, quick.clone())).await;
    let b_holds = ok("lock after fenced_put_and_release", b_holds);
    ok("release", call("release", b_holds.release()).await);

    // A write that fails releases the lock too.
    let guard = acquire(&a, &key, "a again").await;
    let put = a
        .backend
        .fenced_put_and_release(&data, bytes("w"), PutMode::Create, guard);
    let put = call("fenced_put_and_release", put).await;
    expect_kind(
        "fenced create of an existing key",
        put,
        ErrorKind::AlreadyExists,
    );
    let after = call("lock", b.backend.lock(&key, quick)).await;
    ok("lock after a failed fenced_put_and_release", after);
}

/// `lock_and_get` returns the lock together with a read that sees every
/// write made before the lock was granted, even one made by the previous
/// holder just before it released.
pub async fn lock_and_get_sees_previous_holder_write(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let base = unique_key("lock_and_get_sees_previous_holder_write");
    let (key, data) = (child(&base, "lock"), child(&base, "data"));
    if locks_unsupported(&a, &key).await {
        return;
    }
    let held = acquire(&a, &key, "a").await;
    let backend: Arc<dyn CoordinationBackend> = Arc::clone(&b.backend);
    let (lock_key, data_key) = (key.clone(), data.clone());
    let waiting =
        tokio::spawn(async move { backend.lock_and_get(&lock_key, patient(), &data_key).await });
    tokio::time::sleep(QUIET_PERIOD).await;
    assert!(!waiting.is_finished(), "b got the lock while a held it");
    let put = a.backend.put(&data, bytes("from a"), PutMode::Create);
    let version = ok("put", call("put", put).await);
    ok("release", call("release", held.release()).await);
    let what = "b's lock_and_get";
    let joined = within(EVENT_TIMEOUT + Duration::from_secs(5), what, waiting).await;
    let (guard, found) = ok(what, ok("b's task", joined));
    let found = found.expect("lock_and_get must see the write made before the grant");
    assert_eq!((found.value, found.version), (bytes("from a"), version));
    ok("release", call("release", guard.release()).await);
}

/// A client waiting for a lock whose session expires stops waiting with
/// `SessionLost` (its place in the queue went with the session), and the
/// lock is not handed to it later.
pub async fn lock_wait_fails_when_session_expires(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let key = child(&unique_key("lock_wait_fails_when_session_expires"), "lock");
    if locks_unsupported(&a, &key).await {
        return;
    }
    let held = acquire(&a, &key, "a").await;
    let waiting = acquire_in_background(&b, &key);
    tokio::time::sleep(QUIET_PERIOD).await;
    let epoch = b.backend.session().borrow().epoch;
    ok(
        "expire_session",
        call("expire_session", b.faults.expire_session()).await,
    );
    let what = "b's lock call to fail after its session expired";
    let joined = within(SESSION_TIMEOUT, what, waiting).await;
    expect_kind(what, ok("b's lock task", joined), ErrorKind::SessionLost);
    wait_for_new_session(&*b.backend, epoch).await;
    ok("release", call("release", held.release()).await);
    let quick = LockOptions::with_timeout(Duration::from_secs(5));
    let again = call("lock", b.backend.lock(&key, quick)).await;
    ok("lock on the new session", again);
}
