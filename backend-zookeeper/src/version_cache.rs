//! What this client last saw of each key: the data version and the
//! parent's sequence counter behind a [`Version`](sharedstate_core::Version),
//! which an exact conditional write needs (see the `kv` module docs).

use std::collections::HashMap;
use std::sync::Mutex;

use zookeeper_client as zk;

/// How many keys the version cache remembers before it starts over.
const CACHE_CAPACITY: usize = 4096;

/// What a conditional operation on one incarnation of a key expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expectation {
    pub mzxid: i64,
    pub data_version: i32,
    /// The parent's sequence counter, when this client knows it.
    pub counter: Option<i32>,
}

/// Per-key [`Expectation`]s observed by this client.
#[derive(Default)]
pub(crate) struct VersionCache {
    map: Mutex<HashMap<String, Expectation>>,
}

impl VersionCache {
    /// Remembers what a read of `path` found, unless a newer observation is
    /// known (a known counter for the same write is kept).
    pub(crate) fn observe(&self, path: &str, stat: &zk::Stat) {
        self.record(path, stat, None);
    }

    /// Remembers a stat together with the parent's counter right after it.
    pub(crate) fn record(&self, path: &str, stat: &zk::Stat, counter: Option<i32>) {
        if stat.mzxid <= 0 {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Expectation {
            mzxid: stat.mzxid,
            data_version: stat.version,
            counter,
        };
        if let Some(known) = map.get_mut(path) {
            if known.mzxid < stat.mzxid || (known.mzxid == stat.mzxid && counter.is_some()) {
                *known = entry;
            }
            return;
        }
        if map.len() >= CACHE_CAPACITY {
            map.clear();
        }
        map.insert(path.to_owned(), entry);
    }

    /// What is known about `path` at `mzxid`.
    pub(crate) fn lookup(&self, path: &str, mzxid: i64) -> Option<Expectation> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(path).filter(|e| e.mzxid == mzxid).copied()
    }

    /// Forgets `path` (deleted, or the entry proved stale).
    pub(crate) fn forget(&self, path: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
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
        cache.record("/a", &stat(10, 3), Some(7));
        let known = cache.lookup("/a", 10).expect("observed");
        assert_eq!((known.data_version, known.counter), (3, Some(7)));
        // A re-read of the same write keeps the known counter.
        cache.observe("/a", &stat(10, 3));
        assert_eq!(cache.lookup("/a", 10).and_then(|e| e.counter), Some(7));
        cache.observe("/a", &stat(5, 1));
        assert_eq!(cache.lookup("/a", 10).map(|e| e.data_version), Some(3));
        assert_eq!(cache.lookup("/a", 5), None);
        cache.observe("/a", &stat(12, 4));
        assert_eq!(cache.lookup("/a", 12).map(|e| e.counter), Some(None));
        cache.forget("/a");
        assert_eq!(cache.lookup("/a", 12), None);
        cache.observe("/b", &stat(-1, -1));
        assert_eq!(cache.lookup("/b", -1), None);
    }
}
