//! The write paths: locked (distributed lock + fenced write) and optimistic
//! (conditional write, retried on conflict).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::contention;
use super::merge::keep_unknown;
use super::shared::{encode_value, Decoded, Snapshot, StateCore};
use super::{UnknownFields, WriteMode};
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::state::{self, Landing, Limits, LockedSteps, Next, OptimisticSteps, Steps, UpdateError};
use crate::version::{Version, Versioned};

/// What the caller asked for: `update` refreshes and retries, `try_update`
/// fails with `Stale` when the local copy was not the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strictness {
    RefreshAndRetry,
    FailIfStale,
}

pub(crate) async fn update<T, R>(
    shared: &Arc<StateCore<T>>,
    f: &mut (dyn FnMut(&mut T) -> R + Send),
    strictness: Strictness,
) -> Result<R>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let _serial = shared.update_lock.lock().await;
    let limits = Limits {
        lock_timeout: shared.config.lock_timeout,
        // The backend bounds its own calls.
        request_timeout: None,
        max_attempts: shared.config.max_attempts,
    };
    let mut steps = Engine {
        shared,
        f,
        strictness,
    };
    let (backend, keys) = (shared.backend.as_ref(), &shared.keys);
    let done = match shared.config.write_mode {
        WriteMode::Locked => state::run_locked(backend, keys, &limits, &mut steps).await,
        WriteMode::Optimistic => state::run_optimistic(backend, keys, &limits, &mut steps).await,
    };
    done.map_err(|ended| engine_error(shared, ended))
}

/// `f` applied to a copy of a snapshot, encoded for writing.
struct Draft<T, R> {
    result: R,
    /// The new value, its JSON, and the payload to write (`T`'s JSON merged
    /// into the payload read, unless unknown fields are dropped).
    decoded: Decoded<T>,
    /// The payload's bytes; `None` when `f` changed nothing.
    bytes: Option<bytes::Bytes>,
}

impl<T, R> Draft<T, R>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    fn new(
        shared: &StateCore<T>,
        snapshot: &Snapshot<T>,
        f: &mut (dyn FnMut(&mut T) -> R + Send),
    ) -> Result<Self> {
        let mut value = (*snapshot.value).clone();
        let result = f(&mut value);
        let json = encode_value(&shared.keys.payload, &value)?;
        if json == *snapshot.json {
            // Nothing T knows changed: nothing to write, whatever else the
            // payload holds.
            let decoded = Decoded {
                value,
                json: snapshot.json.clone(),
                raw: snapshot.raw.clone(),
            };
            return Ok(Draft {
                result,
                decoded,
                bytes: None,
            });
        }
        let payload = match shared.config.unknown_fields {
            UnknownFields::Keep => keep_unknown(&snapshot.raw, &snapshot.json, json.clone()),
            UnknownFields::Drop => json.clone(),
        };
        let bytes = shared.encode_bytes(&payload)?;
        Ok(Draft {
            result,
            decoded: Decoded::new(value, json, payload),
            bytes: Some(bytes),
        })
    }
}

fn stale(shared: &StateCore<impl Sized>) -> Error {
    Error::new(ErrorKind::Stale, Operation::Update)
        .with_key(&shared.keys.payload)
        .with_message("the local copy was not the latest; it has been refreshed")
}

fn gave_up(shared: &StateCore<impl Sized>, attempts: u32) -> Error {
    Error::new(ErrorKind::Conflict, Operation::Update)
        .with_key(&shared.keys.payload)
        .with_message(format!("gave up after {attempts} conflicting attempts"))
}

/// The engine's part of an update loop of [`state`](crate::state): the
/// write gate, the freshness proof, the snapshot install, and reading what
/// a write whose answer was lost did.
struct Engine<'a, T, R> {
    shared: &'a Arc<StateCore<T>>,
    f: &'a mut (dyn FnMut(&mut T) -> R + Send),
    strictness: Strictness,
}

/// How an engine update ends early; the loop's errors carry the engine's
/// own errors as `Refused`.
type Ended = UpdateError<Error>;

