//! get / put / delete / list on etcd v3.
//!
//! Versions are `mod_revision`s: they never repeat for a key (etcd's store
//! revision only grows, also across delete and re-create), and a later write
//! always has a larger one. Conditional writes are single transactions
//! whose failure branch reads the key back, so a `Conflict` carries the
//! current version without a second round trip.

use std::sync::Arc;

use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, GetResponse, KeyValue, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use sharedstate_core::{Error, ErrorKind, Key, Operation, PutMode, Result, Version, Versioned};

use crate::error::{call, closed, to_error, EtcdError, Retry};
use crate::lease::{backoff, LeaseHandle};
use crate::Inner;

/// The largest value accepted: below etcd's default request limit
/// (`--max-request-bytes`, 1.5 MiB) with room for the key and the
/// transaction around it.
pub const MAX_VALUE_BYTES: usize = 1_000_000;

/// `ValueTooLarge` before anything is sent.
pub(crate) fn check_size(operation: Operation, key: &Key, value: &Bytes) -> Result<()> {
    sharedstate_core::backend::check_size(operation, key, value, MAX_VALUE_BYTES)
}

pub(crate) fn check_open(inner: &Inner, operation: Operation, key: &Key) -> Result<()> {
    if inner.closed.is_cancelled() {
        Err(closed(operation, Some(key)))
    } else {
        Ok(())
    }
}

/// A version as etcd's signed revision; out-of-range versions never match.
pub(crate) fn revision(version: Version) -> i64 {
    i64::try_from(version.as_u64()).unwrap_or(i64::MAX)
}

/// A revision from etcd as a version.
pub(crate) fn version_of(revision: i64) -> Version {
    Version::new(u64::try_from(revision).unwrap_or(0))
}

/// The revision a response was served at.
pub(crate) fn header_revision(
    header: Option<&etcd_client::ResponseHeader>,
    operation: Operation,
    key: &Key,
) -> Result<i64> {
    header.map(|h| h.revision()).ok_or_else(|| {
        to_error(
            operation,
            Some(key),
            EtcdError::Protocol("response without a header"),
        )
    })
}

/// The `i`-th range response of a transaction.
pub(crate) fn range_at(response: &TxnResponse, i: usize) -> Option<GetResponse> {
    match response.op_responses().into_iter().nth(i) {
        Some(TxnOpResponse::Get(get)) => Some(get),
        _ => None,
    }
}

/// The first key-value of the `i`-th range response of a transaction.
pub(crate) fn first_kv_at(response: &TxnResponse, i: usize) -> Option<KeyValue> {
    range_at(response, i).and_then(|get| get.kvs().first().cloned())
}

pub(crate) fn into_versioned(kv: KeyValue) -> Versioned {
    let version = version_of(kv.mod_revision());
    let (_, value) = kv.into_key_value();
    Versioned {
        value: Bytes::from(value),
        version,
    }
}

fn keys_only() -> Option<GetOptions> {
    Some(GetOptions::new().with_keys_only())
}

/// What a failed conditional write means.
pub(crate) fn mode_failure(
    operation: Operation,
    key: &Key,
    mode: PutMode,
    current: Option<&KeyValue>,
) -> Error {
    match (mode, current) {
        (PutMode::Create, Some(kv)) => Error::new(ErrorKind::AlreadyExists, operation)
            .with_key(key)
            .with_current_version(Some(version_of(kv.mod_revision()))),
        (PutMode::Create, None) => to_error(
            operation,
            Some(key),
            EtcdError::Protocol("create failed although the key does not exist"),
        ),
        (_, current) => Error::new(ErrorKind::Conflict, operation)
            .with_key(key)
            .with_current_version(current.map(|kv| version_of(kv.mod_revision()))),
    }
}

/// The compare for a put mode (none for `Overwrite`).
pub(crate) fn mode_compare(key: &Key, mode: PutMode) -> Option<Compare> {
    match mode {
        PutMode::Create => Some(Compare::create_revision(key.as_str(), CompareOp::Equal, 0)),
        PutMode::Update(expected) => Some(Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            revision(expected),
        )),
        PutMode::Overwrite => None,
    }
}

