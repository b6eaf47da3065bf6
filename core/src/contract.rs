//! The contract every coordination service implements (re-exported at the
//! crate root and in [`backend`](crate::backend)).

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::sync::watch;

use crate::error::Result;
use crate::key::Key;
use crate::lock::LockGuard;
use crate::registration::Registration;
use crate::version::{Version, Versioned};

/// How [`CoordinationBackend::put`] treats an existing value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Create the key; fails with `AlreadyExists` when it is there.
    Create,
    /// Replace the value only if the key is at exactly this version; fails
    /// with `Conflict` (carrying the current version) otherwise, and with
    /// `Conflict` and no current version when the key does not exist.
    Update(Version),
    /// Create or replace unconditionally.
    Overwrite,
}

/// What a backend can do. A call it cannot honour returns
/// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), never a
/// silent no-op.
///
/// Who reads each flag: the engine reads `max_value_bytes` (it refuses
/// larger payloads) and `registrations` (no instance registration
/// without it); the CLI reads both too. The engine needs `watch`, `locks`
/// and `fenced_writes` and does not check them: a backend without them
/// cannot carry a [`SharedState`](crate::SharedState), only raw calls.
/// The conformance suite reads every flag to pick the behaviour it
/// expects (`linearizable_reads`, `delete_requires_no_children`) or to
/// expect `Unsupported` (the others).
///
/// Built with [`Capabilities::new`] (new flags may be added, each with a
/// default that keeps today's meaning), then fields set as needed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Largest value accepted by `put` and `register`, inclusive; larger
    /// ones fail with `ValueTooLarge` before anything is sent.
    pub max_value_bytes: usize,
    /// [`get`](CoordinationBackend::get) is linearizable: it sees every
    /// write acknowledged before it was called (etcd's default read, the
    /// memory cluster). When false (ZooKeeper: `sync` then read is
    /// sequentially consistent, ZOOKEEPER-1675), use
    /// [`get_linearizable`](CoordinationBackend::get_linearizable) where it
    /// matters; it is linearizable on every backend.
    pub linearizable_reads: bool,
    /// `watch` is available.
    pub watch: bool,
    /// `lock` is available.
    pub locks: bool,
    /// `fenced_put` is available (one atomic lock check plus write).
    pub fenced_writes: bool,
    /// `register` (ephemeral registrations) is available.
    pub registrations: bool,
    /// `delete` of a key that has children fails with `NotEmpty`
    /// (ZooKeeper). When false, children are simply left in place (etcd).
    pub delete_requires_no_children: bool,
}

impl Capabilities {
    /// A backend that does everything, with linearizable reads, that
    /// accepts values up to `max_value_bytes` and deletes keys with
    /// children (`delete_requires_no_children` false). Set the fields that
    /// differ.
    pub const fn new(max_value_bytes: usize) -> Self {
        Capabilities {
            max_value_bytes,
            linearizable_reads: true,
            watch: true,
            locks: true,
            fenced_writes: true,
            registrations: true,
            delete_requires_no_children: false,
        }
    }
}

/// The state of a client's session with the service.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Connected; locks and registrations of this session are held.
    Connected,
    /// The connection is lost; the session (with its locks and
    /// registrations) may still survive if it comes back in time.
    Suspended,
    /// The session expired: its locks and ephemeral registrations are gone.
    /// A new session follows (state `Connected` with a higher epoch).
    Lost,
    /// The client was closed; nothing follows.
    Closed,
}

/// The session state together with the session's epoch: the epoch grows by
/// one each time a new session replaces a lost one, so a `Lost` that a
/// `watch` receiver missed (it keeps only the latest value) still shows as a
/// changed epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionStatus {
    /// The current state.
    pub state: SessionState,
    /// Which session this is, starting at 0 for the first one.
    pub epoch: u64,
}

/// One item of a [`CoordinationBackend::watch`] stream.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Always the first item: the key's state when the watch started.
    Initial(Option<Versioned>),
    /// The key has a new value (intermediate versions may be folded away,
    /// the latest always arrives).
    Changed(Versioned),
    /// The key was deleted.
    Deleted,
    /// Continuity could not be proven (reconnect, compaction, new session):
    /// this is the current state, and changes in between may be missing.
    Resync(Option<Versioned>),
}

