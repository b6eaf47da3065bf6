//! The live registrations of one client, kept to re-create them on every
//! new session.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::error::{Error, ErrorKind, Operation, Result};
use crate::key::Key;

/// One live registration as a [`Registry`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded<M = ()> {
    /// The registered key.
    pub key: Key,
    /// The value recorded last: what a re-creation on a new session writes.
    pub value: Bytes,
    /// The backend's own bookkeeping for this registration (etcd: the lease
    /// the key was last created with); `()` when it needs none.
    pub extra: M,
}

/// The live registrations of one client, by id: what a backend re-creates
/// after a new session (a new epoch), and nothing it has closed.
///
/// The registry is plain data: each backend keeps it under its own lock
/// (a blocking mutex when no request is made while holding it, an async
/// one when the re-creation must not interleave with an update) and keeps
/// its service's create and delete. The common rules are here:
///
/// - ids are handed out by [`insert`](Self::insert), start at 1 and are
///   never reused, so a closed registration's id never names a newer one;
/// - [`remove`](Self::remove) on close (and on the drop of a handle or of a
///   `register` call abandoned midway) is what stops the re-creations;
/// - [`record_value`](Self::record_value) keeps the latest value, so a
///   re-creation that races an update writes the update's value;
/// - [`ids`](Self::ids) and [`snapshot`](Self::snapshot) list what to
///   re-create, in registration order, without holding the lock across the
///   requests.
#[derive(Debug)]
pub struct Registry<M = ()> {
    entries: BTreeMap<u64, Recorded<M>>,
    last_id: u64,
}

impl<M> Default for Registry<M> {
    fn default() -> Self {
        Registry {
            entries: BTreeMap::new(),
            last_id: 0,
        }
    }
}

impl<M> Registry<M> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a live registration of `key` with `value`; returns its id.
    pub fn insert(&mut self, key: Key, value: Bytes, extra: M) -> u64 {
        self.last_id += 1;
        let id = self.last_id;
        self.entries.insert(id, Recorded { key, value, extra });
        id
    }

    /// Registration `id`, while it is live.
    pub fn get(&self, id: u64) -> Option<&Recorded<M>> {
        self.entries.get(&id)
    }

    /// Registration `id`, while it is live, to change its bookkeeping.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut Recorded<M>> {
        self.entries.get_mut(&id)
    }

    /// Records `value` as registration `id`'s latest value (what the next
    /// re-creation writes) and returns the entry.
    ///
    /// # Errors
    ///
    /// `Closed` (operation `UpdateRegistration`, on `key`) when the
    /// registration was closed: an update never brings it back.
    pub fn record_value(&mut self, id: u64, key: &Key, value: Bytes) -> Result<&mut Recorded<M>> {
        match self.entries.get_mut(&id) {
            Some(entry) => {
                entry.value = value;
                Ok(entry)
            }
            None => Err(Error::new(ErrorKind::Closed, Operation::UpdateRegistration)
                .with_key(key)
                .with_message("the registration was closed")),
        }
    }

    /// Stops keeping registration `id` alive; returns what was recorded
    /// (`None` when it was removed already).
    pub fn remove(&mut self, id: u64) -> Option<Recorded<M>> {
        self.entries.remove(&id)
    }

    /// Forgets every registration (the client closes).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// How many registrations are live.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no registration is live.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The live registrations' ids, in registration order.
    pub fn ids(&self) -> Vec<u64> {
        self.entries.keys().copied().collect()
    }

    /// The live registrations, in registration order, to re-create them
    /// one by one while the registry stays locked (an async lock).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut Recorded<M>)> {
        self.entries.iter_mut().map(|(id, entry)| (*id, entry))
    }

    /// True when some live registration satisfies `pending` (for example:
    /// not created on the current session yet).
    pub fn any(&self, pending: impl Fn(&Recorded<M>) -> bool) -> bool {
        self.entries.values().any(pending)
    }
}

impl<M: Clone> Registry<M> {
    /// A copy of the live registrations, in registration order: what to
    /// re-create on a new session after the lock is let go.
    pub fn snapshot(&self) -> Vec<(u64, Recorded<M>)> {
        self.entries
            .iter()
            .map(|(id, entry)| (*id, entry.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key::new(name).expect("key")
    }

    #[test]
    fn ids_are_never_reused_and_removal_stops_the_recreation() {
        let mut registry = Registry::new();
        let a = registry.insert(key("/a"), Bytes::from_static(b"1"), ());
        let b = registry.insert(key("/b"), Bytes::from_static(b"2"), ());
        assert_ne!(a, b);
        assert!(registry.remove(a).is_some());
        assert!(registry.remove(a).is_none(), "removed twice");
        let c = registry.insert(key("/c"), Bytes::from_static(b"3"), ());
        assert!(c != a && c != b, "id {c} reused");
        assert_eq!(registry.ids(), vec![b, c]);
        let keys: Vec<String> = registry
            .snapshot()
            .into_iter()
            .map(|(_, entry)| entry.key.as_str().to_owned())
            .collect();
        assert_eq!(keys, ["/b", "/c"]);
        assert_eq!(registry.len(), 2);
        registry.clear();
        assert!(registry.is_empty());
        assert!(registry.snapshot().is_empty());
    }

    #[test]
    fn the_latest_value_is_what_a_recreation_writes() {
        let mut registry = Registry::new();
        let id = registry.insert(key("/a"), Bytes::from_static(b"old"), 0_i64);
        let entry = registry
            .record_value(id, &key("/a"), Bytes::from_static(b"new"))
            .expect("live");
        entry.extra = 7;
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].1.value, Bytes::from_static(b"new"));
        assert_eq!(snapshot[0].1.extra, 7);
        assert!(registry.any(|entry| entry.extra == 7));
        assert!(!registry.any(|entry| entry.extra == 0));
    }

    #[test]
    fn updating_a_closed_registration_fails_with_closed() {
        let mut registry: Registry = Registry::new();
        let id = registry.insert(key("/a"), Bytes::from_static(b"1"), ());
        registry.remove(id);
        let refused = registry
            .record_value(id, &key("/a"), Bytes::from_static(b"2"))
            .expect_err("closed");
        assert_eq!(refused.kind(), ErrorKind::Closed);
        assert_eq!(refused.operation(), Operation::UpdateRegistration);
        assert!(registry.is_empty(), "an update brought it back");
    }

    #[test]
    fn iter_mut_changes_the_bookkeeping_in_place() {
        let mut registry = Registry::new();
        registry.insert(key("/a"), Bytes::new(), 0_i64);
        registry.insert(key("/b"), Bytes::new(), 0_i64);
        for (_, entry) in registry.iter_mut() {
            entry.extra = 5;
        }
        assert!(!registry.any(|entry| entry.extra != 5));
    }
}
