//! Session behaviours: states, epochs, suspension and close.

use std::time::Duration;

use sharedstate_core::{ErrorKind, LockOptions, PutMode, SessionState, SessionStatus};

use super::{
    bytes, call, child, expect_kind, ok, wait_for_new_session, wait_for_session, SESSION_TIMEOUT,
};
use crate::{unique_key, BackendFactory};

fn is(state: SessionState) -> impl Fn(&SessionStatus) -> bool {
    move |status| status.state == state
}

/// A fresh client is `Connected` on its first session (epoch 0).
pub async fn session_connected_at_start(f: &dyn BackendFactory) {
    let client = f.client().await;
    let b = &*client.backend;
    let status =
        wait_for_session(b, is(SessionState::Connected), SESSION_TIMEOUT, "Connected").await;
    assert_eq!(status.epoch, 0, "the first session has epoch 0");
}

/// After an expiry the client reports a new session: `Connected` with a
/// larger epoch, and calls work on it.
pub async fn session_expiry_starts_new_epoch(f: &dyn BackendFactory) {
    let client = f.client().await;
    let b = &*client.backend;
    let first =
        wait_for_session(b, is(SessionState::Connected), SESSION_TIMEOUT, "Connected").await;
    ok(
        "expire_session",
        call("expire_session", client.faults.expire_session()).await,
    );
    let second = wait_for_new_session(b, first.epoch).await;
    assert!(second.epoch > first.epoch);
    let key = child(&unique_key("session_expiry_starts_new_epoch"), "k");
    let version = ok(
        "put on the new session",
        call("put", b.put(&key, bytes("v"), PutMode::Create)).await,
    );
    let found = ok("get", call("get", b.get(&key)).await).expect("written");
    assert_eq!(found.version, version);
}

/// `suspend` shows as `Suspended` and `resume` as `Connected`, both with
/// the same epoch (the session survived).
pub async fn session_suspend_resume_same_epoch(f: &dyn BackendFactory) {
    let client = f.client().await;
    let b = &*client.backend;
    let first =
        wait_for_session(b, is(SessionState::Connected), SESSION_TIMEOUT, "Connected").await;
    ok("suspend", call("suspend", client.faults.suspend()).await);
    let suspended =
        wait_for_session(b, is(SessionState::Suspended), SESSION_TIMEOUT, "Suspended").await;
    assert_eq!(suspended.epoch, first.epoch);
    ok("resume", call("resume", client.faults.resume()).await);
    let back = wait_for_session(b, is(SessionState::Connected), SESSION_TIMEOUT, "Connected").await;
    assert_eq!(back.epoch, first.epoch, "a resumed session keeps its epoch");
}

/// Calls made while suspended fail with `Unavailable`; after `resume` they
/// work again.
pub async fn session_calls_fail_while_suspended(f: &dyn BackendFactory) {
    let client = f.client().await;
    let b = &*client.backend;
    let key = child(&unique_key("session_calls_fail_while_suspended"), "k");
    ok("suspend", call("suspend", client.faults.suspend()).await);
    wait_for_session(b, is(SessionState::Suspended), SESSION_TIMEOUT, "Suspended").await;
    expect_kind(
        "get while suspended",
        call("get", b.get(&key)).await,
        ErrorKind::Unavailable,
    );
    let put = call("put", b.put(&key, bytes("v"), PutMode::Overwrite)).await;
    expect_kind("put while suspended", put, ErrorKind::Unavailable);
    ok("resume", call("resume", client.faults.resume()).await);
    wait_for_session(b, is(SessionState::Connected), SESSION_TIMEOUT, "Connected").await;
    ok("get after resume", call("get", b.get(&key)).await);
}

/// `close` reports `Closed`, and every later call fails with `Closed`.
pub async fn session_close_fails_calls_with_closed(f: &dyn BackendFactory) {
    let client = f.client().await;
    let b = &*client.backend;
    let key = child(&unique_key("session_close_fails_calls_with_closed"), "k");
    ok("close", call("close", b.close()).await);
    wait_for_session(b, is(SessionState::Closed), SESSION_TIMEOUT, "Closed").await;
    expect_kind("get", call("get", b.get(&key)).await, ErrorKind::Closed);
    let put = call("put", b.put(&key, bytes("v"), PutMode::Overwrite)).await;
    expect_kind("put", put, ErrorKind::Closed);
    expect_kind(
        "delete",
        call("delete", b.delete(&key, None)).await,
        ErrorKind::Closed,
    );
    expect_kind("list", call("list", b.list(&key)).await, ErrorKind::Closed);
    let caps = b.capabilities();
    if caps.watch {
        expect_kind(
            "watch",
            call("watch", b.watch(&key)).await.map(|_| ()),
            ErrorKind::Closed,
        );
    }
    if caps.locks {
        let options = LockOptions::with_timeout(Duration::from_secs(1));
        expect_kind(
            "lock",
            call("lock", b.lock(&key, options)).await,
            ErrorKind::Closed,
        );
    }
    if caps.registrations {
        let registered = call("register", b.register(&key, bytes("v"))).await;
        expect_kind("register", registered, ErrorKind::Closed);
    }
}
