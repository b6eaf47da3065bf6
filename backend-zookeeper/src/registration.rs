//! Ephemeral registrations, re-created on every new session.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sharedstate_core::backend::{Backoff, Recorded, RegistrationClose};
use sharedstate_core::{ErrorKind, Key, Operation, Registration, Result};
use zookeeper_client as zk;

use crate::{error, kv, plain, Inner, Session};

const ATTEMPTS: usize = 8;
/// The first pause of a request retried after a lost connection (see
/// `Backoff::short`).
const FIRST_RETRY: Duration = Duration::from_millis(50);

/// Creates the ephemeral node; after a lost response (or with
/// `ours_if_exists`, when the supervisor may have re-created it on this
/// session meanwhile), a node already there that belongs to this session is
/// the one we want.
async fn create(
    inner: &Inner,
    session: &Session,
    key: &Key,
    value: &Bytes,
    ours_if_exists: bool,
) -> Result<()> {
    let op = Operation::Register;
    let client = &session.client;
    let mut retried = ours_if_exists;
    let mut backoff = Backoff::short(FIRST_RETRY);
    for _ in 0..ATTEMPTS {
        match kv::create_with_parents(inner, client, key, value, zk::CreateMode::Ephemeral).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::NodeExists) => {
                return match client.check_stat(key.as_str()).await {
                    Ok(Some(stat)) if retried && stat.ephemeral_owner == client.session_id().0 => {
                        Ok(())
                    }
                    Ok(None) => continue,
                    Ok(Some(_)) => Err(plain(ErrorKind::AlreadyExists, op, key)
                        .with_message("the key exists (another registration or a plain key)")),
                    Err(e) => Err(error::map(e, op, key)),
                }
            }
            Err(zk::Error::ConnectionLoss) => {
                retried = true;
                backoff.sleep().await;
            }
            Err(e) => return Err(error::map(e, op, key)),
        }
    }
    Err(plain(ErrorKind::Unavailable, op, key).with_message("could not create the registration"))
}

pub(crate) async fn register(inner: &Arc<Inner>, key: &Key, value: Bytes) -> Result<Registration> {
    let op = Operation::Register;
    let session = inner.session(op)?;
    // Recorded first so that a new session that starts meanwhile re-creates it.
    let id = inner
        .registrations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.clone(), value.clone(), ());
    // Armed before the first request: if this future is dropped before it
    // returns, the entry goes and the node with it (in the background).
    let mut abandoned = Abandoned {
        inner: Arc::downgrade(inner),
        key: key.clone(),
        id,
        armed: true,
    };
    let mut attempted = session;
    let mut outcome = create(inner, &attempted, key, &value, false).await;
    // A new session replaced the one we created on: the supervisor
    // re-creates registered keys on it, possibly before ours was recorded.
    // Make sure it exists there (it may already, as ours).
    for _ in 0..ATTEMPTS {
        let Err(error) = &outcome else { break };
        let Some(current) = inner.current_session() else {
            break;
        };
        if current.epoch == attempted.epoch
            || !matches!(
                error.kind(),
                ErrorKind::SessionLost | ErrorKind::Unavailable
            )
        {
            break;
        }
        attempted = current;
        outcome = create(inner, &attempted, key, &value, true).await;
    }
    abandoned.armed = false;
    if let Err(e) = outcome {
        inner
            .registrations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        // A re-creation by the supervisor may have raced the removal.
        delete_if_owned(inner, key).await;
        return Err(e);
    }
    Ok(sharedstate_core::backend::registration(
        key.clone(),
        Box::new(Closer {
            inner: Arc::downgrade(inner),
            key: key.clone(),
            id,
        }),
    ))
}

