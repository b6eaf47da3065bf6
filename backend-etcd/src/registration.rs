//! Ephemeral registrations: keys bound to the session lease, re-created on
//! every new lease until the [`Registration`] is closed or dropped.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use sharedstate_core::backend::RegistrationClose;
use sharedstate_core::{Error, ErrorKind, Key, Operation, Registration, Result};

use crate::error::{closed, Retry};
use crate::kv::delete_owned;
use crate::Inner;

/// The live registrations of one client (the kit's registry), with the
/// lease each key was last created with.
pub(crate) type Registry = sharedstate_core::backend::Registry<OnLease>;

/// etcd's bookkeeping of one registration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OnLease {
    /// The lease the key was last created with (0: not created yet).
    lease: i64,
    /// A warning about someone else holding the key was logged.
    warned: bool,
}

/// How creating a registration key went.
enum Created {
    /// Created now, bound to the lease.
    Now,
    /// It existed already, bound to this lease.
    Ours,
    /// Another key holds the name (another client, or a stale lease).
    Taken { lease: i64 },
}

/// One transaction: create `key` bound to `lease` if it is absent, and
/// read it back otherwise.
async fn create(inner: &Inner, key: &Key, value: &Bytes, lease: i64) -> Result<Created> {
    let txn = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.as_str(),
            value.to_vec(),
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(
            key.as_str(),
            Some(GetOptions::new().with_keys_only()),
        )]);
    let response = inner
        .txn(Operation::Register, key, Retry::Write, txn)
        .await
        .inspect_err(|e| {
            if e.kind() == ErrorKind::SessionLost {
                inner.session.poke();
            }
        })?;
    if response.succeeded() {
        return Ok(Created::Now);
    }
    let holder = response
        .op_responses()
        .into_iter()
        .find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.lease()),
            _ => None,
        })
        .unwrap_or(0);
    if holder == lease {
        Ok(Created::Ours)
    } else {
        Ok(Created::Taken { lease: holder })
    }
}

/// Registers `key` on the current lease.
pub(crate) async fn register(inner: &Arc<Inner>, key: &Key, value: Bytes) -> Result<Registration> {
    if inner.closed.is_cancelled() {
        return Err(closed(Operation::Register, Some(key)));
    }
    crate::kv::check_size(Operation::Register, key, &value)?;
    let mut registry = inner.registry.lock().await;
    let lease = inner.session.current();
    if lease.lost.is_cancelled() {
        return Err(Error::new(ErrorKind::SessionLost, Operation::Register)
            .with_key(key)
            .with_message("the session is lost; a new one is being opened"));
    }
    // Armed before the request: if this future is dropped while the create
    // is in flight, a key it may have made is deleted in the background
    // (no entry would ever delete it).
    let mut abandoned = Abandoned {
        inner: Arc::clone(inner),
        key: key.clone(),
        lease: Some(lease.clone()),
    };
    let created = create(inner, key, &value, lease.id).await;
    abandoned.lease = None;
    match created? {
        Created::Now => {}
        // Also when this client holds it through another registration.
        Created::Ours | Created::Taken { .. } => {
            return Err(Error::new(ErrorKind::AlreadyExists, Operation::Register).with_key(key));
        }
    }
    let id = registry.insert(
        key.clone(),
        value,
        OnLease {
            lease: lease.id,
            warned: false,
        },
    );
    drop(registry);
    Ok(sharedstate_core::backend::registration(
        key.clone(),
        Box::new(EtcdRegistration {
            inner: Arc::clone(inner),
            id,
            key: key.clone(),
        }),
    ))
}

/// The cleanup of a `register` call dropped mid-request.
struct Abandoned {
    inner: Arc<Inner>,
    key: Key,
    /// `None` once the request was answered.
    lease: Option<crate::lease::LeaseHandle>,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        crate::kv::delete_owned_later(
            &self.inner,
            Operation::Deregister,
            &self.key,
            self.key.as_str().to_owned(),
            lease,
            (),
        );
    }
}

