//! The state every handle and the watcher task share: the snapshot, the
//! apply path that turns new versions into change sets, and freshness.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::events::{ChangeSet, Origin, Published, StateEvent, Subscription};
use super::freshness::Freshness;
use super::{Config, PayloadProblem};
use crate::backend::{CoordinationBackend, SessionStatus};
use crate::diff::diff;
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::key::Key;
use crate::version::{Version, Versioned};

/// The keys under a state's path.
#[derive(Debug, Clone)]
pub(crate) struct StateKeys {
    pub root: Key,
    pub payload: Key,
    pub lock: Key,
    pub listeners: Key,
}

impl StateKeys {
    pub fn new(root: Key) -> Result<Self> {
        Ok(StateKeys {
            payload: root.child("payload")?,
            lock: root.child("lock")?,
            listeners: root.child("listeners")?,
            root,
        })
    }
}

/// One immutable view of the state; replaced whole on every change.
#[derive(Debug)]
pub(crate) struct Snapshot<T> {
    pub value: Arc<T>,
    /// `value` as JSON (what change sets are computed on).
    pub json: Arc<Value>,
    /// Version of the last good payload (`value`).
    pub version: Version,
    /// Latest version observed, good or not.
    pub seen: Version,
    pub problem: Option<PayloadProblem>,
}

pub(crate) struct Shared<T> {
    pub backend: Arc<dyn CoordinationBackend>,
    pub keys: StateKeys,
    pub config: Config,
    pub instance_id: String,
    pub freshness: Freshness,
    pub session: watch::Receiver<SessionStatus>,
    /// Cancelled by `close()` or when the last handle drops.
    pub closed: CancellationToken,
    current: RwLock<Arc<Snapshot<T>>>,
    /// Serialises snapshot replacement and publication, so every subscriber
    /// sees change sets in version order. Never held across an await.
    apply: Mutex<()>,
    /// Held by a local write from before it is sent until its result is
    /// applied, so the watcher cannot label our own write `Remote`.
    pub write_gate: tokio::sync::Mutex<()>,
    /// Serialises this instance's updates.
    pub update_lock: tokio::sync::Mutex<()>,
    events: broadcast::Sender<Published>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Decodes a payload into `T` and its canonical JSON.
pub(crate) fn decode<T: DeserializeOwned + Serialize>(
    key: &Key,
    bytes: &[u8],
) -> Result<(T, Value)> {
    let parsed: Value = serde_json::from_slice(bytes).map_err(|e| {
        Error::new(ErrorKind::Decode, Operation::Decode)
            .with_key(key)
            .with_message(format!(
                "payload is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
            .with_source(e)
    })?;
    let value: T = serde_json::from_value(parsed).map_err(|e| {
        Error::new(ErrorKind::Decode, Operation::Decode)
            .with_key(key)
            .with_message(format!("payload does not match the state's type: {e}"))
            .with_source(e)
    })?;
    let json = encode_value(key, &value)?;
    Ok((value, json))
}

pub(crate) fn encode_value<T: Serialize>(key: &Key, value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| {
        Error::new(ErrorKind::Encode, Operation::Encode)
            .with_key(key)
            .with_source(e)
    })
}

impl<T> Shared<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backend: Arc<dyn CoordinationBackend>,
        keys: StateKeys,
        config: Config,
        instance_id: String,
        value: T,
        json: Value,
        version: Version,
    ) -> Self {
        let (events, _) = broadcast::channel(config.change_buffer.max(1));
        let session = backend.session();
        Shared {
            backend,
            keys,
            config,
            instance_id,
            freshness: Freshness::new_live(),
            session,
            closed: CancellationToken::new(),
            current: RwLock::new(Arc::new(Snapshot {
                value: Arc::new(value),
                json: Arc::new(json),
                version,
                seen: version,
                problem: None,
            })),
            apply: Mutex::new(()),
            write_gate: tokio::sync::Mutex::new(()),
            update_lock: tokio::sync::Mutex::new(()),
            events,
            task: Mutex::new(None),
        }
    }

