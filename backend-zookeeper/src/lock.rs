//! The lock recipe and fenced writes.
//!
//! A waiter creates the ephemeral-sequential child `<key>/lock-<guid>-<seq>`
//! and lists the children in the same pipelined round trip; the lowest
//! sequence holds the lock, every other waiter watches only its
//! predecessor. The guid finds our node again when the create's response
//! is lost. The fencing token is the child's `czxid`, which grows with every
//! acquisition. A fenced write is one `multi`: check that the child still
//! exists, then write.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use sharedstate_core::{
    Error, ErrorKind, FencingToken, Key, LockGuard, LockOptions, LockRelease, Operation, PutMode,
    Result, Version, Versioned,
};
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::{error, kv, plain, version_of, Inner, Session};

const PREFIX: &str = "lock-";
const RETRY_DELAY: Duration = Duration::from_millis(50);
const CLEANUP_WAIT: Duration = Duration::from_secs(2);
const MULTI_ATTEMPTS: usize = 8;

/// The sequence number at the end of a lock child's name.
fn sequence(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(PREFIX)?;
    rest.rsplit('-').next()?.parse().ok()
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

/// The lock, then `read`'s value. When the lock is free, the read travels in
/// the same pipelined flight as the lock node's create and the children
/// listing: the server answers a session's requests in order, so a read
/// that follows a listing with no predecessor sees every write the previous
/// holder made before releasing. Two round trips for a locked update instead
/// of four. When we had to wait, the read is a fresh linearizable get.
pub(crate) async fn lock_and_get(
    inner: &Arc<Inner>,
    key: &Key,
    options: LockOptions,
    read: &Key,
) -> Result<(LockGuard, Option<Versioned>)> {
    let (guard, pipelined) = lock_reading(inner, key, options, Some(read)).await?;
    let value = match pipelined {
        Some(Ok((data, stat))) => {
            inner.versions.observe(read.as_str(), &stat);
            Ok(Some(Versioned {
                value: Bytes::from(data),
                version: version_of(stat.mzxid),
            }))
        }
        Some(Err(zk::Error::NoNode)) => Ok(None),
        // Waited, or the pipelined read failed: read again.
        Some(Err(_)) | None => kv::get(inner, read).await,
    };
    match value {
        Ok(value) => Ok((guard, value)),
        Err(error) => {
            guard.release_or_warn("a failed read").await;
            Err(error)
        }
    }
}

/// A read pipelined with the lock's first round trip.
type PipelinedRead = std::result::Result<(Vec<u8>, zk::Stat), zk::Error>;

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
            let releaser = Releaser {
                inner: Arc::downgrade(inner),
                key: key.clone(),
                path: held.path.clone(),
                epoch: session.epoch,
            };
            let guard = LockGuard::new(
                key.clone(),
                held.path,
                FencingToken::new(u64::try_from(held.czxid).unwrap_or(0)),
                lost,
                Box::new(releaser),
            );
            Ok((guard, pipelined))
        }
        Err(e) => {
            cleanup(inner, session, key, guid).await;
            Err(e)
        }
    }
}

