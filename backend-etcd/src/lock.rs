//! Locks with the create-revision recipe (as etcd's Go `concurrency.Mutex`)
//! and fenced writes.
//!
//! Each acquisition puts a waiter key `<lock key>/<lease hex>` bound to the
//! session lease, in one transaction that also reads the oldest waiter. The
//! waiter with the smallest `create_revision` holds the lock; the others
//! each watch the deletion of the waiter just before them. The fencing
//! token is the waiter key's `create_revision`: later acquisitions always
//! have larger ones. A fenced write is one transaction comparing that
//! `create_revision` together with the write's own condition.
//!
//! The waiter key name is one per session and lock key (fresh names per
//! acquisition would pile up in etcd's index until the next compaction and
//! slow every prefix read), so concurrent callers of the same client queue
//! locally first: the lock stays exclusive between them too. A caller's
//! turn ends only once its waiter key is known to be deleted (released,
//! cleaned up in the background after an unreachable etcd, or gone with
//! the lease).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::Client;
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use sharedstate_core::backend::{Backoff, LockRelease};
use sharedstate_core::{
    Error, ErrorKind, FencingToken, Key, LockGuard, LockOptions, Operation, PutMode, Result,
    Version, Versioned,
};
use tokio::time::Instant;

use crate::error::{call_raw, Retry};
use crate::kv::{
    check_open, check_size, delete_owned, delete_owned_later, delete_owned_once, first_kv_at,
    header_revision, into_versioned, mode_compare, mode_failure, range_at, version_of,
};
use crate::lease::LeaseHandle;
use crate::Inner;

/// Acquires the lock on `key`; with `read`, also reads that key in the
/// transaction that grants the lock (so the read sees every write made
/// before the lock was granted, at no extra round trip).
pub(crate) async fn lock(
    inner: &Arc<Inner>,
    key: &Key,
    options: LockOptions,
    read: Option<&Key>,
) -> Result<(LockGuard, Option<Versioned>)> {
    let op = Operation::Lock;
    check_open(inner, op, key)?;
    let deadline = Instant::now() + options.timeout;
    let lease = inner.session.current();
    if lease.lost.is_cancelled() {
        return Err(session_lost(op, key));
    }
    let prefix = format!("{}/", key.as_str());
    let waiter = format!("{prefix}{:x}", lease.id);
    let turn = local_turn(inner, key, &waiter, &lease, deadline, options.timeout).await?;
    // Armed before the first request: if this future is dropped anywhere
    // below, the waiter key is deleted in the background (it would
    // otherwise become the holder and block every other client).
    let mut pending = PendingWaiter {
        inner: Arc::clone(inner),
        key: key.clone(),
        waiter: waiter.clone(),
        lease: lease.clone(),
        turn: Some(turn),
    };
    let enqueued = enqueue(inner, key, &prefix, &waiter, &lease, read).await?;
    let mut value = enqueued.value;
    if enqueued.owner != Some(enqueued.token) {
        let waiting = wait_for_turn(inner, key, &prefix, &waiter, enqueued.token, read);
        let waited = tokio::select! {
            waited = tokio::time::timeout_at(deadline, waiting) => waited,
            _ = lease.lost.cancelled() => Ok(Err(session_lost(op, key))),
            _ = inner.closed.cancelled() => Ok(Err(crate::error::closed(op, Some(key)))),
        };
        match waited {
            Ok(Ok(read_value)) => value = read_value,
            Ok(Err(error)) => {
                pending.delete_now().await;
                return Err(error);
            }
            Err(_) => {
                pending.delete_now().await;
                return Err(lock_timed_out(key, options.timeout));
            }
        }
    }
    let turn = pending.disarm();
    Ok((
        guard(inner, key, waiter, enqueued.token, &lease, turn),
        value,
    ))
}

fn lock_timed_out(key: &Key, timeout: std::time::Duration) -> Error {
    Error::new(ErrorKind::LockTimeout, Operation::Lock)
        .with_key(key)
        .with_message(format!("not acquired within {timeout:?}"))
}

/// Callers of this client queue locally for the waiter key name, so the
/// name stays one per session (no index growth on etcd's side): waits, up
/// to `deadline`, for this caller's turn at `waiter`.
async fn local_turn(
    inner: &Arc<Inner>,
    key: &Key,
    waiter: &str,
    lease: &LeaseHandle,
    deadline: Instant,
    timeout: std::time::Duration,
) -> Result<Turn> {
    let op = Operation::Lock;
    let queue = inner.lock_queues.queue(waiter);
    let permit = tokio::select! {
        permit = tokio::time::timeout_at(deadline, queue.lock_owned()) => match permit {
            Ok(permit) => permit,
            Err(_) => return Err(lock_timed_out(key, timeout)),
        },
        _ = lease.lost.cancelled() => return Err(session_lost(op, key)),
        _ = inner.closed.cancelled() => return Err(crate::error::closed(op, Some(key))),
    };
    Ok(Turn {
        inner: Arc::clone(inner),
        name: waiter.to_owned(),
        permit: Some(permit),
    })
}

