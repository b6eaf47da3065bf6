//! Exclusive locks with FIFO waiters and fencing tokens.
//!
//! A lock is held by a session. Waiters queue in arrival order and are
//! handed the lock through a oneshot channel by whoever releases it (under
//! the cluster mutex, so hand-over is atomic); a waiter that gives up
//! (timeout, cancelled future) removes itself or, if the lock reached it in
//! the meantime, passes it on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sharedstate_core::backend::LockRelease;
use sharedstate_core::{Error, ErrorKind, FencingToken, Key, LockGuard, Operation, Result};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::cluster::{error, ClientId, ClusterCore, SessionId, State};

/// One lock key: its holder and its queue.
#[derive(Default)]
pub(crate) struct LockEntry {
    holder: Option<Holder>,
    waiters: VecDeque<Waiter>,
}

struct Holder {
    session: SessionId,
    token: u64,
    lost: CancellationToken,
}

struct Waiter {
    id: u64,
    session: SessionId,
    tx: oneshot::Sender<Result<Grant>>,
}

/// A granted lock: its fencing token and the signal cancelled on loss.
pub(crate) struct Grant {
    token: u64,
    lost: CancellationToken,
}

/// The outcome of asking for a lock.
pub(crate) enum Acquire {
    Granted(Grant),
    Queued(u64, oneshot::Receiver<Result<Grant>>),
}

impl State {
    /// Takes the lock on `key` for `session` if it is free, else queues.
    pub(crate) fn acquire_lock(&mut self, key: &Key, session: SessionId) -> Acquire {
        let free = self
            .locks
            .get(key.as_str())
            .is_none_or(|entry| entry.holder.is_none() && entry.waiters.is_empty());
        if free {
            let grant = self.grant(key.as_str(), session);
            return Acquire::Granted(grant);
        }
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.locks
            .entry(key.as_str().to_owned())
            .or_default()
            .waiters
            .push_back(Waiter { id, session, tx });
        Acquire::Queued(id, rx)
    }

    /// Makes `session` the holder of `key` with a fresh fencing token.
    fn grant(&mut self, key: &str, session: SessionId) -> Grant {
        let token = self.next_revision();
        let lost = CancellationToken::new();
        self.locks.entry(key.to_owned()).or_default().holder = Some(Holder {
            session,
            token,
            lost: lost.clone(),
        });
        Grant { token, lost }
    }

    /// Hands a free lock to the first waiter still waiting.
    fn grant_next(&mut self, key: &str) {
        loop {
            let Some(entry) = self.locks.get_mut(key) else {
                return;
            };
            if entry.holder.is_some() {
                return;
            }
            let Some(waiter) = entry.waiters.pop_front() else {
                self.locks.remove(key);
                return;
            };
            if waiter.tx.is_closed() {
                continue;
            }
            let grant = self.grant(key, waiter.session);
            let token = grant.token;
            if waiter.tx.send(Ok(grant)).is_err() {
                // The waiter went away between the check and the send.
                if let Some(entry) = self.locks.get_mut(key) {
                    entry.holder = None;
                }
                continue;
            }
            tracing::trace!(key, token, "lock handed to the next waiter");
            return;
        }
    }

    /// True when `session` holds `key` with exactly `token`.
    pub(crate) fn holds_lock(&self, key: &str, session: SessionId, token: u64) -> bool {
        self.locks
            .get(key)
            .and_then(|entry| entry.holder.as_ref())
            .is_some_and(|h| h.session == session && h.token == token)
    }

    /// Releases `key` if it is held with `token`; hands it on.
    pub(crate) fn release_lock(&mut self, key: &str, token: u64) {
        let Some(entry) = self.locks.get_mut(key) else {
            return;
        };
        if entry.holder.as_ref().is_some_and(|h| h.token == token) {
            entry.holder = None;
            self.grant_next(key);
        }
    }

    /// Removes a waiter that gave up; false when it is no longer queued
    /// (the lock, or an error, was sent to it already).
    fn remove_waiter(&mut self, key: &str, id: u64) -> bool {
        let Some(entry) = self.locks.get_mut(key) else {
            return false;
        };
        let before = entry.waiters.len();
        entry.waiters.retain(|w| w.id != id);
        let removed = entry.waiters.len() != before;
        if entry.holder.is_none() && entry.waiters.is_empty() {
            self.locks.remove(key);
        }
        removed
    }