/// The loop's error as the engine's.
fn engine_error(shared: &StateCore<impl Sized>, ended: Ended) -> Error {
    match ended {
        UpdateError::Refused(error)
        | UpdateError::LockLost(error)
        | UpdateError::Backend { error, .. } => error,
        UpdateError::GaveUp { attempts } => gave_up(shared, attempts),
        // Neither happens: the engine's loops are unbounded, and its part
        // handles a missing payload itself. Said plainly all the same.
        UpdateError::TimedOut { after, .. } => Error::new(ErrorKind::Timeout, Operation::Update)
            .with_key(&shared.keys.payload)
            .with_message(format!("no answer within {after:?}")),
        UpdateError::Missing => {
            Error::new(ErrorKind::NotFound, Operation::Update).with_key(&shared.keys.payload)
        }
    }
}

impl<'a, T, R> Engine<'a, T, R>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// `f` applied to `snapshot`: the write it needs, or the update's end
    /// when it changed nothing.
    fn draft(&mut self, snapshot: &Snapshot<T>) -> Next<Draft<T, R>, R, Error> {
        let drafted = self
            .shared
            .ensure_writable(snapshot)
            .and_then(|()| Draft::new(self.shared, snapshot, self.f));
        match drafted {
            Err(error) => Next::Done(Err(UpdateError::Refused(error))),
            Ok(mut draft) => match draft.bytes.take() {
                Some(bytes) => Next::Write {
                    bytes,
                    expected: snapshot.version,
                    draft,
                },
                // Nothing changed: no write needed (the caller's part made
                // sure the copy is the latest).
                None => Next::Done(Ok(draft.result)),
            },
        }
    }

    fn stale(&self) -> Ended {
        UpdateError::Refused(stale(self.shared))
    }
}

impl<'a, T, R> Steps for Engine<'a, T, R>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Output = R;
    type Draft = Draft<T, R>;
    type Refusal = Error;
    /// Held by a local write from before it is sent until its result is
    /// applied, so the watcher cannot label our own write `Remote`.
    type Gate = tokio::sync::MutexGuard<'a, ()>;

    fn gate(&self) -> impl std::future::Future<Output = Self::Gate> + Send {
        let shared: &'a StateCore<T> = self.shared;
        shared.write_gate.lock()
    }

    fn written(&mut self, version: Version, draft: Draft<T, R>, landing: Landing) -> R {
        let shared = self.shared;
        if let (WriteMode::Optimistic, Landing::Answered { sent_at }) =
            (shared.config.write_mode, landing)
        {
            // What the optimistic writers' waits scale with.
            shared.contention.observe_write(sent_at.elapsed());
        }
        shared.apply_local(version, draft.decoded);
        shared.proof.prove(landing.proven_at());
        draft.result
    }

    async fn unknown(
        &mut self,
        expected: Version,
        bytes: &Bytes,
        trust_our_bytes: bool,
        error: Error,
    ) -> Result<Option<(Version, Instant)>> {
        Ok(
            match resolve_unknown(self.shared, expected, bytes, trust_our_bytes, error).await? {
                Landed { version, asked_at } => Some((version, asked_at)),
                NotLanded => None,
            },
        )
    }
}
impl<T, R> LockedSteps for Engine<'_, T, R>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    fn before_lock(&mut self) -> std::result::Result<(), Ended> {
        self.shared
            .ensure_writable(&self.shared.current())
            .map_err(UpdateError::Refused)
    }

    /// Under the lock, brings the local copy to the latest version (the
    /// read is evidence from `asked_at`), then drafts the write on it.
    async fn after_read(
        &mut self,
        read: Option<Versioned>,
        asked_at: Instant,
    ) -> Next<Draft<T, R>, R, Error> {
        let shared = self.shared;
        let before = shared.current();
        let was_latest = before.problem.is_none()
            && read.as_ref().map(|l| l.version) == Some(before.newest_seen);
        if !was_latest {
            let _gate = shared.write_gate.lock().await;
            shared.apply_read(read.as_ref());
        }
        shared.proof.prove(asked_at);
        if !was_latest && self.strictness == Strictness::FailIfStale {
            return Next::Done(Err(self.stale()));
        }
        self.draft(&shared.current())
    }

    fn conflicted(&mut self, _: u32) -> std::result::Result<(), Ended> {
        match self.strictness {
            Strictness::FailIfStale => Err(self.stale()),
            Strictness::RefreshAndRetry => Ok(()),
        }
    }
}

