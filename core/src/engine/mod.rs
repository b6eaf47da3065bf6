//! The `SharedState<T>` engine: one typed value shared through a
//! [`CoordinationBackend`].
//!
//! Layout under a state's path: `<path>/payload` (the JSON, plain so zkCli
//! or etcdctl can edit it), `<path>/listeners/<id>` (one ephemeral
//! registration per live instance), `<path>/lock` (the write lock).

mod builder;
mod contention;
mod events;
mod freshness;
mod instances;
mod merge;
mod report;
mod shared;
mod update;
mod watcher;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::DropGuard;

pub use builder::SharedStateBuilder;
pub use events::{ChangeSet, Origin, StateEvent, Subscription};
#[allow(deprecated)]
pub use instances::{InstanceInfo, ListenerInfo};

use crate::backend::{CoordinationBackend, SessionStatus};
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::key::Key;
use crate::version::Version;
use shared::StateCore;
use update::Strictness;

/// How `update` protects against concurrent writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Take the distributed lock, refresh, write with a fenced conditional
    /// update. Writers queue instead of retrying; `f` runs once per attempt
    /// and only re-runs if an outside writer that ignores the lock races it.
    #[default]
    Locked,
    /// Conditional write without the lock, re-running `f` on the refreshed
    /// copy after each conflict. Fewer round trips when contention is low.
    Optimistic,
}

/// What an update does with the payload's members that `T` does not know
/// (fields added by a newer version of the application, during a rolling
/// upgrade).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    /// Keep them: an update changes only what `T` changed, and members of
    /// objects that `T` does not know, at any depth, are written back as
    /// they were in the payload this instance read. Inside arrays, see
    /// [`SharedStateBuilder::unknown_fields`].
    #[default]
    Keep,
    /// Drop them: an update writes `T`'s JSON only (strict mode). Nothing is
    /// written until `T`'s own value changes.
    Drop,
}

/// Why the payload on the service is not the local copy.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadProblem {
    /// The payload at `version` does not decode as the state's type.
    Undecodable {
        /// The rejected version.
        version: Version,
        /// The decoding error.
        error: String,
    },
    /// The payload was deleted.
    Deleted,
}

/// Engine settings, fixed at open.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub max_staleness: Duration,
    pub write_mode: WriteMode,
    pub lock_timeout: Duration,
    pub max_attempts: u32,
    pub change_buffer: usize,
    pub unknown_fields: UnknownFields,
    /// How often at most this instance rewrites its instance registration
    /// with what it applied; `None`: never (the registration carries no
    /// applied version).
    pub report_interval: Option<Duration>,
}

/// A snapshot of a state's health, for dashboards and the CLI.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct Status {
    /// The state's path.
    pub path: Key,
    /// This instance's id (its registration's last segment).
    pub instance_id: String,
    /// Version of the local (last good) copy.
    pub version: Version,
    /// Latest version seen on the service, good or not.
    pub seen_version: Version,
    /// The backend's session.
    pub session: SessionStatus,
    /// Session connected, watch in sync and the copy proven current within
    /// `max_staleness`: reads are current up to the watch's delivery delay.
    pub live: bool,
    /// How long ago the copy was last proven current (by a verification
    /// read, this instance's own read or write, or a new watch). `read()`
    /// fails with `Stale` once this passes `max_staleness`.
    pub unverified_for: Duration,
    /// The staleness bound `read()` enforces.
    pub max_staleness: Duration,
    /// Why the service's payload is not the local copy, if it is not.
    pub problem: Option<PayloadProblem>,
    /// The write mode.
    pub write_mode: WriteMode,
    /// What updates do with members of the payload `T` does not know.
    pub unknown_fields: UnknownFields,
    /// `close()` was called.
    pub closed: bool,
}

