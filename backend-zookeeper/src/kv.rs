//! get, put, delete, list, and the mzxid -> data version cache.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use sharedstate_core::{Key, Operation, PutMode, Result, Version, Versioned};
use zookeeper_client as zk;

use crate::{error, version_of, Inner};

/// How many keys the version cache remembers before it starts over.
const CACHE_CAPACITY: usize = 4096;
/// Bound on the create-or-set loop of `Overwrite` (each turn means another
/// client deleted or created the key in between).
const OVERWRITE_ATTEMPTS: usize = 16;
/// Bound on re-creating parents that another client keeps deleting.
const CREATE_ATTEMPTS: usize = 8;

/// Per-key `mzxid -> data version`, fed by every stat this client sees, so
/// that `Update(version)` is a single `setData` when the caller's version
/// was observed here.
///
/// ZooKeeper can only condition a write on the data version, which starts
/// again at 0 when a znode is deleted and re-created: a cached entry for a
/// key that another client deleted and re-created would let a stale
/// `Update` through (ABA). So an entry is trusted only while this client
/// watches the key (the watch re-reads it on every change, replacing or
/// dropping the entry within one notification); for other keys the stat is
/// read first, which leaves only a one-round-trip window.
#[derive(Default)]
pub(crate) struct VersionCache {
    map: Mutex<HashMap<String, (i64, i32)>>,
    watched: Mutex<HashMap<String, usize>>,
}

/// Marks a key as watched while alive.
pub(crate) struct WatchedKey {
    inner: std::sync::Weak<crate::Inner>,
    path: String,
}

impl Drop for WatchedKey {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut watched = inner
                .versions
                .watched
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(count) = watched.get_mut(&self.path) {
                *count -= 1;
                if *count == 0 {
                    watched.remove(&self.path);
                }
            }
        }
    }
}

impl VersionCache {
    /// Trusts cached entries of `path` until the returned guard drops.
    pub(crate) fn watching(inner: &std::sync::Arc<crate::Inner>, path: &str) -> WatchedKey {
        *inner
            .versions
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(path.to_owned())
            .or_insert(0) += 1;
        WatchedKey {
            inner: std::sync::Arc::downgrade(inner),
            path: path.to_owned(),
        }
    }

