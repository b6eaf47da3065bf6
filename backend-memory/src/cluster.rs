//! The shared cluster state and its data tree.
//!
//! Everything a cluster holds (keys, sessions, locks, watchers) lives in one
//! [`State`] behind one `std::sync::Mutex`. The mutex is only ever held for
//! a few in-memory steps, never across an `.await`, and every notification it
//! sends goes through a non-blocking channel, so no caller can stall another.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use bytes::Bytes;
use sharedstate_core::{Error, ErrorKind, Key, Operation, PutMode, Result, Version, Versioned};

use crate::client::MemoryBackend;
use crate::lock::LockEntry;
use crate::session::ClientRecord;
use crate::watch::Watcher;

/// Default for [`MemoryCluster::with_max_value_bytes`]: 1 MiB, close to
/// ZooKeeper's default `jute.maxbuffer`.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Identifies one session on the cluster (never reused).
pub(crate) type SessionId = u64;
/// Identifies one client (one [`MemoryBackend`]) on the cluster.
pub(crate) type ClientId = u64;

/// An in-process coordination cluster: a hierarchical key space with
/// versions, watches, locks and ephemeral registrations, shared by any
/// number of clients.
///
/// `MemoryCluster` is a cheap handle (an `Arc` inside): clones share the same
/// data. Each [`client`](Self::client) is a separate session, so tests can
/// play several application instances against one cluster and inject faults
/// into any of them.
///
/// ```
/// use sharedstate_core::backend::Bytes;
/// use sharedstate_core::{CoordinationBackend, Key, PutMode};
/// use sharedstate_memory::MemoryCluster;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sharedstate_core::Result<()> {
/// let cluster = MemoryCluster::new();
/// let (a, b) = (cluster.client(), cluster.client());
/// let key = Key::new("/app/flags")?;
/// let version = a.put(&key, Bytes::from_static(b"on"), PutMode::Create).await?;
/// let seen = b.get(&key).await?.expect("written by a");
/// assert_eq!((seen.value.as_ref(), seen.version), (&b"on"[..], version));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryCluster {
    shared: Arc<ClusterCore>,
}

impl MemoryCluster {
    /// A new, empty cluster with the default limits
    /// ([`DEFAULT_MAX_VALUE_BYTES`]).
    pub fn new() -> Self {
        MemoryCluster::with_max_value_bytes(DEFAULT_MAX_VALUE_BYTES)
    }

    /// A new, empty cluster that refuses values larger than `max` bytes with
    /// `ErrorKind::ValueTooLarge`.
    ///
    /// ```
    /// use sharedstate_core::backend::Bytes;
    /// use sharedstate_core::{CoordinationBackend, ErrorKind, Key, PutMode};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let client = sharedstate_memory::MemoryCluster::with_max_value_bytes(4).client();
    /// let key = Key::new("/small").unwrap();
    /// let err = client
    ///     .put(&key, Bytes::from_static(b"12345"), PutMode::Overwrite)
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    /// # }
    /// ```
    pub fn with_max_value_bytes(max: usize) -> Self {
        MemoryCluster {
            shared: Arc::new(ClusterCore {
                max_value_bytes: max,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The process-global cluster called `name`, created on first use.
    ///
    /// Every call with the same name returns a handle to the same cluster,
    /// so two `memory://name` connections in one process share their data.
    /// Named clusters live until the process ends.
    pub fn named(name: &str) -> Self {
        static NAMED: OnceLock<Mutex<HashMap<String, MemoryCluster>>> = OnceLock::new();
        let registry = NAMED.get_or_init(Default::default);
        let mut registry = registry.lock().unwrap_or_else(PoisonError::into_inner);
        registry.entry(name.to_owned()).or_default().clone()
    }

    /// A new client with its own session (epoch 0, `Connected`).
    ///
    /// Dropping the client closes it, like [`close`]: its session ends and
    /// its locks and registrations go.
    ///
    /// [`close`]: sharedstate_core::CoordinationBackend::close
    pub fn client(&self) -> MemoryBackend {
        MemoryBackend::open(Arc::clone(&self.shared))
    }

    /// The largest value this cluster accepts, in bytes.
    pub fn max_value_bytes(&self) -> usize {
        self.shared.max_value_bytes
    }

    /// True when both handles point at the same cluster.
    pub fn same_cluster(&self, other: &MemoryCluster) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Default for MemoryCluster {
    fn default() -> Self {
        MemoryCluster::new()
    }
}

impl fmt::Debug for MemoryCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("MemoryCluster")
            .field("max_value_bytes", &self.shared.max_value_bytes)
            .field("keys", &state.nodes.len())
            .field("clients", &state.clients.len())
            .field("revision", &state.revision)
            .finish()
    }
}

/// The cluster itself: what its handles (`MemoryCluster`), clients, guards
/// and registrations share (unrelated to the engine's `StateCore`).
pub(crate) struct ClusterCore {
    pub(crate) max_value_bytes: usize,
    state: Mutex<State>,
}

impl ClusterCore {
    /// Locks the cluster state. Never hold the guard across an `.await`.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the tree half-written
        // in a way later calls would trip over, so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `ValueTooLarge` when `value` is over the limit.
    pub(crate) fn check_size(&self, value: &Bytes, op: Operation, key: &Key) -> Result<()> {
        sharedstate_core::backend::check_size(op, key, value, self.max_value_bytes)
    }
}

impl fmt::Debug for ClusterCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCore")
            .field("max_value_bytes", &self.max_value_bytes)
            .finish_non_exhaustive()
    }
}

/// One stored key.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) value: Bytes,
    pub(crate) version: u64,
    /// The session that owns this ephemeral key, `None` for persistent keys.
    pub(crate) ephemeral_owner: Option<SessionId>,
}

