//! get, put, delete, list, and exact conditional writes.
//!
//! # Exact conditional writes
//!
//! A [`Version`] is the znode's `mzxid`, which never repeats. ZooKeeper
//! itself can only condition a write on the znode's *data version*, which
//! starts again at 0 when the znode is deleted and re-created: a plain
//! `setData(path, data_version)` would succeed against a re-created znode
//! that happens to be at the same data version (an ABA the contract
//! forbids), and there is no condition on `czxid`. What re-creating a znode
//! always does is *create a child of its parent*, which advances the
//! parent's sequence counter (the number a sequential child is named
//! after). A transaction can check that counter: the `multi`
//!
//! ```text
//! create(<parent>/sharedstate-fence-, sequential)   -> named after the counter now
//! delete(<parent>/sharedstate-fence-<expected counter, %010d>)
//! setData(<path>, data, <expected data version>)
//! ```
//!
//! commits only if no child of the parent was created since the counter was
//! learned (otherwise the delete finds no such node and the whole
//! transaction fails), and the data version proves no write to this
//! incarnation since its stat was read.
//!
//! The counter is only ever learned from the names the server gives our own
//! sequential nodes, never from `stat.cversion`: which operations move
//! `cversion` differs between ZooKeeper versions (3.8 counts deletes in the
//! stat but not in the counter; newer releases count neither), and a guess
//! larger than the real counter could be matched by intervening creates. So
//! a write that does not know the counter first creates an ephemeral fence
//! node (its name is the counter), pipelined with the stat read that comes
//! after it, and deletes that node in the write's transaction: two round
//! trips. The transaction's answer names its own fence node, so the next
//! write of this client knows the counter: one round trip while nobody
//! else creates children of the parent. A counter that went stale makes the
//! transaction fail, then it is learned again; it never lets a wrong write
//! through. Fence nodes never show in `list` (they are filtered, and
//! `Key` reserves the `sharedstate-fence-` prefix).

use bytes::Bytes;
use sharedstate_core::{Error, ErrorKind, Key, Operation, PutMode, Result, Version, Versioned};
use zookeeper_client as zk;

use crate::{error, version_of, Inner};

/// Bound on the create-or-set loop of `Overwrite` (each turn means another
/// client deleted or created the key in between).
const OVERWRITE_ATTEMPTS: usize = 16;
/// Bound on re-creating parents that another client keeps deleting.
const CREATE_ATTEMPTS: usize = 8;
/// Bound on retrying a conditional write whose fence failed while the key
/// itself was unchanged (a sibling was created meanwhile).
pub(crate) const FENCE_ATTEMPTS: usize = 8;
/// The name prefix of fence nodes (reserved by `Key`).
pub(crate) const FENCE_PREFIX: &str = "sharedstate-fence-";

fn raw(version: Version) -> i64 {
    i64::try_from(version.as_u64()).unwrap_or(i64::MAX)
}

fn fence_prefix(key: &Key) -> String {
    match key.parent() {
        None => format!("/{FENCE_PREFIX}"),
        Some(parent) => format!("{parent}/{FENCE_PREFIX}"),
    }
}

/// The counter a sequential node's name carries.
fn counter_of(path: &str) -> Option<i32> {
    let split = path.rfind(FENCE_PREFIX)? + FENCE_PREFIX.len();
    path.get(split..)?.parse().ok()
}

/// Whether a child name is one of our fence nodes (never listed).
pub(crate) fn is_fence(name: &str) -> bool {
    name.starts_with(FENCE_PREFIX)
}

/// A fence the next transaction must carry: the expected counter, and the
/// ephemeral node that taught it (deleted in the same transaction).
#[derive(Debug, Clone)]
pub(crate) struct Fence {
    counter: i32,
    learned_from: Option<String>,
}

