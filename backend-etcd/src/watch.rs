//! Watches: a linearizable read for the first item, then an etcd watch from
//! the read's revision + 1 with `prev_kv`, so no change between the two is
//! missed. Where continuity cannot be proven (the stream broke, the start
//! revision was compacted, the session was suspended or replaced) the key is
//! read again and `Resync` carries the current state: never a silent gap.
//!
//! Each watch runs in its own task and hands events to an unbounded
//! channel, so a slow consumer never blocks the backend's other tasks.

use std::sync::Arc;

use bytes::Bytes;
use etcd_client::WatchOptions;
use futures::StreamExt;
use sharedstate_core::{
    ErrorKind, Key, Operation, Result, SessionState, SessionStatus, Versioned, WatchEvent,
    WatchStream,
};
use tokio::sync::{mpsc, watch};

use crate::error::{call_raw, Retry};
use crate::kv::version_of;
use crate::session::Backoff;
use crate::Inner;

type Sender = mpsc::UnboundedSender<Result<WatchEvent>>;

/// Starts watching `key`: reads it (errors surface here), then spawns the
/// task that follows it.
pub(crate) async fn watch(inner: &Arc<Inner>, key: &Key) -> Result<WatchStream> {
    let mut status = inner.session.subscribe();
    let last = *status.borrow_and_update();
    let breaks = inner.session.breaks();
    let (initial, revision) = inner.read(key, Operation::Watch).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The receiver is alive: this send cannot fail.
    let _ = tx.send(Ok(WatchEvent::Initial(initial)));
    let watcher = Watcher {
        inner: Arc::clone(inner),
        key: key.clone(),
        tx,
        status,
        last,
        breaks,
    };
    tokio::spawn(watcher.run(revision + 1));
    Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
}

/// Follows `key` from just after `after`, without a first read: the changes
/// after that revision in order, or `Resync` when they cannot be replayed
/// (compacted).
pub(crate) fn watch_from(inner: &Arc<Inner>, key: &Key, after: i64) -> Result<WatchStream> {
    crate::kv::check_open(inner, Operation::Watch, key)?;
    let mut status = inner.session.subscribe();
    let last = *status.borrow_and_update();
    let breaks = inner.session.breaks();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watcher = Watcher {
        inner: Arc::clone(inner),
        key: key.clone(),
        tx,
        status,
        last,
        breaks,
    };
    tokio::spawn(watcher.run(after.saturating_add(1)));
    Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
}

/// Why following the etcd watch stopped.
enum End {
    /// The client was closed or the consumer went away.
    Stop,
    /// Continuity is lost: read again and send `Resync`.
    Resync,
}

struct Watcher {
    inner: Arc<Inner>,
    key: Key,
    tx: Sender,
    status: watch::Receiver<SessionStatus>,
    /// The session status when continuity was last established.
    last: SessionStatus,
    /// The session's connection breaks counted then.
    breaks: u64,
}

impl Watcher {
    async fn run(mut self, mut start: i64) {
        loop {
            match self.follow(start).await {
                End::Stop => return,
                End::Resync => {}
            }
            match self.resync().await {
                Some(next) => start = next,
                None => return,
            }
        }
    }

    /// Follows the etcd watch from `start` until continuity is lost.
    async fn follow(&mut self, start: i64) -> End {
        let timeout = self.inner.config.request_timeout;
        let (inner, key) = (&self.inner, &self.key);
        let open = || {
            let mut client = inner.client.watch_client();
            let options = WatchOptions::new()
                .with_start_revision(start)
                .with_prev_key();
            async move { client.watch(key.as_str(), Some(options)).await }
        };
        let opened = tokio::select! {
            _ = self.inner.closed.cancelled() => return End::Stop,
            _ = self.tx.closed() => return End::Stop,
            opened = call_raw(timeout, Retry::Read, open) => opened,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, key = %self.key, "opening the etcd watch failed");
                return End::Resync;
            }
        };
        loop {
            tokio::select! {
                _ = self.inner.closed.cancelled() => return End::Stop,
                _ = self.tx.closed() => return End::Stop,
                changed = self.status.changed() => {
                    if changed.is_err() {
                        return End::Stop;
                    }
                    let now = *self.status.borrow_and_update();
                    let last = std::mem::replace(&mut self.last, now);
                    // A Suspended in between may have been overwritten by
                    // the Connected that followed: the counter still shows it.
                    let broke = self.inner.session.breaks() != self.breaks;
                    match now.state {
                        SessionState::Closed => return End::Stop,
                        SessionState::Connected
                            if broke
                                || last.state != SessionState::Connected
                                || last.epoch != now.epoch =>
                        {
                            return End::Resync;
                        }
                        _ => {}
                    }
                }
                message = stream.message() => match message {
                    Ok(Some(response)) => {
                        if response.canceled() || response.compact_revision() != 0 {
                            tracing::debug!(
                                key = %self.key,
                                compact_revision = response.compact_revision(),
                                reason = response.cancel_reason(),
                                "etcd cancelled the watch; resyncing"
                            );
                            return End::Resync;
                        }
                        for event in response.events() {
                            let Some(kv) = event.kv() else { continue };
                            // A deletion's kv is a tombstone: version 0
                            // (a put always has version >= 1).
                            let item = if kv.version() == 0 {
                                WatchEvent::Deleted
                            } else {
                                WatchEvent::Changed(Versioned {
                                    value: Bytes::copy_from_slice(kv.value()),
                                    version: version_of(kv.mod_revision()),
                                })
                            };
                            if self.tx.send(Ok(item)).is_err() {
                                return End::Stop;
                            }
                        }
                    }
                    Ok(None) => {
                        tracing::debug!(key = %self.key, "the etcd watch stream ended; resyncing");
                        return End::Resync;
                    }
                    Err(error) => {
                        tracing::debug!(%error, key = %self.key, "the etcd watch stream broke; resyncing");
                        return End::Resync;
                    }
                },
            }
        }
    }

    /// Reads the key until it works and sends `Resync`; returns the
    /// revision to watch from, or `None` when the watch must end.
    async fn resync(&mut self) -> Option<i64> {
        let mut backoff = Backoff::new();
        loop {
            // What the session looked like before the read: a break during
            // it calls for another Resync.
            let status = *self.status.borrow_and_update();
            let breaks = self.inner.session.breaks();
            match self.inner.read(&self.key, Operation::Watch).await {
                Ok((value, revision)) => {
                    self.last = status;
                    self.breaks = breaks;
                    if self.tx.send(Ok(WatchEvent::Resync(value))).is_err() {
                        return None;
                    }
                    return Some(revision + 1);
                }
                Err(error) if error.kind() == ErrorKind::Closed => return None,
                Err(error)
                    if matches!(
                        error.kind(),
                        ErrorKind::Unauthorized | ErrorKind::InvalidArgument
                    ) =>
                {
                    // Retrying cannot help: report it and end the stream.
                    let _ = self.tx.send(Err(error));
                    return None;
                }
                Err(error) => {
                    tracing::debug!(%error, key = %self.key, "re-reading a watched key failed; retrying");
                    tokio::select! {
                        _ = self.inner.closed.cancelled() => return None,
                        _ = self.tx.closed() => return None,
                        _ = tokio::time::sleep(backoff.next()) => {}
                    }
                }
            }
        }
    }
}