/// Deletes `etcd_key` if it is still bound to `lease` (a lock waiter key or
/// a registration). When etcd cannot be reached the deletion is retried in
/// the background until it is done, the lease is lost (the key goes with
/// it) or the client is closed: a key left behind must not block other
/// clients for as long as this session lives.
///
/// # Errors
///
/// The first attempt's failure (the retries go on regardless).
pub(crate) async fn delete_owned<H: Send + 'static>(
    inner: &Arc<Inner>,
    operation: Operation,
    key: &Key,
    etcd_key: String,
    lease: LeaseHandle,
    hold: H,
) -> Result<()> {
    let first = delete_owned_once(inner, operation, key, &etcd_key, lease.id).await;
    if let Err(error) = &first {
        tracing::warn!(%error, etcd_key, "deleting a session key failed; retrying in the background");
        delete_owned_later(inner, operation, key, etcd_key, lease, hold);
    }
    first
}

/// [`delete_owned`] in the background only (the outcome of a request that
/// may have created `etcd_key` is unknown). `hold` is dropped when the key
/// is known to be gone.
pub(crate) fn delete_owned_later<H: Send + 'static>(
    inner: &Arc<Inner>,
    operation: Operation,
    key: &Key,
    etcd_key: String,
    lease: LeaseHandle,
    hold: H,
) {
    let inner = Arc::clone(inner);
    let key = key.clone();
    tokio::spawn(async move {
        let _hold = hold;
        let mut backoff = backoff();
        loop {
            tokio::select! {
                _ = inner.closed.cancelled() => return,
                _ = lease.lost.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
            match delete_owned_once(&inner, operation, &key, &etcd_key, lease.id).await {
                Ok(()) => {
                    tracing::debug!(etcd_key, "left-behind session key deleted");
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, etcd_key, "deleting a session key failed; retrying")
                }
            }
        }
    });
}

pub(crate) async fn delete_owned_once(
    inner: &Inner,
    operation: Operation,
    key: &Key,
    etcd_key: &str,
    lease: i64,
) -> Result<()> {
    let txn = Txn::new()
        .when([Compare::lease(etcd_key, CompareOp::Equal, lease)])
        .and_then([TxnOp::delete(etcd_key, None)]);
    inner.txn(operation, key, Retry::Write, txn).await?;
    Ok(())
}

impl Inner {
    /// One transaction, retried as `retry` allows within the request
    /// timeout.
    pub(crate) async fn txn(
        &self,
        operation: Operation,
        key: &Key,
        retry: Retry,
        txn: Txn,
    ) -> Result<TxnResponse> {
        call(
            &self.members,
            self.config.request_timeout,
            operation,
            Some(key),
            retry,
            |client: Client| {
                let mut kv = client.kv_client();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            },
        )
        .await
    }

    /// A linearizable read, with the store revision it was served at.
    pub(crate) async fn read(
        &self,
        key: &Key,
        operation: Operation,
    ) -> Result<(Option<Versioned>, i64)> {
        check_open(self, operation, key)?;
        let mut response = call(
            &self.members,
            self.config.request_timeout,
            operation,
            Some(key),
            Retry::Read,
            |client: Client| {
                let mut kv = client.kv_client();
                async move { kv.get(key.as_str(), None).await }
            },
        )
        .await?;
        let revision = header_revision(response.header(), operation, key)?;
        let value = response.take_kvs().into_iter().next().map(into_versioned);
        Ok((value, revision))
    }

    pub(crate) async fn get(&self, key: &Key) -> Result<Option<Versioned>> {
        Ok(self.read(key, Operation::Get).await?.0)
    }