/// Re-creates every registration not bound to `lease` yet (called with the
/// registry locked, on a new lease).
pub(crate) async fn reconcile(inner: &Inner, registry: &mut Registry, lease: i64) {
    for (_, entry) in registry.iter_mut() {
        if entry.extra.lease == lease {
            continue;
        }
        match create(inner, &entry.key, &entry.value, lease).await {
            Ok(Created::Now | Created::Ours) => {
                tracing::debug!(key = %entry.key, lease, "registration re-created");
                entry.extra = OnLease {
                    lease,
                    warned: false,
                };
            }
            Ok(Created::Taken { lease: holder }) => {
                if !entry.extra.warned {
                    tracing::warn!(
                        key = %entry.key,
                        holder,
                        "cannot re-create a registration: the key is held by another lease; retrying"
                    );
                    entry.extra.warned = true;
                }
            }
            Err(error) => {
                tracing::warn!(%error, key = %entry.key, "re-creating a registration failed; retrying");
            }
        }
    }
}

/// [`reconcile`] when some registration is not on `lease` (cheap check
/// from the keep-alive loop).
pub(crate) async fn reconcile_pending(inner: &Inner, lease: i64) {
    let Ok(mut registry) = inner.registry.try_lock() else {
        return;
    };
    if registry.any(|entry| entry.extra.lease != lease) {
        reconcile(inner, &mut registry, lease).await;
    }
}

/// Records `value` as registration `id`'s value (what re-creations on a
/// new lease write) and writes it to the key while the key is bound to the
/// current lease: one transaction that compares the key's lease, so it
/// never creates the key nor touches one that is not ours. The registry
/// stays locked throughout, so a re-creation cannot slip in between with
/// the old value, and a lost answer is safe to send again (only this client
/// writes the key, with the value recorded last).
async fn update(inner: &Inner, id: u64, key: &Key, value: Bytes) -> Result<()> {
    let op = Operation::UpdateRegistration;
    if inner.closed.is_cancelled() {
        return Err(closed(op, Some(key)));
    }
    crate::kv::check_size(op, key, &value)?;
    let mut registry = inner.registry.lock().await;
    let entry = registry.record_value(id, key, value.clone())?;
    let lease = inner.session.current();
    if entry.extra.lease != lease.id || lease.lost.is_cancelled() {
        // Not on the current lease yet: its re-creation writes this value.
        return Ok(());
    }
    let txn = Txn::new()
        .when([Compare::lease(key.as_str(), CompareOp::Equal, lease.id)])
        .and_then([TxnOp::put(
            key.as_str(),
            value.to_vec(),
            Some(PutOptions::new().with_lease(lease.id)),
        )]);
    let response = inner
        .txn(op, key, Retry::Write, txn)
        .await
        .inspect_err(|e| {
            if e.kind() == ErrorKind::SessionLost {
                inner.session.poke();
            }
        })?;
    if !response.succeeded() {
        // The key is gone from this lease (someone deleted it): the next
        // lease re-creates it with the recorded value.
        tracing::debug!(%key, "updating a registration found no key of this lease");
    }
    drop(registry);
    Ok(())
}

/// Updates and closes a [`Registration`].
#[derive(Debug)]
struct EtcdRegistration {
    inner: Arc<Inner>,
    id: u64,
    key: Key,
}

#[async_trait]
impl RegistrationClose for EtcdRegistration {
    async fn update(&self, key: &Key, value: Bytes) -> Result<()> {
        update(&self.inner, self.id, key, value).await
    }

    async fn close(self: Box<Self>) -> Result<()> {
        let entry = self.inner.registry.lock().await.remove(self.id);
        let Some(entry) = entry else {
            return Ok(());
        };
        if self.inner.closed.is_cancelled() || entry.extra.lease == 0 {
            // The lease was revoked on close: the key is gone already.
            return Ok(());
        }
        let lease = self.inner.session.current();
        if lease.id != entry.extra.lease {
            // Bound to a lease that is gone: so is the key.
            return Ok(());
        }
        // Delete the key only while it is still ours (same lease).
        delete_owned(
            &self.inner,
            Operation::Deregister,
            &self.key,
            self.key.as_str().to_owned(),
            lease,
            (),
        )
        .await
    }
}