/// Removes a waiter's child after a timeout or failure: found by its guid,
/// so that a create still in flight (requests are ordered) is found too.
async fn cleanup(inner: &Arc<Inner>, session: Arc<Session>, key: &Key, guid: String) {
    let key = key.clone();
    let work = async move {
        for _ in 0..MULTI_ATTEMPTS {
            let children = match session.client.list_children(key.as_str()).await {
                Ok(children) => children,
                Err(zk::Error::ConnectionLoss) => {
                    tokio::time::sleep(RETRY_DELAY).await;
                    continue;
                }
                Err(_) => return,
            };
            let Some(name) = children.iter().find(|c| c.contains(&guid)) else {
                return;
            };
            match session.client.delete(&format!("{key}/{name}"), None).await {
                Ok(()) | Err(zk::Error::NoNode) => return,
                Err(zk::Error::ConnectionLoss) => tokio::time::sleep(RETRY_DELAY).await,
                Err(error) => {
                    tracing::warn!(%error, %key, "removing an abandoned lock waiter failed");
                    return;
                }
            }
        }
    };
    let mut task = tokio::spawn(work);
    if tokio::time::timeout(CLEANUP_WAIT, &mut task).await.is_err() {
        tracing::debug!(?inner.config.hosts, "lock waiter cleanup continues in the background");
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
    let op = Operation::Lock;
    let client = &session.client;
    let prefix = format!("{key}/{PREFIX}{guid}-");
    let options = zk::CreateMode::EphemeralSequential.with_acls(inner.acls());
    let mut held = None;
    let mut children = Vec::new();
    let mut pipelined = None;
    for _ in 0..MULTI_ATTEMPTS {
        // Create and list in one pipelined round trip: the server handles
        // them in order, so the listing includes our child.
        let create = client.create(&prefix, &[], &options);
        let list = client.list_children(key.as_str());
        let get = read.map(|read| client.get_data(read.as_str()));
        let created = create.await;
        let listed = list.await;
        let got = match get {
            Some(get) => Some(get.await),
            None => None,
        };
        match created {
            Ok((stat, seq)) => {
                // Only valid if the listing below shows no predecessor.
                pipelined = if listed.is_ok() { got } else { None };
                let name = format!("{PREFIX}{guid}-{seq}");
                children = match listed {
                    Ok(children) => children,
                    Err(_) => list_children(client, key).await?,
                };
                let czxid = if stat.czxid > 0 {
                    stat.czxid
                } else {
                    czxid_of(client, key, &name).await?
                };
                held = Some(Held {
                    path: format!("{key}/{name}"),
                    name,
                    czxid,
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
            Err(zk::Error::ConnectionLoss) => {
                // The create may have happened: look for our guid.
                tokio::time::sleep(RETRY_DELAY).await;
                children = list_children(client, key).await?;
                if let Some(name) = children.iter().find(|c| c.contains(guid)).cloned() {
                    let czxid = czxid_of(client, key, &name).await?;
                    held = Some(Held {
                        path: format!("{key}/{name}"),
                        name,
                        czxid,
                    });
                    break;
                }
            }
            Err(zk::Error::SessionExpired) => return Err(plain(ErrorKind::SessionLost, op, key)),
            Err(e) => return Err(error::map(e, op, key)),
        }
    }
    let held = held.ok_or_else(|| {
        plain(ErrorKind::Unavailable, op, key).with_message("could not create the lock node")
    })?;
    let my_seq = sequence(&held.name).unwrap_or(u64::MAX);
    loop {
        if lost.is_cancelled() {
            return Err(plain(ErrorKind::SessionLost, op, key));
        }
        let mut waiting: Vec<(u64, &String)> = children
            .iter()
            .filter_map(|c| sequence(c).map(|s| (s, c)))
            .collect();
        waiting.sort_unstable();
        if !waiting.iter().any(|(_, c)| **c == held.name) {
            // Our ephemeral child is gone: the session ended under us.
            return Err(plain(ErrorKind::SessionLost, op, key)
                .with_message("the lock node vanished while waiting"));
        }
        let predecessor = waiting
            .iter()
            .take_while(|(s, c)| *s < my_seq && **c != held.name)
            .last()
            .map(|(_, c)| format!("{key}/{c}"));
        let Some(predecessor) = predecessor else {
            return Ok((held, pipelined));
        };
        // We wait: whatever was read with the create may be overwritten by
        // the holders before us.
        pipelined = None;
        match client.check_and_watch_stat(&predecessor).await {
            Ok((None, _)) => {}
            Ok((Some(_), watcher)) => {
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
            Err(zk::Error::ConnectionLoss) => tokio::time::sleep(RETRY_DELAY).await,
            Err(zk::Error::SessionExpired) => return Err(plain(ErrorKind::SessionLost, op, key)),
            Err(e) => return Err(error::map(e, op, key)),
        }
        children = list_children(client, key).await?;
    }
}

async fn list_children(client: &zk::Client, key: &Key) -> Result<Vec<String>> {
    let op = Operation::Lock;
    loop {
        match client.list_children(key.as_str()).await {
            Ok(children) => return Ok(children),
            Err(zk::Error::ConnectionLoss) => tokio::time::sleep(RETRY_DELAY).await,
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
        for _ in 0..MULTI_ATTEMPTS {
            match session.client.delete(&self.path, None).await {
                Ok(()) | Err(zk::Error::NoNode | zk::Error::SessionExpired) => return Ok(()),
                Err(zk::Error::ConnectionLoss) => tokio::time::sleep(RETRY_DELAY).await,
                Err(e) => return Err(error::map(e, op, &self.key)),
            }
        }
        Err(plain(ErrorKind::Unavailable, op, &self.key)
            .with_message("the lock node could not be deleted; it goes with the session"))
    }
}

/// One `multi`: check the guard's node, write, and (with `release`) delete
/// the guard's node.
pub(crate) async fn fenced_put(
    inner: &Inner,
    key: &Key,
    value: Bytes,
    mode: PutMode,
    guard: &LockGuard,
    release: bool,
) -> Result<Version> {
    let op = Operation::FencedPut;
    let lock_lost = || {
        Error::new(ErrorKind::LockLost, op)
            .with_key(key)
            .with_message(format!("the lock {} is no longer held", guard.owner()))
    };
    if guard.is_lost() {
        return Err(lock_lost());
    }
    let session = inner.session(op)?;
    let client = &session.client;
    let owner = guard.owner();
    let mut create = matches!(mode, PutMode::Create);
    for _ in 0..MULTI_ATTEMPTS {
        let expected = match mode {
            PutMode::Update(expected) => {
                Some(kv::data_version(inner, client, key, expected, op).await?)
            }
            _ => None,
        };
        let mut writer = client
            .new_check_writer(owner, None)
            .map_err(|e| error::map(e, op, key))?;
        let added = if create {
            writer.add_create(
                key.as_str(),
                &value,
                &zk::CreateMode::Persistent.with_acls(inner.acls()),
            )
        } else {
            writer.add_set_data(key.as_str(), &value, expected)
        };
        added.map_err(|e| error::map(e, op, key))?;
        if release {
            writer
                .add_delete(owner, None)
                .map_err(|e| error::map(e, op, key))?;
        }
        match writer.commit().await {
            Ok(mut results) => {
                if results.is_empty() {
                    return Err(plain(ErrorKind::Other, op, key).with_message("empty multi result"));
                }
                return match results.swap_remove(0) {
                    zk::MultiWriteResult::SetData { stat } => {
                        inner.versions.observe(key.as_str(), &stat);
                        Ok(version_of(stat.mzxid))
                    }
                    zk::MultiWriteResult::Create { stat, .. } => {
                        kv::created(inner, client, key, stat, op).await
                    }
                    _ => {
                        Err(plain(ErrorKind::Other, op, key)
                            .with_message("unexpected multi result"))
                    }
                };
            }
            Err(zk::CheckWriteError::CheckFailed { .. }) => return Err(lock_lost()),
            Err(zk::CheckWriteError::RequestFailed {
                source: zk::Error::SessionExpired | zk::Error::SessionMoved,
            }) => return Err(lock_lost()),
            Err(zk::CheckWriteError::RequestFailed { source }) => {
                return Err(error::map(source, op, key))
            }
            Err(zk::CheckWriteError::OperationFailed { index, source }) => {
                if index > 0 {
                    // The release (delete of the lock node) failed.
                    return Err(error::map(source, op, key));
                }
                match (mode, source) {
                    (PutMode::Create, zk::Error::NodeExists) => {
                        return Err(plain(ErrorKind::AlreadyExists, op, key))
                    }
                    (PutMode::Create | PutMode::Overwrite, zk::Error::NoNode) if create => {
                        let Some(parent) = key.parent() else {
                            return Err(error::map(zk::Error::NoNode, op, key));
                        };
                        let dir = zk::CreateMode::Persistent.with_acls(inner.acls());
                        client
                            .mkdir(parent.as_str(), &dir)
                            .await
                            .map_err(|e| error::map(e, op, key))?;
                    }
                    (PutMode::Overwrite, zk::Error::NoNode) => create = true,
                    (PutMode::Overwrite, zk::Error::NodeExists) => create = false,
                    (PutMode::Update(_), zk::Error::BadVersion | zk::Error::NoNode) => {
                        return Err(kv::conflict_now(inner, client, key, op).await)
                    }
                    (_, source) => return Err(error::map(source, op, key)),
                }
            }
        }
    }
    Err(plain(ErrorKind::Conflict, op, key)
        .with_message("the key kept being created and deleted by others"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences() {
        assert_eq!(sequence("lock-abc-0000000012"), Some(12));
        assert_eq!(sequence("lock-abc-2147483648"), Some(2147483648));
        assert_eq!(sequence("other-0000000001"), None);
        assert_eq!(sequence("lock-abc-x"), None);
    }
}
