//! `watch`: a persistent ZooKeeper watch per stream, re-reading the znode on
//! each notification (level-triggered), with `Resync` after a reconnect or a
//! new session. After a notification of our own write, the state that
//! write made is emitted without a read (see the `own_writes` module).
//!
//! After every reconnect the persistent watch is registered again before
//! the `Resync` read: zookeeper-client 0.11.2 drops persistent watches on a
//! reconnect that keeps the session (its `resend_watches` computes
//! `index.max(index)` instead of `index.max(i)`, so the SetWatches2 request
//! that would carry them is never sent). `AddWatch` is idempotent on the
//! server, and the new registration goes out before the read on the same
//! session, so no change between the two is missed. The old watcher is
//! dropped only after the new one is registered (dropping the last watcher
//! of a path sends `RemoveWatches`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use sharedstate_core::backend::{watch_delivery, Backoff, WatchSender};
use sharedstate_core::{
    Key, Operation, Result, SessionState, Version, Versioned, WatchEvent, WatchStream,
};
use zookeeper_client as zk;

use crate::own_writes::ANSWER_WAIT;
use crate::{error, version_of, Inner};

/// The first pause before re-arming a watch whose request lost its
/// connection; the pauses grow (jittered) to `REARM_MAX`.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const REARM_MAX: Duration = Duration::from_secs(2);

pub(crate) async fn watch(inner: &Arc<Inner>, key: &Key) -> Result<WatchStream> {
    let op = Operation::Watch;
    let session = inner.session(op)?;
    let watcher = session
        .client
        .watch(key.as_str(), zk::AddWatchMode::Persistent)
        .await
        .map_err(|e| error::map(e, op, key))?;
    let current = read(inner, &session.client, key, true)
        .await
        .map_err(|e| error::map(e, op, key))?;
    let (tx, stream) = watch_delivery();
    let task = Task {
        inner: inner.clone(),
        key: key.clone(),
        last: current.as_ref().map(|v| v.version),
        trusted: true,
        epoch: session.epoch,
        tx,
    };
    drop(session);
    task.tx.send(WatchEvent::Initial(current));
    tokio::spawn(task.run(watcher));
    Ok(stream)
}

/// Reads the znode (after a `sync` when `sync`), feeding the version cache.
async fn read(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    sync: bool,
) -> std::result::Result<Option<Versioned>, zk::Error> {
    Ok(crate::kv::read(inner, client, key, sync, true)
        .await?
        .map(|(data, stat)| Versioned {
            value: Bytes::from(data.unwrap_or_default()),
            version: version_of(stat.mzxid),
        }))
}

/// What re-registering a watch after a reconnect gave.
enum Rearmed {
    Watching(zk::PersistentWatcher),
    LostAgain,
    NewSession,
    Stop,
}

/// What a batch of notifications asks for, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Nothing,
    Read,
    Resync,
    NewSession,
}

/// What a batch of notifications holds.
struct Batch {
    need: Need,
    /// How many of them ask for a read, and how many of those are data
    /// changes (not a creation or a deletion).
    reads: usize,
    data_changes: usize,
}

impl Batch {
    fn of(event: &zk::WatchedEvent) -> Self {
        let mut batch = Batch {
            need: Need::Nothing,
            reads: 0,
            data_changes: 0,
        };
        batch.add(event);
        batch
    }

    fn add(&mut self, event: &zk::WatchedEvent) {
        let need = need_of(event);
        self.need = self.need.max(need);
        if need == Need::Read {
            self.reads += 1;
            if event.event_type == zk::EventType::NodeDataChanged {
                self.data_changes += 1;
            }
        }
    }

    /// Exactly one change, and it changed the data.
    fn one_data_change(&self) -> bool {
        self.reads == 1 && self.data_changes == 1
    }
}

fn need_of(event: &zk::WatchedEvent) -> Need {
    match event.event_type {
        zk::EventType::Session => match event.session_state {
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => Need::Resync,
            zk::SessionState::Disconnected => Need::Nothing,
            zk::SessionState::Expired | zk::SessionState::AuthFailed | zk::SessionState::Closed => {
                Need::NewSession
            }
        },
        zk::EventType::NodeChildrenChanged => Need::Nothing,
        zk::EventType::NodeCreated
        | zk::EventType::NodeDeleted
        | zk::EventType::NodeDataChanged => Need::Read,
    }
}

