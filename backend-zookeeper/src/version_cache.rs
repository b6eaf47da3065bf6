//! What this client last saw of each key: the data version and the
//! parent's sequence counter behind a [`Version`](sharedstate_core::Version),
//! which an exact conditional write needs (see the `fence` module docs).

use std::collections::HashMap;
use std::sync::Mutex;

use zookeeper_client as zk;

/// How many keys the version cache remembers before it starts over.
const CACHE_CAPACITY: usize = 4096;

/// Where a known counter comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Our own committed transaction, or a node we created to learn it.
    Exact,
    /// The hint node (a guess the fence checks).
    Hint,
}

/// The parent's sequence counter, paired with a stat read after the
/// moment it was exact (see the `fence` module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counter {
    pub value: i32,
    pub source: Source,
}

/// What a conditional operation on one incarnation of a key expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expectation {
    pub mzxid: i64,
    pub data_version: i32,
    /// The parent's sequence counter, when this client knows it.
    pub counter: Option<Counter>,
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

    /// Remembers a stat together with a counter it pairs with (an exact
    /// counter is not replaced by a hint for the same write).
    pub(crate) fn record(&self, path: &str, stat: &zk::Stat, counter: Option<Counter>) {
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
            let better = match (known.counter, counter) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(old), Some(new)) => old.source == Source::Hint || new.source == Source::Exact,
            };
            if known.mzxid < stat.mzxid || (known.mzxid == stat.mzxid && better) {
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

    /// Whether the newest stat known of `path` comes with a counter (a
    /// lock's first flight reads the hint only when it does not).
    pub(crate) fn knows_counter(&self, path: &str) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(path).is_some_and(|e| e.counter.is_some())
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

    fn exact(value: i32) -> Option<Counter> {
        Some(Counter {
            value,
            source: Source::Exact,
        })
    }

    fn hint(value: i32) -> Option<Counter> {
        Some(Counter {
            value,
            source: Source::Hint,
        })
    }

    #[test]
    fn cache_keeps_the_newest_observation() {
        let cache = VersionCache::default();
        cache.record("/a", &stat(10, 3), exact(7));
        let known = cache.lookup("/a", 10).expect("observed");
        assert_eq!((known.data_version, known.counter), (3, exact(7)));
        assert!(cache.knows_counter("/a"));
        // A re-read of the same write keeps the known counter, and a hint
        // does not replace it.
        cache.observe("/a", &stat(10, 3));
        assert_eq!(cache.lookup("/a", 10).and_then(|e| e.counter), exact(7));
        cache.record("/a", &stat(10, 3), hint(9));
        assert_eq!(cache.lookup("/a", 10).and_then(|e| e.counter), exact(7));
        cache.observe("/a", &stat(5, 1));
        assert_eq!(cache.lookup("/a", 10).map(|e| e.data_version), Some(3));
        assert_eq!(cache.lookup("/a", 5), None);
        cache.observe("/a", &stat(12, 4));
        assert_eq!(cache.lookup("/a", 12).map(|e| e.counter), Some(None));
        assert!(!cache.knows_counter("/a"));
        // A hint for a write known without one is kept; an exact counter
        // replaces a hint.
        cache.record("/a", &stat(12, 4), hint(9));
        assert_eq!(cache.lookup("/a", 12).and_then(|e| e.counter), hint(9));
        cache.record("/a", &stat(12, 4), exact(10));
        assert_eq!(cache.lookup("/a", 12).and_then(|e| e.counter), exact(10));
        cache.forget("/a");
        assert_eq!(cache.lookup("/a", 12), None);
        cache.observe("/b", &stat(-1, -1));
        assert_eq!(cache.lookup("/b", -1), None);
    }
}
