//! etcd v3 backend for sharedstate, on the `etcd-client` crate.
//!
//! ```no_run
//! # async fn demo() -> sharedstate_core::Result<()> {
//! use std::time::Duration;
//! use sharedstate_etcd::EtcdBackend;
//!
//! let backend = EtcdBackend::builder(["10.0.0.1:2379", "10.0.0.2:2379"])
//!     .user("app", "secret")
//!     .session_ttl(Duration::from_secs(10))
//!     .connect()
//!     .await?;
//! // or: EtcdBackend::from_url("etcd://10.0.0.1:2379,10.0.0.2:2379?session_ttl_s=10").await?
//! # Ok(()) }
//! ```
//!
//! How the contract maps onto etcd (v3.4 API):
//!
//! - **Versions** are `mod_revision`s. `put` modes are transactions
//!   (`Create`: `create_revision == 0`; `Update(v)`: `mod_revision == v`,
//!   the failure branch reads the key so `Conflict` carries the current
//!   version in the same round trip; `Overwrite`: a plain put). Reads are
//!   linearizable (etcd's default; no serializable read is used anywhere),
//!   so `get_linearizable` is `get`.
//! - **Hierarchy**: etcd is flat. `put` needs no parents, `list` derives
//!   the direct children from a keys-only prefix range (`/a/b/c` makes `b`
//!   a child of `/a`), and deleting a key leaves its children
//!   (`delete_requires_no_children` is false).
//! - **Session**: one lease (TTL [`EtcdBuilder::session_ttl`]) kept alive by
//!   a background task. A broken or silent keep-alive stream is
//!   `Suspended`; when a keep-alive works again on the same lease,
//!   `Connected` with the same epoch. When etcd says the lease is gone (or
//!   its TTL passed without an answered keep-alive) the session is `Lost`:
//!   every lock guard's `lost()` fires, a new lease is granted,
//!   registrations are re-created on it, then `Connected` with epoch + 1.
//! - **Watches** read the key, then watch from the read's revision + 1; a
//!   broken stream, a compacted start revision, a suspension or a new
//!   session leads to a re-read and `Resync`. A stream quiet for 2 s is
//!   asked for a progress notification, and one that gives none within the
//!   request timeout (a frozen or partitioned member) is reopened on
//!   another member; watches require a leader (`hasleader`), so a member
//!   cut off from the quorum cancels them instead of staying silent.
//! - **Locks** use the create-revision recipe of etcd's `concurrency.Mutex`
//!   (waiter keys `<lock key>/<lease hex>` bound to the lease; callers of
//!   one client queue locally for it);
//!   the fencing token is the waiter key's `create_revision`; fenced writes
//!   are one transaction comparing it.
//! - **Registrations** are keys bound to the lease.
//! - **Several endpoints**: one client per endpoint. Requests go to a
//!   preferred member and get a share of the request timeout; a member that
//!   fails or does not answer in time is avoided for a while, and reads (and
//!   writes that surely never left) are retried on another member within
//!   the same timeout. Writes whose outcome is unknown are never retried
//!   (`Timeout` or `Unavailable` with `Outcome::Unknown`), unconditional
//!   overwrites included. The lease keep-alive moves to another member
//!   before the session is called `Suspended`.
//! - [`EtcdBackend::watch_from`] resumes a watch from a known version
//!   (replaying etcd's history, or `Resync` once it was compacted).
//!
//! TLS is behind this crate's `tls` feature (etcd-client's `tls`, rustls).
#![deny(missing_docs)]
// docs.rs (nightly, `--cfg docsrs`): badges naming the Cargo feature of each gated item.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod error;
mod kv;
mod lease;
mod lock;
mod members;
mod registration;
mod session;
mod watch;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::Client;
use sharedstate_core::{
    Capabilities, CoordinationBackend, ErrorKind, Key, LockGuard, LockOptions, Operation, PutMode,
    Registration, Result, SessionStatus, Version, Versioned, WatchStream,
};
use tokio::sync::watch as watch_channel;
use tokio_util::sync::CancellationToken;

pub use builder::{
    EtcdBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SESSION_TTL,
};
#[cfg(feature = "tls")]
pub use etcd_client::{Certificate, Identity, TlsOptions};
pub use kv::MAX_VALUE_BYTES;

use builder::Config;
use error::Retry;
use lease::LeaseKeeper;
use registration::Registry;