/// One typed value shared by every instance of an application.
///
/// Reads come from a local copy kept fresh by a watch ([`read`](Self::read)
/// does no I/O); [`update`](Self::update) never loses a write; every change
/// arrives as a precise [`ChangeSet`] on [`subscribe`](Self::subscribe).
/// Cloning gives another handle to the same instance; the instance closes
/// when the last handle drops or on [`close`](Self::close).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), sharedstate_core::Error> {
/// use std::sync::Arc;
/// use serde::{Deserialize, Serialize};
/// use sharedstate_core::{CoordinationBackend, SharedState};
/// use sharedstate_memory::MemoryCluster;
///
/// #[derive(Clone, Debug, Serialize, Deserialize)]
/// struct Monitor { globs: Vec<String> }
///
/// let cluster = MemoryCluster::new();
/// let backend: Arc<dyn CoordinationBackend> = Arc::new(cluster.client());
/// let state = SharedState::builder(backend, "/agents/monitor")
///     .initial(Monitor { globs: vec!["systemd*".into()] })
///     .open()
///     .await?;
/// state.update(|m| m.globs.push("rsync*".into())).await?;
/// assert_eq!(state.read()?.globs, ["systemd*", "rsync*"]);
/// state.close().await;
/// # Ok(()) }
/// ```
pub struct SharedState<T> {
    shared: Arc<StateCore<T>>,
    _close_on_last_drop: Arc<DropGuard>,
}

impl<T> Clone for SharedState<T> {
    fn clone(&self) -> Self {
        SharedState {
            shared: self.shared.clone(),
            _close_on_last_drop: self._close_on_last_drop.clone(),
        }
    }
}

impl<T> std::fmt::Debug for SharedState<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("path", &self.shared.keys.root)
            .field("instance_id", &self.shared.instance_id)
            .finish()
    }
}

