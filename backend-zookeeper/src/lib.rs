//! ZooKeeper backend for sharedstate, on the async `zookeeper-client` crate.
//!
//! ```no_run
//! # async fn demo() -> sharedstate_core::Result<()> {
//! use std::time::Duration;
//! use sharedstate_zookeeper::{AclPolicy, ZooKeeperBackend};
//!
//! let backend = ZooKeeperBackend::builder("zk1:2181,zk2:2181/myapp")
//!     .session_timeout(Duration::from_secs(10))
//!     .acl(AclPolicy::Open)
//!     .connect()
//!     .await?;
//! // or: ZooKeeperBackend::from_url("zk://zk1:2181,zk2:2181/myapp?session_timeout_ms=10000").await?
//! # Ok(()) }
//! ```
//!
//! Mapping of the contract onto ZooKeeper:
//!
//! - a key is a znode; `put` creates missing parents as empty persistent
//!   znodes; `get` is `sync` then `getData`, pipelined: sequentially
//!   consistent, not linearizable (`Capabilities::linearizable_reads` is
//!   false, ZOOKEEPER-1675); `get_linearizable` pipelines a quorum-ordered
//!   `multi` (a check of the root) before the read;
//! - a [`Version`] is the znode's `mzxid` (never repeats, even across delete
//!   and re-create). Conditional writes are exact: one `multi` that also
//!   proves the znode was not deleted and re-created since its stat was read
//!   (a fence on the parent's children version, see the `kv` module), so an
//!   `Update` at an old version never succeeds against a re-created key;
//! - `watch` uses a persistent watch (ZooKeeper 3.6+) and re-reads the znode
//!   on each notification (level-triggered). After every reconnect, also one
//!   that kept the session, the watch is registered again and the stream
//!   yields `Resync`: zookeeper-client 0.11.2 does not resend persistent
//!   watches itself (`resend_watches` computes `index.max(index)`, so its
//!   SetWatches2 request is never sent), which left every watch silently
//!   dead after a reconnect;
//! - locks are the ephemeral-sequential recipe with Curator's node names
//!   (`<key>/_c_<guid>-lock-<seq>`), ordered by sequence together with the
//!   nodes of Curator's `InterProcessMutex` and kazoo's `Lock`
//!   (`<guid>__lock__<seq>`), so the three exclude each other at the same
//!   path (kazoo sees ours with `extra_lock_patterns=("-lock-",)`); the
//!   fencing token is the lock znode's `czxid`, and fenced writes are one
//!   `multi` (check the lock znode + fence + write);
//! - an expired session is replaced by a new one (epoch + 1), registrations
//!   are re-created, and held locks report `lost()`.
//!
//! Round trips: `get`, `get_linearizable` and `list` are one (pipelined);
//! `put` `Create`/`Overwrite` one (plus one per missing parent level);
//! `Update` one when this client has read the key's current version, else
//! two (stats, then the fenced write); a fenced write one `multi`; an
//! uncontended `lock` one (create and children listing pipelined).
//!
//! Errors: connection-level failures are `Unavailable`, requests without an
//! answer in time `Timeout`; both leave a write's outcome `Unknown`, while
//! every answer from the server (and a call refused because the connection
//! is lost, which fails fast instead of queueing) is `NotApplied`. Nodes
//! created implicitly (parents) get the client's [`AclPolicy`] too. Watches
//! need ZooKeeper 3.6 or later (persistent watches).
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod error;
mod fence;
mod fenced;
mod kv;
mod lock;
mod own_writes;
mod registration;
mod session;
#[cfg(feature = "tls")]
mod tls;
mod version_cache;
mod watch;

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use sharedstate_core::backend::{Registry, SessionPublisher};
use sharedstate_core::{
    Capabilities, CoordinationBackend, Error, ErrorKind, Key, LockGuard, LockOptions, Operation,
    PutMode, Registration, Result, SessionStatus, Version, Versioned, WatchStream,
};
use tokio::sync::watch as tokio_watch;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

pub use builder::{AclPolicy, ZooKeeperBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_SESSION_TIMEOUT};
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::ZooKeeperTls;

/// Largest value accepted: ZooKeeper's default `jute.maxbuffer` is 1 MiB
/// for a whole packet, so values keep some headroom for the path and the
/// request framing.
pub const MAX_VALUE_BYTES: usize = 1_000_000;

/// One ZooKeeper session of the backend; replaced by a new one (epoch + 1)
/// after an expiry.
pub(crate) struct Session {
    pub client: zk::Client,
    pub epoch: u64,
    /// Cancelled when this session is lost; every lock guard of the session
    /// holds a child token.
    pub lost: CancellationToken,
}

