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
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::contract::{CoordinationBackend, LockOptions, PutMode};
use crate::error::{Error, ErrorKind, Outcome, Result};
use crate::key::Key;
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
    /// The parent of the instances' registrations (one per open
    /// instance, not per change handler); the stored name `listeners`
    /// stays, and so does this field's, which names the key.
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

/// The bounds one run of the update loop keeps. The CLI's updates bound
/// every call ([`UpdateOptions`]); the engine's do not (the backend bounds
/// its own calls), so `request_timeout` is optional here.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// How long the backend waits for the lock.
    pub lock_timeout: Duration,
    /// The bound on each read and write (and, added to `lock_timeout`, on
    /// the lock wait); `None`: unbounded.
    pub request_timeout: Option<Duration>,
    /// Tries before [`UpdateError::GaveUp`].
    pub max_attempts: u32,
}

impl From<&UpdateOptions> for Limits {
    fn from(options: &UpdateOptions) -> Self {
        Limits {
            lock_timeout: options.lock_timeout,
            request_timeout: Some(options.request_timeout),
            max_attempts: options.max_attempts.max(1),
        }
    }
}

/// `call`, within `after` when there is a bound.
async fn bounded<T>(
    step: Step,
    after: Option<Duration>,
    call: impl Future<Output = Result<T>>,
) -> std::result::Result<Result<T>, UpdateError<std::convert::Infallible>> {
    match after {
        None => Ok(call.await),
        Some(after) => tokio::time::timeout(after, call)
            .await
            .map_err(|_| UpdateError::TimedOut { step, after }),
    }
}

/// A backend error at `step` as the update's error.
fn failed<E>(step: Step, error: Error) -> UpdateError<E> {
    if error.kind() == ErrorKind::LockLost {
        UpdateError::LockLost(error)
    } else {
        UpdateError::Backend { step, error }
    }
}

/// `call` within its bound, its error as the update's.
async fn checked<T, E>(
    step: Step,
    after: Option<Duration>,
    call: impl Future<Output = Result<T>>,
) -> std::result::Result<T, UpdateError<E>> {
    bounded(step, after, call)
        .await
        .map_err(widen)?
        .map_err(|error| failed(step, error))
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

/// What the caller's part decided before a write.
pub(crate) enum Next<D, O, E> {
    /// Write `bytes` on condition that the payload is still at `expected`;
    /// `draft` goes to [`Steps::written`] if it lands.
    Write {
        /// The new payload.
        bytes: Bytes,
        /// The version it replaces.
        expected: Version,
        /// What the caller keeps for the success.
        draft: D,
    },
    /// The update ends here (the lock, if held, is released).
    Done(std::result::Result<O, UpdateError<E>>),
    /// Try again (counts as an attempt).
    Retry,
}

/// How a write is known to have landed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Landing {
    /// The write's answer said so; it was sent at `sent_at`.
    Answered {
        /// When the write was sent.
        sent_at: Instant,
    },
    /// Its answer was lost; a read sent at `asked_at` found it.
    Found {
        /// When that read was sent.
        asked_at: Instant,
    },
}

impl Landing {
    /// When the request that showed the write was sent: evidence from then.
    pub(crate) fn proven_at(self) -> Instant {
        match self {
            Landing::Answered { sent_at } => sent_at,
            Landing::Found { asked_at } => asked_at,
        }
    }
}

/// What an update loop asks its caller at each step, shared by the locked
/// and the optimistic loop. The untyped updates of this module have a plain
/// part (read, apply the change, write); the engine's part adds the
/// freshness proof, the snapshot install, the write gate and the
/// resolution of unknown outcomes.
pub(crate) trait Steps {
    /// What a successful update returns.
    type Output;
    /// What the caller keeps from its change until the write lands.
    type Draft;
    /// Why the caller's part ended the update.
    type Refusal;
    /// Held from before the write is sent until its outcome is handled.
    type Gate;

