//! What subscribers receive: change sets and notices.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::{BoxStream, Stream};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::diff::{diff, Change};
use crate::version::Version;

/// Where a change set comes from.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// An `update` of this instance.
    Local,
    /// Another instance, or an outside writer, seen through the watch.
    Remote,
    /// Rebuilt by comparing snapshots after this subscriber lagged: the
    /// individual change sets in between were dropped for it. (Called
    /// `Resync` in 0.1.0; the JSON name stays `"resync"`.)
    #[serde(rename = "resync", alias = "rebuilt")]
    Rebuilt,
}

impl Origin {
    /// The old name of [`Origin::Rebuilt`]: "resync" also named a watch
    /// that lost continuity ([`WatchEvent::Resync`](crate::WatchEvent)),
    /// which is not what this origin says. Usable in patterns as before.
    #[deprecated(note = "renamed to `Origin::Rebuilt`")]
    #[allow(non_upper_case_globals)]
    pub const Resync: Origin = Origin::Rebuilt;
}

/// The changes one version brought, as seen by this instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeSet {
    /// The payload version after the changes.
    pub version: Version,
    /// Who made them.
    pub origin: Origin,
    /// The changes, never empty.
    pub changes: Vec<Change>,
}

/// One item of a [`Subscription`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum StateEvent {
    /// The shared value changed.
    Changed(ChangeSet),
    /// This subscriber fell behind and `missed` events were dropped for it;
    /// an [`Origin::Rebuilt`] change set with the net difference follows (when
    /// there is one), then the notice of the payload's current problem
    /// (`Rejected` or `PayloadDeleted`) when it has one that was dropped.
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
    /// The payload at `version` does not decode as the state's type: the
    /// last good copy is kept, and updates fail with `Decode` until a valid
    /// payload arrives.
    Rejected {
        /// The rejected version.
        version: Version,
        /// Why it was rejected.
        error: String,
    },
    /// Someone deleted the payload: the last good copy is kept, and updates
    /// fail with `NotFound` until it is written again.
    PayloadDeleted,
}

/// What the engine broadcasts: the event plus what a lagging subscriber
/// needs to rebuild its view.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    /// Numbers every publication of a state, from 1 up: a lagging subscriber
    /// skips what its resync already covered by this number (versions do
    /// not order notices such as `PayloadDeleted`).
    pub seq: u64,
    pub event: StateEvent,
    /// The decoded state after the event, when it changed.
    pub json: Option<Arc<Value>>,
}

/// The state a lagging subscriber resyncs from: the latest snapshot and the
/// last publication it reflects.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub seq: u64,
    pub version: Version,
    pub json: Arc<Value>,
    /// The notice that describes the snapshot's problem, if it has one
    /// (`Rejected` or `PayloadDeleted`), repeated after a resync.
    pub notice: Option<StateEvent>,
}

/// Gives a lagging subscriber the current [`View`].
pub(crate) type CurrentView = Arc<dyn Fn() -> View + Send + Sync>;

/// A stream of [`StateEvent`]s for one subscriber, in version order. Ends
/// when the state is closed.
pub struct Subscription {
    inner: BoxStream<'static, StateEvent>,
}

struct Cursor {
    rx: broadcast::Receiver<Published>,
    seen_seq: u64,
    seen_json: Arc<Value>,
    current: CurrentView,
    closed: CancellationToken,
    pending: VecDeque<StateEvent>,
}

impl Subscription {
    /// Starts at `view`, which must be the state as of the moment `rx`
    /// subscribed.
    pub(crate) fn new(
        rx: broadcast::Receiver<Published>,
        view: View,
        current: CurrentView,
        closed: CancellationToken,
    ) -> Self {
        let cursor = Cursor {
            rx,
            seen_seq: view.seq,
            seen_json: view.json,
            current,
            closed,
            pending: VecDeque::new(),
        };
        let inner = futures::stream::unfold(cursor, |mut cursor| async move {
            let event = cursor.next_event().await?;
            Some((event, cursor))
        });
        Subscription {
            inner: Box::pin(inner),
        }
    }
}

impl Cursor {
    async fn next_event(&mut self) -> Option<StateEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            let received = tokio::select! {
                biased;
                received = self.rx.recv() => received,
                _ = self.closed.cancelled() => return None,
            };
            match received {
                Ok(published) => {
                    // After a resync the receiver replays what it still
                    // buffers; those publications are already folded in.
                    if published.seq <= self.seen_seq {
                        continue;
                    }
                    self.seen_seq = published.seq;
                    if let Some(json) = published.json {
                        self.seen_json = json;
                    }
                    return Some(published.event);
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let view = (self.current)();
                    let changes = diff(&self.seen_json, &view.json);
                    if !changes.is_empty() {
                        self.pending.push_back(StateEvent::Changed(ChangeSet {
                            version: view.version,
                            origin: Origin::Rebuilt,
                            changes,
                        }));
                    }
                    if view.seq > self.seen_seq {
                        // What the snapshot's problem was announced by,
                        // since dropped for us: say it again.
                        self.pending.extend(view.notice);
                    }
                    self.seen_seq = self.seen_seq.max(view.seq);
                    self.seen_json = view.json;
                    return Some(StateEvent::Lagged { missed });
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Stream for Subscription {
    type Item = StateEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StateEvent>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rename kept what users rely on: the JSON name (the CLI's
    /// output, stored recordings) and the old name in patterns.
    #[test]
    fn the_rebuilt_origin_keeps_its_json_name_and_old_name() {
        let json = serde_json::to_value(Origin::Rebuilt).expect("serialises");
        assert_eq!(json, serde_json::json!("resync"));
        for name in ["resync", "rebuilt"] {
            let origin: Origin = serde_json::from_value(serde_json::json!(name)).expect(name);
            assert_eq!(origin, Origin::Rebuilt);
        }
        #[allow(deprecated)]
        let matched = matches!(Origin::Rebuilt, Origin::Resync);
        assert!(matched);
        #[allow(deprecated)]
        let remote_is_not = matches!(Origin::Remote, Origin::Resync);
        assert!(!remote_is_not);
    }
}
