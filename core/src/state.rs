//! One state as keys and bytes, without its type: the key layout every
//! [`SharedState`](crate::SharedState) uses, and locked and optimistic
//! updates of the payload for tools that work on JSON (the CLI) rather
//! than on a Rust type.
//!
//! The locked update follows the engine's protocol for
//! [`WriteMode::Locked`](crate::WriteMode::Locked): take
//! [`StateKeys::lock`], read [`StateKeys::payload`] under it, and write
//! with [`fenced_put_and_release`](CoordinationBackend::fenced_put_and_release)
//! conditioned on the version read, so it never interleaves with an
//! instance's update. A conflict can only come from a writer that ignores
//! the lock; it is retried.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::contract::{CoordinationBackend, LockOptions, PutMode};
use crate::error::{Error, ErrorKind, Result};
use crate::key::Key;
use crate::lock::LockGuard;
use crate::version::{Version, Versioned};

/// The keys under a state's path: `<root>/payload` (the JSON document),
/// `<root>/lock` (the update lock) and `<root>/listeners` (one ephemeral
/// registration per instance).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateKeys {
    /// The state's path.
    pub root: Key,
    /// The key that holds the payload.
    pub payload: Key,
    /// The key every locked update locks.
    pub lock: Key,
    /// The parent of the instances' registrations.
    pub listeners: Key,
}

impl StateKeys {
    /// The layout under `root`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when a child key would be too long.
    pub fn new(root: Key) -> Result<Self> {
        Ok(StateKeys {
            payload: root.child("payload")?,
            lock: root.child("lock")?,
            listeners: root.child("listeners")?,
            root,
        })
    }
}

/// Bounds of an untyped update.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateOptions {
    /// How long to wait for the lock (locked updates).
    pub lock_timeout: Duration,
    /// How long one read or write may take before the update gives up
    /// with [`UpdateError::TimedOut`]; the lock wait is bounded by
    /// `lock_timeout` plus this.
    pub request_timeout: Duration,
    /// How many times a conflict is retried before
    /// [`UpdateError::GaveUp`].
    pub max_attempts: u32,
}

impl UpdateOptions {
    /// Options with these bounds.
    pub const fn new(lock_timeout: Duration, request_timeout: Duration, max_attempts: u32) -> Self {
        UpdateOptions {
            lock_timeout,
            request_timeout,
            max_attempts,
        }
    }
}

/// What an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A new payload was written at this version.
    Changed(Version),
    /// The change asked for nothing; the payload stays at this version.
    Unchanged(Version),
}

/// Which step of an update failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Taking the lock (and the read made with it).
    Lock,
    /// Reading the payload.
    Read,
    /// Writing the payload.
    Write,
}

/// Why an untyped update wrote nothing (or may have: see each variant).
#[non_exhaustive]
#[derive(Debug)]
pub enum UpdateError<E> {
    /// There is no payload to update.
    Missing,
    /// The change refused the current payload; nothing was written.
    Refused(E),
    /// No answer within the bound at `step`. At [`Step::Write`] the write
    /// may still land (its outcome is unknown).
    TimedOut {
        /// Where the update waited.
        step: Step,
        /// The bound that passed.
        after: Duration,
    },
    /// The lock was lost (session expired) before the write; nothing was
    /// written.
    LockLost(Error),
    /// The backend failed at `step`.
    Backend {
        /// Where it failed.
        step: Step,
        /// The backend's error (its outcome says whether a write may
        /// have happened).
        error: Error,
    },
    /// Writers that ignore the lock changed the payload on every one of
    /// `attempts` tries; nothing was written.
    GaveUp {
        /// How many tries were made.
        attempts: u32,
    },
}

async fn bounded<T>(
    step: Step,
    after: Duration,
    call: impl Future<Output = Result<T>>,
) -> std::result::Result<T, UpdateError<std::convert::Infallible>> {
    match tokio::time::timeout(after, call).await {
        Err(_) => Err(UpdateError::TimedOut { step, after }),
        Ok(Err(error)) if error.kind() == ErrorKind::LockLost => Err(UpdateError::LockLost(error)),
        Ok(Err(error)) => Err(UpdateError::Backend { step, error }),
        Ok(Ok(value)) => Ok(value),
    }
}

fn widen<E>(error: UpdateError<std::convert::Infallible>) -> UpdateError<E> {
    match error {
        UpdateError::Missing => UpdateError::Missing,
        UpdateError::Refused(never) => match never {},
        UpdateError::TimedOut { step, after } => UpdateError::TimedOut { step, after },
        UpdateError::LockLost(error) => UpdateError::LockLost(error),
        UpdateError::Backend { step, error } => UpdateError::Backend { step, error },
        UpdateError::GaveUp { attempts } => UpdateError::GaveUp { attempts },
    }
}