    /// Taken before the write is sent. (Not an `async fn`: the future
    /// need not hold `self`, which the engine's part cannot share between
    /// threads.)
    fn gate(&self) -> impl Future<Output = Self::Gate> + Send;

    /// The write landed at `version`, as `landing` shows.
    fn written(&mut self, version: Version, draft: Self::Draft, landing: Landing) -> Self::Output;

    /// The write's outcome is unknown: `Ok(Some(..))` when it landed (at
    /// that version, shown by a request sent then), `Ok(None)` when it did
    /// not (try again), `Err` to end the update with that error. With
    /// `trust_our_bytes`, our bytes at a newer version count as ours.
    async fn unknown(
        &mut self,
        expected: Version,
        bytes: &Bytes,
        trust_our_bytes: bool,
        error: Error,
    ) -> Result<Option<(Version, Instant)>>;
}

/// The locked loop's own steps.
pub(crate) trait LockedSteps: Steps {
    /// Before each attempt takes the lock.
    fn before_lock(&mut self) -> std::result::Result<(), UpdateError<Self::Refusal>>;

    /// The payload read under the lock (sent at `asked_at`): what to
    /// write, or the update's end.
    async fn after_read(
        &mut self,
        read: Option<Versioned>,
        asked_at: Instant,
    ) -> Next<Self::Draft, Self::Output, Self::Refusal>;

    /// A writer that ignores the lock beat attempt `attempt`; `Err` ends
    /// the update.
    fn conflicted(&mut self, attempt: u32) -> std::result::Result<(), UpdateError<Self::Refusal>>;
}

/// The optimistic loop's own steps.
pub(crate) trait OptimisticSteps: Steps {
    /// What to write at attempt `attempt`, and on which version.
    async fn propose(&mut self, attempt: u32) -> Next<Self::Draft, Self::Output, Self::Refusal>;

    /// The write at `expected` lost to another (`conflict`); `Err` ends the
    /// update, `Ok` tries again.
    async fn conflicted(
        &mut self,
        expected: Version,
        conflict: &Error,
        attempt: u32,
    ) -> std::result::Result<(), UpdateError<Self::Refusal>>;
}

/// The locked update: take the lock with a read of the payload, let the
/// caller decide, write with one fenced conditional write that releases
/// the lock, and handle its outcome. The lock is released on every path.
pub(crate) async fn run_locked<S: LockedSteps>(
    backend: &dyn CoordinationBackend,
    keys: &StateKeys,
    limits: &Limits,
    steps: &mut S,
) -> std::result::Result<S::Output, UpdateError<S::Refusal>> {
    let lock_options = LockOptions::with_timeout(limits.lock_timeout);
    let lock_bound = limits.request_timeout.map(|r| limits.lock_timeout + r);
    for attempt in 1..=limits.max_attempts {
        steps.before_lock()?;
        // The read is sent after this instant: evidence from then. The
        // backend bounds the wait for the lock itself; `lock_bound` also
        // bounds a server that stops answering.
        let asked_at = Instant::now();
        let (guard, read) = checked(
            Step::Lock,
            lock_bound,
            backend.lock_and_get(&keys.lock, lock_options.clone(), &keys.payload),
        )
        .await?;
        let (bytes, expected, draft) = match steps.after_read(read, asked_at).await {
            Next::Write {
                bytes,
                expected,
                draft,
            } => (bytes, expected, draft),
            Next::Done(done) => {
                guard.release_or_warn("an update that did not write").await;
                return done;
            }
            Next::Retry => {
                guard.release_or_warn("an update that did not write").await;
                continue;
            }
        };
        let write = |bytes| {
            backend.fenced_put_and_release(&keys.payload, bytes, PutMode::Update(expected), guard)
        };
        let proposal = (bytes, expected, draft);
        // An unknown outcome: the lock is gone with the write (released, or
        // lost with the session), so a late landing of that write fails its
        // own lock check, and our bytes at a newer version are ours.
        match write_and_settle(steps, limits, proposal, write, true).await? {
            AfterWrite::Done(done) => return done,
            // Only a writer that ignores the lock (an outside operator) can
            // get here: refresh under the lock again.
            AfterWrite::Conflict(_) => {
                steps.conflicted(attempt)?;
                tracing::debug!(attempt, key = %keys.payload, "a writer that ignores the lock raced a locked update; retrying");
            }
            AfterWrite::NotLanded => {
                tracing::debug!(attempt, key = %keys.payload, "a locked write whose answer was lost did not land; retrying");
            }
        }
    }
    Err(UpdateError::GaveUp {
        attempts: limits.max_attempts,
    })
}

