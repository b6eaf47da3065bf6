//! The lock recipe.
//!
//! A waiter creates the ephemeral-sequential child
//! `<key>/_c_<guid>-lock-<seq>` (Curator's `InterProcessMutex` name in its
//! protected mode) and lists the children in the same pipelined round trip;
//! the lowest sequence among every lock contender holds the lock, and every
//! other waiter watches only its predecessor. Contenders are our nodes,
//! Curator's (`...lock-<seq>`) and kazoo's (`<guid>__lock__<seq>`, and
//! `__rlock__` read locks): sequence numbers come from the parent's
//! children version, so they order across recipes, and the three exclude
//! each other at the same path. kazoo's `Lock` sees our nodes when given
//! `extra_lock_patterns=("-lock-",)`.
//!
//! The guid finds our node again when the create's answer is lost; every
//! child carrying it is ours (a retried create may have left a second one):
//! we wait with the lowest and delete the others. The fencing token is the
//! node's `czxid`, which grows with every acquisition.
//!
//! Cancellation: the cleanup that deletes our nodes is armed before the
//! first request ([`WaiterCleanup`]) and runs in the background, bounded,
//! when the `lock` future is dropped before it returned a guard, so a
//! dropped waiter never becomes the holder.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use sharedstate_core::backend::{Backoff, LockRelease};
use sharedstate_core::{
    ErrorKind, FencingToken, Key, LockGuard, LockOptions, Operation, Result, Versioned,
};
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::version_cache::Counter;
use crate::{error, fence, kv, plain, version_of, Inner, Session};

/// Our node names: Curator's protected-mode `InterProcessMutex` names.
const PROTECTED_PREFIX: &str = "_c_";
const LOCK_NAME: &str = "-lock-";
/// The markers of lock contenders of every recipe we order against.
const CONTENDER_MARKERS: [&str; 3] = ["lock-", "__lock__", "__rlock__"];
/// ZooKeeper's sequence suffix: ten decimal digits.
const SEQUENCE_DIGITS: usize = 10;
/// The first pause of a request retried after a lost connection (see
/// `Backoff::short`).
const FIRST_RETRY: Duration = Duration::from_millis(50);
const CLEANUP_WAIT: Duration = Duration::from_secs(2);
const ATTEMPTS: usize = 8;

