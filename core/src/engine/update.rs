//! The write paths: locked (distributed lock + fenced write) and optimistic
//! (conditional write, retried on conflict).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::contention;
use super::merge::keep_unknown;
use super::shared::{encode_value, Decoded, Shared, Snapshot};
use super::{UnknownFields, WriteMode};
use crate::backend::{LockOptions, PutMode};
use crate::error::{Error, ErrorKind, Operation, Outcome, Result};
use crate::version::Version;

/// What the caller asked for: `update` refreshes and retries, `try_update`
/// fails with `Stale` when the local copy was not the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strictness {
    RefreshAndRetry,
    FailIfStale,
}

pub(crate) async fn update<T, R>(
    shared: &Arc<Shared<T>>,
    f: &mut (dyn FnMut(&mut T) -> R + Send),
    strictness: Strictness,
) -> Result<R>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let _serial = shared.update_lock.lock().await;
    match shared.config.write_mode {
        WriteMode::Locked => locked(shared, f, strictness).await,
        WriteMode::Optimistic => optimistic(shared, f, strictness).await,
    }
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
        shared: &Shared<T>,
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

fn stale(shared: &Shared<impl Sized>) -> Error {
    Error::new(ErrorKind::Stale, Operation::Update)
        .with_key(&shared.keys.payload)
        .with_message("the local copy was not the latest; it has been refreshed")
}

fn gave_up(shared: &Shared<impl Sized>, attempts: u32) -> Error {
    Error::new(ErrorKind::Conflict, Operation::Update)
        .with_key(&shared.keys.payload)
        .with_message(format!("gave up after {attempts} conflicting attempts"))
}

async fn locked<T, R>(
    shared: &Arc<Shared<T>>,
    f: &mut (dyn FnMut(&mut T) -> R + Send),
    strictness: Strictness,
) -> Result<R>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let backend = &shared.backend;
    let keys = &shared.keys;
    let attempts = shared.config.max_attempts;
    for attempt in 1..=attempts {
        shared.ensure_writable(&shared.current())?;
        let options = LockOptions::with_timeout(shared.config.lock_timeout);
        // Under the lock, bring the local copy to the latest version. The
        // read is sent after this instant: evidence from then.
        let asked_at = Instant::now();
        let (guard, latest) = backend
            .lock_and_get(&keys.lock, options, &keys.payload)
            .await?;
        let before = shared.current();
        let was_latest =
            before.problem.is_none() && latest.as_ref().map(|l| l.version) == Some(before.seen);
        if !was_latest {
            let _gate = shared.write_gate.lock().await;
            shared.apply_read(latest.as_ref());
        }
        shared.proof.prove(asked_at);
        if !was_latest && strictness == Strictness::FailIfStale {
            guard.release_or_warn("an update that did not write").await;
            return Err(stale(shared));
        }
        let snapshot = shared.current();
        let draft = match shared
            .ensure_writable(&snapshot)
            .and_then(|()| Draft::new(shared, &snapshot, f))
        {
            Ok(draft) => draft,
            Err(error) => {
                guard.release_or_warn("an update that did not write").await;
                return Err(error);
            }
        };
        let Some(bytes) = draft.bytes.clone() else {
            // Nothing changed, and the copy is the latest: no write needed.
            guard.release_or_warn("an update that did not write").await;
            return Ok(draft.result);
        };
        let expected = snapshot.version;
        let gate = shared.write_gate.lock().await;
        let sent_at = Instant::now();
        let written = backend
            .fenced_put_and_release(
                &keys.payload,
                bytes.clone(),
                PutMode::Update(expected),
                guard,
            )
            .await;
        match written {
            Ok(version) => {
                shared.apply_local(version, draft.decoded);
                shared.proof.prove(sent_at);
                return Ok(draft.result);
            }
            // Only a writer that ignores the lock (an outside operator) can
            // get here: refresh under the lock again.
            Err(error) if error.kind() == ErrorKind::Conflict => {
                drop(gate);
                if strictness == Strictness::FailIfStale {
                    return Err(stale(shared));
                }
                tracing::debug!(attempt, key = %keys.payload, "outside write raced a locked update; retrying");
            }
            Err(error) if error.outcome() == Outcome::Unknown => {
                drop(gate);
                // The lock is gone with the write (released, or lost with
                // the session): a late landing of that write fails its own
                // lock check, so only what the service shows now counts.
                match resolve_unknown(shared, expected, &bytes, true, error).await? {
                    Landed { version, asked_at } => {
                        shared.apply_local(version, draft.decoded);
                        shared.proof.prove(asked_at);
                        return Ok(draft.result);
                    }
                    NotLanded => {
                        tracing::debug!(attempt, key = %keys.payload, "a locked write whose answer was lost did not land; retrying");
                    }
                }
            }
            Err(error) => return Err(error),
        }
    }
    Err(gave_up(shared, attempts))
}

