//! Versions, versioned values and fencing tokens.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A key's version. It never repeats for a key, not even across delete and
/// re-create, and a later write always has a larger version (ZooKeeper:
/// mzxid; etcd: mod_revision; memory: a cluster-wide counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(u64);

impl Version {
    /// Wraps a raw backend revision.
    pub const fn new(raw: u64) -> Self {
        Version(raw)
    }

    /// The raw number, as the backend's tools show it (zxid or revision).
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A value with the version it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The raw bytes stored under the key.
    pub value: Bytes,
    /// The version of that write.
    pub version: Version,
}

/// A lock's fencing token: strictly increasing across every acquisition of
/// the same lock, so a resource can refuse a writer holding an older token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw token (ZooKeeper: the lock node's czxid; etcd: the lock
    /// key's create_revision).
    pub const fn new(raw: u64) -> Self {
        FencingToken(raw)
    }

    /// The raw number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
