//! Opening a `SharedState`: find or create the payload, register, watch.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::instances::InstanceInfo;
use super::report::{Report, Schedule};
use super::shared::{decode, encode_value, StateCore, StateKeys};
use super::watcher::Reporter;
use super::{watcher, Config, SharedState, UnknownFields, WriteMode};
use crate::backend::{CoordinationBackend, PutMode, WatchEvent, WatchStream};
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::key::Key;
use crate::version::Versioned;

/// Default bound on how long `read()` serves an unverified copy.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(30);

/// Default bound on how often an instance rewrites its instance
/// registration with what it applied.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// How long the first watch item (the current state) may take at open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Creating a payload races with other instances doing the same; a few
/// rounds of create-or-read always settle it.
const OPEN_CREATE_ROUNDS: u32 = 5;

/// Configures and opens a [`SharedState`]; from [`SharedState::builder`].
#[must_use = "a builder does nothing until .open().await"]
pub struct SharedStateBuilder<T> {
    backend: Arc<dyn CoordinationBackend>,
    path: String,
    initial: Option<T>,
    expect_existing: Option<Duration>,
    config: Config,
    register: bool,
    _type: PhantomData<fn() -> T>,
}

impl<T> SharedStateBuilder<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    pub(super) fn new(backend: Arc<dyn CoordinationBackend>, path: &str) -> Self {
        SharedStateBuilder {
            backend,
            path: path.to_owned(),
            initial: None,
            expect_existing: None,
            config: Config {
                max_staleness: DEFAULT_MAX_STALENESS,
                write_mode: WriteMode::Locked,
                lock_timeout: Duration::from_secs(30),
                max_attempts: 100,
                change_buffer: 1024,
                unknown_fields: UnknownFields::Keep,
                report_interval: Some(DEFAULT_REPORT_INTERVAL),
            },
            register: true,
            _type: PhantomData,
        }
    }

    /// The value written when no payload exists yet. Several instances
    /// opening at once all succeed; exactly one creates the payload.
    pub fn initial(mut self, value: T) -> Self {
        self.initial = Some(value);
        self
    }

    /// Waits up to `timeout` for another party to create the payload
    /// instead of creating it.
    pub fn expect_existing(mut self, timeout: Duration) -> Self {
        self.expect_existing = Some(timeout);
        self
    }

    /// How long `read()` serves a copy that could not be verified against
    /// the service (default 30 s).
    pub fn max_staleness(mut self, bound: Duration) -> Self {
        self.config.max_staleness = bound;
        self
    }

    /// Locked (default) or optimistic writes.
    pub fn write_mode(mut self, mode: WriteMode) -> Self {
        self.config.write_mode = mode;
        self
    }

    /// How long a locked update waits for the lock (default 30 s).
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.config.lock_timeout = timeout;
        self
    }

    /// How many conflicting attempts an update makes before failing with
    /// `Conflict` (default 100, at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts.max(1);
        self
    }

    /// How many events a subscriber may fall behind before it gets `Lagged`
    /// (default 1024).
    pub fn change_buffer(mut self, events: usize) -> Self {
        self.config.change_buffer = events.max(1);
        self
    }

    /// Whether to register this instance under `<path>/listeners` (default
    /// true; tools that only look can turn it off).
    pub fn register_instance(mut self, register: bool) -> Self {
        self.register = register;
        self
    }

    /// The old name of [`register_instance`](Self::register_instance).
    #[deprecated(note = "renamed to `register_instance`: \"listeners\" named the instances")]
    pub fn register_listener(self, register: bool) -> Self {
        self.register_instance(register)
    }

    /// What updates do with members of the payload that `T` does not know,
    /// such as fields a newer version of the application added (default
    /// [`UnknownFields::Keep`]).
    ///
    /// With `Keep`, an update changes only what `T` changed: the payload it
    /// writes is `T`'s new JSON merged into the payload this instance read.
    /// Members of objects that `T` does not know are kept as they were, at
    /// any depth. Inside arrays, the array is aligned with `T`'s view of it
    /// (the alignment change sets use): elements `T` left equal are written
    /// as read, an element `T` changed in place keeps the unknown members of
    /// the element it replaces, inserted elements are as `T` made them and
    /// removed ones go. Members `T` removed (that it knows) go.
    ///
    /// With `Drop` (strict mode), an update writes `T`'s JSON only: unknown
    /// members disappear with this instance's next write that changes
    /// something.
    ///
    /// Either way, change sets show `T`'s view: a change to a member `T`
    /// does not know is no change to this instance.
    pub fn unknown_fields(mut self, unknown: UnknownFields) -> Self {
        self.config.unknown_fields = unknown;
        self
    }

    /// How often at most this instance rewrites its instance registration
    /// with the version it applied and its problem with the payload, for
    /// [`instances`](SharedState::instances) and `sharedstate status`
    /// (default 1 s). The first report after a quiet period waits a random
    /// share (up to half) of the interval, so a fleet spreads its writes:
    /// one payload change costs each instance one write, a burst within an
    /// interval at most two. `Duration::ZERO` reports every change at once
    /// (one write in flight at a time).
    pub fn report_interval(mut self, interval: Duration) -> Self {
        self.config.report_interval = Some(interval);
        self
    }

    /// Whether this instance reports what it applied in its instance
    /// registration (default true). Off, the registration carries no
    /// applied version and is written only when the instance opens (and
    /// re-created on a new session).
    pub fn report_applied(mut self, report: bool) -> Self {
        self.config.report_interval = match (report, self.config.report_interval) {
            (false, _) => None,
            (true, Some(interval)) => Some(interval),
            (true, None) => Some(DEFAULT_REPORT_INTERVAL),
        };
        self
    }

    /// Opens the state: watches the payload, creates it from `initial` when
    /// missing, decodes it, registers this instance, and starts following
    /// changes.
    ///
    /// # Errors
    ///
    /// `InvalidKey` for a bad path; `NotFound` when there is no payload and
    /// no `initial` (or `expect_existing` timed out); `Decode` when the
    /// payload does not decode as `T`; backend errors such as `Unavailable`.
    pub async fn open(self) -> Result<SharedState<T>> {
        let root = Key::new(self.path.as_str())?;
        let keys = StateKeys::new(root)?;
        let backend = self.backend;
        let opened_epoch = backend.session().borrow().epoch;
        // The watch's first state is read after this instant: the first
        // evidence that the copy is current.
        let mut proven_at = Instant::now();
        let mut stream = backend.watch(&keys.payload).await?;
        let first = first_state(&keys, &mut stream).await?;
        let versioned = match first {
            Some(found) => found,
            None => match (&self.initial, self.expect_existing) {
                (Some(initial), _) => create_or_read(backend.as_ref(), &keys, initial).await?,
                (None, Some(timeout)) => {
                    let found = wait_for_payload(&keys, &mut stream, timeout).await?;
                    // The wait may have been long: prove the copy afresh.
                    let asked_at = Instant::now();
                    if backend.get_version(&keys.payload).await? == Some(found.version) {
                        proven_at = asked_at;
                    }
                    found
                }
                (None, None) => {
                    return Err(Error::new(ErrorKind::NotFound, Operation::Open)
                        .with_key(&keys.payload)
                        .with_message(
                            "no payload; give .initial(value) or .expect_existing(timeout)",
                        ))
                }
            },
        };
        let max_bytes = backend.capabilities().max_value_bytes;
        let decoded = decode::<T>(&keys.payload, &versioned.value, max_bytes)?;
        let instance_id = uuid::Uuid::new_v4().simple().to_string();
        let base = InstanceInfo::for_this_process(instance_id.clone());
        // The registration says from the start what this instance applied.
        let opened = Report {
            applied: versioned.version,
            newest_seen: versioned.version,
            problem: None,
        };
        let reporter = self.config.report_interval.map(|interval| Reporter {
            base: base.clone(),
            schedule: Schedule::new(interval, opened.clone()),
        });
        let registration = if self.register && backend.capabilities().registrations {
            let bytes = match &reporter {
                Some(_) => opened.encode(&base),
                None => serde_json::to_vec(&base)
                    .map_err(|e| Error::new(ErrorKind::Encode, Operation::Register).with_source(e))?
                    .into(),
            };
            let key = keys.listeners.child(&instance_id)?;
            Some(backend.register(&key, bytes).await?)
        } else {
            None
        };
        let shared = Arc::new(StateCore::new(
            backend,
            keys,
            self.config,
            instance_id,
            decoded,
            versioned.version,
            proven_at,
        ));
        shared.spawn(watcher::run(
            shared.clone(),
            stream,
            registration,
            reporter,
            opened_epoch,
        ));
        let guard = shared.closed.clone().drop_guard();
        Ok(SharedState {
            shared,
            _close_on_last_drop: Arc::new(guard),
        })
    }
}