/// The sequence number of a lock contender's node (ours, Curator's or
/// kazoo's), `None` for other children.
pub(crate) fn sequence(name: &str) -> Option<u64> {
    if !CONTENDER_MARKERS.iter().any(|m| name.contains(m)) {
        return None;
    }
    let split = name.len().checked_sub(SEQUENCE_DIGITS)?;
    let digits = name.get(split..)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Our lock child, once known.
#[derive(Debug, Clone)]
struct Held {
    path: String,
    name: String,
    czxid: i64,
}

pub(crate) async fn lock(inner: &Arc<Inner>, key: &Key, options: LockOptions) -> Result<LockGuard> {
    lock_reading(inner, key, options, None)
        .await
        .map(|(guard, _)| guard)
}

/// A read pipelined with a lock flight, and the fence hint read just before
/// it (when asked for), so that the write under the lock knows the
/// parent's counter without a round trip of its own (see the `fence`
/// module docs).
struct PipelinedRead {
    hint: Option<Counter>,
    read: std::result::Result<(Vec<u8>, zk::Stat), zk::Error>,
}

/// Sends the reads of a [`PipelinedRead`] now, in order (the hint first):
/// the server answers a session's requests in the order they were sent.
fn send_read(
    client: &zk::Client,
    read: &Key,
    hint: bool,
) -> impl std::future::Future<Output = PipelinedRead> {
    let hinted = hint.then(|| client.get_data(&fence::hint_path(read)));
    let got = client.get_data(read.as_str());
    async move {
        let hint = match hinted {
            Some(hinted) => fence::hint_guess(hinted.await),
            None => None,
        };
        PipelinedRead {
            hint,
            read: got.await,
        }
    }
}

/// The lock, then `read`'s value. When the lock is free, the read travels in
/// the same pipelined flight as the lock node's create and the children
/// listing: the server answers a session's requests in order, so a read
/// that follows a listing with no predecessor sees every write the previous
/// holder made before releasing. Two round trips for a locked update instead
/// of four. After a wait, the listing and the read travel together again
/// (with the fence hint: the holder before us wrote); only a pipelined read
/// that failed is read again.
pub(crate) async fn lock_and_get(
    inner: &Arc<Inner>,
    key: &Key,
    options: LockOptions,
    read: &Key,
) -> Result<(LockGuard, Option<Versioned>)> {
    let (guard, pipelined) = lock_reading(inner, key, options, Some(read)).await?;
    let value = match pipelined {
        Some(PipelinedRead {
            hint,
            read: Ok((data, stat)),
        }) => {
            inner.versions.record(read.as_str(), &stat, hint);
            Ok(Some(Versioned {
                value: Bytes::from(data),
                version: version_of(stat.mzxid),
            }))
        }
        Some(PipelinedRead {
            read: Err(zk::Error::NoNode),
            ..
        }) => Ok(None),
        // The pipelined read failed: read again.
        Some(PipelinedRead { read: Err(_), .. }) | None => kv::get(inner, read).await,
    };
    match value {
        Ok(value) => Ok((guard, value)),
        Err(error) => {
            guard.release_or_warn("a failed read").await;
            Err(error)
        }
    }
}

async fn lock_reading(
    inner: &Arc<Inner>,
    key: &Key,
    options: LockOptions,
    read: Option<&Key>,
) -> Result<(LockGuard, Option<PipelinedRead>)> {
    let op = Operation::Lock;
    let session = inner.session(op)?;
    let lost = session.lost.child_token();
    if lost.is_cancelled() {
        return Err(plain(ErrorKind::SessionLost, op, key));
    }
    let guid = uuid::Uuid::new_v4().simple().to_string();
    // Armed before the first request: dropping this future anywhere below
    // removes whatever node we may have created.
    let mut cleanup = WaiterCleanup::armed(inner, &session, key, &guid);
    let attempt = acquire(inner, &session, key, &guid, &lost, read);
    let outcome = tokio::select! {
        _ = inner.closed.cancelled() => Err(error::closed(op)),
        outcome = tokio::time::timeout(options.timeout, attempt) => match outcome {
            Ok(outcome) => outcome,
            Err(_) => Err(plain(ErrorKind::LockTimeout, op, key)
                .with_message(format!("not acquired within {:?}", options.timeout))),
        },
    };
    match outcome {
        Ok((held, pipelined)) => {
            cleanup.disarm();
            let releaser = Releaser {
                inner: Arc::downgrade(inner),
                key: key.clone(),
                path: held.path.clone(),
                epoch: session.epoch,
            };
            let guard = sharedstate_core::backend::lock_guard(
                key.clone(),
                held.path,
                FencingToken::new(u64::try_from(held.czxid).unwrap_or(0)),
                lost,
                Box::new(releaser),
            );
            Ok((guard, pipelined))
        }
        Err(e) => {
            cleanup.run_now().await;
            Err(e)
        }
    }
}

/// Deletes every lock child carrying a waiter's guid unless disarmed: run
/// on error paths, and in the background when the future that owns it is
/// dropped.
struct WaiterCleanup {
    inner: Weak<Inner>,
    session: Arc<Session>,
    key: Key,
    guid: String,
    armed: bool,
}

impl WaiterCleanup {
    fn armed(inner: &Arc<Inner>, session: &Arc<Session>, key: &Key, guid: &str) -> Self {
        WaiterCleanup {
            inner: Arc::downgrade(inner),
            session: Arc::clone(session),
            key: key.clone(),
            guid: guid.to_owned(),
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Runs the cleanup now, waiting for it a bounded time (it goes on in
    /// the background after that).
    async fn run_now(&mut self) {
        self.armed = false;
        let mut task = tokio::spawn(delete_ours(
            self.session.clone(),
            self.key.clone(),
            self.guid.clone(),
        ));
        if tokio::time::timeout(CLEANUP_WAIT, &mut task).await.is_err() {
            tracing::debug!(key = %self.key, "lock waiter cleanup continues in the background");
        }
    }
}

impl Drop for WaiterCleanup {
    fn drop(&mut self) {
        if !self.armed || self.inner.upgrade().is_none() {
            return;
        }
        let work = delete_ours(self.session.clone(), self.key.clone(), self.guid.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::debug!(key = %self.key, "a lock waiter was dropped; removing its node");
                runtime.spawn(work);
            }
            Err(_) => tracing::warn!(
                key = %self.key,
                "a lock waiter was dropped outside a tokio runtime; its node goes with the session"
            ),
        }
    }
}

/// Deletes every child of `key` carrying `guid` (found by it, so a create
/// still in flight is found too: requests are ordered), bounded.
async fn delete_ours(session: Arc<Session>, key: Key, guid: String) {
    let mut backoff = Backoff::short(FIRST_RETRY);
    for _ in 0..ATTEMPTS {
        let children = match session.client.list_children(key.as_str()).await {
            Ok(children) => children,
            Err(zk::Error::ConnectionLoss | zk::Error::Timeout) => {
                backoff.sleep().await;
                continue;
            }
            // No node, or the session is gone (the ephemerals with it).
            Err(_) => return,
        };
        let ours: Vec<&String> = children.iter().filter(|c| c.contains(&guid)).collect();
        if ours.is_empty() {
            return;
        }
        let mut again = false;
        for name in ours {
            match session.client.delete(&format!("{key}/{name}"), None).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(zk::Error::ConnectionLoss | zk::Error::Timeout) => again = true,
                Err(error) => {
                    tracing::warn!(%error, %key, "removing an abandoned lock waiter failed");
                    return;
                }
            }
        }
        if !again {
            return;
        }
        backoff.sleep().await;
    }
}

async fn acquire(
    inner: &Inner,
    session: &Session,
    key: &Key,
    guid: &str,
    lost: &CancellationToken,
    read: Option<&Key>,
) -> Result<(Held, Option<PipelinedRead>)> {
    let created = create_lock_node(inner, session, key, guid, read).await?;
    wait_for_turn(session, key, guid, lost, read, created).await
}

/// What the create's round trip told: the contenders, the pipelined read
/// (valid only if no predecessor is listed), and our node as the create
/// answered it (unknown after a lost answer).
struct Created {
    children: Vec<String>,
    pipelined: Option<PipelinedRead>,
    held: Option<Held>,
}

/// Creates this waiter's ephemeral-sequential node under `key` (and its
/// parent when missing), listing the contenders (and reading `read`) in the
/// same pipelined round trip. After a lost answer the listing shows whether
/// the create happened (by `guid`).
async fn create_lock_node(
    inner: &Inner,
    session: &Session,
    key: &Key,
    guid: &str,
    read: Option<&Key>,
) -> Result<Created> {
    let op = Operation::Lock;
    let client = &session.client;
    let prefix = format!("{key}/{PROTECTED_PREFIX}{guid}{LOCK_NAME}");
    let options = zk::CreateMode::EphemeralSequential.with_acls(inner.acls());
    let mut children = None;
    let mut pipelined = None;
    // Our node as the create answered it (its czxid is the fencing token):
    // no extra round trip to learn it.
    let mut held: Option<Held> = None;
    let mut backoff = Backoff::short(FIRST_RETRY);
    for _ in 0..ATTEMPTS {
        // Create and list in one pipelined round trip: the server handles
        // them in order, so the listing includes our child.
        let create = client.create(&prefix, &[], &options);
        let list = client.list_children(key.as_str());
        // The hint only when this client does not know the counter already
        // (its own last write, unless another writer came since).
        let get =
            read.map(|read| send_read(client, read, !inner.versions.knows_counter(read.as_str())));
        let created = create.await;
        let listed = list.await;
        let got = match get {
            Some(get) => Some(get.await),
            None => None,
        };
        match created {
            Ok((stat, sequence)) => {
                let name = format!("{PROTECTED_PREFIX}{guid}{LOCK_NAME}{sequence}");
                held = Some(Held {
                    path: format!("{key}/{name}"),
                    name,
                    czxid: stat.czxid,
                });
                // Only valid if the listing below shows no predecessor.
                pipelined = if listed.is_ok() { got } else { None };
                children = Some(match listed {
                    Ok(children) => children,
                    Err(_) => list_children(client, key).await?,
                });
                break;
            }
            Err(zk::Error::NoNode) => {
                let dir = zk::CreateMode::Persistent.with_acls(inner.acls());
                client
                    .mkdir(key.as_str(), &dir)
                    .await
                    .map_err(|e| error::map(e, op, key))?;
            }
            Err(zk::Error::ConnectionLoss | zk::Error::Timeout) => {
                // The create may have happened: look for our guid.
                backoff.sleep().await;
                let listed = list_children(client, key).await?;
                if listed.iter().any(|c| c.contains(guid)) {
                    children = Some(listed);
                    break;
                }
            }
            Err(zk::Error::SessionExpired) => return Err(plain(ErrorKind::SessionLost, op, key)),
            Err(e) => return Err(error::map(e, op, key)),
        }
    }
    match children {
        Some(children) => Ok(Created {
            children,
            pipelined,
            held,
        }),
        None => {
            Err(plain(ErrorKind::Unavailable, op, key)
                .with_message("could not create the lock node"))
        }
    }
}

/// Waits until this waiter's node (the lowest with `guid`) is the first
/// contender, watching only its predecessor (the recipe's herd-free wait);
/// `pipelined` survives only when no wait was needed; after a wait the
/// listing and the read of `read` travel together again. `held` is our
/// node as its create answered, when known.
async fn wait_for_turn(
    session: &Session,
    key: &Key,
    guid: &str,
    lost: &CancellationToken,
    read: Option<&Key>,
    created: Created,
) -> Result<(Held, Option<PipelinedRead>)> {
    let op = Operation::Lock;
    let client = &session.client;
    let Created {
        mut children,
        mut pipelined,
        mut held,
    } = created;
    // Between watches of the predecessor that failed on a lost connection.
    let mut backoff = Backoff::short(FIRST_RETRY);
    loop {
        if lost.is_cancelled() {
            return Err(plain(ErrorKind::SessionLost, op, key));
        }
        let mut contenders: Vec<(u64, &String)> = children
            .iter()
            .filter_map(|c| sequence(c).map(|s| (s, c)))
            .collect();
        contenders.sort_unstable();
        // Every node with our guid is ours; we wait with the lowest.
        let mut ours = contenders.iter().filter(|(_, c)| c.contains(guid));
        let Some(&(my_seq, my_name)) = ours.next() else {
            // Our ephemeral child is gone: the session ended under us.
            return Err(plain(ErrorKind::SessionLost, op, key)
                .with_message("the lock node vanished while waiting"));
        };
        for (_, orphan) in ours {
            tracing::debug!(%key, orphan, "deleting a second lock node of this waiter");
            if let Err(e) = client.delete(&format!("{key}/{orphan}"), None).await {
                tracing::debug!(error = %e, %key, "deleting our orphan lock node failed");
            }
        }
        if held.as_ref().is_none_or(|h| h.name != *my_name) {
            let czxid = czxid_of(client, key, my_name).await?;
            held = Some(Held {
                path: format!("{key}/{my_name}"),
                name: my_name.clone(),
                czxid,
            });
        }
        let predecessor = contenders
            .iter()
            .take_while(|(s, _)| *s < my_seq)
            .last()
            .map(|(_, c)| format!("{key}/{c}"));
        let Some(predecessor) = predecessor else {
            let held = held.ok_or_else(|| plain(ErrorKind::Other, op, key))?;
            return Ok((held, pipelined));
        };
        // We wait: whatever was read with the create may be overwritten by
        // the holders before us.
        pipelined = None;
        match client.check_and_watch_stat(&predecessor).await {
            Ok((None, _)) => backoff.reset(),
            Ok((Some(_), watcher)) => {
                backoff.reset();
                tokio::select! {
                    _ = lost.cancelled() => return Err(plain(ErrorKind::SessionLost, op, key)),
                    // A panic here means the client's session task is gone.
                    event = AssertUnwindSafe(watcher.changed()).catch_unwind() => match event {
                        Ok(event)
                            if !(event.event_type == zk::EventType::Session
                                && event.session_state.is_terminated()) => {}
                        _ => return Err(plain(ErrorKind::SessionLost, op, key)),
                    }
                }
            }
            Err(zk::Error::ConnectionLoss | zk::Error::Timeout) => backoff.sleep().await,
            Err(zk::Error::SessionExpired) => return Err(plain(ErrorKind::SessionLost, op, key)),
            Err(e) => return Err(error::map(e, op, key)),
        }
        // The listing and the read in one pipelined flight, as on the first
        // round trip: when the listing shows no predecessor any more, the
        // read that follows it sees every write of the holders before us
        // (each deleted its node with its write, in one multi).
        // The holder before us wrote: the hint tells the counter after it.
        let list = client.list_children(key.as_str());
        let get = read.map(|read| send_read(client, read, true));
        let listed = list.await;
        let got = match get {
            Some(get) => Some(get.await),
            None => None,
        };
        children = match listed {
            Ok(listed) => {
                pipelined = got;
                listed
            }
            Err(_) => list_children(client, key).await?,
        };
    }
}

async fn list_children(client: &zk::Client, key: &Key) -> Result<Vec<String>> {
    let op = Operation::Lock;
    let mut backoff = Backoff::short(FIRST_RETRY);
    loop {
        match client.list_children(key.as_str()).await {
            Ok(children) => return Ok(children),
            Err(zk::Error::ConnectionLoss | zk::Error::Timeout) => backoff.sleep().await,
            Err(zk::Error::SessionExpired) => return Err(plain(ErrorKind::SessionLost, op, key)),
            Err(e) => return Err(error::map(e, op, key)),
        }
    }
}

async fn czxid_of(client: &zk::Client, key: &Key, name: &str) -> Result<i64> {
    let op = Operation::Lock;
    match client.check_stat(&format!("{key}/{name}")).await {
        Ok(Some(stat)) => Ok(stat.czxid),
        Ok(None) => Err(plain(ErrorKind::SessionLost, op, key)
            .with_message("the lock node vanished after its creation")),
        Err(e) => Err(error::map(e, op, key)),
    }
}

/// Deletes the lock child on release.
#[derive(Debug)]
struct Releaser {
    inner: Weak<Inner>,
    key: Key,
    path: String,
    epoch: u64,
}

#[async_trait]
impl LockRelease for Releaser {
    async fn release(self: Box<Self>) -> Result<()> {
        let op = Operation::Unlock;
        let Some(inner) = self.inner.upgrade() else {
            return Ok(());
        };
        let Some(session) = inner.current_session() else {
            return Ok(());
        };
        if session.epoch != self.epoch {
            // The session that held it is gone, and the node with it.
            return Ok(());
        }
        let mut backoff = Backoff::short(FIRST_RETRY);
        for _ in 0..ATTEMPTS {
            match session.client.delete(&self.path, None).await {
                Ok(()) | Err(zk::Error::NoNode | zk::Error::SessionExpired) => return Ok(()),
                Err(zk::Error::ConnectionLoss | zk::Error::Timeout) => backoff.sleep().await,
                Err(e) => return Err(error::map(e, op, &self.key)),
            }
        }
        Err(plain(ErrorKind::Unavailable, op, &self.key)
            .with_message("the lock node could not be deleted; it goes with the session"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_of_every_recipe() {
        // Ours (Curator's protected InterProcessMutex names).
        assert_eq!(sequence("_c_0f3a-lock-0000000012"), Some(12));
        // Curator unprotected, kazoo's Lock and read lock, our 0.1 names.
        assert_eq!(sequence("lock-0000000007"), Some(7));
        assert_eq!(sequence("9f1c2b__lock__0000000003"), Some(3));
        assert_eq!(sequence("9f1c2b__rlock__0000000004"), Some(4));
        assert_eq!(sequence("lock-abc-2147483648"), Some(2147483648));
        // Not contenders.
        assert_eq!(sequence("other-0000000001"), None);
        assert_eq!(sequence("_c_0f3a-lock-x"), None);
        assert_eq!(sequence("lock-12"), None);
    }
}