/// Re-creates every registration on a new session. Those that fail (the
/// connection broke again, or the expired session's node is still there
/// because the client gave up on the session before the server did) are
/// retried in the background while the session lasts.
pub(crate) async fn recreate_all(inner: &Arc<Inner>, session: &Session) {
    let ids = inner
        .registrations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .ids();
    for id in ids {
        let Some(entry) = recorded(inner, id) else {
            continue;
        };
        match create(inner, session, &entry.key, &entry.value, false).await {
            Ok(()) => {
                tracing::info!(key = %entry.key, "registration re-created on the new session");
                catch_up(inner, id, &entry).await;
            }
            Err(error) => {
                tracing::warn!(%error, key = %entry.key, "re-creating a registration failed; retrying");
                tokio::spawn(retry(Arc::downgrade(inner), session.epoch, id));
            }
        }
    }
}

/// Registration `id` as recorded now (its latest value); `None` once closed.
fn recorded(inner: &Inner, id: u64) -> Option<Recorded> {
    inner
        .registrations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(id)
        .cloned()
}

/// After a re-creation with `created.value`: an update recorded a newer
/// value meanwhile (it found no node of ours to write to), so write it.
async fn catch_up(inner: &Inner, id: u64, created: &Recorded) {
    let newer = recorded(inner, id).is_some_and(|now| now.value != created.value);
    if newer {
        if let Err(error) = write_recorded(inner, id, &created.key).await {
            tracing::debug!(%error, key = %created.key, "writing a registration's latest value failed; the next update writes it");
        }
    }
}

async fn retry(inner: Weak<Inner>, epoch: u64, id: u64) {
    let started = std::time::Instant::now();
    let mut backoff = Backoff::new(FIRST_RETRY * 4, Duration::from_secs(5));
    loop {
        backoff.sleep().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // Closed (no entry), or a newer session re-creates it itself. The
        // entry is read afresh each time: it carries the latest value.
        let Some(entry) = recorded(&inner, id) else {
            return;
        };
        let Some(session) = inner.current_session() else {
            return;
        };
        if session.epoch != epoch {
            return;
        }
        match create(&inner, &session, &entry.key, &entry.value, false).await {
            Ok(()) => {
                tracing::info!(key = %entry.key, "registration re-created on the new session");
                catch_up(&inner, id, &entry).await;
                return;
            }
            Err(error)
                if error.kind() == ErrorKind::AlreadyExists
                    && started.elapsed() > inner.config.session_timeout * 3 =>
            {
                tracing::warn!(%error, key = %entry.key, "giving up re-creating a registration");
                return;
            }
            Err(error) => tracing::debug!(%error, key = %entry.key, "registration retry failed"),
        }
    }
}

/// Records `value` as registration `id`'s value and writes it to the node
/// while this session owns it.
async fn update(inner: &Inner, id: u64, key: &Key, value: Bytes) -> Result<()> {
    let op = Operation::UpdateRegistration;
    crate::check_size(op, key, &value)?;
    inner
        .registrations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .record_value(id, key, value)?;
    write_recorded(inner, id, key).await
}

/// Writes registration `id`'s recorded value to its node if the current
/// session owns the node, until the node holds the latest recorded value.
/// Never creates the node: a missing one (or one of an expired session)
/// gets the recorded value when it is re-created. A `setData` whose answer
/// was lost is simply sent again: only this client writes the node, with
/// the value recorded last.
async fn write_recorded(inner: &Inner, id: u64, key: &Key) -> Result<()> {
    let op = Operation::UpdateRegistration;
    let session = inner.session(op)?;
    let client = &session.client;
    let mut backoff = Backoff::short(FIRST_RETRY);
    for _ in 0..ATTEMPTS {
        let Some(entry) = recorded(inner, id) else {
            return Ok(());
        };
        let stat = match client.check_stat(key.as_str()).await {
            Ok(Some(stat)) => stat,
            Ok(None) => return Ok(()),
            Err(zk::Error::ConnectionLoss) => {
                backoff.sleep().await;
                continue;
            }
            Err(e) => return Err(error::map(e, op, key)),
        };
        if stat.ephemeral_owner != client.session_id().0 {
            // The node of an expired session of ours: it goes, and the
            // re-creation on this session writes the recorded value.
            return Ok(());
        }
        match client
            .set_data(key.as_str(), &entry.value, Some(stat.version))
            .await
        {
            Ok(_) => {
                let latest = recorded(inner, id).map(|now| now.value);
                if latest.is_none_or(|latest| latest == entry.value) {
                    return Ok(());
                }
            }
            Err(zk::Error::NoNode) => return Ok(()),
            Err(zk::Error::ConnectionLoss | zk::Error::BadVersion) => {
                backoff.sleep().await;
            }
            Err(e) => return Err(error::map(e, op, key)),
        }
    }
    Err(plain(ErrorKind::Unavailable, op, key)
        .with_message("could not write the registration's value; it is kept for the next attempt"))
}