/// The optimistic update: let the caller propose a write on a version,
/// write it on condition that the payload is still there, and handle its
/// outcome.
pub(crate) async fn run_optimistic<S: OptimisticSteps>(
    backend: &dyn CoordinationBackend,
    keys: &StateKeys,
    limits: &Limits,
    steps: &mut S,
) -> std::result::Result<S::Output, UpdateError<S::Refusal>> {
    for attempt in 1..=limits.max_attempts {
        let (bytes, expected, draft) = match steps.propose(attempt).await {
            Next::Write {
                bytes,
                expected,
                draft,
            } => (bytes, expected, draft),
            Next::Done(done) => return done,
            Next::Retry => continue,
        };
        let write = |bytes| backend.put(&keys.payload, bytes, PutMode::Update(expected));
        let proposal = (bytes, expected, draft);
        // An unknown outcome: without the lock another writer may have
        // written the same bytes, so only an unchanged version is safe to
        // retry.
        match write_and_settle(steps, limits, proposal, write, false).await? {
            AfterWrite::Done(done) => return done,
            AfterWrite::Conflict(conflict) => {
                tracing::debug!(attempt, key = %keys.payload, "the payload moved on during an optimistic update; retrying");
                steps.conflicted(expected, &conflict, attempt).await?;
            }
            AfterWrite::NotLanded => {
                tracing::debug!(attempt, key = %keys.payload, "an optimistic write whose answer was lost did not land; retrying");
            }
        }
    }
    Err(UpdateError::GaveUp {
        attempts: limits.max_attempts,
    })
}

/// What a write's outcome means to either loop.
enum AfterWrite<O, E> {
    /// The update ends.
    Done(std::result::Result<O, UpdateError<E>>),
    /// Another write beat it (the loop's own conflict handling follows).
    Conflict(Error),
    /// Its answer was lost, and it did not land: try again.
    NotLanded,
}

/// Sends the write of `(bytes, expected, draft)` (`write` with the bytes)
/// under the caller's gate, within the request bound, and handles its
/// outcome for either loop: success, conflict, unknown (resolved by the
/// caller's part; `trust_our_bytes` as in [`Steps::unknown`]) or failure.
async fn write_and_settle<S, F>(
    steps: &mut S,
    limits: &Limits,
    (bytes, expected, draft): (Bytes, Version, S::Draft),
    write: impl FnOnce(Bytes) -> F,
    trust_our_bytes: bool,
) -> std::result::Result<AfterWrite<S::Output, S::Refusal>, UpdateError<S::Refusal>>
where
    S: Steps,
    F: Future<Output = Result<Version>>,
{
    let gate = steps.gate().await;
    let sent_at = Instant::now();
    let written = bounded(Step::Write, limits.request_timeout, write(bytes.clone()))
        .await
        .map_err(widen)?;
    Ok(match written {
        Ok(version) => {
            let output = steps.written(version, draft, Landing::Answered { sent_at });
            drop(gate);
            AfterWrite::Done(Ok(output))
        }
        Err(error) if error.kind() == ErrorKind::Conflict => {
            drop(gate);
            AfterWrite::Conflict(error)
        }
        Err(error) if error.outcome() == Outcome::Unknown => {
            drop(gate);
            match steps
                .unknown(expected, &bytes, trust_our_bytes, error)
                .await
            {
                Ok(Some((version, asked_at))) => AfterWrite::Done(Ok(steps.written(
                    version,
                    draft,
                    Landing::Found { asked_at },
                ))),
                Ok(None) => AfterWrite::NotLanded,
                Err(error) => AfterWrite::Done(Err(failed(Step::Write, error))),
            }
        }
        Err(error) => AfterWrite::Done(Err(failed(Step::Write, error))),
    })
}

