//! Stands for a backend crate outside the sharedstate workspace: its
//! `tests/conformance.rs` runs the whole conformance suite with
//! `sharedstate-conformance` as its only test dependency (no tokio, no
//! async-trait, no sharedstate-core of its own). The backend itself is the
//! in-memory one, re-exported.
#![deny(missing_docs)]

pub use sharedstate_memory::{MemoryBackend, MemoryCluster};