/// Adds the fence operations (see the module docs) to `writer`; returns how
/// many it added.
pub(crate) fn add_fence(
    inner: &Inner,
    writer: &mut zk::MultiWriter<'_>,
    key: &Key,
    fence: &Fence,
    op: Operation,
) -> Result<usize> {
    let prefix = fence_prefix(key);
    let map = |e| error::map(e, op, key);
    let mut added = 0;
    if let Some(node) = &fence.learned_from {
        writer.add_delete(node, None).map_err(map)?;
        added += 1;
    }
    let options = zk::CreateMode::PersistentSequential.with_acls(inner.acls());
    writer.add_create(&prefix, &[], &options).map_err(map)?;
    writer
        .add_delete(&format!("{prefix}{:010}", fence.counter), None)
        .map_err(map)?;
    Ok(added + 2)
}

/// Reads `key`'s data (or only its stat), after a `sync` when `sync`, and
/// caches what it found. `Ok(None)` when the key does not exist.
pub(crate) async fn read(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    sync: bool,
    with_data: bool,
) -> std::result::Result<Option<(Option<Vec<u8>>, zk::Stat)>, zk::Error> {
    // Each call sends its request at once; the server answers a session's
    // requests in order, so the read is served after the sync.
    let synced = sync.then(|| client.sync(key.as_str()));
    let found = if with_data {
        futures::future::Either::Left(async {
            match client.get_data(key.as_str()).await {
                Ok((data, stat)) => Ok(Some((Some(data), stat))),
                Err(zk::Error::NoNode) => Ok(None),
                Err(e) => Err(e),
            }
        })
    } else {
        futures::future::Either::Right(async {
            Ok(client
                .check_stat(key.as_str())
                .await?
                .map(|stat| (None, stat)))
        })
    };
    if let Some(synced) = synced {
        synced.await?;
    }
    let found = found.await?;
    match &found {
        Some((_, stat)) => inner.versions.observe(key.as_str(), stat),
        None => inner.versions.forget(key.as_str()),
    }
    Ok(found)
}

fn versioned(data: Vec<u8>, stat: &zk::Stat) -> Versioned {
    Versioned {
        value: Bytes::from(data),
        version: version_of(stat.mzxid),
    }
}

pub(crate) async fn get(inner: &Inner, key: &Key) -> Result<Option<Versioned>> {
    let op = Operation::Get;
    let session = inner.session(op)?;
    match read(inner, &session.client, key, true, true).await {
        Ok(Some((data, stat))) => Ok(Some(versioned(data.unwrap_or_default(), &stat))),
        Ok(None) => Ok(None),
        Err(e) => Err(error::map(e, op, key)),
    }
}

pub(crate) async fn get_version(inner: &Inner, key: &Key) -> Result<Option<Version>> {
    let op = Operation::Get;
    let session = inner.session(op)?;
    match read(inner, &session.client, key, true, false).await {
        Ok(found) => Ok(found.map(|(_, stat)| version_of(stat.mzxid))),
        Err(e) => Err(error::map(e, op, key)),
    }
}

/// A linearizable read: a transaction that only checks that the root
/// exists, then the read, pipelined. A `multi` is proposed and committed by
/// a quorum through the leader (unlike `sync`, ZOOKEEPER-1675), and the
/// server answers a session's read only after its earlier write committed
/// and was applied where the read is served: so the read sees a state at
/// least as new as the transaction's commit, which comes after the call,
/// and includes every write acknowledged before it. One round trip; it
/// costs one entry in ZooKeeper's transaction log.
pub(crate) async fn get_linearizable(inner: &Inner, key: &Key) -> Result<Option<Versioned>> {
    let op = Operation::Get;
    let session = inner.session(op)?;
    let client = &session.client;
    let mut barrier = client.new_multi_writer();
    barrier
        .add_check_version("/", -1)
        .map_err(|e| error::map(e, op, key))?;
    let committed = barrier.commit();
    let found = read(inner, client, key, false, true);
    let committed = committed.await;
    let found = found.await;
    match committed {
        Ok(_) => {}
        Err(zk::MultiWriteError::RequestFailed { source })
        | Err(zk::MultiWriteError::OperationFailed { source, .. }) => {
            return Err(error::map(source, op, key)
                .with_message("the read barrier (a quorum-ordered check) failed"))
        }
    }
    match found {
        Ok(Some((data, stat))) => Ok(Some(versioned(data.unwrap_or_default(), &stat))),
        Ok(None) => Ok(None),
        Err(e) => Err(error::map(e, op, key)),
    }
}