/// State shared by the backend, its tasks, lock guards and registrations.
pub(crate) struct Inner {
    pub(crate) members: Arc<members::Members>,
    pub(crate) config: Config,
    pub(crate) session: LeaseKeeper,
    pub(crate) registry: tokio::sync::Mutex<Registry>,
    pub(crate) closed: CancellationToken,
    pub(crate) lock_queues: lock::LocalQueues,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("config", &self.config)
            .field("session", &self.session)
            .field("closed", &self.closed.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// The etcd backend: one client connection and one session lease.
///
/// Build it with [`EtcdBackend::builder`] or [`EtcdBackend::from_url`].
/// Dropping it stops its tasks and revokes the lease in the background
/// (within a Tokio runtime; otherwise the lease expires after its TTL);
/// [`close`](CoordinationBackend::close) revokes the lease right away.
pub struct EtcdBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("endpoints", &self.inner.config.endpoints)
            .field("lease_id", &self.lease_id())
            .field("session", &self.inner.session.status())
            .finish()
    }
}

impl EtcdBackend {
    /// A builder for a client of the etcd cluster at `endpoints`
    /// (`host:port` or `http(s)://host:port`).
    pub fn builder<I, S>(endpoints: I) -> EtcdBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdBuilder::new(endpoints)
    }

    /// Connects from a URL:
    /// `etcd://[user:password@]h1:2379,h2:2379[?key=value&...]`
    /// (`etcds://` for TLS, with the `tls` feature).
    ///
    /// Query keys:
    ///
    /// | key | meaning |
    /// |-----|---------|
    /// | `session_ttl_s` | session lease TTL in seconds (default 10) |
    /// | `connect_timeout_ms` | connect timeout in milliseconds (default 5000) |
    /// | `request_timeout_ms` | per-request timeout in milliseconds (default 5000) |
    /// | `user`, `password` | credentials (alternative to `user:password@`) |
    /// | `ca_file`, `cert_file`, `key_file`, `domain` | TLS files (PEM) and server name; `etcds://` and the `tls` feature only |
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a malformed URL or an unknown key, then as
    /// [`EtcdBuilder::connect`].
    pub async fn from_url(url: &str) -> Result<EtcdBackend> {
        builder::parse_url(url)?.connect().await
    }

    /// Watches `key` for the changes made after version `after` (one the
    /// caller already has, for example kept across a restart), replayed
    /// from etcd's history: no `Initial` item, then `Changed` / `Deleted`
    /// in version order. When that history was compacted away the first
    /// item is `Resync` with the current state (never a silent gap); after
    /// that it behaves as [`watch`](CoordinationBackend::watch).
    ///
    /// # Errors
    ///
    /// `Closed` after close; failures while following the key arrive as
    /// `Resync` after recovery, or as a final `Err` item.
    pub async fn watch_from(&self, key: &Key, after: Version) -> Result<WatchStream> {
        watch::watch_from(&self.inner, key, kv::revision(after))
    }

    /// The id of the current session lease (it changes after a `Lost`).
    pub fn lease_id(&self) -> i64 {
        self.inner.session.current().id
    }

    /// Fault injection for tests (feature `testing`): revokes the session lease from a second,
    /// separate connection to this backend's endpoints, and returns once
    /// etcd has revoked it (the session's locks and registrations are
    /// gone). The backend then reports `Lost`, opens a new session and
    /// reports `Connected` with the next epoch.
    ///
    /// # Errors
    ///
    /// `Unavailable` when etcd cannot be reached, `Closed` after close.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub async fn force_session_expiry(&self) -> Result<()> {
        let endpoints = self.inner.config.endpoints.clone();
        self.force_session_expiry_via(&endpoints).await
    }

    /// As [`force_session_expiry`](Self::force_session_expiry), through a
    /// connection to other `endpoints` (for example straight to the
    /// server, bypassing a test proxy that suspends this client).
    ///
    /// # Errors
    ///
    /// `Unavailable` when etcd cannot be reached, `Closed` after close.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub async fn force_session_expiry_via<S: AsRef<str>>(&self, endpoints: &[S]) -> Result<()> {
        let op = Operation::FaultInjection;
        if self.inner.closed.is_cancelled() {
            return Err(error::closed(op, None));
        }
        let mut config = self.inner.config.clone();
        config.endpoints = endpoints.iter().map(|e| e.as_ref().to_owned()).collect();
        let admin = crate::members::Members::new(
            &config.endpoints,
            config.options.clone(),
            config.connect_timeout,
        );
        #[cfg(feature = "tls")]
        let admin = admin.with_tls_identity(self.inner.members.tls_identity());
        let lease = self.lease_id();
        let revoke = |client: Client| {
            let mut leases = client.lease_client();
            async move { leases.revoke(lease).await }
        };
        match error::call(
            &admin,
            config.request_timeout,
            op,
            None,
            Retry::Read,
            revoke,
        )
        .await
        {
            Ok(_) => {}
            // Already gone: the expiry is effective.
            Err(e) if e.kind() == ErrorKind::SessionLost => {}
            Err(e) => return Err(e),
        }
        tracing::info!(lease, "session lease revoked (fault injection)");
        self.inner.session.poke();
        Ok(())
    }
}