    /// Remembers the stat of `path` unless a newer one is known.
    pub(crate) fn observe(&self, path: &str, stat: &zk::Stat) {
        if stat.mzxid <= 0 {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(path) {
            if entry.0 <= stat.mzxid {
                *entry = (stat.mzxid, stat.version);
            }
            return;
        }
        if map.len() >= CACHE_CAPACITY {
            map.clear();
        }
        map.insert(path.to_owned(), (stat.mzxid, stat.version));
    }

    /// The data version of `path` at `mzxid`, when known and trusted.
    pub(crate) fn lookup(&self, path: &str, mzxid: i64) -> Option<i32> {
        if !self
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(path)
        {
            return None;
        }
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(path) {
            Some(&(m, version)) if m == mzxid => Some(version),
            _ => None,
        }
    }

    /// Forgets `path` (deleted).
    pub(crate) fn forget(&self, path: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
    }
}

fn raw(version: Version) -> i64 {
    i64::try_from(version.as_u64()).unwrap_or(i64::MAX)
}

pub(crate) async fn get(inner: &Inner, key: &Key) -> Result<Option<Versioned>> {
    let op = Operation::Get;
    let session = inner.session(op)?;
    let client = &session.client;
    // Both requests leave now, in order: the read is served after the sync.
    let sync = client.sync(key.as_str());
    let read = client.get_data(key.as_str());
    let synced = sync.await;
    let read = read.await;
    synced.map_err(|e| error::map(e, op, key))?;
    match read {
        Ok((data, stat)) => {
            inner.versions.observe(key.as_str(), &stat);
            Ok(Some(Versioned {
                value: Bytes::from(data),
                version: version_of(stat.mzxid),
            }))
        }
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(error::map(e, op, key)),
    }
}

/// The stat of `key` now (`None` when missing), recorded in the cache.
pub(crate) async fn stat(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    op: Operation,
) -> Result<Option<zk::Stat>> {
    let stat = client
        .check_stat(key.as_str())
        .await
        .map_err(|e| error::map(e, op, key))?;
    if let Some(stat) = &stat {
        inner.versions.observe(key.as_str(), stat);
    }
    Ok(stat)
}

/// The data version for a conditional write at `expected`: from the cache,
/// or by reading the stat (a mismatch is a `Conflict` with the version found).
pub(crate) async fn data_version(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    expected: Version,
    op: Operation,
) -> Result<i32> {
    if let Some(version) = inner.versions.lookup(key.as_str(), raw(expected)) {
        return Ok(version);
    }
    match stat(inner, client, key, op).await? {
        None => Err(error::conflict(op, key, None)),
        Some(stat) if stat.mzxid != raw(expected) => {
            Err(error::conflict(op, key, Some(version_of(stat.mzxid))))
        }
        Some(stat) => Ok(stat.version),
    }
}

/// The `Conflict` for a conditional write that met `BadVersion` or `NoNode`.
pub(crate) async fn conflict_now(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    op: Operation,
) -> sharedstate_core::Error {
    match stat(inner, client, key, op).await {
        Ok(current) => error::conflict(op, key, current.map(|s| version_of(s.mzxid))),
        Err(e) => e,
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
        PutMode::Update(expected) => {
            let version = data_version(inner, client, key, expected, op).await?;
            match client.set_data(path, &value, Some(version)).await {
                Ok(stat) => {
                    inner.versions.observe(path, &stat);
                    Ok(version_of(stat.mzxid))
                }
                Err(zk::Error::BadVersion | zk::Error::NoNode) => {
                    Err(conflict_now(inner, client, key, op).await)
                }
                Err(e) => Err(error::map(e, op, key)),
            }
        }
        PutMode::Overwrite => {
            for _ in 0..OVERWRITE_ATTEMPTS {
                match client.set_data(path, &value, None).await {
                    Ok(stat) => {
                        inner.versions.observe(path, &stat);
                        return Ok(version_of(stat.mzxid));
                    }
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

/// The version of a node just created (`stat` may be invalid on old servers).
pub(crate) async fn created(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    stat: zk::Stat,
    op: Operation,
) -> Result<Version> {
    if stat.mzxid > 0 {
        inner.versions.observe(key.as_str(), &stat);
        return Ok(version_of(stat.mzxid));
    }
    match self::stat(inner, client, key, op).await? {
        Some(stat) => Ok(version_of(stat.mzxid)),
        None => Err(crate::plain(sharedstate_core::ErrorKind::Conflict, op, key)),
    }
}

pub(crate) async fn delete(inner: &Inner, key: &Key, expected: Option<Version>) -> Result<()> {
    let op = Operation::Delete;
    let session = inner.session(op)?;
    let client = &session.client;
    let path = key.as_str();
    let version = match expected {
        None => None,
        Some(expected) => match data_version(inner, client, key, expected, op).await {
            Ok(version) => Some(version),
            Err(e)
                if e.kind() == sharedstate_core::ErrorKind::Conflict
                    && e.current_version().is_none() =>
            {
                return Err(crate::plain(sharedstate_core::ErrorKind::NotFound, op, key));
            }
            Err(e) => return Err(e),
        },
    };
    match client.delete(path, version).await {
        Ok(()) => {
            inner.versions.forget(path);
            Ok(())
        }
        Err(zk::Error::BadVersion) => {
            let e = conflict_now(inner, client, key, op).await;
            if e.kind() == sharedstate_core::ErrorKind::Conflict && e.current_version().is_none() {
                Err(crate::plain(sharedstate_core::ErrorKind::NotFound, op, key))
            } else {
                Err(e)
            }
        }
        Err(e) => Err(error::map(e, op, key)),
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

    fn stat(mzxid: i64, version: i32) -> zk::Stat {
        zk::Stat {
            czxid: 1,
            mzxid,
            pzxid: 1,
            ctime: 0,
            mtime: 0,
            version,
            cversion: 0,
            aversion: 0,
            ephemeral_owner: 0,
            data_length: 0,
            num_children: 0,
        }
    }

    #[test]
    fn cache_keeps_the_newest_observation() {
        let cache = VersionCache::default();
        cache.observe("/a", &stat(10, 3));
        assert_eq!(cache.lookup("/a", 10), None, "not watched: not trusted");
        cache.watched.lock().unwrap().insert("/a".into(), 1);
        assert_eq!(cache.lookup("/a", 10), Some(3));
        cache.observe("/a", &stat(5, 1));
        assert_eq!(cache.lookup("/a", 10), Some(3));
        assert_eq!(cache.lookup("/a", 5), None);
        cache.observe("/a", &stat(12, 4));
        assert_eq!(cache.lookup("/a", 12), Some(4));
        cache.forget("/a");
        assert_eq!(cache.lookup("/a", 12), None);
        cache.observe("/b", &stat(-1, -1));
        assert_eq!(cache.lookup("/b", -1), None);
    }
}