/// Under the state's lock: reads the payload, lets `change` compute the new
/// bytes from it (`Ok(None)`: nothing to write), and writes them with one
/// fenced conditional write that also releases the lock. Retries (up to
/// `max_attempts`) when a writer that ignores the lock changed the payload
/// in between. The lock is released on every path.
///
/// # Errors
///
/// See [`UpdateError`]; a `Backend` error at [`Step::Write`] whose outcome
/// is unknown may have been written.
pub async fn locked_update<E>(
    backend: &dyn CoordinationBackend,
    keys: &StateKeys,
    options: &UpdateOptions,
    mut change: impl FnMut(&Versioned) -> std::result::Result<Option<Bytes>, E>,
) -> std::result::Result<Written, UpdateError<E>> {
    let attempts = options.max_attempts.max(1);
    let lock_options = LockOptions::with_timeout(options.lock_timeout);
    for attempt in 1..=attempts {
        // The backend bounds the wait for the lock itself; this also
        // bounds a server that stops answering.
        let (guard, current) = bounded(
            Step::Lock,
            options.lock_timeout + options.request_timeout,
            backend.lock_and_get(&keys.lock, lock_options.clone(), &keys.payload),
        )
        .await
        .map_err(widen)?;
        let Some(current) = current else {
            release(guard).await;
            return Err(UpdateError::Missing);
        };
        let new = match changed(&current, &mut change) {
            Ok(new) => new,
            Err(done) => {
                release(guard).await;
                return done;
            }
        };
        let write = backend.fenced_put_and_release(
            &keys.payload,
            new,
            PutMode::Update(current.version),
            guard,
        );
        let written = bounded(Step::Write, options.request_timeout, write).await;
        if let Some(done) = settled(written) {
            return done;
        }
        tracing::debug!(attempt, key = %keys.payload, "a writer that ignores the lock raced a locked update; retrying");
    }
    Err(UpdateError::GaveUp { attempts })
}

/// Without the lock: reads the payload, lets `change` compute the new
/// bytes, and writes them only if the payload is still at the version read
/// (`put` with [`PutMode::Update`]); retries on conflict up to
/// `max_attempts`. Interleaves safely with locked updates (a locked
/// update's fenced write fails on the version), but not fairly: under
/// constant locked writes it may give up.
///
/// # Errors
///
/// As [`locked_update`], without `LockLost`.
pub async fn optimistic_update<E>(
    backend: &dyn CoordinationBackend,
    keys: &StateKeys,
    options: &UpdateOptions,
    mut change: impl FnMut(&Versioned) -> std::result::Result<Option<Bytes>, E>,
) -> std::result::Result<Written, UpdateError<E>> {
    let attempts = options.max_attempts.max(1);
    for attempt in 1..=attempts {
        let current = bounded(
            Step::Read,
            options.request_timeout,
            backend.get_linearizable(&keys.payload),
        )
        .await
        .map_err(widen)?
        .ok_or(UpdateError::Missing)?;
        let new = match changed(&current, &mut change) {
            Ok(new) => new,
            Err(done) => return done,
        };
        let write = backend.put(&keys.payload, new, PutMode::Update(current.version));
        let written = bounded(Step::Write, options.request_timeout, write).await;
        if let Some(done) = settled(written) {
            return done;
        }
        tracing::debug!(attempt, key = %keys.payload, "the payload moved on during an optimistic update; retrying");
    }
    Err(UpdateError::GaveUp { attempts })
}

type Outcome<E> = std::result::Result<Written, UpdateError<E>>;

/// The new payload `change` asks for, or the update's end: `Unchanged` when
/// it asks for nothing, `Refused` when it refuses.
fn changed<E>(
    current: &Versioned,
    change: &mut impl FnMut(&Versioned) -> std::result::Result<Option<Bytes>, E>,
) -> std::result::Result<Bytes, Outcome<E>> {
    match change(current) {
        Ok(Some(new)) => Ok(new),
        Ok(None) => Err(Ok(Written::Unchanged(current.version))),
        Err(refused) => Err(Err(UpdateError::Refused(refused))),
    }
}

/// The update's end after a write, or `None` to try again (a conflict: the
/// payload moved on since it was read).
fn settled<E>(
    written: std::result::Result<Version, UpdateError<std::convert::Infallible>>,
) -> Option<Outcome<E>> {
    match written {
        Ok(version) => Some(Ok(Written::Changed(version))),
        Err(UpdateError::Backend { error, .. }) if error.kind() == ErrorKind::Conflict => None,
        Err(error) => Some(Err(widen(error))),
    }
}

async fn release(guard: LockGuard) {
    if let Err(error) = guard.release().await {
        tracing::debug!(%error, "releasing the lock failed; it goes with the session");
    }
}