    pub fn set_task(&self, task: tokio::task::JoinHandle<()>) {
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    pub fn take_task(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    pub fn current(&self) -> Arc<Snapshot<T>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, snapshot: Snapshot<T>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
    }

    fn publish(&self, event: StateEvent, version: Version, json: Option<Arc<Value>>) {
        // No receivers is fine: nobody subscribed.
        let _ = self.events.send(Published {
            event,
            version,
            json,
        });
    }

    /// Applies a payload seen on the service (watch, read, refresh).
    /// Returns false when it was not newer than what we have.
    pub fn apply_remote(&self, versioned: &Versioned) -> bool {
        let _apply = self.apply.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current();
        if versioned.version <= current.seen {
            return false;
        }
        match decode::<T>(&self.keys.payload, &versioned.value) {
            Ok((value, json)) => {
                self.install(&current, versioned.version, value, json, Origin::Remote);
            }
            Err(error) => {
                let message = error.to_string();
                tracing::warn!(key = %self.keys.payload, version = %versioned.version, %message,
                    "payload rejected; keeping the last good copy");
                self.replace(Snapshot {
                    value: current.value.clone(),
                    json: current.json.clone(),
                    version: current.version,
                    seen: versioned.version,
                    problem: Some(PayloadProblem::Undecodable {
                        version: versioned.version,
                        error: message.clone(),
                    }),
                });
                self.publish(
                    StateEvent::Rejected {
                        version: versioned.version,
                        error: message,
                    },
                    versioned.version,
                    None,
                );
            }
        }
        true
    }

    /// Applies this instance's own successful write.
    pub fn apply_local(&self, version: Version, value: T, json: Value) {
        let _apply = self.apply.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current();
        if version <= current.seen {
            return;
        }
        self.install(&current, version, value, json, Origin::Local);
    }

    fn install(
        &self,
        current: &Snapshot<T>,
        version: Version,
        value: T,
        json: Value,
        origin: Origin,
    ) {
        let changes = diff(&current.json, &json);
        let json = Arc::new(json);
        self.replace(Snapshot {
            value: Arc::new(value),
            json: json.clone(),
            version,
            seen: version,
            problem: None,
        });
        if !changes.is_empty() {
            self.publish(
                StateEvent::Changed(ChangeSet {
                    version,
                    origin,
                    changes,
                }),
                version,
                Some(json),
            );
        }
    }

    /// The payload is gone from the service.
    pub fn apply_deleted(&self) {
        let _apply = self.apply.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current();
        if matches!(current.problem, Some(PayloadProblem::Deleted)) {
            return;
        }
        tracing::warn!(key = %self.keys.payload, "payload deleted; keeping the last good copy");
        self.replace(Snapshot {
            value: current.value.clone(),
            json: current.json.clone(),
            version: current.version,
            seen: current.seen,
            problem: Some(PayloadProblem::Deleted),
        });
        self.publish(StateEvent::PayloadDeleted, current.seen, None);
    }

    /// Applies a fresh read of the payload, whatever it holds.
    pub fn apply_read(&self, read: Option<&Versioned>) {
        match read {
            Some(versioned) => {
                self.apply_remote(versioned);
            }
            None => self.apply_deleted(),
        }
    }

    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let _apply = self.apply.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current();
        let rx = self.events.subscribe();
        let weak = Arc::downgrade(self);
        let fallback = (current.version, current.json.clone());
        let view = Arc::new(move || match weak.upgrade() {
            Some(shared) => {
                let snapshot = shared.current();
                (snapshot.version, snapshot.json.clone())
            }
            None => fallback.clone(),
        });
        Subscription::new(
            rx,
            current.version,
            current.json.clone(),
            view,
            self.closed.clone(),
        )
    }

    /// Fails unless the local copy can be the base of a write.
    pub fn ensure_writable(&self, snapshot: &Snapshot<T>) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(Error::new(ErrorKind::Closed, Operation::Update).with_key(&self.keys.root));
        }
        match &snapshot.problem {
            None => Ok(()),
            Some(PayloadProblem::Undecodable { version, error }) => {
                Err(Error::new(ErrorKind::Decode, Operation::Update)
                    .with_key(&self.keys.payload)
                    .with_message(format!(
                        "the payload at version {version} does not decode ({error}); \
                         updates resume once a valid payload is written"
                    )))
            }
            Some(PayloadProblem::Deleted) => {
                Err(Error::new(ErrorKind::NotFound, Operation::Update)
                    .with_key(&self.keys.payload)
                    .with_message("the payload was deleted on the service"))
            }
        }
    }

    pub fn encode_bytes(&self, json: &Value) -> Result<Bytes> {
        serde_json::to_vec(json).map(Bytes::from).map_err(|e| {
            Error::new(ErrorKind::Encode, Operation::Encode)
                .with_key(&self.keys.payload)
                .with_source(e)
        })
    }
}