struct Task {
    inner: Arc<Inner>,
    key: Key,
    /// The version last emitted (`None`: absent).
    last: Option<Version>,
    /// Whether every notification since `last` was read came after it
    /// (false after a failed read): only then can a data change be matched
    /// to our own write.
    trusted: bool,
    /// The session the watcher belongs to.
    epoch: u64,
    /// The kit's bounded delivery: a slow consumer gets the latest state.
    tx: WatchSender,
}

enum Outcome {
    Continue,
    /// The connection came back on the same session: register the watch
    /// again, then resync.
    Reconnected,
    NewSession,
    Stop,
}

impl Task {
    async fn run(mut self, watcher: zk::PersistentWatcher) {
        let mut watcher = Some(watcher);
        loop {
            let outcome = match watcher.as_mut() {
                Some(w) => self.step(w).await,
                None => Outcome::NewSession,
            };
            match outcome {
                Outcome::Continue => {}
                Outcome::Stop => return,
                Outcome::Reconnected => match self.rearm().await {
                    Rearmed::Watching(w) => {
                        // The old watcher goes only now: see the module docs.
                        watcher = Some(w);
                        match self.refresh(true).await {
                            Outcome::Stop => return,
                            Outcome::NewSession => drop(watcher.take()),
                            _ => {}
                        }
                    }
                    Rearmed::LostAgain => {}
                    Rearmed::NewSession => drop(watcher.take()),
                    Rearmed::Stop => return,
                },
                Outcome::NewSession => {
                    // The old watcher died with its session; never poll it again.
                    drop(watcher.take());
                    match self.renew().await {
                        Some(w) => watcher = Some(w),
                        None => return,
                    }
                }
            }
        }
    }

    /// Waits for notifications, folds those already queued, and acts once.
    async fn step(&mut self, watcher: &mut zk::PersistentWatcher) -> Outcome {
        // zookeeper-client panics when a persistent watcher is polled after
        // its session task is gone without a terminal event (runtime
        // shutdown, a panic there): treat that as the end of the session.
        let first = tokio::select! {
            _ = self.tx.closed() => return Outcome::Stop,
            _ = self.inner.closed.cancelled() => return Outcome::Stop,
            event = AssertUnwindSafe(watcher.changed()).catch_unwind() => match event {
                Ok(event) => event,
                Err(_) => return Outcome::NewSession,
            },
        };
        let mut batch = Batch::of(&first);
        while batch.need != Need::NewSession {
            match AssertUnwindSafe(watcher.changed())
                .catch_unwind()
                .now_or_never()
            {
                Some(Ok(event)) => batch.add(&event),
                Some(Err(_)) => return Outcome::NewSession,
                None => break,
            }
        }
        match batch.need {
            Need::Nothing => Outcome::Continue,
            Need::NewSession => Outcome::NewSession,
            Need::Resync => Outcome::Reconnected,
            Need::Read if batch.one_data_change() => self.own_write_or_refresh().await,
            Need::Read => self.refresh(false).await,
        }
    }

    /// One data change since our last state: when it is our own write that
    /// landed (see the `own_writes` module), emits what we wrote without a
    /// read; else reads.
    async fn own_write_or_refresh(&mut self) -> Outcome {
        if let (true, Some(last)) = (self.trusted, self.last) {
            let landed = tokio::select! {
                _ = self.inner.closed.cancelled() => return Outcome::Stop,
                landed = self.inner.own_writes.landed_after(self.key.as_str(), last, ANSWER_WAIT) => landed,
            };
            if let Some(written) = landed {
                self.last = Some(written.version);
                return self.send(WatchEvent::Changed(written));
            }
        }
        self.refresh(false).await
    }

