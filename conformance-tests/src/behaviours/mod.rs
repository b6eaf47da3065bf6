//! One async function per behaviour, grouped by topic. Each takes a
//! [`BackendFactory`](crate::BackendFactory) and panics on failure.
//!
//! Behaviour names are unique across modules (they become test names side
//! by side), so each starts with its module's name. The helpers below are
//! shared by the behaviours; every wait they do is bounded.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sharedstate_core::{
    CoordinationBackend, ErrorKind, Key, SessionState, SessionStatus, Versioned, WatchEvent,
    WatchStream,
};

pub mod contract;
pub mod engine;
pub mod kv;
pub mod lock;
pub mod registration;
pub mod session;
pub mod watch;

/// How long to wait for session transitions (expiry noticed, new session,
/// reconnect): real servers take seconds.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(20);

/// How long to wait for one watch event or one call.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long to watch for something that must *not* happen (a second lock
/// holder, a premature event) before concluding it does not.
pub const QUIET_PERIOD: Duration = Duration::from_millis(500);

/// Awaits `future` for at most `limit`, panicking with `what` on timeout.
pub async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Awaits one backend call for at most [`EVENT_TIMEOUT`].
pub async fn call<F: Future>(what: &str, future: F) -> F::Output {
    within(EVENT_TIMEOUT, what, future).await
}

/// Unwraps an `Ok`, panicking with `what` and the error otherwise.
pub fn ok<T, E: Debug>(what: &str, result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what} failed: {error:?}"),
    }
}

/// Asserts that `result` failed with `kind`; returns the error.
pub fn expect_kind<T: Debug>(
    what: &str,
    result: sharedstate_core::Result<T>,
    kind: ErrorKind,
) -> sharedstate_core::Error {
    match result {
        Ok(value) => panic!("{what}: expected {kind:?}, got Ok({value:?})"),
        Err(error) if error.kind() == kind => error,
        Err(error) => panic!("{what}: expected {kind:?}, got {:?}: {error}", error.kind()),
    }
}

/// Waits until the client's session status satisfies `predicate`, for at
/// most `timeout`; returns that status.
pub async fn wait_for_session(
    client: &dyn CoordinationBackend,
    predicate: impl Fn(&SessionStatus) -> bool,
    timeout: Duration,
    what: &str,
) -> SessionStatus {
    let mut rx = client.session();
    within(timeout, what, async move {
        loop {
            let status = *rx.borrow_and_update();
            if predicate(&status) {
                return status;
            }
            if rx.changed().await.is_err() {
                let last = *rx.borrow();
                panic!("session channel closed while waiting for {what}; last status {last:?}");
            }
        }
    })
    .await
}

/// Waits until the client is `Connected` with an epoch above `epoch`
/// (a new session replaced the one that expired).
pub async fn wait_for_new_session(client: &dyn CoordinationBackend, epoch: u64) -> SessionStatus {
    let what = format!("a Connected session with an epoch above {epoch}");
    wait_for_session(
        client,
        |s| s.state == SessionState::Connected && s.epoch > epoch,
        SESSION_TIMEOUT,
        &what,
    )
    .await
}

/// The next item of a watch stream, within [`EVENT_TIMEOUT`]; panics when
/// the stream ends or yields an error.
pub async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match within(EVENT_TIMEOUT, "the next watch event", stream.next()).await {
        Some(Ok(event)) => event,
        Some(Err(error)) => panic!("the watch stream failed: {error:?}"),
        None => panic!("the watch stream ended unexpectedly"),
    }
}

/// Reads watch events until one satisfies `predicate` (within
/// [`EVENT_TIMEOUT`] in total); returns it with the events skipped before.
pub async fn wait_for_event(
    stream: &mut WatchStream,
    what: &str,
    predicate: impl Fn(&WatchEvent) -> bool,
) -> (WatchEvent, Vec<WatchEvent>) {
    within(EVENT_TIMEOUT, what, async {
        let mut skipped = Vec::new();
        loop {
            match stream.next().await {
                Some(Ok(event)) if predicate(&event) => return (event, skipped),
                Some(Ok(event)) => skipped.push(event),
                Some(Err(error)) => {
                    panic!("the watch stream failed while waiting for {what}: {error:?}")
                }
                None => panic!("the watch stream ended while waiting for {what}; saw {skipped:?}"),
            }
        }
    })
    .await
}

/// The key's state as an event reports it: `Some` for a present key.
pub fn event_state(event: &WatchEvent) -> Option<Option<&Versioned>> {
    match event {
        WatchEvent::Initial(state) | WatchEvent::Resync(state) => Some(state.as_ref()),
        WatchEvent::Changed(versioned) => Some(Some(versioned)),
        WatchEvent::Deleted => Some(None),
        // A kind of event this suite does not know yet carries no state.
        _ => None,
    }
}

/// Polls `get(key)` until `predicate` holds on the result (within
/// `timeout`), tolerating `Unavailable` while a client reconnects; returns
/// the last result.
pub async fn wait_for_value(
    client: &dyn CoordinationBackend,
    key: &Key,
    timeout: Duration,
    what: &str,
    predicate: impl Fn(Option<&Versioned>) -> bool,
) -> Option<Versioned> {
    within(timeout, what, async {
        loop {
            match client.get(key).await {
                Ok(found) if predicate(found.as_ref()) => return found,
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::Unavailable => {}
                Err(error) => panic!("get({key}) failed while waiting for {what}: {error:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Bytes from a string literal.
pub fn bytes(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

/// A child key of a behaviour's unique prefix.
pub fn child(base: &Key, name: &str) -> Key {
    ok(&format!("{base}.child({name:?})"), base.child(name))
}