/// The data version and fence for a conditional operation at `expected`:
/// from the cache when it knows the counter, else learned (see the module
/// docs). A key not at `expected` is a `Conflict` with the version found.
pub(crate) async fn expectation(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    expected: Version,
    op: Operation,
) -> Result<(i32, Fence)> {
    if let Some(known) = inner.versions.lookup(key.as_str(), raw(expected)) {
        if let Some(counter) = known.counter {
            let fence = Fence {
                counter,
                learned_from: None,
            };
            return Ok((known.data_version, fence));
        }
    }
    learn(inner, client, key, expected, op).await
}

/// Learns the parent's counter from an ephemeral sequential node, then
/// reads the key's stat after it, pipelined.
pub(crate) async fn learn(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    expected: Version,
    op: Operation,
) -> Result<(i32, Fence)> {
    let options = zk::CreateMode::EphemeralSequential.with_acls(inner.acls());
    let prefix = fence_prefix(key);
    let created = client.create(&prefix, &[], &options);
    let found = read(inner, client, key, true, false);
    let created = created.await;
    let found = found.await;
    let node = match created {
        Ok((_, sequence)) => format!("{prefix}{sequence}"),
        // The parent is gone, so is the key.
        Err(zk::Error::NoNode) => return Err(error::conflict(op, key, None)),
        Err(e) => return Err(error::map(e, op, key)),
    };
    let discard = |why: Error| {
        discard_fence(client, &node);
        why
    };
    let found = found.map_err(|e| discard(error::map(e, op, key)))?;
    let Some(counter) = counter_of(&node).and_then(|c| c.checked_add(1)) else {
        return Err(discard(
            crate::plain(ErrorKind::Other, op, key)
                .with_message(format!("unexpected fence node name {node}")),
        ));
    };
    match found {
        None => Err(discard(error::conflict(op, key, None))),
        Some((_, stat)) if stat.mzxid != raw(expected) => Err(discard(error::conflict(
            op,
            key,
            Some(version_of(stat.mzxid)),
        ))),
        Some((_, stat)) => Ok((
            stat.version,
            Fence {
                counter,
                learned_from: Some(node),
            },
        )),
    }
}

/// Deletes a fence node that no transaction will delete (it is ephemeral:
/// it goes with the session at the latest).
pub(crate) fn discard_fence(client: &zk::Client, node: &str) {
    let delete = client.delete(node, None);
    tokio::spawn(async move {
        if let Err(error) = delete.await {
            tracing::debug!(%error, "deleting a fence node failed; it goes with the session");
        }
    });
}

/// After a transaction failed: its learned fence node (if any) still exists.
pub(crate) fn failed_with(client: &zk::Client, fence: &Fence) {
    if let Some(node) = &fence.learned_from {
        discard_fence(client, node);
    }
}

/// The `Conflict` for a conditional operation that met `BadVersion` or
/// `NoNode`: carries the version found now.
pub(crate) async fn conflict_now(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    op: Operation,
) -> Error {
    match read(inner, client, key, true, false).await {
        Ok(found) => error::conflict(op, key, found.map(|(_, s)| version_of(s.mzxid))),
        Err(e) => error::map(e, op, key),
    }
}

