//! The background task of one `SharedState`: follows the payload's watch
//! and the session, keeps the snapshot and its freshness current.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::shared::Shared;
use crate::backend::{SessionState, WatchEvent, WatchStream};
use crate::registration::Registration;

const REWATCH_BACKOFF_MIN: Duration = Duration::from_millis(50);
const REWATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs until the state is closed; then removes the listener registration.
pub(crate) async fn run<T>(
    shared: Arc<Shared<T>>,
    mut stream: WatchStream,
    registration: Option<Registration>,
    opened_epoch: u64,
) where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let mut session = shared.session.clone();
    let first = *session.borrow_and_update();
    let mut epoch = first.epoch;
    // True once the watch delivered a full state (Initial/Resync) since the
    // last disconnect: together with a connected session, the copy is live.
    // A session replaced since open() makes the watch resync; until then the
    // copy is not verified.
    let mut watch_in_sync = first.state == SessionState::Connected && first.epoch == opened_epoch;
    let closed = shared.closed.clone();
    loop {
        // Evaluated before waiting too: the session may have changed between
        // open() and this task's first poll.
        let connected = session.borrow().state == SessionState::Connected;
        if watch_in_sync && connected {
            shared.freshness.mark_live();
        } else {
            shared.freshness.mark_unverified();
        }
        tokio::select! {
            biased;
            _ = closed.cancelled() => break,
            changed = session.changed() => {
                if changed.is_err() {
                    // The backend is gone; nothing will verify us again.
                    shared.freshness.mark_unverified();
                    closed.cancelled().await;
                    break;
                }
                let status = *session.borrow_and_update();
                if status.epoch != epoch {
                    tracing::info!(key = %shared.keys.root, epoch = status.epoch,
                        "new session; waiting for the watch to resync");
                    epoch = status.epoch;
                    watch_in_sync = false;
                }
                if status.state != SessionState::Connected {
                    watch_in_sync = false;
                }
            }
            item = stream.next() => match item {
                Some(Ok(event)) => {
                    if handle_event(&shared, event).await {
                        watch_in_sync = true;
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(key = %shared.keys.payload, %error, "watch failed; re-watching");
                    watch_in_sync = false;
                    shared.freshness.mark_unverified();
                    match rewatch(&shared).await {
                        Some(new_stream) => stream = new_stream,
                        None => break,
                    }
                }
                None => {
                    tracing::debug!(key = %shared.keys.payload, "watch ended; re-watching");
                    watch_in_sync = false;
                    shared.freshness.mark_unverified();
                    match rewatch(&shared).await {
                        Some(new_stream) => stream = new_stream,
                        None => break,
                    }
                }
            },
        }
    }
    shared.freshness.mark_unverified();
    if let Some(registration) = registration {
        if let Err(error) = registration.close().await {
            tracing::warn!(%error, key = %shared.keys.root, "removing the listener registration failed");
        }
    }
}

/// Applies one watch event; true when it carried the full current state.
async fn handle_event<T>(shared: &Shared<T>, event: WatchEvent) -> bool
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    // Wait for any local write in flight to be applied first.
    let _gate = shared.write_gate.lock().await;
    match event {
        WatchEvent::Initial(state) | WatchEvent::Resync(state) => {
            shared.apply_read(state.as_ref());
            true
        }
        WatchEvent::Changed(versioned) => {
            shared.apply_remote(&versioned);
            false
        }
        WatchEvent::Deleted => {
            shared.apply_deleted();
            false
        }
    }
}

/// Opens a new watch with bounded exponential backoff; `None` once closed.
async fn rewatch<T>(shared: &Shared<T>) -> Option<WatchStream>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let mut backoff = REWATCH_BACKOFF_MIN;
    loop {
        tokio::select! {
            _ = shared.closed.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        match shared.backend.watch(&shared.keys.payload).await {
            Ok(stream) => return Some(stream),
            Err(error) => {
                tracing::warn!(key = %shared.keys.payload, %error, ?backoff, "re-watch failed");
                if error.kind() == crate::ErrorKind::Closed {
                    return None;
                }
                backoff = (backoff * 2).min(REWATCH_BACKOFF_MAX);
            }
        }
    }
}
