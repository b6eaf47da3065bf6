//! The session: one etcd lease kept alive by a background task.
//!
//! States, as published on [`LeaseKeeper::subscribe`]:
//!
//! - `Connected(epoch)`: the keep-alive stream answers.
//! - `Suspended(epoch)`: the keep-alive stream broke or stopped answering;
//!   the lease may still live. When a keep-alive works again (the lease
//!   still exists) the state goes back to `Connected` with the same epoch.
//! - `Lost(epoch)`: etcd says the lease is gone (a keep-alive answers with
//!   TTL 0 or "lease not found"), or the lease's TTL passed since the last
//!   answered keep-alive. Every lock guard's `lost()` fires first. A new
//!   lease is then granted, registrations are re-created on it, and the
//!   state becomes `Connected(epoch + 1)`.
//! - `Closed`: after `close()`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::Client;
use sharedstate_core::backend::{Backoff, SessionPublisher};
use sharedstate_core::{ErrorKind, SessionState, SessionStatus};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{call_raw, kind_of, EtcdError, Retry};
use crate::Inner;

/// The lease of the current session and the token cancelled when it is
/// lost (parent of every lock guard's `lost` token).
#[derive(Debug, Clone)]
pub(crate) struct LeaseHandle {
    /// The etcd lease id.
    pub(crate) id: i64,
    /// Cancelled when this lease is known to be lost.
    pub(crate) lost: CancellationToken,
}

/// The session as the backend keeps it: the current lease, its TTL and
/// the published status, shared by the backend and its keep-alive task.
#[derive(Debug)]
pub(crate) struct LeaseKeeper {
    status: SessionPublisher,
    current: Mutex<LeaseHandle>,
    ttl_secs: AtomicU64,
    poke: Notify,
}

impl LeaseKeeper {
    /// A connected session (epoch 0) on a freshly granted lease.
    pub(crate) fn new(lease_id: i64, ttl_secs: i64) -> Self {
        LeaseKeeper {
            status: SessionPublisher::new(),
            current: Mutex::new(LeaseHandle {
                id: lease_id,
                lost: CancellationToken::new(),
            }),
            ttl_secs: AtomicU64::new(positive_secs(ttl_secs)),
            poke: Notify::new(),
        }
    }

    /// The latest status.
    pub(crate) fn subscribe(&self) -> watch::Receiver<SessionStatus> {
        self.status.subscribe()
    }

    /// The status right now.
    pub(crate) fn status(&self) -> SessionStatus {
        self.status.status()
    }

    /// The current lease.
    pub(crate) fn current(&self) -> LeaseHandle {
        self.lock_current().clone()
    }

    /// Asks the keep-alive task to check the lease now (after an operation
    /// saw "lease not found", or after a forced expiry).
    pub(crate) fn poke(&self) {
        self.poke.notify_one();
    }

    fn lock_current(&self) -> MutexGuard<'_, LeaseHandle> {
        // A poisoned lock only means a panic elsewhere; the handle is plain data.
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs.load(Ordering::Relaxed))
    }

    /// How many times the connection broke (Suspended or Lost) so far. The
    /// status channel keeps only the latest value, so a quick
    /// Suspended-then-Connected may look unchanged to a slow reader; this
    /// counter does not.
    pub(crate) fn breaks(&self) -> u64 {
        self.status.breaks()
    }

    /// Fires every lock guard's `lost()` and publishes `Lost`.
    fn declare_lost(&self) {
        self.lock_current().lost.cancel();
        self.status.lost();
    }

    /// Installs a new lease (called with the registry lock held, so that
    /// registrations cannot slip between the old lease and the new one).
    pub(crate) fn install(&self, lease_id: i64, ttl_secs: i64) {
        *self.lock_current() = LeaseHandle {
            id: lease_id,
            lost: CancellationToken::new(),
        };
        self.ttl_secs
            .store(positive_secs(ttl_secs), Ordering::Relaxed);
    }

    /// Publishes `Connected` on a new session (epoch + 1).
    fn connected_new_epoch(&self) {
        self.status.new_session();
    }

    /// Ends the session for good: guards fire, state `Closed`.
    pub(crate) fn close(&self) {
        self.lock_current().lost.cancel();
        self.status.close();
    }
}

fn positive_secs(secs: i64) -> u64 {
    u64::try_from(secs).unwrap_or(1).max(1)
}

/// Why a keep-alive round ended.
enum Outcome {
    /// etcd says the lease is gone.
    Lost,
    /// The stream broke or did not answer in time.
    Broken(EtcdError),
}