/// What the enqueuing transaction learned.
struct Enqueued {
    /// The waiter key's `create_revision`: the fencing token.
    token: i64,
    /// The oldest waiter's `create_revision` (the holder), if any.
    owner: Option<i64>,
    /// The key read in the same transaction, when one was asked for.
    value: Option<Versioned>,
}

/// One round trip: creates the waiter key on the lease and reads the oldest
/// waiter (and `read`, if given). A waiter key of this session left over
/// is removed and the transaction tried once more.
async fn enqueue(
    inner: &Arc<Inner>,
    key: &Key,
    prefix: &str,
    waiter: &str,
    lease: &LeaseHandle,
    read: Option<&Key>,
) -> Result<Enqueued> {
    let op = Operation::Lock;
    let oldest = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1)
        .with_keys_only();
    let mut then = vec![
        TxnOp::put(
            waiter,
            Vec::new(),
            Some(PutOptions::new().with_lease(lease.id)),
        ),
        TxnOp::get(prefix, Some(oldest)),
    ];
    then.extend(read.map(|read| TxnOp::get(read.as_str(), None)));
    let txn = Txn::new()
        .when([Compare::create_revision(waiter, CompareOp::Equal, 0)])
        .and_then(then);
    let mut attempt = 0;
    let response = loop {
        attempt += 1;
        let response = match inner.txn(op, key, Retry::Write, txn.clone()).await {
            Ok(response) => response,
            Err(error) => {
                poke_if_lost(inner, &error);
                // The waiter key may have been created (outcome unknown):
                // the caller's `PendingWaiter` removes it once etcd answers
                // again.
                return Err(error);
            }
        };
        if response.succeeded() {
            break response;
        }
        // A waiter key of this session is left over (only ever deleted by
        // the holder of the local turn, so this is rare): remove it and try
        // again.
        if attempt > 1 {
            return Err(Error::new(ErrorKind::Other, op)
                .with_key(key)
                .with_message(format!("the waiter key {waiter} exists already")));
        }
        delete_owned_once(inner, Operation::Unlock, key, waiter, lease.id).await?;
    };
    Ok(Enqueued {
        token: header_revision(response.header(), op, key)?,
        owner: first_kv_at(&response, 1).map(|kv| kv.create_revision()),
        value: first_kv_at(&response, 2).map(into_versioned),
    })
}

/// A waiter key that may exist and is not a held lock yet: deleted (in the
/// background when dropped) unless disarmed.
struct PendingWaiter {
    inner: Arc<Inner>,
    key: Key,
    waiter: String,
    lease: LeaseHandle,
    turn: Option<Turn>,
}

impl PendingWaiter {
    /// The lock was granted: the turn goes to the guard.
    fn disarm(&mut self) -> Option<Turn> {
        self.turn.take()
    }

    /// Deletes the key now (best effort: it goes with the lease at the
    /// latest, and a failed attempt goes on in the background).
    async fn delete_now(&mut self) {
        if let Some(turn) = self.turn.take() {
            let waiter = self.waiter.clone();
            let lease = self.lease.clone();
            let _ = delete_owned(
                &self.inner,
                Operation::Unlock,
                &self.key,
                waiter,
                lease,
                turn,
            )
            .await;
        }
    }
}

impl Drop for PendingWaiter {
    fn drop(&mut self) {
        let Some(turn) = self.turn.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(key = %self.key, "a lock waiter was dropped outside a runtime; its key goes with the lease");
            return;
        }
        delete_owned_later(
            &self.inner,
            Operation::Unlock,
            &self.key,
            self.waiter.clone(),
            self.lease.clone(),
            turn,
        );
    }
}

/// Per waiter key name, the local queue of this client's callers.
#[derive(Debug, Default)]
pub(crate) struct LocalQueues(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl LocalQueues {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn queue(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(self.map().entry(name.to_owned()).or_default())
    }

    fn forget(&self, name: &str) {
        let mut map = self.map();
        if map
            .get(name)
            .is_some_and(|queue| Arc::strong_count(queue) == 1)
        {
            map.remove(name);
        }
    }
}

/// This caller's turn at a waiter key name: held from before the key is
/// created until it is known to be deleted; dropping it lets the next
/// local caller in.
struct Turn {
    inner: Arc<Inner>,
    name: String,
    permit: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl fmt::Debug for Turn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Turn").field("name", &self.name).finish()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.inner.lock_queues.forget(&self.name);
    }
}

