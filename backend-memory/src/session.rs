//! Clients, sessions and registrations on the cluster, and the session
//! faults (expire, suspend, resume).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use sharedstate_core::backend::{Recorded, RegistrationClose, Registry, SessionPublisher};
use sharedstate_core::{ErrorKind, Key, Operation, PutMode, Result};
use tokio::sync::watch;

use crate::cluster::{ClientId, ClusterCore, SessionId, State};

/// The cluster's view of one client.
pub(crate) struct ClientRecord {
    /// The live session; `None` between an expiry and the new session
    /// (only while suspended: otherwise the new session follows at once).
    session: Option<SessionId>,
    suspended: bool,
    /// Stalled: calls wait and watches deliver nothing, while the session
    /// still looks connected (a frozen server or a network that holds
    /// packets).
    stalled: Arc<watch::Sender<bool>>,
    /// The client's session status: the publisher keeps the transitions
    /// (and their order) the engine relies on.
    status: Arc<SessionPublisher>,
    /// Registrations to keep alive, by id: key and value.
    registrations: Registry,
}

impl ClientRecord {
    /// Connected: a live session and no suspension.
    pub(crate) fn is_connected(&self) -> bool {
        self.session.is_some() && !self.suspended
    }
}

impl State {
    /// Adds a client with a new session (epoch 0).
    pub(crate) fn open_client(
        &mut self,
    ) -> (ClientId, Arc<SessionPublisher>, watch::Receiver<bool>) {
        let client = self.next_id();
        let session = self.next_id();
        let status = Arc::new(SessionPublisher::new());
        let (stalled, stall_rx) = watch::channel(false);
        self.clients.insert(
            client,
            ClientRecord {
                session: Some(session),
                suspended: false,
                stalled: Arc::new(stalled),
                status: Arc::clone(&status),
                registrations: Registry::new(),
            },
        );
        tracing::debug!(client, session, "memory client opened");
        (client, status, stall_rx)
    }

    /// The client's live session, or the error a call gets instead:
    /// `Closed` after close, `Unavailable` while suspended.
    pub(crate) fn session_of(
        &self,
        client: ClientId,
        op: Operation,
        key: Option<&Key>,
    ) -> Result<SessionId> {
        let fail = |kind: ErrorKind, message: &str| {
            let err = sharedstate_core::Error::new(kind, op).with_message(message);
            match key {
                Some(key) => err.with_key(key),
                None => err,
            }
        };
        let Some(record) = self.clients.get(&client) else {
            return Err(fail(ErrorKind::Closed, "the client is closed"));
        };
        match record.session {
            Some(session) if !record.suspended => Ok(session),
            _ => Err(fail(ErrorKind::Unavailable, "the client is suspended")),
        }
    }