impl<T, R> OptimisticSteps for Engine<'_, T, R>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Drafts the write on the local copy, without a read; a no-op is only
    /// right if that copy is the latest, which a linearizable read checks.
    async fn propose(&mut self, _: u32) -> Next<Draft<T, R>, R, Error> {
        let shared = self.shared;
        let snapshot = shared.current();
        let next = self.draft(&snapshot);
        if !matches!(next, Next::Done(Ok(_))) {
            return next;
        }
        let asked_at = Instant::now();
        let latest = match shared.backend.get_linearizable(&shared.keys.payload).await {
            Ok(latest) => latest,
            Err(error) => return Next::Done(Err(UpdateError::Refused(error))),
        };
        if latest.as_ref().map(|l| l.version) == Some(snapshot.version)
            && snapshot.problem.is_none()
        {
            shared.proof.prove(asked_at);
            return next;
        }
        refresh(shared, latest.as_ref(), asked_at).await;
        match self.strictness {
            Strictness::FailIfStale => Next::Done(Err(self.stale())),
            Strictness::RefreshAndRetry => Next::Retry,
        }
    }

    /// Catches up with the version that won (see the `contention` module).
    async fn conflicted(
        &mut self,
        expected: Version,
        conflict: &Error,
        attempt: u32,
    ) -> std::result::Result<(), Ended> {
        let shared = self.shared;
        let read_latest = async {
            let asked_at = Instant::now();
            let latest = shared.backend.get(&shared.keys.payload).await?;
            refresh(shared, latest.as_ref(), asked_at).await;
            Ok(())
        };
        if self.strictness == Strictness::FailIfStale {
            read_latest.await.map_err(UpdateError::Refused)?;
            return Err(self.stale());
        }
        let waiting = contention::Waiting {
            contention: &shared.contention,
            newest_seen: || shared.current().newest_seen,
            closed: &shared.closed,
            key: &shared.keys.payload,
        };
        contention::after_conflict(waiting, expected, conflict, attempt, read_latest)
            .await
            .map_err(UpdateError::Refused)
    }
}

/// What the service shows after a write whose answer was lost.
enum Resolution {
    /// The payload is the one we wrote, at `version`, read at `asked_at`.
    Landed { version: Version, asked_at: Instant },
    /// The payload is still at the expected version: the write did not land
    /// (a late landing of it would fail its condition once we write again).
    NotLanded,
}
use Resolution::{Landed, NotLanded};

/// Re-reads the payload after a write at `expected` whose outcome is
/// unknown, and says what happened; `error` is returned (outcome unknown)
/// when the service shows neither our write nor the old version. With
/// `trust_our_bytes` (locked writers: no writer that takes the lock can
/// have written in between) our bytes at a newer version count as landed;
/// optimistic writers pass false: another writer may have written the same
/// bytes, and claiming them would lose its update.
async fn resolve_unknown<T>(
    shared: &Arc<StateCore<T>>,
    expected: Version,
    bytes: &Bytes,
    trust_our_bytes: bool,
    error: Error,
) -> Result<Resolution>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let asked_at = Instant::now();
    let Ok(latest) = shared.backend.get_linearizable(&shared.keys.payload).await else {
        // Still unreachable: nothing is known.
        return Err(error);
    };
    match &latest {
        Some(found) if found.version == expected => {
            shared.proof.prove(asked_at);
            Ok(NotLanded)
        }
        Some(found) if trust_our_bytes && found.value == *bytes => Ok(Landed {
            version: found.version,
            asked_at,
        }),
        _ => {
            refresh(shared, latest.as_ref(), asked_at).await;
            Err(error.with_message(
                "the answer to the write was lost and the payload has changed since; \
                 the local copy has been refreshed",
            ))
        }
    }
}

/// Applies a fresh read (sent at `asked_at`) to the local copy.
async fn refresh<T>(shared: &StateCore<T>, latest: Option<&Versioned>, asked_at: Instant)
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let _gate = shared.write_gate.lock().await;
    shared.apply_read(latest);
    shared.proof.prove(asked_at);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<F: Send>(_: &F) {}

    /// Updates are spawned (`tokio::spawn`) by applications: the loop and
    /// the engine's part must keep the future `Send`. Fails to compile
    /// otherwise.
    #[test]
    fn an_update_can_be_spawned() {
        fn check(shared: &Arc<StateCore<u32>>, f: &mut (dyn FnMut(&mut u32) + Send)) {
            assert_send(&update(shared, f, Strictness::RefreshAndRetry));
        }
        let _ = check;
    }
}