/// The untyped updates' part: the change over the payload's bytes.
struct Untyped<'a, C> {
    backend: &'a dyn CoordinationBackend,
    keys: &'a StateKeys,
    request_timeout: Duration,
    change: C,
}

impl<C, E> Untyped<'_, C>
where
    C: FnMut(&Versioned) -> std::result::Result<Option<Bytes>, E>,
{
    /// The write `change` asks for on `current`, or the update's end:
    /// `Missing` without a payload, `Unchanged` when it asks for nothing,
    /// `Refused` when it refuses.
    fn next(&mut self, current: Option<Versioned>) -> Next<(), Written, E> {
        let Some(current) = current else {
            return Next::Done(Err(UpdateError::Missing));
        };
        match (self.change)(&current) {
            Ok(Some(bytes)) => Next::Write {
                bytes,
                expected: current.version,
                draft: (),
            },
            Ok(None) => Next::Done(Ok(Written::Unchanged(current.version))),
            Err(refused) => Next::Done(Err(UpdateError::Refused(refused))),
        }
    }
}

impl<C, E> Steps for Untyped<'_, C>
where
    C: FnMut(&Versioned) -> std::result::Result<Option<Bytes>, E>,
{
    type Output = Written;
    type Draft = ();
    type Refusal = E;
    type Gate = ();

    fn gate(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    fn written(&mut self, version: Version, (): (), _: Landing) -> Written {
        Written::Changed(version)
    }

    async fn unknown(
        &mut self,
        _: Version,
        _: &Bytes,
        _: bool,
        error: Error,
    ) -> Result<Option<(Version, Instant)>> {
        // Reported as is: the caller decides (the CLI says it may have
        // been written).
        Err(error)
    }
}

impl<C, E> LockedSteps for Untyped<'_, C>
where
    C: FnMut(&Versioned) -> std::result::Result<Option<Bytes>, E>,
{
    fn before_lock(&mut self) -> std::result::Result<(), UpdateError<E>> {
        Ok(())
    }

    async fn after_read(&mut self, read: Option<Versioned>, _: Instant) -> Next<(), Written, E> {
        self.next(read)
    }

    fn conflicted(&mut self, _: u32) -> std::result::Result<(), UpdateError<E>> {
        Ok(())
    }
}

impl<C, E> OptimisticSteps for Untyped<'_, C>
where
    C: FnMut(&Versioned) -> std::result::Result<Option<Bytes>, E>,
{
    async fn propose(&mut self, _: u32) -> Next<(), Written, E> {
        let read = checked(
            Step::Read,
            Some(self.request_timeout),
            self.backend.get_linearizable(&self.keys.payload),
        )
        .await;
        match read {
            Ok(current) => self.next(current),
            Err(error) => Next::Done(Err(error)),
        }
    }

    async fn conflicted(
        &mut self,
        _: Version,
        _: &Error,
        _: u32,
    ) -> std::result::Result<(), UpdateError<E>> {
        Ok(())
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
    change: impl FnMut(&Versioned) -> std::result::Result<Option<Bytes>, E>,
) -> std::result::Result<Written, UpdateError<E>> {
    let mut steps = Untyped {
        backend,
        keys,
        request_timeout: options.request_timeout,
        change,
    };
    run_locked(backend, keys, &options.into(), &mut steps).await
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
    change: impl FnMut(&Versioned) -> std::result::Result<Option<Bytes>, E>,
) -> std::result::Result<Written, UpdateError<E>> {
    let mut steps = Untyped {
        backend,
        keys,
        request_timeout: options.request_timeout,
        change,
    };
    run_optimistic(backend, keys, &options.into(), &mut steps).await
}
