//! One client of the in-memory cluster: the [`CoordinationBackend`]
//! implementation and the fault injection methods.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use sharedstate_core::backend::SessionPublisher;
use sharedstate_core::{
    Capabilities, CoordinationBackend, ErrorKind, Key, LockGuard, LockOptions, Operation, PutMode,
    Registration, Result, SessionStatus, Version, Versioned, WatchStream,
};
use tokio::sync::watch;

use crate::cluster::{error, ClientId, ClusterCore};
use crate::lock::{guard, Acquire, PendingLock};
use crate::session::MemoryRegistration;

/// A client of a [`MemoryCluster`](crate::MemoryCluster) with its own
/// session, made by [`MemoryCluster::client`](crate::MemoryCluster::client).
///
/// Implements the whole [`CoordinationBackend`] contract: hierarchical keys
/// (missing parents are created as empty keys, a key with children cannot
/// be deleted), versions from a cluster-wide counter, linearizable reads,
/// level-triggered watches, FIFO locks with fencing tokens, fenced writes
/// and ephemeral registrations.
///
/// Faults for tests: [`expire_session`](Self::expire_session),
/// [`suspend`](Self::suspend) and [`resume`](Self::resume).
///
/// Dropping the client closes it (its session ends at once).
///
/// Details where the contract leaves room, chosen to match ZooKeeper:
///
/// - `list` of a missing key is an empty list.
/// - An ephemeral key (a registration) cannot have children: `put` below
///   one fails with `Unsupported`. Overwriting an ephemeral key keeps it
///   ephemeral.
/// - Locks are not keys: they do not show in `list` or `get`.
/// - A lock is not re-entrant: the same client asking again waits.
/// - Releasing a lock or closing a registration while suspended fails with
///   `Unavailable` and leaves it to the session (as a real server would).
/// - `close` (and drop) fire `lost()` on the client's lock guards, and make
///   its pending `lock` calls fail with `Closed`.
pub struct MemoryBackend {
    shared: Arc<ClusterCore>,
    client: ClientId,
    status: Arc<SessionPublisher>,
    stalled: watch::Receiver<bool>,
}

impl MemoryBackend {
    pub(crate) fn open(shared: Arc<ClusterCore>) -> Self {
        let (client, status, stalled) = shared.lock().open_client();
        MemoryBackend {
            shared,
            client,
            status,
            stalled,
        }
    }

    /// Waits while the client is stalled (see [`stall`](Self::stall)).
    async fn unstalled(&self) {
        let mut stalled = self.stalled.clone();
        // Err: the client closed; the call then fails with `Closed`.
        let _ = stalled.wait_for(|stalled| !*stalled).await;
    }

    /// Expires this client's session, as a server does after a session
    /// timeout: at once, its ephemeral keys are deleted, its locks are
    /// released (every [`LockGuard::lost`] fires, waiters fail with
    /// `SessionLost`) and the state becomes `Lost`. Then a new session
    /// starts (epoch + 1, `Connected`), registrations are re-created on it
    /// and every watch yields `Resync`. When the client is suspended, the
    /// new session starts on [`resume`](Self::resume) instead.
    ///
    /// # Errors
    ///
    /// `Closed` when the client is closed.
    ///
    /// ```
    /// use sharedstate_core::{CoordinationBackend, SessionState};
    /// let client = sharedstate_memory::MemoryCluster::new().client();
    /// client.expire_session().unwrap();
    /// let status = *client.session().borrow();
    /// assert_eq!((status.state, status.epoch), (SessionState::Connected, 1));
    /// ```
    pub fn expire_session(&self) -> Result<()> {
        tracing::debug!(client = self.client, "fault: expire session");
        self.shared.lock().expire_client(self.client)
    }

    /// Cuts this client off without ending its session: the state becomes
    /// `Suspended` (same epoch), every call fails with `Unavailable` and
    /// watches deliver nothing until [`resume`](Self::resume). The session,
    /// its locks and its registrations stay on the cluster. Suspending a
    /// suspended client does nothing.
    ///
    /// # Errors
    ///
    /// `Closed` when the client is closed.
    pub fn suspend(&self) -> Result<()> {
        tracing::debug!(client = self.client, "fault: suspend");
        self.shared.lock().suspend_client(self.client)
    }

    /// Stalls this client, as a frozen server or a network that holds
    /// packets would: every call waits (until [`resume`](Self::resume), or
    /// the caller's own timeout) and watches deliver nothing, while the
    /// session still reports `Connected`. After `resume`, calls proceed and
    /// watches deliver what they held back (no `Resync`: nothing was lost).
    ///
    /// # Errors
    ///
    /// `Closed` when the client is closed.
    pub fn stall(&self) -> Result<()> {
        tracing::debug!(client = self.client, "fault: stall");
        self.shared.lock().stall_client(self.client)
    }

    /// Makes this client's existing watches silent for good while the
    /// session keeps reporting `Connected`: no event, no error, no end (the
    /// failure zookeeper-client 0.11.2 had after every reconnect). Watches
    /// opened afterwards work. For testing that a consumer does not trust
    /// a watch it cannot verify.
    ///
    /// # Errors
    ///
    /// `Closed` when the client is closed.
    pub fn silence_watches(&self) -> Result<()> {
        tracing::debug!(client = self.client, "fault: silence watches");
        let mut state = self.shared.lock();
        if !state.clients.contains_key(&self.client) {
            return Err(sharedstate_core::Error::new(
                ErrorKind::Closed,
                Operation::FaultInjection,
            ));
        }
        state.silence_watches(self.client);
        Ok(())
    }

