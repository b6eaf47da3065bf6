//! Watches: a linearizable read for the first item, then an etcd watch from
//! the read's revision + 1 with `prev_kv`, so no change between the two is
//! missed. Where continuity cannot be proven (the stream broke, the start
//! revision was compacted, the session was suspended or replaced) the key is
//! read again and `Resync` carries the current state: never a silent gap.
//!
//! Each watch runs in its own task and hands events to the kit's bounded
//! delivery (`watch_delivery`), so a slow consumer never blocks the
//! backend's other tasks and never makes it queue without bound: changes it
//! has not taken yet fold into the latest, deletions and resyncs kept.

use std::sync::Arc;

use bytes::Bytes;
use etcd_client::{WatchOptions, WatchRequestSender, WatchResponseStream};
use sharedstate_core::{
    ErrorKind, Key, Operation, Result, SessionState, SessionStatus, Versioned, WatchEvent,
    WatchStream,
};
use tokio::sync::{mpsc, watch};

use crate::kv::version_of;
use crate::lease::backoff;
use crate::Inner;
use futures::StreamExt;
use sharedstate_core::backend::{watch_delivery, Backoff, WatchSender};

/// How long a watch stream may stay quiet before a progress request asks
/// its member to prove it is alive.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// A stream that ends this soon after opening is refused, not broken.
const QUICK_END: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts watching `key`: reads it (errors surface here), then spawns the
/// task that follows it.
pub(crate) async fn watch(inner: &Arc<Inner>, key: &Key) -> Result<WatchStream> {
    let mut status = inner.session.subscribe();
    let last = *status.borrow_and_update();
    let breaks = inner.session.breaks();
    let (initial, revision) = inner.read(key, Operation::Watch).await?;
    let (tx, stream) = watch_delivery();
    tx.send(WatchEvent::Initial(initial));
    let tx = Tx::Latest(tx);
    let watcher = Watcher {
        inner: Arc::clone(inner),
        key: key.clone(),
        tx,
        status,
        last,
        breaks,
        reopen_backoff: backoff(),
    };
    tokio::spawn(watcher.run(revision + 1));
    Ok(stream)
}

/// Follows `key` from just after `after`, without a first read: the changes
/// after that revision in order, or `Resync` when they cannot be replayed
/// (compacted).
pub(crate) fn watch_from(inner: &Arc<Inner>, key: &Key, after: i64) -> Result<WatchStream> {
    crate::kv::check_open(inner, Operation::Watch, key)?;
    let mut status = inner.session.subscribe();
    let last = *status.borrow_and_update();
    let breaks = inner.session.breaks();
    // Every change since `after`, in order (the replay is the point): an
    // unbounded channel, not the folding delivery `watch` uses.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tx = Tx::Replay(tx);
    let watcher = Watcher {
        inner: Arc::clone(inner),
        key: key.clone(),
        tx,
        status,
        last,
        breaks,
        reopen_backoff: backoff(),
    };
    tokio::spawn(watcher.run(after.saturating_add(1)));
    Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
}

/// Where a watch's events go.
enum Tx {
    /// `watch`: the kit's bounded delivery (changes fold into the latest).
    Latest(WatchSender),
    /// `watch_from`: every replayed change, in order.
    Replay(mpsc::UnboundedSender<Result<WatchEvent>>),
}

impl Tx {
    /// False when the consumer is gone.
    fn send(&self, event: WatchEvent) -> bool {
        match self {
            Tx::Latest(tx) => tx.send(event),
            Tx::Replay(tx) => tx.send(Ok(event)).is_ok(),
        }
    }

    /// Ends the stream with `error`.
    fn fail(&self, error: sharedstate_core::Error) {
        match self {
            Tx::Latest(tx) => tx.fail(error),
            Tx::Replay(tx) => {
                let _ = tx.send(Err(error));
            }
        }
    }

    /// Completes when the consumer is gone.
    async fn closed(&self) {
        match self {
            Tx::Latest(tx) => tx.closed().await,
            Tx::Replay(tx) => tx.closed().await,
        }
    }
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
    tx: Tx,
    status: watch::Receiver<SessionStatus>,
    /// The session status when continuity was last established.
    last: SessionStatus,
    /// The session's connection breaks counted then.
    breaks: u64,
    /// Pauses between reopens of a stream that keeps ending at once.
    reopen_backoff: Backoff,
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
    ///
    /// The stream is on the preferred member and must stay provably alive:
    /// when it has been quiet for [`PROGRESS_EVERY`], a progress request
    /// asks the member for a (possibly empty) answer; a member that gives
    /// none within the request timeout (frozen, partitioned, or without a
    /// leader) is marked suspect, and the watch resyncs on another member.
    async fn follow(&mut self, start: i64) -> End {
        let timeout = self.inner.config.request_timeout;
        let opened_at = tokio::time::Instant::now();
        let (member, mut watcher, mut stream) = match self.open(start).await {
            Ok(opened) => opened,
            Err(end) => return end,
        };
        let mut last_message = tokio::time::Instant::now();
        let mut progress_asked: Option<tokio::time::Instant> = None;
        loop {
            let check_at = match progress_asked {
                Some(asked) => asked + timeout,
                None => last_message + PROGRESS_EVERY,
            };
            tokio::select! {
                _ = self.inner.closed.cancelled() => return End::Stop,
                _ = self.tx.closed() => return End::Stop,
                changed = self.status.changed() => {
                    if changed.is_err() {
                        return End::Stop;
                    }
                    if let Some(end) = self.session_changed() {
                        return end;
                    }
                }
                _ = tokio::time::sleep_until(check_at) => {
                    if progress_asked.is_some() {
                        self.inner.members.failed(member);
                        tracing::info!(key = %self.key, "an etcd watch stayed silent after a progress request; resyncing on another member");
                        return End::Resync;
                    }
                    if let Err(error) = watcher.request_progress().await {
                        self.inner.members.failed(member);
                        tracing::debug!(%error, key = %self.key, "a watch progress request failed; resyncing");
                        return End::Resync;
                    }
                    progress_asked = Some(tokio::time::Instant::now());
                }
                message = stream.message() => {
                    last_message = tokio::time::Instant::now();
                    progress_asked = None;
                    match message {
                        Ok(Some(response)) => {
                            self.inner.members.answered(member);
                            if let Some(end) = self.deliver(&response) {
                                return end;
                            }
                        }
                        Ok(None) => {
                            tracing::debug!(key = %self.key, "the etcd watch stream ended; resyncing");
                            return self.ended(opened_at).await;
                        }
                        Err(error) => {
                            self.inner.members.failed(member);
                            tracing::debug!(%error, key = %self.key, "the etcd watch stream broke; resyncing");
                            return self.ended(opened_at).await;
                        }
                    }
                }
            }
        }
    }