/// The watch's first item: the payload as it is now.
async fn first_state(keys: &StateKeys, stream: &mut WatchStream) -> Result<Option<Versioned>> {
    let unavailable =
        || Error::new(ErrorKind::Unavailable, Operation::Open).with_key(&keys.payload);
    match tokio::time::timeout(OPEN_TIMEOUT, stream.next()).await {
        Err(_) => Err(unavailable().with_message("the watch gave no initial state in time")),
        Ok(None) => Err(unavailable().with_message("the watch ended before its initial state")),
        Ok(Some(Err(error))) => Err(error),
        Ok(Some(Ok(WatchEvent::Initial(state) | WatchEvent::Resync(state)))) => Ok(state),
        Ok(Some(Ok(WatchEvent::Changed(versioned)))) => Ok(Some(versioned)),
        Ok(Some(Ok(WatchEvent::Deleted))) => Ok(None),
    }
}

async fn create_or_read<T: Serialize>(
    backend: &dyn CoordinationBackend,
    keys: &StateKeys,
    initial: &T,
) -> Result<Versioned> {
    let json = encode_value(&keys.payload, initial)?;
    let bytes: bytes::Bytes = serde_json::to_vec(&json)
        .map_err(|e| Error::new(ErrorKind::Encode, Operation::Open).with_source(e))?
        .into();
    for _ in 0..OPEN_CREATE_ROUNDS {
        match backend
            .put(&keys.payload, bytes.clone(), PutMode::Create)
            .await
        {
            Ok(version) => {
                return Ok(Versioned {
                    value: bytes,
                    version,
                })
            }
            // Another instance created it first: use theirs.
            Err(error) if error.kind() == ErrorKind::AlreadyExists => {
                if let Some(found) = backend.get(&keys.payload).await? {
                    return Ok(found);
                }
            }
            Err(error) => return Err(error),
        }
    }
    Err(Error::new(ErrorKind::Conflict, Operation::Open)
        .with_key(&keys.payload)
        .with_message("the payload kept appearing and disappearing while opening"))
}

async fn wait_for_payload(
    keys: &StateKeys,
    stream: &mut WatchStream,
    timeout: Duration,
) -> Result<Versioned> {
    let wait = async {
        while let Some(item) = stream.next().await {
            match item? {
                WatchEvent::Changed(found)
                | WatchEvent::Initial(Some(found))
                | WatchEvent::Resync(Some(found)) => return Ok(found),
                _ => {}
            }
        }
        Err(Error::new(ErrorKind::Closed, Operation::Open).with_key(&keys.payload))
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(found) => found,
        Err(_) => Err(Error::new(ErrorKind::NotFound, Operation::Open)
            .with_key(&keys.payload)
            .with_message(format!("no payload appeared within {timeout:?}"))),
    }
}