/// State shared by the backend, its background tasks, guards and
/// registrations.
pub(crate) struct Inner {
    pub config: builder::Config,
    pub(crate) current: RwLock<Option<Arc<Session>>>,
    /// The session status of [`CoordinationBackend::session`], in the order
    /// the engine relies on (the supervisor publishes it).
    pub status: SessionPublisher,
    pub versions: version_cache::VersionCache,
    /// This client's conditional writes, for its watches (see `own_writes`).
    pub own_writes: own_writes::OwnWrites,
    /// How many reads the watches made (for tests: `watch_reads`).
    pub watch_reads: std::sync::atomic::AtomicU64,
    /// The live registrations, re-created on every new session.
    pub registrations: Mutex<Registry>,
    pub closed: CancellationToken,
}

impl Inner {
    /// The current session whatever its connection state; `None` once
    /// closed. For background work that may wait for a reconnect.
    pub(crate) fn current_session(&self) -> Option<Arc<Session>> {
        if self.closed.is_cancelled() {
            return None;
        }
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        guard.clone()
    }

    /// The current session for a caller's operation: `Closed` once closed,
    /// `Unavailable` while the connection is lost.
    pub(crate) fn session(&self, operation: Operation) -> Result<Arc<Session>> {
        let session = self
            .current_session()
            .ok_or_else(|| error::closed(operation))?;
        // Requests made while disconnected would wait for the reconnect (or
        // the expiry): fail fast instead, the caller retries.
        if session.client.state() == zk::SessionState::Disconnected {
            return Err(error::suspended(operation));
        }
        Ok(session)
    }

    pub(crate) fn replace_session(&self, session: Option<Arc<Session>>) -> Option<Arc<Session>> {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *guard, session)
    }

    pub(crate) fn acls(&self) -> zk::Acls<'static> {
        self.config.acl.acls()
    }
}

/// The ZooKeeper implementation of [`CoordinationBackend`].
///
/// Build it with [`ZooKeeperBackend::builder`] or
/// [`ZooKeeperBackend::from_url`]. Dropping it closes the session (like
/// [`close`](CoordinationBackend::close), in the background).
pub struct ZooKeeperBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for ZooKeeperBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZooKeeperBackend")
            .field("config", &self.inner.config)
            .field("status", &self.inner.status.status())
            .finish()
    }
}

impl ZooKeeperBackend {
    /// A builder for the connect string `h1:2181,h2:2181[/chroot]`.
    pub fn builder(connect_string: impl Into<String>) -> ZooKeeperBuilder {
        ZooKeeperBuilder::new(connect_string)
    }

    /// Connects with the settings of a `zk://h1:2181,h2:2181/chroot?...`
    /// URL; see [`ZooKeeperBuilder::from_url`] for the query keys.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a malformed URL, otherwise as
    /// [`ZooKeeperBuilder::connect`].
    pub async fn from_url(url: &str) -> Result<Self> {
        ZooKeeperBuilder::from_url(url)?.connect().await
    }

    pub(crate) async fn start(config: builder::Config) -> Result<Self> {
        let client = config.open_session().await?;
        let inner = Arc::new(Inner {
            config,
            current: RwLock::new(Some(Arc::new(Session {
                client,
                epoch: 0,
                lost: CancellationToken::new(),
            }))),
            status: SessionPublisher::new(),
            versions: version_cache::VersionCache::default(),
            own_writes: own_writes::OwnWrites::default(),
            watch_reads: Default::default(),
            registrations: Mutex::new(Registry::new()),
            closed: CancellationToken::new(),
        });
        tokio::spawn(session::supervise(inner.clone()));
        Ok(ZooKeeperBackend { inner })
    }

    /// The ZooKeeper session id of the current session (hex as zkCli shows
    /// it), for logs and tests.
    ///
    /// # Errors
    ///
    /// `Closed` after [`close`](CoordinationBackend::close).
    pub fn session_id(&self) -> Result<i64> {
        Ok(self
            .inner
            .session(Operation::Connect)?
            .client
            .session_id()
            .0)
    }

    /// Fault injection for tests (feature `testing`): makes the server expire this client's
    /// session, the way Curator's `KillSession` does. A twin connection
    /// re-attaches to the session with its id and password and closes it;
    /// this returns once the server has ended the session (its ephemeral
    /// nodes and locks are gone). The backend then notices, reports
    /// [`SessionState::Lost`](sharedstate_core::SessionState::Lost), opens a new session and reports
    /// `Connected` with the next epoch. This client may win its session
    /// back before the twin's handshake completes; the twin then tries again
    /// (a few bounded attempts).
    ///
    /// # Errors
    ///
    /// `Closed` after close; `Unavailable` when the twin cannot attach in
    /// any attempt or the server does not confirm within the connect
    /// timeout.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub async fn force_session_expiry(&self) -> Result<()> {
        let hosts = self.inner.config.hosts.clone();
        session::force_expiry(&self.inner, &hosts).await
    }

    /// For tests (feature `testing`): how many reads this client's watches
    /// have made since it was built. A watch reads the znode after each
    /// notification, except after one of this client's own conditional
    /// writes, whose result it already knows.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn watch_reads(&self) -> u64 {
        self.inner
            .watch_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`force_session_expiry`](Self::force_session_expiry) with the twin
    /// connecting to `hosts` (`h1:2181,h2:2181`, no chroot) rather than to
    /// this client's own connect string: for tests whose client goes
    /// through a fault-injecting proxy that may be cutting the connection.
    /// Cutting this client's connection first (and restoring it after)
    /// avoids the race where the client re-attaches to the session between
    /// the twin's connect and its close.
    ///
    /// # Errors
    ///
    /// As [`force_session_expiry`](Self::force_session_expiry).
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub async fn force_session_expiry_via(&self, hosts: &str) -> Result<()> {
        session::force_expiry(&self.inner, hosts).await
    }
}