    /// Reconnects a suspended client: `Connected` with the same epoch, and
    /// every watch yields `Resync` with the current state. If the session
    /// was expired meanwhile, a new session starts instead (see
    /// [`expire_session`](Self::expire_session)). Also ends a
    /// [`stall`](Self::stall). Resuming a connected client does nothing.
    ///
    /// # Errors
    ///
    /// `Closed` when the client is closed.
    pub fn resume(&self) -> Result<()> {
        tracing::debug!(client = self.client, "fault: resume");
        self.shared.lock().resume_client(self.client)
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("client", &self.client)
            .field("status", &self.status.status())
            .finish()
    }
}

impl Drop for MemoryBackend {
    fn drop(&mut self) {
        self.shared.lock().close_client(self.client);
    }
}

#[async_trait]
impl CoordinationBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::new(self.shared.max_value_bytes);
        capabilities.delete_requires_no_children = true;
        capabilities
    }

    fn session(&self) -> watch::Receiver<SessionStatus> {
        self.status.subscribe()
    }

    async fn get(&self, key: &Key) -> Result<Option<Versioned>> {
        self.unstalled().await;
        let state = self.shared.lock();
        state.session_of(self.client, Operation::Get, Some(key))?;
        Ok(state.get(key.as_str()))
    }

    async fn put(&self, key: &Key, value: Bytes, mode: PutMode) -> Result<Version> {
        self.unstalled().await;
        self.shared.check_size(&value, Operation::Put, key)?;
        let mut state = self.shared.lock();
        state.session_of(self.client, Operation::Put, Some(key))?;
        state.put(key, value, mode, None, Operation::Put)
    }

    async fn delete(&self, key: &Key, expected: Option<Version>) -> Result<()> {
        self.unstalled().await;
        let mut state = self.shared.lock();
        state.session_of(self.client, Operation::Delete, Some(key))?;
        state.delete(key, expected, Operation::Delete)
    }

    async fn list(&self, key: &Key) -> Result<Vec<String>> {
        self.unstalled().await;
        let state = self.shared.lock();
        state.session_of(self.client, Operation::List, Some(key))?;
        Ok(state.children(key.as_str()))
    }

    async fn watch(&self, key: &Key) -> Result<WatchStream> {
        self.unstalled().await;
        let mut state = self.shared.lock();
        state.session_of(self.client, Operation::Watch, Some(key))?;
        Ok(state.add_watch(self.client, key.as_str()))
    }

    async fn lock(&self, key: &Key, options: LockOptions) -> Result<LockGuard> {
        self.unstalled().await;
        let acquired = {
            let mut state = self.shared.lock();
            let session = state.session_of(self.client, Operation::Lock, Some(key))?;
            state.acquire_lock(key, session)
        };
        match acquired {
            Acquire::Granted(grant) => Ok(guard(&self.shared, self.client, key, grant)),
            Acquire::Queued(id, rx) => {
                let pending = PendingLock {
                    shared: Arc::clone(&self.shared),
                    client: self.client,
                    key: key.clone(),
                    id,
                    rx: Some(rx),
                };
                pending.wait(options.timeout).await
            }
        }
    }

    async fn fenced_put(
        &self,
        key: &Key,
        value: Bytes,
        mode: PutMode,
        guard: &LockGuard,
    ) -> Result<Version> {
        self.unstalled().await;
        self.shared.check_size(&value, Operation::FencedPut, key)?;
        let mut state = self.shared.lock();
        let session = state.session_of(self.client, Operation::FencedPut, Some(key))?;
        let token = guard.fencing_token().as_u64();
        if !state.holds_lock(guard.key().as_str(), session, token) {
            return Err(lock_lost(key, guard));
        }
        state.put(key, value, mode, None, Operation::FencedPut)
    }

    async fn fenced_put_and_release(
        &self,
        key: &Key,
        value: Bytes,
        mode: PutMode,
        guard: LockGuard,
    ) -> Result<Version> {
        self.unstalled().await;
        self.shared.check_size(&value, Operation::FencedPut, key)?;
        let mut state = self.shared.lock();
        let session = state.session_of(self.client, Operation::FencedPut, Some(key))?;
        let token = guard.fencing_token().as_u64();
        if !state.holds_lock(guard.key().as_str(), session, token) {
            return Err(lock_lost(key, &guard));
        }
        let written = state.put(key, value, mode, None, Operation::FencedPut);
        state.release_lock(guard.key().as_str(), token);
        drop(state);
        // Released above, in the same critical section as the write.
        drop(sharedstate_core::backend::disarm(guard));
        written
    }

    async fn register(&self, key: &Key, value: Bytes) -> Result<Registration> {
        self.unstalled().await;
        self.shared.check_size(&value, Operation::Register, key)?;
        let id = self.shared.lock().register(self.client, key, value)?;
        let closer = MemoryRegistration {
            shared: Arc::clone(&self.shared),
            client: self.client,
            id,
            stalled: self.stalled.clone(),
        };
        Ok(sharedstate_core::backend::registration(
            key.clone(),
            Box::new(closer),
        ))
    }

    async fn close(&self) -> Result<()> {
        self.shared.lock().close_client(self.client);
        Ok(())
    }
}

fn lock_lost(key: &Key, guard: &LockGuard) -> sharedstate_core::Error {
    error(ErrorKind::LockLost, Operation::FencedPut, key).with_message(format!(
        "the lock {} (token {}) is no longer held by this session",
        guard.key(),
        guard.fencing_token()
    ))
}