    /// Reads the znode and emits what changed (or `Resync`).
    async fn refresh(&mut self, resync: bool) -> Outcome {
        let Some(session) = self.inner.current_session() else {
            return Outcome::Stop;
        };
        if session.epoch != self.epoch {
            return Outcome::NewSession;
        }
        // Until a read succeeds again, a notification may have been
        // consumed unread: our own writes prove nothing then.
        self.trusted = false;
        self.inner
            .watch_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let current = match read(&self.inner, &session.client, &self.key, resync).await {
            Ok(current) => current,
            Err(zk::Error::SessionExpired | zk::Error::SessionMoved | zk::Error::AuthFailed) => {
                return Outcome::NewSession
            }
            Err(zk::Error::ClientClosed) => return Outcome::Stop,
            // The connection broke: a reconnect notification (and a
            // resync) follows, or the session expires.
            Err(zk::Error::ConnectionLoss | zk::Error::Timeout) => return Outcome::Continue,
            Err(e) => {
                self.tx.fail(error::map(e, Operation::Watch, &self.key));
                return Outcome::Stop;
            }
        };
        self.trusted = true;
        if resync {
            self.last = current.as_ref().map(|v| v.version);
            return self.send(WatchEvent::Resync(current));
        }
        match (self.last, current) {
            (last, Some(value)) if last.is_none_or(|l| value.version > l) => {
                self.last = Some(value.version);
                self.send(WatchEvent::Changed(value))
            }
            (Some(_), None) => {
                self.last = None;
                self.send(WatchEvent::Deleted)
            }
            _ => Outcome::Continue,
        }
    }

    /// Registers the persistent watch again on the current session (see
    /// the module docs).
    async fn rearm(&mut self) -> Rearmed {
        let Some(session) = self.inner.current_session() else {
            return Rearmed::Stop;
        };
        if session.epoch != self.epoch {
            return Rearmed::NewSession;
        }
        match session
            .client
            .watch(self.key.as_str(), zk::AddWatchMode::Persistent)
            .await
        {
            Ok(watcher) => {
                tracing::debug!(key = %self.key, "persistent watch registered again after a reconnect");
                Rearmed::Watching(watcher)
            }
            Err(zk::Error::SessionExpired | zk::Error::SessionMoved | zk::Error::AuthFailed) => {
                Rearmed::NewSession
            }
            Err(zk::Error::ClientClosed) => Rearmed::Stop,
            // Lost again: the next reconnect notification re-arms.
            Err(zk::Error::ConnectionLoss | zk::Error::Timeout) => Rearmed::LostAgain,
            Err(e) => {
                self.tx.fail(error::map(e, Operation::Watch, &self.key));
                Rearmed::Stop
            }
        }
    }

    fn send(&self, event: WatchEvent) -> Outcome {
        if self.tx.send(event) {
            Outcome::Continue
        } else {
            Outcome::Stop
        }
    }

    /// Waits for the session after this watcher's one, re-arms the watch on
    /// it and emits `Resync`. `None` when the stream should end.
    async fn renew(&mut self) -> Option<zk::PersistentWatcher> {
        let mut status = self.inner.status.subscribe();
        let mut backoff = Backoff::new(FIRST_RETRY, REARM_MAX);
        loop {
            let epoch = self.epoch;
            let ready = tokio::select! {
                _ = self.tx.closed() => return None,
                ready = status.wait_for(|s| {
                    s.state == SessionState::Closed
                        || (s.state == SessionState::Connected && s.epoch > epoch)
                }) => ready.map(|s| s.state != SessionState::Closed).unwrap_or(false),
            };
            if !ready {
                return None;
            }
            let session = self.inner.current_session()?;
            let armed = session
                .client
                .watch(self.key.as_str(), zk::AddWatchMode::Persistent)
                .await;
            let watcher = match armed {
                Ok(watcher) => watcher,
                Err(zk::Error::SessionExpired | zk::Error::SessionMoved) => {
                    self.epoch = session.epoch;
                    continue;
                }
                Err(zk::Error::ClientClosed) => return None,
                Err(zk::Error::ConnectionLoss | zk::Error::Timeout) => {
                    backoff.sleep().await;
                    continue;
                }
                Err(e) => {
                    self.tx.fail(error::map(e, Operation::Watch, &self.key));
                    return None;
                }
            };
            self.epoch = session.epoch;
            drop(session);
            return match self.refresh(true).await {
                Outcome::Continue | Outcome::Reconnected => Some(watcher),
                Outcome::Stop => None,
                // The new session died already: wait for the next one. A
                // failed read after a lost connection is resynced by the
                // reconnect notification.
                Outcome::NewSession => continue,
            };
        }
    }
}
