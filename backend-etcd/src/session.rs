//! The session: one etcd lease kept alive by a background task.
//!
//! The keep-alive task; the lease and the status it changes are in the
//! `lease` module. States, as published on
//! [`LeaseKeeper::subscribe`](crate::lease::LeaseKeeper::subscribe):
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

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use sharedstate_core::backend::Backoff;
use sharedstate_core::{ErrorKind, SessionState};
use tokio::time::Instant;

use crate::error::{call_raw, kind_of, EtcdError, Retry};
use crate::lease::backoff;
use crate::Inner;

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
