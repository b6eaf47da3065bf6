//! For backend implementers: everything a [`CoordinationBackend`] is built
//! from, apart from what a user of the engine calls.
//!
//! A user needs none of this module: [`SharedState`](crate::SharedState),
//! the backend crates' constructors and the contract's types at the crate
//! root are enough. A backend author needs the contract (re-exported here,
//! so that `use sharedstate_core::backend::*` is all an implementation
//! imports), the handles' constructors ([`lock_guard`], [`disarm`],
//! [`registration`]), the traits behind the handles ([`LockRelease`],
//! [`RegistrationClose`]), and the kit every backend shares:
//!
//! - [`SessionPublisher`]: the session status channel, enforcing the event
//!   order the engine relies on (a new epoch is `Connected` before anything
//!   is resynced on it; one epoch per session; nothing after `Closed`).
//! - [`Registry`]: the live registrations of one client by id, what a new
//!   session re-creates (each backend keeps its service's create and
//!   delete).
//! - [`watch_delivery`]: the bounded latest-value delivery of a watch's
//!   events ([`WatchSender`] and the [`WatchStream`] it feeds), folding
//!   changes without losing a deletion or a resync.
//! - [`Backoff`]: the one jittered exponential backoff for retry loops.
//! - [`check_size`]: the `ValueTooLarge` check made before anything is sent.
//! - [`spawn_cleanup`]: the drop-then-spawn release of a handle dropped
//!   without an explicit release (what [`LockGuard`] and [`Registration`]
//!   do on drop).
//!
//! `ARCHITECTURE.md` at the repository's root shows where each backend
//! uses them.

mod backoff;
pub(crate) mod cleanup;
mod delivery;
mod registry;
mod session;

pub use backoff::Backoff;
pub use cleanup::spawn_cleanup;
pub use delivery::{watch_delivery, WatchSender};
pub use registry::{Recorded, Registry};
pub use session::{ConnectedNotice, SessionPublisher};

#[doc(no_inline)]
pub use crate::contract::{
    Capabilities, CoordinationBackend, LockOptions, PutMode, SessionState, SessionStatus,
    WatchEvent, WatchStream,
};
#[doc(no_inline)]
pub use crate::error::{Error, ErrorKind, Operation, Outcome, Result};
#[doc(no_inline)]
pub use crate::key::Key;
#[doc(no_inline)]
pub use crate::lock::LockGuard;
pub use crate::lock::LockRelease;
#[doc(no_inline)]
pub use crate::registration::Registration;
pub use crate::registration::RegistrationClose;
#[doc(no_inline)]
pub use crate::version::{FencingToken, Version, Versioned};

/// The `#[async_trait]` attribute the contract's traits are declared with:
/// implementations use the same one.
pub use async_trait::async_trait;
/// The byte buffer of every value the contract carries.
pub use bytes::Bytes;

use tokio_util::sync::CancellationToken;

/// A guard for the lock on `key`, held through the backend object `owner`
/// (ZooKeeper: the sequential node's path; etcd: the lock key), with the
/// acquisition's fencing `token`; cancelling `lost` fires the guard's
/// [`lost()`](LockGuard::lost), and `releaser` gives the lock back on
/// [`release`](LockGuard::release) or drop.
pub fn lock_guard(
    key: Key,
    owner: String,
    token: FencingToken,
    lost: CancellationToken,
    releaser: Box<dyn LockRelease>,
) -> LockGuard {
    LockGuard::new(key, owner, token, lost, releaser)
}

/// For backends that release the lock themselves, in the same atomic
/// operation as a write: takes the releaser out of `guard` so that dropping
/// it does nothing more. `None` when it was already taken.
pub fn disarm(guard: LockGuard) -> Option<Box<dyn LockRelease>> {
    guard.disarm()
}

/// A [`Registration`] handle for the live registration of `key`; `closer`
/// updates and removes it.
pub fn registration(key: Key, closer: Box<dyn RegistrationClose>) -> Registration {
    Registration::new(key, closer)
}

/// `ValueTooLarge` (before anything is sent) when `value` is longer than
/// `max_value_bytes`, the backend's
/// [`Capabilities::max_value_bytes`]; the message names both sizes.
///
/// # Errors
///
/// `ValueTooLarge`, carrying `operation` and `key`.
pub fn check_size(
    operation: Operation,
    key: &Key,
    value: &[u8],
    max_value_bytes: usize,
) -> Result<()> {
    if value.len() > max_value_bytes {
        return Err(Error::new(ErrorKind::ValueTooLarge, operation)
            .with_key(key)
            .with_message(format!(
                "value of {} bytes exceeds the limit of {max_value_bytes} bytes",
                value.len()
            )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_check_is_inclusive_and_names_both_sizes() {
        let key = Key::new("/k").expect("key");
        assert!(check_size(Operation::Put, &key, b"1234", 4).is_ok());
        let refused = check_size(Operation::Put, &key, b"12345", 4).expect_err("too large");
        assert_eq!(refused.kind(), ErrorKind::ValueTooLarge);
        let text = refused.to_string();
        assert!(
            text.contains("5 bytes") && text.contains("limit of 4"),
            "{text}"
        );
    }
}