/// Creates `key` and, when its parent is missing, the parents as empty
/// persistent nodes.
pub(crate) async fn create_with_parents(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    data: &[u8],
    mode: zk::CreateMode,
) -> std::result::Result<zk::Stat, zk::Error> {
    let options = mode.with_acls(inner.acls());
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.create(key.as_str(), data, &options).await {
            Ok((stat, _)) => return Ok(stat),
            Err(zk::Error::NoNode) if attempt < CREATE_ATTEMPTS => {
                let Some(parent) = key.parent() else {
                    return Err(zk::Error::NoNode);
                };
                let dir = zk::CreateMode::Persistent.with_acls(inner.acls());
                client.mkdir(parent.as_str(), &dir).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

pub(crate) async fn put(inner: &Inner, key: &Key, value: Bytes, mode: PutMode) -> Result<Version> {
    let op = Operation::Put;
    let session = inner.session(op)?;
    let client = &session.client;
    let path = key.as_str();
    match mode {
        PutMode::Create => {
            let stat = create_with_parents(inner, client, key, &value, zk::CreateMode::Persistent)
                .await
                .map_err(|e| error::map(e, op, key))?;
            created(inner, client, key, stat, op).await
        }
        PutMode::Update(expected) => update(inner, client, key, &value, expected).await,
        PutMode::Overwrite => {
            for _ in 0..OVERWRITE_ATTEMPTS {
                match client.set_data(path, &value, None).await {
                    Ok(stat) => return Ok(version_of(stat.mzxid)),
                    Err(zk::Error::NoNode) => {}
                    Err(e) => return Err(error::map(e, op, key)),
                }
                match create_with_parents(inner, client, key, &value, zk::CreateMode::Persistent)
                    .await
                {
                    Ok(stat) => return created(inner, client, key, stat, op).await,
                    Err(zk::Error::NodeExists) => {}
                    Err(e) => return Err(error::map(e, op, key)),
                }
            }
            Err(error::map(zk::Error::NodeExists, op, key)
                .with_message("the key kept being created and deleted by others"))
        }
    }
}

/// `Update(expected)`: one fenced `multi` (see the module docs).
async fn update(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    value: &Bytes,
    expected: Version,
) -> Result<Version> {
    let op = Operation::Put;
    let (mut data_version, mut fence) = expectation(inner, client, key, expected, op).await?;
    // Before the write is sent: its notification may reach our watches
    // before its answer reaches us.
    let in_flight = inner.own_writes.begin(key.as_str(), expected);
    for _ in 0..FENCE_ATTEMPTS {
        let mut writer = client.new_multi_writer();
        let fenced = add_fence(inner, &mut writer, key, &fence, op)?;
        writer
            .add_set_data(key.as_str(), value, Some(data_version))
            .map_err(|e| error::map(e, op, key))?;
        match writer.commit().await {
            Ok(results) => {
                let version = written(inner, key, &results, op)?;
                in_flight.landed(version, value.clone());
                return Ok(version);
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                failed_with(client, &fence);
                return Err(error::map(source, op, key));
            }
            Err(zk::MultiWriteError::OperationFailed { index, .. }) if index < fenced => {
                // A child of the parent was created since the counter was
                // learned: learn it again (the key may be unchanged).
                failed_with(client, &fence);
                (data_version, fence) = learn(inner, client, key, expected, op).await?;
            }
            Err(zk::MultiWriteError::OperationFailed { .. }) => {
                failed_with(client, &fence);
                inner.versions.forget(key.as_str());
                return Err(conflict_now(inner, client, key, op).await);
            }
        }
    }
    Err(fence_gave_up(op, key))
}

pub(crate) fn fence_gave_up(op: Operation, key: &Key) -> Error {
    error::conflict(op, key, None).with_message(format!(
        "children of the key's parent kept being created ({FENCE_ATTEMPTS} attempts); \
         the write was not applied"
    ))
}

/// The new version of a fenced `setData`; the transaction's own fence node
/// tells the parent's counter after it, for the next write.
pub(crate) fn written(
    inner: &Inner,
    key: &Key,
    results: &[zk::MultiWriteResult],
    op: Operation,
) -> Result<Version> {
    let mut stat = None;
    let mut counter = None;
    for result in results {
        match result {
            zk::MultiWriteResult::SetData { stat: s } => stat = Some(s),
            zk::MultiWriteResult::Create { path, .. } if path.contains(FENCE_PREFIX) => {
                counter = counter_of(path).and_then(|c| c.checked_add(1));
            }
            _ => {}
        }
    }
    match stat {
        Some(stat) => {
            inner.versions.record(key.as_str(), stat, counter);
            Ok(version_of(stat.mzxid))
        }
        None => Err(crate::plain(ErrorKind::Other, op, key)
            .with_message("the transaction's answer has no setData result")),
    }
}

/// The version of a node just created (`stat` may be invalid on old servers).
pub(crate) async fn created(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    stat: zk::Stat,
    op: Operation,
) -> Result<Version> {
    if stat.mzxid > 0 {
        return Ok(version_of(stat.mzxid));
    }
    match read(inner, client, key, false, false).await {
        Ok(Some((_, stat))) => Ok(version_of(stat.mzxid)),
        Ok(None) => Err(crate::plain(ErrorKind::Conflict, op, key)),
        Err(e) => Err(error::map(e, op, key)),
    }
}

pub(crate) async fn delete(inner: &Inner, key: &Key, expected: Option<Version>) -> Result<()> {
    let op = Operation::Delete;
    let session = inner.session(op)?;
    let client = &session.client;
    let path = key.as_str();
    let not_found = |e: Error| {
        if e.kind() == ErrorKind::Conflict && e.current_version().is_none() {
            crate::plain(ErrorKind::NotFound, op, key)
        } else {
            e
        }
    };
    let Some(expected) = expected else {
        return match client.delete(path, None).await {
            Ok(()) => {
                inner.versions.forget(path);
                Ok(())
            }
            Err(e) => Err(error::map(e, op, key)),
        };
    };
    let (mut data_version, mut fence) = expectation(inner, client, key, expected, op)
        .await
        .map_err(not_found)?;
    for _ in 0..FENCE_ATTEMPTS {
        let mut writer = client.new_multi_writer();
        // Fence first: the delete of the key must not count against it.
        let fenced = add_fence(inner, &mut writer, key, &fence, op)?;
        writer
            .add_delete(path, Some(data_version))
            .map_err(|e| error::map(e, op, key))?;
        match writer.commit().await {
            Ok(_) => {
                inner.versions.forget(path);
                return Ok(());
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                failed_with(client, &fence);
                return Err(error::map(source, op, key));
            }
            Err(zk::MultiWriteError::OperationFailed { index, .. }) if index < fenced => {
                failed_with(client, &fence);
                (data_version, fence) = learn(inner, client, key, expected, op)
                    .await
                    .map_err(not_found)?;
            }
            Err(zk::MultiWriteError::OperationFailed {
                source: zk::Error::NotEmpty,
                ..
            }) => {
                failed_with(client, &fence);
                return Err(error::map(zk::Error::NotEmpty, op, key));
            }
            Err(zk::MultiWriteError::OperationFailed { .. }) => {
                failed_with(client, &fence);
                inner.versions.forget(path);
                return Err(not_found(conflict_now(inner, client, key, op).await));
            }
        }
    }
    Err(fence_gave_up(op, key))
}

pub(crate) async fn list(inner: &Inner, key: &Key) -> Result<Vec<String>> {
    let op = Operation::List;
    let session = inner.session(op)?;
    let client = &session.client;
    let sync = client.sync(key.as_str());
    let children = client.list_children(key.as_str());
    let synced = sync.await;
    let children = children.await;
    synced.map_err(|e| error::map(e, op, key))?;
    match children {
        Ok(mut children) => {
            children.retain(|name| !is_fence(name));
            children.sort_unstable();
            Ok(children)
        }
        Err(zk::Error::NoNode) => Ok(Vec::new()),
        Err(e) => Err(error::map(e, op, key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_paths() {
        let top = Key::new("/top").expect("key");
        assert_eq!(fence_prefix(&top), "/sharedstate-fence-");
        let deep = Key::new("/app/state/payload").expect("key");
        assert_eq!(fence_prefix(&deep), "/app/state/sharedstate-fence-");
        assert_eq!(
            counter_of("/app/state/sharedstate-fence-0000000042"),
            Some(42)
        );
        assert_eq!(counter_of("/app/other-0000000042"), None);
        assert!(is_fence("sharedstate-fence-0000000001"));
        assert!(!is_fence("payload"));
    }
}
