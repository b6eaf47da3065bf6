//! get, put, delete, list, and exact conditional writes (their incarnation
//! fence is the `fence` module's).

use bytes::Bytes;
use sharedstate_core::{Error, ErrorKind, Key, Operation, PutMode, Result, Version, Versioned};
use zookeeper_client as zk;

use crate::fence::{self, FenceFailure, FENCE_ATTEMPTS};
use crate::{error, version_of, Inner};

/// Bound on the create-or-set loop of `Overwrite` (each turn means another
/// client deleted or created the key in between).
const OVERWRITE_ATTEMPTS: usize = 16;
/// Bound on re-creating parents that another client keeps deleting.
const CREATE_ATTEMPTS: usize = 8;
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

/// The `Conflict` for a conditional operation that met `BadVersion` or
/// `NoNode`: carries the version found now. No `sync` before the read: it
/// follows the failed transaction on this session, which the server
/// answered only after applying every write before it, so it sees the
/// write that beat ours. The fence hint is read first, in the same flight,
/// so that a retry at the version found knows the counter (see the `fence`
/// module docs).
pub(crate) async fn conflict_now(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    op: Operation,
) -> Error {
    let hinted = client.get_data(&fence::hint_path(key));
    let found = client.check_stat(key.as_str());
    let hinted = hinted.await;
    match found.await {
        Ok(Some(stat)) => {
            inner
                .versions
                .record(key.as_str(), &stat, fence::hint_guess(hinted));
            error::conflict(op, key, Some(version_of(stat.mzxid)))
        }
        Ok(None) => {
            inner.versions.forget(key.as_str());
            error::conflict(op, key, None)
        }
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

/// `Update(expected)`: one fenced `multi` (see the `fence` module): the
/// write first, so that losing to another write is reported as such.
async fn update(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    value: &Bytes,
    expected: Version,
) -> Result<Version> {
    let op = Operation::Put;
    let (mut data_version, mut fence) =
        fence::expectation(inner, client, key, expected, op).await?;
    // Before the write is sent: its notification may reach our watches
    // before its answer reaches us.
    let in_flight = inner.own_writes.begin(key.as_str(), expected);
    for _ in 0..FENCE_ATTEMPTS {
        let mut writer = client.new_multi_writer();
        writer
            .add_set_data(key.as_str(), value, Some(data_version))
            .map_err(|e| error::map(e, op, key))?;
        let fenced = fence::add(inner, &mut writer, key, &fence, op, 1)?;
        let failed = match writer.commit().await {
            Ok(results) => {
                let version = written(inner, key, &results, &fence, op)?;
                in_flight.landed(version, value.clone());
                return Ok(version);
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                fence.discard_learned_node(client);
                return Err(error::map(source, op, key));
            }
            Err(zk::MultiWriteError::OperationFailed { index, source }) => (index, source),
        };
        fence.discard_learned_node(client);
        match fenced.failure(failed.0) {
            FenceFailure::Hint => fence::hint_failed(&mut fence, &failed.1),
            // A child of the parent was created since the counter was
            // learned: learn it again (the key may be unchanged).
            FenceFailure::Counter => {
                (data_version, fence) =
                    fence::relearn(inner, client, key, expected, op, &fence).await?;
            }
            FenceFailure::None => {
                inner.versions.forget(key.as_str());
                return Err(conflict_now(inner, client, key, op).await);
            }
        }
    }
    Err(fence::gave_up(op, key))
}

/// The new version of a fenced `setData`; records it with the parent's
/// counter after the transaction, for the next write.
pub(crate) fn written(
    inner: &Inner,
    key: &Key,
    results: &[zk::MultiWriteResult],
    fence: &fence::Fence,
    op: Operation,
) -> Result<Version> {
    let stat = results.iter().find_map(|result| match result {
        zk::MultiWriteResult::SetData { stat } => Some(stat),
        _ => None,
    });
    match stat {
        Some(stat) => {
            fence::committed(inner, key, stat, fence);
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
    // A key whose only children are fence nodes (a hint left by writes to
    // its former children) is deleted with them.
    let mut reserved: Vec<String> = Vec::new();
    let Some(expected) = expected else {
        for _ in 0..FENCE_ATTEMPTS {
            let mut writer = client.new_multi_writer();
            add_deletes(&mut writer, &reserved, op, key)?;
            writer
                .add_delete(path, None)
                .map_err(|e| error::map(e, op, key))?;
            let source = match writer.commit().await {
                Ok(_) => {
                    inner.versions.forget(path);
                    return Ok(());
                }
                Err(zk::MultiWriteError::RequestFailed { source })
                | Err(zk::MultiWriteError::OperationFailed { source, .. }) => source,
            };
            reserved = match source {
                zk::Error::NotEmpty => only_reserved_children(client, key).await?,
                // One of the reserved children went meanwhile: list again.
                zk::Error::NoNode if !reserved.is_empty() => {
                    only_reserved_children(client, key).await?
                }
                source => return Err(error::map(source, op, key)),
            };
        }
        return Err(error::map(zk::Error::NotEmpty, op, key));
    };
    let (mut data_version, mut fence) = fence::expectation(inner, client, key, expected, op)
        .await
        .map_err(not_found)?;
    for _ in 0..FENCE_ATTEMPTS {
        let mut writer = client.new_multi_writer();
        // Fence first: the delete of the key must not count against it.
        let fenced = fence::add(inner, &mut writer, key, &fence, op, 0)?;
        add_deletes(&mut writer, &reserved, op, key)?;
        writer
            .add_delete(path, Some(data_version))
            .map_err(|e| error::map(e, op, key))?;
        let (index, source) = match writer.commit().await {
            Ok(_) => {
                inner.versions.forget(path);
                return Ok(());
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                fence.discard_learned_node(client);
                return Err(error::map(source, op, key));
            }
            Err(zk::MultiWriteError::OperationFailed { index, source }) => (index, source),
        };
        fence.discard_learned_node(client);
        match (fenced.failure(index), source) {
            (FenceFailure::Hint, source) => fence::hint_failed(&mut fence, &source),
            (FenceFailure::Counter, _) => {
                (data_version, fence) = fence::relearn(inner, client, key, expected, op, &fence)
                    .await
                    .map_err(not_found)?;
            }
            (FenceFailure::None, zk::Error::NotEmpty) => {
                reserved = only_reserved_children(client, key).await?;
            }
            // One of the reserved children went meanwhile: list again.
            (FenceFailure::None, zk::Error::NoNode)
                if index < fenced.first + fenced.count + reserved.len() =>
            {
                reserved = only_reserved_children(client, key).await?;
            }
            (FenceFailure::None, _) => {
                inner.versions.forget(path);
                return Err(not_found(conflict_now(inner, client, key, op).await));
            }
        }
    }
    Err(fence::gave_up(op, key))
}

/// Adds the deletes of `paths` (reserved children of `key`) to `writer`.
fn add_deletes(
    writer: &mut zk::MultiWriter<'_>,
    paths: &[String],
    op: Operation,
    key: &Key,
) -> Result<()> {
    for path in paths {
        writer
            .add_delete(path, None)
            .map_err(|e| error::map(e, op, key))?;
    }
    Ok(())
}

/// The children of `key` as paths, when all of them are fence nodes;
/// `NotEmpty` when it has others (`delete` refuses a key with children).
async fn only_reserved_children(client: &zk::Client, key: &Key) -> Result<Vec<String>> {
    let op = Operation::Delete;
    let children = match client.list_children(key.as_str()).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => Vec::new(),
        Err(e) => return Err(error::map(e, op, key)),
    };
    if children.iter().all(|name| fence::is_fence(name)) {
        Ok(children
            .iter()
            .map(|name| format!("{key}/{name}"))
            .collect())
    } else {
        Err(error::map(zk::Error::NotEmpty, op, key))
    }
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
            children.retain(|name| !fence::is_fence(name));
            children.sort_unstable();
            Ok(children)
        }
        Err(zk::Error::NoNode) => Ok(Vec::new()),
        Err(e) => Err(error::map(e, op, key)),
    }
}
