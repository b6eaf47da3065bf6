//! The core of sharedstate: the [`CoordinationBackend`] contract that every
//! coordination service implements, and the [`SharedState`] engine that
//! shares one typed struct through it.
//!
//! The crate root is what a user calls; what a backend implementation needs
//! beyond it (the handles' constructors, the shared kit, `async_trait` and
//! `Bytes`) is in [`backend`].
#![deny(missing_docs)]

pub mod backend;
mod contract;
mod error;
mod key;
mod lock;
mod redact;
mod registration;
pub mod state;
#[cfg(feature = "tls")]
pub mod tls;
mod version;

pub use contract::{
    Capabilities, CoordinationBackend, LockOptions, PutMode, SessionState, SessionStatus,
    WatchEvent, WatchStream,
};
pub use error::{Error, ErrorKind, Operation, Outcome, Result};
pub use key::{Key, MAX_KEY_BYTES};
pub use lock::LockGuard;
pub use redact::{redact_url, REDACTED};
pub use registration::Registration;
pub use version::{FencingToken, Version, Versioned};

mod diff;
mod engine;

pub use diff::{diff, Change};
pub use engine::{
    instances_of, ChangeHandler, ChangeSet, InstanceInfo, Origin, PayloadProblem, SharedState,
    SharedStateBuilder, StateEvent, Status, Subscription, UnknownFields, WriteMode,
};
#[allow(deprecated)]
pub use engine::{listeners_of, ListenerInfo};