fn guard(
    inner: &Arc<Inner>,
    key: &Key,
    waiter: String,
    token: i64,
    lease: &LeaseHandle,
    turn: Option<Turn>,
) -> LockGuard {
    sharedstate_core::backend::lock_guard(
        key.clone(),
        waiter.clone(),
        FencingToken::new(u64::try_from(token).unwrap_or(0)),
        lease.lost.child_token(),
        Box::new(EtcdLockRelease {
            inner: Arc::clone(inner),
            key: key.clone(),
            waiter,
            lease: lease.clone(),
            turn,
        }),
    )
}

fn session_lost(op: Operation, key: &Key) -> Error {
    Error::new(ErrorKind::SessionLost, op)
        .with_key(key)
        .with_message("the session lease is lost")
}

fn poke_if_lost(inner: &Inner, error: &Error) {
    if error.kind() == ErrorKind::SessionLost {
        inner.session.poke();
    }
}

/// Waits until no waiter older than ours is left; returns `read`'s value
/// as of that moment.
///
/// The watch on the predecessor starts at the store's current revision,
/// never at a past one: etcd serves a watch that starts at or before its
/// current revision from its "unsynced" group, which it catches up only
/// every 100 ms, so under contention (the revision moves between our read
/// and the watch) every hand-over would wait for that loop. A watch from
/// now is live at once; the gap between our read and the watch's creation
/// is closed by re-checking the predecessor when the store moved meanwhile.
async fn wait_for_turn(
    inner: &Arc<Inner>,
    key: &Key,
    prefix: &str,
    waiter: &str,
    token: i64,
    read: Option<&Key>,
) -> Result<Option<Versioned>> {
    let op = Operation::Lock;
    let timeout = inner.config.request_timeout;
    // After a failed watch of the predecessor: 10 ms doubling to 200 ms,
    // jittered (an unreachable member, not a hand-over: a hand-over never
    // sleeps).
    let mut backoff = Backoff::new(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_millis(200),
    );
    let waiting_since = Instant::now();
    loop {
        // Our key must still be ours; then find the newest older waiter.
        let older = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(token - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1)
            .with_keys_only();
        let mut then = vec![TxnOp::get(prefix, Some(older))];
        then.extend(read.map(|read| TxnOp::get(read.as_str(), None)));
        let txn = Txn::new()
            .when([Compare::create_revision(waiter, CompareOp::Equal, token)])
            .and_then(then);
        let response = inner.txn(op, key, Retry::Read, txn).await?;
        if !response.succeeded() {
            inner.session.poke();
            return Err(session_lost(op, key).with_message("the waiter key vanished"));
        }
        let revision = header_revision(response.header(), op, key)?;
        let Some(predecessor) = range_at(&response, 0).and_then(|get| get.kvs().first().cloned())
        else {
            tracing::trace!(%key, waited = ?waiting_since.elapsed(), "lock granted after waiting");
            return Ok(first_kv_at(&response, 1).map(into_versioned));
        };
        let watch_started = Instant::now();
        let watched = watch_deletion(inner, key, &predecessor, revision, timeout).await;
        tracing::trace!(%key, took = ?watch_started.elapsed(), read_at = revision, "the lock predecessor went");
        match watched {
            Ok(()) => backoff.reset(),
            Err(error) => {
                // The watch could not be opened or broke: check again after
                // the next pause.
                tracing::debug!(%error, %key, "watching the lock predecessor failed; re-checking");
                backoff.sleep().await;
            }
        }
    }
}