    /// Opens the etcd watch from `start` on the preferred member; `Err`
    /// says how `follow` ends when that fails (the member is marked).
    async fn open(
        &mut self,
        start: i64,
    ) -> Result<(usize, WatchRequestSender, WatchResponseStream), End> {
        let timeout = self.inner.config.request_timeout;
        let member = self.inner.members.index_for(0);
        let client = match self.inner.members.client(member).await {
            Ok(client) => client,
            Err(error) => {
                self.inner.members.failed(member);
                tracing::debug!(%error, key = %self.key, "connecting to the etcd member for a watch failed");
                return Err(End::Resync);
            }
        };
        let mut watch_client = client.watch_client();
        let options = WatchOptions::new().with_start_revision(start);
        let open = watch_client.watch(self.key.as_str(), Some(options));
        let opened = tokio::select! {
            _ = self.inner.closed.cancelled() => return Err(End::Stop),
            _ = self.tx.closed() => return Err(End::Stop),
            opened = tokio::time::timeout(self.inner.members.attempt_timeout(timeout), open) => opened,
        };
        match opened {
            Ok(Ok(stream)) => {
                let (watcher, stream) = stream.split();
                Ok((member, watcher, stream))
            }
            Ok(Err(error)) => {
                self.inner.members.failed(member);
                tracing::debug!(%error, key = %self.key, "opening the etcd watch failed");
                Err(End::Resync)
            }
            Err(_) => {
                self.inner.members.failed(member);
                tracing::debug!(key = %self.key, "opening the etcd watch timed out");
                Err(End::Resync)
            }
        }
    }

    /// A stream that ended: when it ended right after opening (a member
    /// that refuses watches), pause before trying again, instead of a hot
    /// loop of reopens.
    async fn ended(&mut self, opened_at: tokio::time::Instant) -> End {
        if opened_at.elapsed() < QUICK_END {
            let pause = self.reopen_backoff.next_delay();
            tokio::select! {
                _ = self.inner.closed.cancelled() => return End::Stop,
                _ = self.tx.closed() => return End::Stop,
                _ = tokio::time::sleep(pause) => {}
            }
        } else {
            self.reopen_backoff.reset();
        }
        End::Resync
    }

    /// Sends the events of one response; `Some` when the watch must end or
    /// resync.
    fn deliver(&mut self, response: &etcd_client::WatchResponse) -> Option<End> {
        if response.canceled() || response.compact_revision() != 0 {
            tracing::debug!(
                key = %self.key,
                compact_revision = response.compact_revision(),
                reason = response.cancel_reason(),
                "etcd cancelled the watch; resyncing"
            );
            return Some(End::Resync);
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            // A deletion's kv is a tombstone: version 0 (a put always has
            // version >= 1).
            let item = if kv.version() == 0 {
                WatchEvent::Deleted
            } else {
                WatchEvent::Changed(Versioned {
                    value: Bytes::copy_from_slice(kv.value()),
                    version: version_of(kv.mod_revision()),
                })
            };
            if !self.tx.send(item) {
                return Some(End::Stop);
            }
        }
        None
    }

    /// The session side of following: `Some` when a change of the session
    /// breaks continuity.
    fn session_changed(&mut self) -> Option<End> {
        let now = *self.status.borrow_and_update();
        let last = std::mem::replace(&mut self.last, now);
        // A Suspended in between may have been overwritten by the Connected
        // that followed: the counter still shows it.
        let broke = self.inner.session.breaks() != self.breaks;
        match now.state {
            SessionState::Closed => Some(End::Stop),
            SessionState::Connected
                if broke || last.state != SessionState::Connected || last.epoch != now.epoch =>
            {
                Some(End::Resync)
            }
            _ => None,
        }
    }

    /// Reads the key until it works and sends `Resync`; returns the
    /// revision to watch from, or `None` when the watch must end.
    async fn resync(&mut self) -> Option<i64> {
        let mut backoff = backoff();
        loop {
            // What the session looked like before the read: a break during
            // it calls for another Resync.
            let status = *self.status.borrow_and_update();
            let breaks = self.inner.session.breaks();
            match self.inner.read(&self.key, Operation::Watch).await {
                Ok((value, revision)) => {
                    self.last = status;
                    self.breaks = breaks;
                    if !self.tx.send(WatchEvent::Resync(value)) {
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
                    self.tx.fail(error);
                    return None;
                }
                Err(error) => {
                    tracing::debug!(%error, key = %self.key, "re-reading a watched key failed; retrying");
                    tokio::select! {
                        _ = self.inner.closed.cancelled() => return None,
                        _ = self.tx.closed() => return None,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }
}