/// The keep-alive task: runs until the backend is closed.
pub(crate) async fn run(inner: Arc<Inner>) {
    let mut last_ack = Instant::now();
    let mut backoff = backoff();
    let mut breaks_in_row = 0;
    loop {
        let lease = inner.session.current();
        let acked_before = last_ack;
        let outcome = tokio::select! {
            _ = inner.closed.cancelled() => return,
            outcome = keep_alive(&inner, lease.id, &mut last_ack, &mut backoff) => outcome,
        };
        match outcome {
            Outcome::Lost => {
                tracing::warn!(lease = lease.id, "etcd lease lost; starting a new session");
                inner.session.declare_lost();
                if !renew(&inner, None).await {
                    return;
                }
                last_ack = Instant::now();
                backoff.reset();
            }
            Outcome::Broken(error) => {
                // Another member may answer: try each once before calling
                // the session suspended (a frozen member must not cost the
                // session while a quorum answers).
                if acked_before != last_ack {
                    breaks_in_row = 0;
                }
                breaks_in_row += 1;
                if breaks_in_row < inner.members.len() && last_ack.elapsed() < inner.session.ttl() {
                    tracing::debug!(%error, lease = lease.id, "keep-alive failed on one member; trying another");
                    continue;
                }
                if inner.session.status().state == SessionState::Connected {
                    tracing::warn!(%error, lease = lease.id, "etcd connection lost; session suspended");
                }
                inner.session.status.suspended();
                if last_ack.elapsed() >= inner.session.ttl() {
                    tracing::warn!(
                        lease = lease.id,
                        "no keep-alive answered within the lease TTL; the session is lost"
                    );
                    inner.session.declare_lost();
                    if !renew(&inner, Some(lease.id)).await {
                        return;
                    }
                    last_ack = Instant::now();
                    backoff.reset();
                } else {
                    if !backoff.wait(&inner.closed).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Opens a keep-alive stream for `lease_id` and keeps the lease alive
/// until etcd says it is gone or the stream breaks.
async fn keep_alive(
    inner: &Arc<Inner>,
    lease_id: i64,
    last_ack: &mut Instant,
    backoff: &mut Backoff,
) -> Outcome {
    let timeout = inner.config.request_timeout;
    // On the preferred member, which the stream stays on: a failure marks
    // that member, so the next round goes to another one.
    let member = inner.members.index_for(0);
    let broken = |error: EtcdError| {
        inner.members.failed(member);
        Outcome::Broken(error)
    };
    let client = match inner.members.client(member).await {
        Ok(client) => client,
        Err(error) => return broken(EtcdError::Client(error)),
    };
    let mut leases = client.lease_client();
    let limit = inner.members.attempt_timeout(timeout);
    let (mut keeper, mut stream) =
        match tokio::time::timeout(limit, leases.keep_alive(lease_id)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(error)) => {
                let error = EtcdError::Client(error);
                if kind_of(&error) == ErrorKind::SessionLost {
                    return Outcome::Lost;
                }
                return broken(error);
            }
            Err(_) => return broken(EtcdError::Timeout(limit)),
        };
    *last_ack = Instant::now();
    backoff.reset();
    if inner.session.status().state == SessionState::Suspended {
        tracing::info!(lease = lease_id, "etcd connection restored; session kept");
        inner.session.status.reconnected();
    }
    crate::registration::reconcile_pending(inner, lease_id).await;
    loop {
        let ttl = inner.session.ttl();
        let interval = (ttl / 3).max(Duration::from_millis(500));
        tokio::select! {
            // Not a retry: the keep-alive period (a third of the TTL).
            _ = tokio::time::sleep(interval) => {}
            _ = inner.session.poke.notified() => {}
        }
        if let Err(error) = keeper.keep_alive().await {
            return broken(EtcdError::Client(error));
        }
        // Patient enough for a loaded server, short enough that a silent
        // connection shows as Suspended before the lease could expire
        // (ttl/3 + ttl/2 < ttl).
        let answer_within = timeout.min(ttl / 2).max(Duration::from_millis(500));
        match tokio::time::timeout(answer_within, stream.message()).await {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                *last_ack = Instant::now();
                inner.members.answered(member);
            }
            Ok(Ok(Some(_))) => return Outcome::Lost,
            Ok(Ok(None)) => return broken(EtcdError::Protocol("the keep-alive stream ended")),
            Ok(Err(error)) => {
                let error = EtcdError::Client(error);
                if kind_of(&error) == ErrorKind::SessionLost {
                    return Outcome::Lost;
                }
                return broken(error);
            }
            Err(_) => return broken(EtcdError::Timeout(answer_within)),
        }
        crate::registration::reconcile_pending(inner, lease_id).await;
    }
}

/// Grants a new lease (revoking `stale` first when the old one may still
/// exist on the server), re-creates registrations on it and publishes
/// `Connected` with the next epoch. Returns false when the backend was
/// closed meanwhile.
async fn renew(inner: &Arc<Inner>, mut stale: Option<i64>) -> bool {
    let timeout = inner.config.request_timeout;
    let mut backoff = backoff();
    loop {
        if inner.closed.is_cancelled() {
            return false;
        }
        if let Some(old) = stale {
            let revoke = |client: Client| {
                let mut leases = client.lease_client();
                async move { leases.revoke(old).await }
            };
            match call_raw(&inner.members, timeout, Retry::Read, revoke).await {
                Ok(_) => stale = None,
                Err(error) if kind_of(&error) == ErrorKind::SessionLost => stale = None,
                Err(error) => {
                    tracing::debug!(%error, lease = old, "revoking the stale lease failed")
                }
            }
        }
        let ttl = i64::try_from(inner.session.ttl().as_secs()).unwrap_or(i64::MAX);
        let grant = |client: Client| {
            let mut leases = client.lease_client();
            async move { leases.grant(ttl, None).await }
        };
        match call_raw(&inner.members, timeout, Retry::Write, grant).await {
            Ok(granted) => {
                let mut registry = inner.registry.lock().await;
                inner.session.install(granted.id(), granted.ttl());
                crate::registration::reconcile(inner, &mut registry, granted.id()).await;
                drop(registry);
                inner.session.connected_new_epoch();
                tracing::info!(lease = granted.id(), "new etcd session");
                return true;
            }
            Err(error) => {
                tracing::warn!(%error, "granting a new etcd lease failed; retrying");
                if !backoff.wait(&inner.closed).await {
                    return false;
                }
            }
        }
    }
}

/// The backoff of this backend's retry loops (keep-alive, lease grants,
/// re-watches, deferred deletes): from 100 ms to 2 s, jittered.
pub(crate) fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
}