    /// Ends a session on the cluster: its ephemeral keys are deleted, its
    /// locks released (their `lost()` fires) and its lock waiters fail with
    /// `waiter_error`.
    fn end_session(&mut self, session: SessionId, waiter_error: ErrorKind) {
        let ephemerals: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, node)| node.ephemeral_owner == Some(session))
            .map(|(key, _)| key.clone())
            .collect();
        for key in ephemerals {
            self.remove(&key);
        }
        self.drop_session_locks(session, waiter_error);
        tracing::debug!(session, "memory session ended");
    }

    /// Starts a new session for `client` (epoch + 1): re-creates its
    /// registrations, reports `Connected` and then resyncs its watches
    /// (the publisher's notice is what the resync needs: the order the
    /// real backends have and the engine relies on).
    fn start_session(&mut self, client: ClientId) {
        let session = self.next_id();
        let registrations = match self.clients.get_mut(&client) {
            Some(record) => {
                record.session = Some(session);
                record.registrations.snapshot()
            }
            None => return,
        };
        for (_, Recorded { key, value, .. }) in registrations {
            let created = self.put(
                &key,
                value,
                PutMode::Create,
                Some(session),
                Operation::Register,
            );
            if let Err(error) = created {
                tracing::warn!(%error, %key, "re-creating a registration on the new session failed");
            }
        }
        let notice = self
            .clients
            .get(&client)
            .and_then(|record| record.status.new_session());
        if let Some(notice) = notice {
            tracing::debug!(
                client,
                session,
                epoch = notice.epoch(),
                "memory session started"
            );
            self.resync_watches(client, &notice);
        }
    }

    /// Expires the client's session now; a new one follows at once unless
    /// the client is suspended (then on [`resume`](Self::resume_client)).
    pub(crate) fn expire_client(&mut self, client: ClientId) -> Result<()> {
        let Some(record) = self.clients.get_mut(&client) else {
            return Err(closed(Operation::FaultInjection));
        };
        let old = record.session.take();
        let suspended = record.suspended;
        if let Some(session) = old {
            self.end_session(session, ErrorKind::SessionLost);
        }
        if let Some(record) = self.clients.get(&client) {
            record.status.lost();
        }
        if !suspended {
            self.start_session(client);
        }
        Ok(())
    }

    /// Cuts the client off without ending its session.
    pub(crate) fn suspend_client(&mut self, client: ClientId) -> Result<()> {
        let Some(record) = self.clients.get_mut(&client) else {
            return Err(closed(Operation::FaultInjection));
        };
        if record.suspended {
            return Ok(());
        }
        record.suspended = true;
        if record.session.is_some() {
            record.status.suspended();
        }
        self.pause_watches(client);
        Ok(())
    }

    /// Stalls the client: calls wait and watches deliver nothing until
    /// [`resume_client`](Self::resume_client), and the session still looks
    /// connected.
    pub(crate) fn stall_client(&mut self, client: ClientId) -> Result<()> {
        let Some(record) = self.clients.get_mut(&client) else {
            return Err(closed(Operation::FaultInjection));
        };
        record.stalled.send_replace(true);
        self.pause_watches(client);
        Ok(())
    }

    /// Reconnects a suspended client: same session if it survived, else a
    /// new one. A stalled client gets what was held back.
    pub(crate) fn resume_client(&mut self, client: ClientId) -> Result<()> {
        let Some(record) = self.clients.get_mut(&client) else {
            return Err(closed(Operation::FaultInjection));
        };
        if *record.stalled.borrow() {
            record.stalled.send_replace(false);
            if !record.suspended {
                // Held bytes flow again: no loss, no resync.
                self.unpause_watches(client);
                return Ok(());
            }
        }
        if !record.suspended {
            return Ok(());
        }
        record.suspended = false;
        if record.session.is_some() {
            if let Some(notice) = record.status.reconnected() {
                self.resync_watches(client, &notice);
            }
        } else {
            self.start_session(client);
        }
        Ok(())
    }

    /// Closes the client: its session ends and its watches stop.
    pub(crate) fn close_client(&mut self, client: ClientId) {
        let Some(record) = self.clients.remove(&client) else {
            return;
        };
        if let Some(session) = record.session {
            self.end_session(session, ErrorKind::Closed);
        }
        self.drop_watches(client);
        record.status.close();
        tracing::debug!(client, "memory client closed");
    }

    /// Creates the ephemeral key of a new registration.
    pub(crate) fn register(&mut self, client: ClientId, key: &Key, value: Bytes) -> Result<u64> {
        let session = self.session_of(client, Operation::Register, Some(key))?;
        self.put(
            key,
            value.clone(),
            PutMode::Create,
            Some(session),
            Operation::Register,
        )?;
        match self.clients.get_mut(&client) {
            Some(record) => Ok(record.registrations.insert(key.clone(), value, ())),
            None => Err(closed(Operation::Register)),
        }
    }

    /// Records `value` as registration `id`'s value (what a new session
    /// re-creates) and writes it to the key if this client's session owns
    /// it; never creates the key.
    pub(crate) fn update_registration(
        &mut self,
        client: ClientId,
        id: u64,
        key: &Key,
        value: Bytes,
    ) -> Result<()> {
        let op = Operation::UpdateRegistration;
        let Some(record) = self.clients.get_mut(&client) else {
            return Err(closed(op));
        };
        let key = record
            .registrations
            .record_value(id, key, value.clone())?
            .key
            .clone();
        // Suspended: the recorded value is what the key gets once the
        // session is back (re-created on a new one, or written on retry).
        let session = self.session_of(client, op, Some(&key))?;
        let owned = self
            .nodes
            .get(key.as_str())
            .is_some_and(|node| node.ephemeral_owner == Some(session));
        if owned {
            self.put(&key, value, PutMode::Overwrite, None, op)?;
        }
        Ok(())
    }

    /// Stops keeping registration `id` alive and deletes its key if this
    /// client's session owns it.
    fn deregister(&mut self, client: ClientId, id: u64) -> Result<()> {
        let Some(record) = self.clients.get_mut(&client) else {
            // Closed: the key went with the session.
            return Ok(());
        };
        let Some(Recorded { key, .. }) = record.registrations.remove(id) else {
            return Ok(());
        };
        let session = self.session_of(client, Operation::Deregister, Some(&key))?;
        let owned = self
            .nodes
            .get(key.as_str())
            .is_some_and(|node| node.ephemeral_owner == Some(session));
        if owned {
            self.remove(key.as_str());
        }
        Ok(())
    }
}

fn closed(op: Operation) -> sharedstate_core::Error {
    sharedstate_core::Error::new(ErrorKind::Closed, op).with_message("the client is closed")
}

/// Updates and closes one registration of one client.
#[derive(Debug)]
pub(crate) struct MemoryRegistration {
    pub(crate) shared: Arc<ClusterCore>,
    pub(crate) client: ClientId,
    pub(crate) id: u64,
    /// The client's stall fault: an update waits while it holds.
    pub(crate) stalled: watch::Receiver<bool>,
}

#[async_trait]
impl RegistrationClose for MemoryRegistration {
    async fn update(&self, key: &Key, value: Bytes) -> Result<()> {
        self.shared
            .check_size(&value, Operation::UpdateRegistration, key)?;
        let mut stalled = self.stalled.clone();
        // Err: the client closed; the update then fails with `Closed`.
        let _ = stalled.wait_for(|stalled| !*stalled).await;
        self.shared
            .lock()
            .update_registration(self.client, self.id, key, value)
    }

    async fn close(self: Box<Self>) -> Result<()> {
        self.shared.lock().deregister(self.client, self.id)
    }
}
