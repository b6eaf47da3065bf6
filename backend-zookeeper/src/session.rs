//! The session supervisor: maps zookeeper-client session states onto
//! [`SessionStatus`](sharedstate_core::SessionStatus), replaces an expired
//! session by a new one, and closes the client.

use std::sync::Arc;
use std::time::Duration;

use sharedstate_core::backend::Backoff;
#[cfg(feature = "testing")]
use sharedstate_core::{Error, ErrorKind, Operation, Result};
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

#[cfg(feature = "testing")]
use crate::error;
use crate::{registration, Inner, Session};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long `close` waits for the server to confirm the session's end.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Runs until the backend is closed: one iteration per session.
pub(crate) async fn supervise(inner: Arc<Inner>) {
    loop {
        let Some(session) = inner.current_session() else {
            return;
        };
        let epoch = session.epoch;
        let mut states = session.client.state_watcher();
        let mut state = states.peek_state();
        let mut reported = None;
        loop {
            if reported != Some(state) {
                match state {
                    zk::SessionState::Disconnected => {
                        tracing::info!(epoch, "ZooKeeper connection lost; session suspended");
                        inner.status.suspended();
                    }
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        // The same session is back (a first Connected, on
                        // a session just opened, is already published).
                        inner.status.reconnected();
                    }
                    zk::SessionState::Expired
                    | zk::SessionState::AuthFailed
                    | zk::SessionState::Closed => break,
                }
                reported = Some(state);
            }
            state = tokio::select! {
                _ = inner.closed.cancelled() => return,
                state = states.changed() => state,
            };
        }
        drop(states);
        if inner.closed.is_cancelled() {
            return;
        }
        tracing::warn!(epoch, ?state, "ZooKeeper session lost; opening a new one");
        inner.status.lost();
        session.lost.cancel();
        drop(session);

        let Some(client) = open_new_session(&inner).await else {
            return;
        };
        let new = Arc::new(Session {
            client,
            epoch: epoch + 1,
            lost: CancellationToken::new(),
        });
        if inner.closed.is_cancelled() {
            return;
        }
        inner.replace_session(Some(new.clone()));
        if inner.closed.is_cancelled() {
            inner.replace_session(None);
            return;
        }
        registration::recreate_all(&inner, &new).await;
        drop(new);
        tracing::info!(epoch = epoch + 1, "new ZooKeeper session established");
        // Connected(epoch + 1) now: the watches resync once they see it.
        if let Some(notice) = inner.status.new_session() {
            debug_assert_eq!(notice.epoch(), epoch + 1, "one epoch per session");
        }
    }
}

/// Opens a new session with bounded exponential backoff, until it works or
/// the backend is closed.
async fn open_new_session(inner: &Inner) -> Option<zk::Client> {
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
    loop {
        let attempt = tokio::select! {
            _ = inner.closed.cancelled() => return None,
            attempt = inner.config.open_session() => attempt,
        };
        match attempt {
            Ok(client) => return Some(client),
            Err(error) => {
                tracing::warn!(%error, "opening a new ZooKeeper session failed; retrying");
                if !backoff.wait(&inner.closed).await {
                    return None;
                }
            }
        }
    }
}

/// Closes the backend: stops the tasks, reports `Closed`, and closes the
/// session (waiting briefly for the server to confirm).
pub(crate) async fn shutdown(inner: &Inner) {
    inner.closed.cancel();
    inner.status.close();
    inner
        .registrations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    let Some(session) = inner.replace_session(None) else {
        return;
    };
    session.lost.cancel();
    let mut states = session.client.state_watcher();
    // The session closes once every clone of the client is gone; in-flight
    // calls and tasks let go of theirs as they see the close.
    drop(session);
    let closed = async {
        while !states.peek_state().is_terminated() {
            states.changed().await;
        }
    };
    if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
        tracing::debug!("ZooKeeper session not confirmed closed yet; it closes in the background");
    }
}

/// Attempts to attach the twin session in `force_expiry`.
#[cfg(feature = "testing")]
const TWIN_ATTEMPTS: u32 = 4;
/// The first pause between twin attempts; later ones grow (jittered).
#[cfg(feature = "testing")]
const TWIN_FIRST_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Makes the server expire the current session: a twin client attaches to
/// it and closes it.
#[cfg(feature = "testing")]
pub(crate) async fn force_expiry(inner: &Inner, hosts: &str) -> Result<()> {
    let op = Operation::FaultInjection;
    if inner.closed.is_cancelled() {
        return Err(error::closed(op));
    }
    // Works while suspended too: the session is what matters.
    let info = {
        let current = inner.current.read().unwrap_or_else(|p| p.into_inner());
        match current.as_ref() {
            Some(session) => session.client.session().clone(),
            None => return Err(error::closed(op)),
        }
    };
    // Our own client reconnects to its session as soon as the twin takes it
    // over, and may win it back before the twin's handshake completes: the
    // two then bounce the session between them until one backs off. Each
    // new attempt is a fresh race, so a few bounded attempts settle it.
    let mut attempt = 0;
    let mut backoff = Backoff::short(TWIN_FIRST_RETRY);
    let twin = loop {
        attempt += 1;
        let connector = zk::Client::connector()
            .with_session(info.clone())
            .with_session_timeout(inner.config.session_timeout);
        match tokio::time::timeout(inner.config.connect_timeout, connector.connect(hosts)).await {
            // Already expired.
            Ok(Err(zk::Error::SessionExpired)) => return Ok(()),
            Ok(Ok(twin)) => break twin,
            Err(_) if attempt >= TWIN_ATTEMPTS => {
                return Err(error::connect_timeout(inner.config.connect_timeout))
            }
            Ok(Err(e)) if attempt >= TWIN_ATTEMPTS => {
                return Err(Error::new(error::kind_of(&e), op)
                    .with_message("the twin session could not attach")
                    .with_source(e))
            }
            Err(_) | Ok(Err(_)) => {
                tracing::debug!(
                    attempt,
                    "the twin session lost the race for the session; retrying"
                );
                backoff.sleep().await;
            }
        }
    };
    let mut states = twin.state_watcher();
    // Dropping the only handle sends CloseSession and waits for the reply.
    drop(twin);
    let closed = async {
        loop {
            let state = states.peek_state();
            if state.is_terminated() {
                return state;
            }
            states.changed().await;
        }
    };
    match tokio::time::timeout(inner.config.connect_timeout, closed).await {
        Ok(state) => {
            tracing::info!(?state, "forced the expiry of the ZooKeeper session");
            Ok(())
        }
        Err(_) => Err(Error::new(ErrorKind::Unavailable, op)
            .with_message("the server did not confirm closing the twin session")),
    }
}
