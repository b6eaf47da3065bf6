//! The core of sharedstate: the [`CoordinationBackend`] contract that every
//! coordination service implements, and the [`SharedState`] engine that
//! shares one typed struct through it.
#![deny(missing_docs)]

mod backend;
mod error;
mod key;
mod lock;
mod redact;
mod registration;
#[cfg(feature = "tls")]
pub mod tls;
mod version;

pub use backend::{
    Capabilities, CoordinationBackend, LockOptions, PutMode, SessionState, SessionStatus,
    WatchEvent, WatchStream,
};
pub use error::{Error, ErrorKind, Operation, Outcome, Result};
pub use key::{Key, MAX_KEY_BYTES};
pub use lock::{LockGuard, LockRelease};
pub use redact::{redact_url, REDACTED};
pub use registration::{Registration, RegistrationClose};
pub use version::{FencingToken, Version, Versioned};

pub use async_trait::async_trait;
pub use bytes::Bytes;

mod diff;
mod engine;

pub use diff::{diff, Change};
pub use engine::{
    listeners_of, ChangeHandler, ChangeSet, ListenerInfo, Origin, PayloadProblem, SharedState,
    SharedStateBuilder, StateEvent, Status, Subscription, UnknownFields, WriteMode,
};
