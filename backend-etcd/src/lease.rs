//! The session's state: the current lease, its TTL and the published
//! status, which the calls read and the keep-alive task (`session`)
//! changes; and the backend's retry backoff.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use sharedstate_core::backend::{Backoff, SessionPublisher};
use sharedstate_core::SessionStatus;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

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
    pub(crate) status: SessionPublisher,
    current: Mutex<LeaseHandle>,
    ttl_secs: AtomicU64,
    pub(crate) poke: Notify,
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

    pub(crate) fn ttl(&self) -> Duration {
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
    pub(crate) fn declare_lost(&self) {
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
    pub(crate) fn connected_new_epoch(&self) {
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

/// The backoff of this backend's retry loops (keep-alive, lease grants,
/// re-watches, deferred deletes): from 100 ms to 2 s, jittered.
pub(crate) fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
}