async fn optimistic<T, R>(
    shared: &Arc<Shared<T>>,
    f: &mut (dyn FnMut(&mut T) -> R + Send),
    strictness: Strictness,
) -> Result<R>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let backend = &shared.backend;
    let keys = &shared.keys;
    let attempts = shared.config.max_attempts;
    for attempt in 1..=attempts {
        let snapshot = shared.current();
        shared.ensure_writable(&snapshot)?;
        let draft = Draft::new(shared, &snapshot, f)?;
        let Some(bytes) = draft.bytes.clone() else {
            // A no-op is only right if the copy it ran on is the latest:
            // check with a linearizable read.
            let asked_at = Instant::now();
            let latest = backend.get_linearizable(&keys.payload).await?;
            if latest.as_ref().map(|l| l.version) == Some(snapshot.version)
                && snapshot.problem.is_none()
            {
                shared.proof.prove(asked_at);
                return Ok(draft.result);
            }
            refresh(shared, latest.as_ref(), asked_at).await;
            if strictness == Strictness::FailIfStale {
                return Err(stale(shared));
            }
            continue;
        };
        let expected = snapshot.version;
        let gate = shared.write_gate.lock().await;
        let sent_at = Instant::now();
        match backend
            .put(&keys.payload, bytes.clone(), PutMode::Update(expected))
            .await
        {
            Ok(version) => {
                shared.contention.observe_write(sent_at.elapsed());
                shared.apply_local(version, draft.decoded);
                shared.proof.prove(sent_at);
                return Ok(draft.result);
            }
            Err(error) if error.kind() == ErrorKind::Conflict => {
                drop(gate);
                let read_latest = async {
                    let asked_at = Instant::now();
                    let latest = backend.get(&keys.payload).await?;
                    refresh(shared, latest.as_ref(), asked_at).await;
                    Ok(())
                };
                if strictness == Strictness::FailIfStale {
                    read_latest.await?;
                    return Err(stale(shared));
                }
                contention::after_conflict(shared, expected, &error, attempt, read_latest).await?;
            }
            Err(error) if error.outcome() == Outcome::Unknown => {
                drop(gate);
                // Without the lock another instance may have written the
                // same bytes: an unchanged version is safe to retry (the
                // write is conditional), anything else is reported as is.
                match resolve_unknown(shared, expected, &bytes, false, error).await? {
                    Landed { version, asked_at } => {
                        shared.apply_local(version, draft.decoded);
                        shared.proof.prove(asked_at);
                        return Ok(draft.result);
                    }
                    NotLanded => {
                        tracing::debug!(attempt, key = %keys.payload, "an optimistic write whose answer was lost did not land; retrying");
                    }
                }
            }
            Err(error) => return Err(error),
        }
    }
    Err(gave_up(shared, attempts))
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
    shared: &Arc<Shared<T>>,
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
async fn refresh<T>(
    shared: &Shared<T>,
    latest: Option<&crate::version::Versioned>,
    asked_at: Instant,
) where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let _gate = shared.write_gate.lock().await;
    shared.apply_read(latest);
    shared.proof.prove(asked_at);
}