impl Node {
    pub(crate) fn versioned(&self) -> Versioned {
        Versioned {
            value: self.value.clone(),
            version: Version::new(self.version),
        }
    }
}

/// The whole cluster: data tree, clients and sessions, locks, watchers.
#[derive(Default)]
pub(crate) struct State {
    /// The cluster-wide revision: bumped by every change, so versions and
    /// fencing tokens never repeat.
    pub(crate) revision: u64,
    /// Last id handed out for clients, sessions, waiters, registrations.
    next_id: u64,
    pub(crate) nodes: BTreeMap<String, Node>,
    pub(crate) clients: HashMap<ClientId, ClientRecord>,
    pub(crate) locks: HashMap<String, LockEntry>,
    pub(crate) watchers: HashMap<String, Vec<Watcher>>,
}

impl State {
    pub(crate) fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn get(&self, key: &str) -> Option<Versioned> {
        self.nodes.get(key).map(Node::versioned)
    }

    /// Writes `value` under `key` as `mode` says, creating missing parents
    /// as empty persistent keys. `ephemeral` makes a newly created key
    /// ephemeral for that session (an existing key keeps its owner).
    pub(crate) fn put(
        &mut self,
        key: &Key,
        value: Bytes,
        mode: PutMode,
        ephemeral: Option<SessionId>,
        op: Operation,
    ) -> Result<Version> {
        let current = self.nodes.get(key.as_str()).map(|n| n.version);
        match (mode, current) {
            (PutMode::Create, Some(_)) => {
                return Err(error(ErrorKind::AlreadyExists, op, key));
            }
            (PutMode::Update(expected), None) => {
                return Err(error(ErrorKind::Conflict, op, key)
                    .with_message(format!("expected version {expected}")));
            }
            (PutMode::Update(expected), Some(actual)) if expected.as_u64() != actual => {
                return Err(error(ErrorKind::Conflict, op, key)
                    .with_message(format!("expected version {expected}"))
                    .with_current_version(Some(Version::new(actual))));
            }
            _ => {}
        }
        if current.is_none() {
            self.create_parents(key, op)?;
        }
        let version = self.next_revision();
        let owner = match self.nodes.get(key.as_str()) {
            Some(node) => node.ephemeral_owner,
            None => ephemeral,
        };
        self.nodes.insert(
            key.as_str().to_owned(),
            Node {
                value,
                version,
                ephemeral_owner: owner,
            },
        );
        self.notify(key.as_str());
        Ok(Version::new(version))
    }