/// The cleanup of a `register` call dropped before it returned: removes its
/// entry (so no new session re-creates it) and deletes the node if it was
/// created.
struct Abandoned {
    inner: Weak<Inner>,
    key: Key,
    id: u64,
    armed: bool,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        inner
            .registrations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.id);
        let key = self.key.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    // A create still in flight is answered before this
                    // check: requests are ordered.
                    delete_if_owned(&inner, &key).await;
                });
            }
            Err(_) => {
                tracing::warn!(%key, "a register call was dropped outside a runtime; the key goes with the session")
            }
        }
    }
}

/// Deletes `key` if the current session owns it (best effort, bounded).
async fn delete_if_owned(inner: &Inner, key: &Key) {
    let Some(session) = inner.current_session() else {
        return;
    };
    let client = &session.client;
    if let Ok(Some(stat)) = client.check_stat(key.as_str()).await {
        if stat.ephemeral_owner == client.session_id().0 {
            if let Err(error) = client.delete(key.as_str(), Some(stat.version)).await {
                tracing::debug!(%error, %key, "removing a registration that failed to register");
            }
        }
    }
}

/// Updates a registration, stops re-creating it and deletes its node.
#[derive(Debug)]
struct Closer {
    inner: Weak<Inner>,
    key: Key,
    id: u64,
}

#[async_trait]
impl RegistrationClose for Closer {
    async fn update(&self, key: &Key, value: Bytes) -> Result<()> {
        let Some(inner) = self.inner.upgrade() else {
            return Err(error::closed(Operation::UpdateRegistration));
        };
        update(&inner, self.id, key, value).await
    }

    async fn close(self: Box<Self>) -> Result<()> {
        let op = Operation::Deregister;
        let Some(inner) = self.inner.upgrade() else {
            return Ok(());
        };
        inner
            .registrations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.id);
        let Some(session) = inner.current_session() else {
            return Ok(());
        };
        let client = &session.client;
        let mut backoff = Backoff::short(FIRST_RETRY);
        for _ in 0..ATTEMPTS {
            let stat = match client.check_stat(self.key.as_str()).await {
                Ok(Some(stat)) => stat,
                Ok(None) | Err(zk::Error::SessionExpired) => return Ok(()),
                Err(zk::Error::ConnectionLoss) => {
                    backoff.sleep().await;
                    continue;
                }
                Err(e) => return Err(error::map(e, op, &self.key)),
            };
            if stat.ephemeral_owner != client.session_id().0 {
                // Not ours (anymore): leave it alone.
                return Ok(());
            }
            match client.delete(self.key.as_str(), Some(stat.version)).await {
                Ok(()) | Err(zk::Error::NoNode | zk::Error::SessionExpired) => return Ok(()),
                Err(zk::Error::ConnectionLoss | zk::Error::BadVersion) => {
                    backoff.sleep().await;
                }
                Err(e) => return Err(error::map(e, op, &self.key)),
            }
        }
        Err(plain(ErrorKind::Unavailable, op, &self.key)
            .with_message("the registration could not be deleted; it goes with the session"))
    }
}