impl Drop for ZooKeeperBackend {
    fn drop(&mut self) {
        if !self.inner.closed.is_cancelled() {
            let inner = self.inner.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move { session::shutdown(&inner).await });
                }
                Err(_) => {
                    inner.closed.cancel();
                    inner.replace_session(None);
                }
            }
        }
    }
}

pub(crate) fn check_size(operation: Operation, key: &Key, value: &Bytes) -> Result<()> {
    sharedstate_core::backend::check_size(operation, key, value, MAX_VALUE_BYTES)
}

/// A zxid as a [`Version`] (zxids are positive).
pub(crate) fn version_of(zxid: i64) -> Version {
    Version::new(u64::try_from(zxid).unwrap_or(0))
}

#[async_trait]
impl CoordinationBackend for ZooKeeperBackend {
    fn name(&self) -> &'static str {
        "zookeeper"
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::new(MAX_VALUE_BYTES);
        // `sync` then read is sequentially consistent, not linearizable
        // (ZOOKEEPER-1675); `get_linearizable` is.
        capabilities.linearizable_reads = false;
        capabilities.delete_requires_no_children = true;
        capabilities
    }

    fn session(&self) -> tokio_watch::Receiver<SessionStatus> {
        self.inner.status.subscribe()
    }

    async fn get(&self, key: &Key) -> Result<Option<Versioned>> {
        kv::get(&self.inner, key).await
    }

    async fn get_version(&self, key: &Key) -> Result<Option<Version>> {
        kv::get_version(&self.inner, key).await
    }

    async fn get_linearizable(&self, key: &Key) -> Result<Option<Versioned>> {
        kv::get_linearizable(&self.inner, key).await
    }

    async fn put(&self, key: &Key, value: Bytes, mode: PutMode) -> Result<Version> {
        check_size(Operation::Put, key, &value)?;
        kv::put(&self.inner, key, value, mode).await
    }

    async fn delete(&self, key: &Key, expected: Option<Version>) -> Result<()> {
        kv::delete(&self.inner, key, expected).await
    }

    async fn list(&self, key: &Key) -> Result<Vec<String>> {
        kv::list(&self.inner, key).await
    }

    async fn watch(&self, key: &Key) -> Result<WatchStream> {
        watch::watch(&self.inner, key).await
    }

    async fn lock(&self, key: &Key, options: LockOptions) -> Result<LockGuard> {
        lock::lock(&self.inner, key, options).await
    }

    async fn lock_and_get(
        &self,
        lock_key: &Key,
        options: LockOptions,
        key: &Key,
    ) -> Result<(LockGuard, Option<Versioned>)> {
        lock::lock_and_get(&self.inner, lock_key, options, key).await
    }

    async fn fenced_put(
        &self,
        key: &Key,
        value: Bytes,
        mode: PutMode,
        guard: &LockGuard,
    ) -> Result<Version> {
        check_size(Operation::FencedPut, key, &value)?;
        fenced::fenced_put(&self.inner, key, value, mode, guard, false).await
    }

    async fn fenced_put_and_release(
        &self,
        key: &Key,
        value: Bytes,
        mode: PutMode,
        guard: LockGuard,
    ) -> Result<Version> {
        if let Err(e) = check_size(Operation::FencedPut, key, &value) {
            guard.release_or_warn("a refused write").await;
            return Err(e);
        }
        match fenced::fenced_put(&self.inner, key, value, mode, &guard, true).await {
            Ok(version) => {
                // The lock node went in the same multi.
                drop(sharedstate_core::backend::disarm(guard));
                Ok(version)
            }
            Err(e) => {
                // Nothing was written; release as usual (a lost lock's node
                // is gone already, which release treats as done).
                guard.release_or_warn("a failed write").await;
                Err(e)
            }
        }
    }

    async fn register(&self, key: &Key, value: Bytes) -> Result<Registration> {
        check_size(Operation::Register, key, &value)?;
        registration::register(&self.inner, key, value).await
    }

    async fn close(&self) -> Result<()> {
        session::shutdown(&self.inner).await;
        Ok(())
    }
}

/// Convenience for errors without a zookeeper-client source.
pub(crate) fn plain(kind: ErrorKind, operation: Operation, key: &Key) -> Error {
    Error::new(kind, operation).with_key(key)
}