    /// The session is gone: its locks are lost (and handed on), its waiters
    /// fail with `waiter_error`.
    pub(crate) fn drop_session_locks(&mut self, session: SessionId, waiter_error: ErrorKind) {
        let mut freed = Vec::new();
        for (key, entry) in &mut self.locks {
            if entry.holder.as_ref().is_some_and(|h| h.session == session) {
                if let Some(holder) = entry.holder.take() {
                    holder.lost.cancel();
                    tracing::debug!(key, token = holder.token, "lock lost with its session");
                }
            }
            let (gone, kept): (Vec<_>, Vec<_>) =
                entry.waiters.drain(..).partition(|w| w.session == session);
            entry.waiters = kept.into();
            for waiter in gone {
                let message = "the session ended while waiting for the lock";
                let err = Error::new(waiter_error, Operation::Lock)
                    .with_raw_key(key)
                    .with_message(message);
                let _ = waiter.tx.send(Err(err));
            }
            if entry.holder.is_none() {
                freed.push(key.clone());
            }
        }
        for key in freed {
            self.grant_next(&key);
        }
    }
}

/// A queued lock request; dropping it (timeout, cancelled future) leaves
/// the queue cleanly.
pub(crate) struct PendingLock {
    pub(crate) shared: Arc<ClusterCore>,
    pub(crate) client: ClientId,
    pub(crate) key: Key,
    pub(crate) id: u64,
    pub(crate) rx: Option<oneshot::Receiver<Result<Grant>>>,
}

impl PendingLock {
    /// Waits for the lock up to `timeout`.
    pub(crate) async fn wait(mut self, timeout: Duration) -> Result<LockGuard> {
        let outcome = match self.rx.as_mut() {
            Some(rx) => tokio::time::timeout(timeout, rx).await,
            None => return Err(error(ErrorKind::Other, Operation::Lock, &self.key)),
        };
        // From here on nothing is left for `Drop` to clean up.
        let rx = self.rx.take();
        let timed_out = || {
            error(ErrorKind::LockTimeout, Operation::Lock, &self.key)
                .with_message(format!("not acquired within {timeout:?}"))
        };
        let grant = match outcome {
            Ok(Ok(granted)) => granted?,
            Ok(Err(_)) => {
                return Err(error(ErrorKind::Closed, Operation::Lock, &self.key)
                    .with_message("the client closed while waiting for the lock"))
            }
            Err(_elapsed) => {
                let mut state = self.shared.lock();
                if state.remove_waiter(self.key.as_str(), self.id) {
                    return Err(timed_out());
                }
                // The lock (or an error) reached us just as time ran out.
                match rx.map(|mut rx| rx.try_recv()) {
                    Some(Ok(granted)) => granted?,
                    _ => return Err(timed_out()),
                }
            }
        };
        Ok(guard(&self.shared, self.client, &self.key, grant))
    }
}

impl Drop for PendingLock {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut state = self.shared.lock();
        if !state.remove_waiter(self.key.as_str(), self.id) {
            if let Ok(Ok(grant)) = rx.try_recv() {
                state.release_lock(self.key.as_str(), grant.token);
            }
        }
    }
}

/// Wraps a grant into the public guard.
pub(crate) fn guard(
    shared: &Arc<ClusterCore>,
    client: ClientId,
    key: &Key,
    grant: Grant,
) -> LockGuard {
    let releaser = MemoryLockRelease {
        shared: Arc::clone(shared),
        client,
        key: key.clone(),
        token: grant.token,
    };
    sharedstate_core::backend::lock_guard(
        key.clone(),
        format!("{key}#{}", grant.token),
        FencingToken::new(grant.token),
        grant.lost,
        Box::new(releaser),
    )
}

/// Gives a held lock back.
#[derive(Debug)]
struct MemoryLockRelease {
    shared: Arc<ClusterCore>,
    client: ClientId,
    key: Key,
    token: u64,
}

#[async_trait]
impl LockRelease for MemoryLockRelease {
    async fn release(self: Box<Self>) -> Result<()> {
        let mut state = self.shared.lock();
        if !state.clients.contains_key(&self.client) {
            // Closed: the lock went with the session.
            return Ok(());
        }
        state.session_of(self.client, Operation::Unlock, Some(&self.key))?;
        state.release_lock(self.key.as_str(), self.token);
        Ok(())
    }
}
