//! sharedstate: one typed struct shared by every instance of an application
//! through a coordination service (ZooKeeper, etcd, or in-memory).
#![deny(missing_docs)]

pub use sharedstate_core::*;