/// The stream returned by [`CoordinationBackend::watch`]. It ends when the
/// client is closed; an `Err` item reports a failure the watch cannot
/// recover from on its own (the stream ends after it).
pub type WatchStream = BoxStream<'static, Result<WatchEvent>>;

/// Options for [`CoordinationBackend::lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOptions {
    /// How long to wait for the lock before failing with `LockTimeout`.
    pub timeout: Duration,
}

impl LockOptions {
    /// Options with the given wait timeout.
    pub const fn with_timeout(timeout: Duration) -> Self {
        LockOptions { timeout }
    }
}

impl Default for LockOptions {
    /// Waits up to 30 seconds.
    fn default() -> Self {
        LockOptions::with_timeout(Duration::from_secs(30))
    }
}

/// A coordination service: ZooKeeper, etcd or the in-memory cluster.
///
/// Object safe; share it as `Arc<dyn CoordinationBackend>`. Every method
/// validates nothing about keys beyond [`Key`]'s own rules, and every error
/// carries an [`ErrorKind`](crate::ErrorKind) tests can match and an
/// [`Outcome`](crate::Outcome): whether a failed write may have happened.
/// A backend never retries a non-idempotent write whose outcome is unknown.
///
/// # Cancellation safety
///
/// Every future of this trait may be dropped at any await point (a
/// `tokio::time::timeout`, a `select!`, an aborted request handler) without
/// leaving a lock node, a waiter key or a registration behind: a backend
/// arms the cleanup before it sends the first request and runs it in the
/// background, bounded, unless the operation completed. A dropped `lock`
/// never becomes the holder; a dropped
/// [`fenced_put_and_release`](Self::fenced_put_and_release) releases the
/// lock (its guard drops); a dropped `register` leaves no key once the
/// cleanup ran. A dropped write may still have been applied (its outcome is
/// unknown), like any write whose answer was lost.
///
/// # What the engine relies on
///
/// [`SharedState`](crate::SharedState) proves freshness with its own
/// requests (a periodic [`get_version`](Self::get_version), reads and
/// conditional writes, each stamped with the instant it was sent), so it
/// relies on little ordering between [`session`](Self::session) and
/// [`watch`](Self::watch):
///
/// - a watch stream's first item is `Initial`, read after the watch was
///   registered, so no change after that read is missed;
/// - where continuity is lost (reconnect, new session, compaction), a
///   stream yields `Resync` with a state read after the loss, or ends;
///   a silently dead stream is caught by the engine's verification;
/// - `get_version` and `get` see at least every write acknowledged before
///   they were called on a connected session (up to the read consistency
///   stated by [`Capabilities::linearizable_reads`]).
#[async_trait]
pub trait CoordinationBackend: Send + Sync + Debug + 'static {
    /// Short backend name: `"memory"`, `"zookeeper"`, `"etcd"`.
    fn name(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// The session state, as a `watch` channel that always holds the latest.
    fn session(&self) -> watch::Receiver<SessionStatus>;

    /// Reads a key, linearizably where `capabilities().linearizable_reads`.
    ///
    /// # Errors
    ///
    /// `Unavailable`, `SessionLost`, `Closed` and backend failures; a missing
    /// key is `Ok(None)`.
    async fn get(&self, key: &Key) -> Result<Option<Versioned>>;

    /// The key's current version only (`None` when missing), as fresh as
    /// [`get`](Self::get): what the engine's periodic verification reads.
    /// Backends that can read the version without the value override this
    /// (ZooKeeper: `sync` + `exists`; etcd: a keys-only range).
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    async fn get_version(&self, key: &Key) -> Result<Option<Version>> {
        Ok(self.get(key).await?.map(|found| found.version))
    }

    /// A linearizable read: the value includes every write acknowledged
    /// before the call, and was current at some instant between the call
    /// and its return. The default is [`get`](Self::get), for backends whose
    /// `get` is linearizable ([`Capabilities::linearizable_reads`]);
    /// others override it (ZooKeeper proves the version read with an
    /// operation ordered through the leader).
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    async fn get_linearizable(&self, key: &Key) -> Result<Option<Versioned>> {
        self.get(key).await
    }

    /// Writes a value; missing parents are created as empty persistent
    /// keys. Returns the new version.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` (Create), `Conflict` (Update), `ValueTooLarge`
    /// (checked before sending), `Unavailable`.
    async fn put(&self, key: &Key, value: Bytes, mode: PutMode) -> Result<Version>;

    /// Deletes a key, only at that version when `expected` is given.
    ///
    /// # Errors
    ///
    /// `NotFound`, `Conflict` (carrying the current version), `NotEmpty`
    /// where `capabilities().delete_requires_no_children`.
    async fn delete(&self, key: &Key, expected: Option<Version>) -> Result<()>;

    /// Names (last segments) of the key's direct children, sorted. A key
    /// that does not exist has no children: an empty list, not `NotFound`.
    ///
    /// # Errors
    ///
    /// `Unavailable` and backend failures.
    async fn list(&self, key: &Key) -> Result<Vec<String>>;

    /// Watches one key: first item [`WatchEvent::Initial`], then changes in
    /// version order, level-triggered, with [`WatchEvent::Resync`] wherever
    /// continuity cannot be proven.
    ///
    /// # Errors
    ///
    /// `Unsupported` without `capabilities().watch`; `Unavailable`.
    async fn watch(&self, key: &Key) -> Result<WatchStream>;

    /// Takes an exclusive lock on `key`, held by this client's session,
    /// waiting up to `options.timeout`.
    ///
    /// # Errors
    ///
    /// `LockTimeout`, `SessionLost` (the session died while waiting),
    /// `Unsupported`, `Unavailable`.
    async fn lock(&self, key: &Key, options: LockOptions) -> Result<LockGuard>;

    /// Takes the lock on `lock_key`, then reads `key`, and returns both; the
    /// read sees every write made before the lock was granted. Backends that
    /// can pipeline the two (one round trip for both) override this.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock) and [`get`](Self::get); a failed read releases
    /// the lock.
    async fn lock_and_get(
        &self,
        lock_key: &Key,
        options: LockOptions,
        key: &Key,
    ) -> Result<(LockGuard, Option<Versioned>)> {
        let guard = self.lock(lock_key, options).await?;
        match self.get(key).await {
            Ok(value) => Ok((guard, value)),
            Err(error) => {
                guard.release_or_warn("a failed read").await;
                Err(error)
            }
        }
    }

    /// A conditional write that succeeds only while `guard` still holds its
    /// lock, checked in the same atomic operation as the write.
    ///
    /// # Errors
    ///
    /// `LockLost` when the lock is no longer held, otherwise as
    /// [`put`](Self::put).
    async fn fenced_put(
        &self,
        key: &Key,
        value: Bytes,
        mode: PutMode,
        guard: &LockGuard,
    ) -> Result<Version>;

    /// [`fenced_put`](Self::fenced_put) then release the lock. Backends that
    /// can do both in one round trip override this; the lock is released
    /// whether the write succeeded or not.
    ///
    /// # Errors
    ///
    /// As [`fenced_put`](Self::fenced_put); a failed release after a
    /// successful write is logged, not returned (the write happened, and the
    /// lock goes with the session at the latest).
    async fn fenced_put_and_release(
        &self,
        key: &Key,
        value: Bytes,
        mode: PutMode,
        guard: LockGuard,
    ) -> Result<Version> {
        let written = self.fenced_put(key, value, mode, &guard).await;
        guard.release_or_warn("a fenced write").await;
        written
    }

    /// Creates an ephemeral key that lives while this client's session
    /// lives, and is re-created by the backend after a new session replaces
    /// a lost one, until the [`Registration`] is closed or dropped. Missing
    /// parents are created as by [`put`](Self::put). An ephemeral key cannot
    /// have children everywhere (ZooKeeper refuses them): do not rely on it.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` when the key is held by someone else, `Unsupported`,
    /// `ValueTooLarge`, `Unavailable`.
    async fn register(&self, key: &Key, value: Bytes) -> Result<Registration>;

    /// Closes the client: its session ends, so its locks and registrations
    /// go; watches end. Further calls fail with `Closed`.
    ///
    /// # Errors
    ///
    /// Backend failures while closing (the client is closed regardless).
    async fn close(&self) -> Result<()>;
}