/// Returns once `predecessor` (read at `read_at`) is deleted or replaced:
/// then the caller reads the waiters again.
async fn watch_deletion(
    inner: &Arc<Inner>,
    key: &Key,
    predecessor: &etcd_client::KeyValue,
    read_at: i64,
    timeout: std::time::Duration,
) -> std::result::Result<(), String> {
    let name = predecessor.key().to_vec();
    let open = |client: Client| {
        let mut watcher = client.watch_client();
        let name = name.clone();
        // No start revision: the watch starts at the current revision.
        async move { watcher.watch(name, None).await }
    };
    let mut stream = call_raw(&inner.members, timeout, Retry::Read, open)
        .await
        .map_err(|error| error.to_string())?;
    let mut created = false;
    loop {
        let answer = match stream.message().await {
            Ok(Some(answer)) => answer,
            Ok(None) => return Err("the watch ended".into()),
            Err(error) => return Err(error.to_string()),
        };
        if answer.canceled() {
            return Err(format!(
                "the watch was cancelled: {}",
                answer.cancel_reason()
            ));
        }
        if answer
            .events()
            .iter()
            .any(|e| e.kv().is_some_and(|kv| kv.version() == 0))
        {
            return Ok(());
        }
        if !created && answer.created() {
            created = true;
            let live_from = answer.header().map_or(i64::MAX, |h| h.revision());
            tracing::trace!(%key, live_from, read_at, "lock predecessor watch created");
            if live_from > read_at && !still_there(inner, key, predecessor).await? {
                // Deleted between our read and the watch.
                return Ok(());
            }
        }
    }
}

/// Whether `predecessor` still exists as the same key (same creation).
async fn still_there(
    inner: &Arc<Inner>,
    key: &Key,
    predecessor: &etcd_client::KeyValue,
) -> std::result::Result<bool, String> {
    let txn = Txn::new().when([Compare::create_revision(
        predecessor.key(),
        CompareOp::Equal,
        predecessor.create_revision(),
    )]);
    inner
        .txn(Operation::Lock, key, Retry::Read, txn)
        .await
        .map(|response| response.succeeded())
        .map_err(|error| error.to_string())
}

/// The transaction of a fenced write: lock compare + mode compare, put
/// (+ release), and reads of both keys in the failure branch.
fn fenced_txn(key: &Key, value: Bytes, mode: PutMode, guard: &LockGuard, release: bool) -> Txn {
    let token = i64::try_from(guard.fencing_token().as_u64()).unwrap_or(i64::MAX);
    let owner = guard.owner();
    let mut compares = vec![Compare::create_revision(owner, CompareOp::Equal, token)];
    compares.extend(mode_compare(key, mode));
    let mut then = vec![TxnOp::put(key.as_str(), Vec::from(value), None)];
    let keys_only = || Some(GetOptions::new().with_keys_only());
    let mut otherwise = vec![
        TxnOp::get(owner, keys_only()),
        TxnOp::get(key.as_str(), keys_only()),
    ];
    if release {
        then.push(TxnOp::delete(owner, None));
        otherwise.push(TxnOp::delete(owner, None));
    }
    Txn::new().when(compares).and_then(then).or_else(otherwise)
}

/// A fenced write; with `release`, the lock key is deleted in the same
/// transaction (whether the write's condition held or not).
pub(crate) async fn fenced_put(
    inner: &Inner,
    key: &Key,
    value: Bytes,
    mode: PutMode,
    guard: &LockGuard,
    release: bool,
) -> Result<Version> {
    let op = Operation::FencedPut;
    check_open(inner, op, key)?;
    check_size(op, key, &value)?;
    if guard.is_lost() {
        return Err(lock_lost(key, guard));
    }
    let txn = fenced_txn(key, value, mode, guard, release);
    let response = inner.txn(op, key, Retry::Write, txn).await?;
    if response.succeeded() {
        return Ok(version_of(header_revision(response.header(), op, key)?));
    }
    let token = i64::try_from(guard.fencing_token().as_u64()).unwrap_or(i64::MAX);
    let lock_held = first_kv_at(&response, 0).is_some_and(|kv| kv.create_revision() == token);
    if !lock_held {
        return Err(lock_lost(key, guard));
    }
    Err(mode_failure(
        op,
        key,
        mode,
        first_kv_at(&response, 1).as_ref(),
    ))
}

fn lock_lost(key: &Key, guard: &LockGuard) -> Error {
    Error::new(ErrorKind::LockLost, Operation::FencedPut)
        .with_key(key)
        .with_message(format!(
            "the lock {} (token {}) is no longer held",
            guard.owner(),
            guard.fencing_token()
        ))
}

/// Releases a held lock by deleting its waiter key.
#[derive(Debug)]
struct EtcdLockRelease {
    inner: Arc<Inner>,
    key: Key,
    waiter: String,
    lease: LeaseHandle,
    turn: Option<Turn>,
}

#[async_trait]
impl LockRelease for EtcdLockRelease {
    async fn release(self: Box<Self>) -> Result<()> {
        if self.inner.closed.is_cancelled() {
            // The lease was revoked on close: the key is gone already.
            return Ok(());
        }
        delete_owned(
            &self.inner,
            Operation::Unlock,
            &self.key,
            self.waiter,
            self.lease,
            self.turn,
        )
        .await
    }
}