    /// The key's version only: a linearizable keys-only range.
    pub(crate) async fn get_version(&self, key: &Key) -> Result<Option<Version>> {
        let operation = Operation::Get;
        check_open(self, operation, key)?;
        let response = call(
            &self.members,
            self.config.request_timeout,
            operation,
            Some(key),
            Retry::Read,
            |client: Client| {
                let mut kv = client.kv_client();
                async move { kv.get(key.as_str(), keys_only()).await }
            },
        )
        .await?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| version_of(kv.mod_revision())))
    }

    pub(crate) async fn put(&self, key: &Key, value: Bytes, mode: PutMode) -> Result<Version> {
        let op = Operation::Put;
        check_open(self, op, key)?;
        check_size(op, key, &value)?;
        let Some(compare) = mode_compare(key, mode) else {
            // Retried only when surely never sent: after an unknown outcome
            // a retry could write this value over a newer one.
            let response = call(
                &self.members,
                self.config.request_timeout,
                op,
                Some(key),
                Retry::Write,
                |client: Client| {
                    let mut kv = client.kv_client();
                    let value = Vec::from(value.clone());
                    async move { kv.put(key.as_str(), value, None).await }
                },
            )
            .await?;
            return Ok(version_of(header_revision(response.header(), op, key)?));
        };
        let mut txn =
            Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key.as_str(), Vec::from(value), None)]);
        if let PutMode::Update(_) = mode {
            txn = txn.or_else([TxnOp::get(key.as_str(), keys_only())]);
        }
        let response = self.txn(op, key, Retry::Write, txn).await?;
        if response.succeeded() {
            return Ok(version_of(header_revision(response.header(), op, key)?));
        }
        if mode == PutMode::Create {
            // Create's failure branch reads nothing: the key exists.
            return Err(Error::new(ErrorKind::AlreadyExists, op).with_key(key));
        }
        Err(mode_failure(
            op,
            key,
            mode,
            first_kv_at(&response, 0).as_ref(),
        ))
    }

    pub(crate) async fn delete(&self, key: &Key, expected: Option<Version>) -> Result<()> {
        let op = Operation::Delete;
        check_open(self, op, key)?;
        let Some(expected) = expected else {
            let response = call(
                &self.members,
                self.config.request_timeout,
                op,
                Some(key),
                Retry::Write,
                |client: Client| {
                    let mut kv = client.kv_client();
                    async move { kv.delete(key.as_str(), None).await }
                },
            )
            .await?;
            if response.deleted() == 0 {
                return Err(Error::new(ErrorKind::NotFound, op).with_key(key));
            }
            return Ok(());
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision(expected),
            )])
            .and_then([TxnOp::delete(key.as_str(), None)])
            .or_else([TxnOp::get(key.as_str(), keys_only())]);
        let response = self.txn(op, key, Retry::Write, txn).await?;
        if response.succeeded() {
            return Ok(());
        }
        match first_kv_at(&response, 0) {
            None => Err(Error::new(ErrorKind::NotFound, op).with_key(key)),
            Some(current) => Err(Error::new(ErrorKind::Conflict, op)
                .with_key(key)
                .with_current_version(Some(version_of(current.mod_revision())))),
        }
    }

    pub(crate) async fn list(&self, key: &Key) -> Result<Vec<String>> {
        let op = Operation::List;
        check_open(self, op, key)?;
        let prefix = format!("{}/", key.as_str());
        let response = call(
            &self.members,
            self.config.request_timeout,
            op,
            Some(key),
            Retry::Read,
            |client: Client| {
                let mut kv = client.kv_client();
                let options = GetOptions::new().with_prefix().with_keys_only();
                let prefix = prefix.as_str();
                async move { kv.get(prefix, Some(options)).await }
            },
        )
        .await?;
        Ok(children(&prefix, response.kvs().iter().map(|kv| kv.key())))
    }
}

/// Direct child names under `prefix` (which ends in `/`), deduplicated and
/// sorted: `/a/b/c` makes `b` a child of `/a`.
fn children<'a>(prefix: &str, keys: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    let mut names: Vec<String> = keys
        .filter_map(|key| key.strip_prefix(prefix.as_bytes()))
        .filter_map(|rest| {
            let name = rest.split(|b| *b == b'/').next()?;
            if name.is_empty() {
                None
            } else {
                Some(String::from_utf8_lossy(name).into_owned())
            }
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::children;

    #[test]
    fn children_are_one_level_deduplicated_and_sorted() {
        let keys: Vec<&[u8]> = vec![b"/a/b/c", b"/a/b", b"/a/z", b"/a/b/d/e", b"/a/c", b"/a//x"];
        assert_eq!(children("/a/", keys.into_iter()), vec!["b", "c", "z"]);
    }
}