impl Drop for EtcdBackend {
    fn drop(&mut self) {
        if self.inner.closed.is_cancelled() {
            return;
        }
        self.inner.closed.cancel();
        let lease = self.inner.session.current().id;
        self.inner.session.close();
        // Revoke the lease in the background when a runtime is there;
        // otherwise it expires after its TTL.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let members = Arc::clone(&self.inner.members);
            let timeout = self.inner.config.request_timeout;
            runtime.spawn(async move {
                let revoke = |client: Client| {
                    let mut leases = client.lease_client();
                    async move { leases.revoke(lease).await }
                };
                if let Err(error) = error::call_raw(&members, timeout, Retry::Read, revoke).await {
                    tracing::debug!(%error, lease, "revoking the lease of a dropped backend failed");
                }
            });
        }
    }
}

#[async_trait]
impl CoordinationBackend for EtcdBackend {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(MAX_VALUE_BYTES)
    }

    fn session(&self) -> watch_channel::Receiver<SessionStatus> {
        self.inner.session.subscribe()
    }

    async fn get(&self, key: &Key) -> Result<Option<Versioned>> {
        self.inner.get(key).await
    }

    async fn get_version(&self, key: &Key) -> Result<Option<Version>> {
        self.inner.get_version(key).await
    }

    async fn put(&self, key: &Key, value: Bytes, mode: PutMode) -> Result<Version> {
        self.inner.put(key, value, mode).await
    }

    async fn delete(&self, key: &Key, expected: Option<Version>) -> Result<()> {
        self.inner.delete(key, expected).await
    }

    async fn list(&self, key: &Key) -> Result<Vec<String>> {
        self.inner.list(key).await
    }

    async fn watch(&self, key: &Key) -> Result<WatchStream> {
        watch::watch(&self.inner, key).await
    }

    async fn lock(&self, key: &Key, options: LockOptions) -> Result<LockGuard> {
        Ok(lock::lock(&self.inner, key, options, None).await?.0)
    }

    /// One transaction takes the lock and reads `key` when the lock is
    /// free; a waiter reads it in the transaction that finds its turn.
    async fn lock_and_get(
        &self,
        lock_key: &Key,
        options: LockOptions,
        key: &Key,
    ) -> Result<(LockGuard, Option<Versioned>)> {
        lock::lock(&self.inner, lock_key, options, Some(key)).await
    }

    async fn fenced_put(
        &self,
        key: &Key,
        value: Bytes,
        mode: PutMode,
        guard: &LockGuard,
    ) -> Result<Version> {
        lock::fenced_put(&self.inner, key, value, mode, guard, false).await
    }

    async fn fenced_put_and_release(
        &self,
        key: &Key,
        value: Bytes,
        mode: PutMode,
        guard: LockGuard,
    ) -> Result<Version> {
        let written = lock::fenced_put(&self.inner, key, value, mode, &guard, true).await;
        match &written {
            // The transaction ran: its branches deleted the lock key.
            Ok(_) => drop(sharedstate_core::backend::disarm(guard)),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Conflict | ErrorKind::AlreadyExists | ErrorKind::LockLost
                ) && e.operation() == Operation::FencedPut =>
            {
                drop(sharedstate_core::backend::disarm(guard));
            }
            // Not sent, or the outcome is unknown: release separately.
            Err(_) => guard.release_or_warn("a failed fenced write").await,
        }
        written
    }

    async fn register(&self, key: &Key, value: Bytes) -> Result<Registration> {
        registration::register(&self.inner, key, value).await
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.is_cancelled() {
            return Ok(());
        }
        self.inner.closed.cancel();
        self.inner.registry.lock().await.clear();
        let lease = self.inner.session.current().id;
        let revoked = error::call(
            &self.inner.members,
            self.inner.config.request_timeout,
            Operation::Close,
            None,
            Retry::Read,
            |client: Client| {
                let mut leases = client.lease_client();
                async move { leases.revoke(lease).await }
            },
        )
        .await;
        self.inner.session.close();
        match revoked {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::SessionLost => Ok(()),
            Err(e) => Err(e),
        }
    }
}