impl<T> SharedState<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Starts opening the state at `path` on `backend`.
    pub fn builder(
        backend: Arc<dyn CoordinationBackend>,
        path: impl AsRef<str>,
    ) -> SharedStateBuilder<T> {
        SharedStateBuilder::new(backend, path.as_ref())
    }

    /// The local copy, without I/O.
    ///
    /// The copy is served only while it is *proven* current within
    /// `max_staleness`: by a verification read the engine sends about every
    /// `max_staleness / 3` (independent of the watch, so a watch that died
    /// silently cannot freeze the copy), by this instance's own reads and
    /// writes, or by a newly opened watch; each is stamped with the instant
    /// its request was sent. A copy is never served older than
    /// `max_staleness` (measured from the acknowledgement of the first write
    /// it lacks) without `Stale`.
    ///
    /// # Errors
    ///
    /// `Stale` when the copy has not been proven current within
    /// `max_staleness` (the service is unreachable, the session is suspended
    /// or lost, or verification keeps failing); the last good copy is still
    /// available through [`last_known`](Self::last_known). `Closed` after
    /// [`close`](Self::close).
    pub fn read(&self) -> Result<Arc<T>> {
        let shared = &self.shared;
        if shared.closed.is_cancelled() {
            return Err(Error::new(ErrorKind::Closed, Operation::Read).with_key(&shared.keys.root));
        }
        let age = shared.proof.age(Instant::now());
        if age > shared.config.max_staleness {
            return Err(Error::new(ErrorKind::Stale, Operation::Read)
                .with_key(&shared.keys.payload)
                .with_message(format!(
                    "not proven current for {age:?} (max_staleness {:?})",
                    shared.config.max_staleness
                )));
        }
        Ok(shared.current_value())
    }

    /// The last good copy and how long ago it was last proven current,
    /// whatever its age: for an application that rides out an outage on
    /// what it knew (and says so), after [`read`](Self::read) said `Stale`.
    pub fn last_known(&self) -> (Arc<T>, Duration) {
        let shared = &self.shared;
        (shared.current_value(), shared.proof.age(Instant::now()))
    }

    /// Checks the local version against the service with a linearizable
    /// read ([`CoordinationBackend::get_linearizable`]: on ZooKeeper a
    /// version check ordered through the leader), refreshes the copy if
    /// needed, and returns it: it includes every write acknowledged before
    /// the call, and was current at some instant between the call and its
    /// return.
    ///
    /// # Errors
    ///
    /// `Unavailable`/`Timeout`/`SessionLost` from the backend, `NotFound`
    /// when the payload was deleted, `Decode` when the service's payload
    /// does not decode, `Closed`.
    pub async fn read_consistent(&self) -> Result<Arc<T>> {
        let shared = &self.shared;
        if shared.closed.is_cancelled() {
            return Err(Error::new(ErrorKind::Closed, Operation::ReadConsistent)
                .with_key(&shared.keys.root));
        }
        let asked_at = Instant::now();
        let latest = shared
            .backend
            .get_linearizable(&shared.keys.payload)
            .await?;
        {
            let _gate = shared.write_gate.lock().await;
            shared.apply_read(latest.as_ref());
        }
        shared.proof.prove(asked_at);
        let snapshot = shared.current();
        match (&latest, &snapshot.problem) {
            (None, _) | (_, Some(PayloadProblem::Deleted)) => {
                Err(Error::new(ErrorKind::NotFound, Operation::ReadConsistent)
                    .with_key(&shared.keys.payload)
                    .with_message("the payload was deleted on the service"))
            }
            (Some(_), Some(PayloadProblem::Undecodable { version, error })) => {
                Err(Error::new(ErrorKind::Decode, Operation::ReadConsistent)
                    .with_key(&shared.keys.payload)
                    .with_message(format!("version {version}: {error}")))
            }
            // The snapshot is at least as new as the read.
            (Some(_), None) => Ok(snapshot.value.clone()),
        }
    }

    /// Changes the shared value: `f` runs on a copy of the latest value and
    /// its result is written so that no concurrent write is lost, then
    /// published to subscribers as a [`Origin::Local`] change set. Returns
    /// what `f` returns. When `f` changes nothing, nothing is written.
    ///
    /// In [`WriteMode::Optimistic`] (and, rarely, when an outside writer
    /// ignores the lock) `f` may run more than once: keep it free of side
    /// effects. On any error the local copy is untouched by `f`.
    ///
    /// # Errors
    ///
    /// `LockTimeout`, `LockLost`/`SessionLost` (the session died mid-write;
    /// nothing was written), `Conflict` after `max_attempts`, `Decode` while
    /// the service holds an undecodable payload, `NotFound` when the payload
    /// was deleted, `ValueTooLarge`, `Unavailable`, `Closed`.
    pub async fn update<R, F>(&self, mut f: F) -> Result<R>
    where
        F: FnMut(&mut T) -> R + Send,
    {
        update::update(&self.shared, &mut f, Strictness::RefreshAndRetry).await
    }

    /// Like [`update`](Self::update), but fails with `Stale` instead of
    /// refreshing when the local copy was not the latest version: `f` only
    /// ever runs on the copy the caller last saw. The copy is refreshed by
    /// the failure, so a retry can succeed.
    ///
    /// # Errors
    ///
    /// `Stale`, and the errors of [`update`](Self::update).
    pub async fn try_update<R, F>(&self, mut f: F) -> Result<R>
    where
        F: FnMut(&mut T) -> R + Send,
    {
        update::update(&self.shared, &mut f, Strictness::FailIfStale).await
    }

    /// Every change from now on, in version order; a subscriber that falls
    /// more than the change buffer behind gets [`StateEvent::Lagged`] then
    /// one [`Origin::Rebuilt`] change set with the net difference.
    pub fn subscribe(&self) -> Subscription {
        self.shared.subscribe()
    }

    /// Runs `handler` on every event of a new subscription, in a task of
    /// this instance, until the state closes or the returned handle is
    /// dropped or stopped (a guard, like `JoinSet`'s tasks:
    /// [`ChangeHandler::detach`] keeps it running until the state closes).
    pub fn on_change<F>(&self, mut handler: F) -> ChangeHandler
    where
        F: FnMut(&StateEvent) + Send + 'static,
    {
        let mut subscription = self.subscribe();
        let task = self.shared.spawn(async move {
            while let Some(event) = subscription.next().await {
                handler(&event);
            }
        });
        ChangeHandler { task: Some(task) }
    }

    /// The live instances of this state, sorted by id, each with the
    /// version it has applied and the problem it has with the payload, as
    /// it last reported them (reports are coalesced: see
    /// [`SharedStateBuilder::report_interval`]).
    ///
    /// # Errors
    ///
    /// `Unavailable`, `Unsupported` when the backend has no registrations.
    pub async fn instances(&self) -> Result<Vec<InstanceInfo>> {
        instances_of(self.shared.backend.as_ref(), &self.shared.keys.listeners).await
    }

    /// The old name of [`instances`](Self::instances) ("listeners" named the
    /// instances, not change handlers).
    ///
    /// # Errors
    ///
    /// As [`instances`](Self::instances).
    #[deprecated(note = "renamed to `instances`: \"listeners\" named the instances")]
    pub async fn listeners(&self) -> Result<Vec<InstanceInfo>> {
        self.instances().await
    }

    /// This instance's id (its registration's last segment).
    pub fn instance_id(&self) -> &str {
        &self.shared.instance_id
    }

    /// The state's path.
    pub fn path(&self) -> &Key {
        &self.shared.keys.root
    }

    /// Version of the local copy.
    pub fn version(&self) -> Version {
        self.shared.current().version
    }

    /// Health and freshness of this instance.
    pub fn status(&self) -> Status {
        let shared = &self.shared;
        let snapshot = shared.current();
        let unverified_for = shared.proof.age(Instant::now());
        let session = *shared.session.borrow();
        Status {
            path: shared.keys.root.clone(),
            instance_id: shared.instance_id.clone(),
            version: snapshot.version,
            seen_version: snapshot.newest_seen,
            session,
            live: shared.proof.is_following()
                && session.state == crate::backend::SessionState::Connected
                && unverified_for <= shared.config.max_staleness,
            unverified_for,
            max_staleness: shared.config.max_staleness,
            problem: snapshot.problem.clone(),
            write_mode: shared.config.write_mode,
            unknown_fields: shared.config.unknown_fields,
            closed: shared.closed.is_cancelled(),
        }
    }

    /// Deregisters this instance and stops its background tasks (the
    /// watcher, change handlers), waiting for them at most 10 s; every
    /// handle of the instance is closed. Subscriptions end.
    pub async fn close(&self) {
        self.shared.closed.cancel();
        if !self.shared.wait_for_tasks(CLOSE_WAIT).await {
            tracing::warn!(
                key = %self.shared.keys.root,
                "background tasks still running {CLOSE_WAIT:?} after close; they end in the background"
            );
        }
    }
}