    /// Creates the missing ancestors of `key`, after checking that none of
    /// them is ephemeral (ephemeral keys cannot have children, as in
    /// ZooKeeper) so that a refused write changes nothing.
    fn create_parents(&mut self, key: &Key, op: Operation) -> Result<()> {
        let ancestors = ancestors(key.as_str());
        for parent in &ancestors {
            if let Some(node) = self.nodes.get(*parent) {
                if node.ephemeral_owner.is_some() {
                    return Err(error(ErrorKind::Unsupported, op, key).with_message(format!(
                        "the parent {parent} is ephemeral and cannot have children"
                    )));
                }
            }
        }
        for parent in ancestors {
            if !self.nodes.contains_key(parent) {
                let version = self.next_revision();
                self.nodes.insert(
                    parent.to_owned(),
                    Node {
                        value: Bytes::new(),
                        version,
                        ephemeral_owner: None,
                    },
                );
                self.notify(parent);
            }
        }
        Ok(())
    }

    pub(crate) fn delete(
        &mut self,
        key: &Key,
        expected: Option<Version>,
        op: Operation,
    ) -> Result<()> {
        let Some(node) = self.nodes.get(key.as_str()) else {
            return Err(error(ErrorKind::NotFound, op, key));
        };
        if let Some(expected) = expected {
            if expected.as_u64() != node.version {
                return Err(error(ErrorKind::Conflict, op, key)
                    .with_message(format!("expected version {expected}"))
                    .with_current_version(Some(Version::new(node.version))));
            }
        }
        if self.has_children(key.as_str()) {
            return Err(error(ErrorKind::NotEmpty, op, key));
        }
        self.remove(key.as_str());
        Ok(())
    }

    /// Removes a key that has no children and tells its watchers.
    pub(crate) fn remove(&mut self, key: &str) {
        if self.nodes.remove(key).is_some() {
            self.next_revision();
            self.notify(key);
        }
    }

    fn descendants<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a str> + 'a {
        let prefix = format!("{key}/");
        self.nodes
            .range(prefix.clone()..)
            .map(|(k, _)| k.as_str())
            .take_while(move |k| k.starts_with(&prefix))
    }

    fn has_children(&self, key: &str) -> bool {
        self.descendants(key).next().is_some()
    }

    /// Names of the direct children of `key`, sorted; empty when the key
    /// does not exist.
    pub(crate) fn children(&self, key: &str) -> Vec<String> {
        let skip = key.len() + 1;
        let mut names: Vec<String> = self
            .descendants(key)
            .filter_map(|k| {
                let rest = &k[skip..];
                (!rest.contains('/')).then(|| rest.to_owned())
            })
            .collect();
        names.sort();
        names
    }
}

/// `/a/b/c` -> `["/a", "/a/b"]`.
fn ancestors(key: &str) -> Vec<&str> {
    key.match_indices('/')
        .skip(1)
        .map(|(idx, _)| &key[..idx])
        .collect()
}

/// An error about `key` raised by `op`.
pub(crate) fn error(kind: ErrorKind, op: Operation, key: &Key) -> Error {
    Error::new(kind, op).with_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_of_a_key() {
        assert_eq!(ancestors("/a"), Vec::<&str>::new());
        assert_eq!(ancestors("/a/b/c"), vec!["/a", "/a/b"]);
    }

    #[test]
    fn children_are_direct_and_sorted() {
        let mut state = State::default();
        for k in ["/p/b", "/p/a/x", "/p/c", "/p-other/z", "/p/a"] {
            let key = Key::new(k).unwrap();
            state
                .put(&key, Bytes::new(), PutMode::Overwrite, None, Operation::Put)
                .unwrap();
        }
        assert_eq!(state.children("/p"), vec!["a", "b", "c"]);
        assert_eq!(state.children("/p/a"), vec!["x"]);
        assert!(state.children("/missing").is_empty());
    }

    #[test]
    fn named_clusters_are_shared() {
        let a = MemoryCluster::named("cluster-unit-test");
        let b = MemoryCluster::named("cluster-unit-test");
        let c = MemoryCluster::named("cluster-unit-test-other");
        assert!(a.same_cluster(&b));
        assert!(!a.same_cluster(&c));
        assert!(!MemoryCluster::new().same_cluster(&MemoryCluster::new()));
    }
}
