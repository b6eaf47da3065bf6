//! The write paths: locked (distributed lock + fenced write) and optimistic
//! (conditional write, retried on conflict).

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::shared::{encode_value, Shared, Snapshot};
use super::WriteMode;
use crate::backend::{LockOptions, PutMode};
use crate::error::{Error, ErrorKind, Operation, Result};

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
    value: T,
    result: R,
    json: serde_json::Value,
    /// The payload to write; `None` when `f` changed nothing.
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
        let bytes = if json == *snapshot.json {
            None
        } else {
            Some(shared.encode_bytes(&json)?)
        };
        Ok(Draft {
            value,
            result,
            json,
            bytes,
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
        // Under the lock, bring the local copy to the latest version.
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
        if !was_latest && strictness == Strictness::FailIfStale {
            guard.release_or_warn("an update that did not write").await;
            return Err(stale(shared));
        }
        let snapshot = shared.current();
        if let Err(error) = shared.ensure_writable(&snapshot) {
            guard.release_or_warn("an update that did not write").await;
            return Err(error);
        }
        let Draft {
            value,
            result,
            json,
            bytes,
        } = match Draft::new(shared, &snapshot, f) {
            Ok(draft) => draft,
            Err(error) => {
                guard.release_or_warn("an update that did not write").await;
                return Err(error);
            }
        };
        let Some(bytes) = bytes else {
            // Nothing changed, and the copy is the latest: no write needed.
            guard.release_or_warn("an update that did not write").await;
            return Ok(result);
        };
        let _gate = shared.write_gate.lock().await;
        let written = backend
            .fenced_put_and_release(
                &keys.payload,
                bytes,
                PutMode::Update(snapshot.version),
                guard,
            )
            .await;
        match written {
            Ok(version) => {
                shared.apply_local(version, value, json);
                return Ok(result);
            }
            // Only a writer that ignores the lock (an outside operator) can
            // get here: refresh under the lock again.
            Err(error) if error.kind() == ErrorKind::Conflict => {
                if strictness == Strictness::FailIfStale {
                    return Err(stale(shared));
                }
                tracing::debug!(attempt, key = %keys.payload, "outside write raced a locked update; retrying");
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
        let Draft {
            value,
            result,
            json,
            bytes,
        } = Draft::new(shared, &snapshot, f)?;
        let Some(bytes) = bytes else {
            // A no-op is only right if the copy it ran on is the latest.
            let latest = backend.get(&keys.payload).await?;
            if latest.as_ref().map(|l| l.version) == Some(snapshot.version) {
                return Ok(result);
            }
            let _gate = shared.write_gate.lock().await;
            shared.apply_read(latest.as_ref());
            if strictness == Strictness::FailIfStale {
                return Err(stale(shared));
            }
            continue;
        };
        let gate = shared.write_gate.lock().await;
        match backend
            .put(&keys.payload, bytes, PutMode::Update(snapshot.version))
            .await
        {
            Ok(version) => {
                shared.apply_local(version, value, json);
                return Ok(result);
            }
            Err(error) if error.kind() == ErrorKind::Conflict => {
                drop(gate);
                let latest = backend.get(&keys.payload).await?;
                {
                    let _gate = shared.write_gate.lock().await;
                    shared.apply_read(latest.as_ref());
                }
                if strictness == Strictness::FailIfStale {
                    return Err(stale(shared));
                }
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(error) => return Err(error),
        }
    }
    Err(gave_up(shared, attempts))
}

/// Jittered exponential backoff between optimistic retries, capped at 50 ms,
/// so contending writers spread out instead of colliding in lockstep.
fn backoff(attempt: u32) -> Duration {
    let cap_ms = 1u64 << attempt.min(6).saturating_sub(1);
    let cap_us = cap_ms.min(50) * 1000;
    Duration::from_micros(fastrand::u64(0..=cap_us))
}