/// Reads the instances' registrations under `parent` (a state's
/// [`StateKeys::listeners`](crate::state::StateKeys::listeners); used by
/// [`SharedState::instances`] and by tools that have no state open).
///
/// # Errors
///
/// `Unavailable`, `Unsupported` when the backend has no registrations.
pub async fn instances_of(
    backend: &dyn CoordinationBackend,
    parent: &Key,
) -> Result<Vec<InstanceInfo>> {
    let ids = backend.list(parent).await?;
    let reads = ids.iter().map(|id| async move {
        let key = parent.child(id)?;
        let entry = backend.get(&key).await?;
        Ok::<_, Error>(entry.and_then(|entry| {
            serde_json::from_slice::<InstanceInfo>(&entry.value)
                .map_err(
                    |error| tracing::warn!(%key, %error, "ignoring a malformed instance registration"),
                )
                .ok()
        }))
    });
    let mut found = Vec::new();
    for entry in futures::future::join_all(reads).await {
        if let Some(info) = entry? {
            found.push(info);
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// The old name of [`instances_of`].
///
/// # Errors
///
/// As [`instances_of`].
#[deprecated(note = "renamed to `instances_of`: \"listeners\" named the instances")]
pub async fn listeners_of(
    backend: &dyn CoordinationBackend,
    parent: &Key,
) -> Result<Vec<InstanceInfo>> {
    instances_of(backend, parent).await
}

/// How long `close()` waits for the instance's background tasks.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// The task behind [`SharedState::on_change`]: dropping the handle stops
/// the handler (call [`detach`](Self::detach) to keep it until the state
/// closes).
#[derive(Debug)]
#[must_use = "dropping a ChangeHandler stops the handler; call .detach() to keep it running"]
pub struct ChangeHandler {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ChangeHandler {
    /// Stops calling the handler.
    pub fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Lets the handler run until the state closes, without a handle.
    pub fn detach(mut self) {
        self.task.take();
    }

    /// Waits until the handler has seen the end of its subscription (the
    /// state closed).
    pub async fn finished(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ChangeHandler {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
