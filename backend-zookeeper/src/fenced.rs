//! Fenced writes: one `multi` that checks the lock node, carries the
//! incarnation fence of an `Update` (see the `kv` module), writes, and with
//! `release` deletes the lock node, all or nothing.

use bytes::Bytes;
use sharedstate_core::{Error, ErrorKind, Key, LockGuard, Operation, PutMode, Result, Version};
use zookeeper_client as zk;

use crate::kv::{self, Fence};
use crate::{error, plain, Inner};

/// The role of each operation in the transaction, to read a failure's
/// index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    LockCheck,
    Fence,
    Write,
    Release,
}

pub(crate) async fn fenced_put(
    inner: &Inner,
    key: &Key,
    value: Bytes,
    mode: PutMode,
    guard: &LockGuard,
    release: bool,
) -> Result<Version> {
    let op = Operation::FencedPut;
    let lock_lost = || {
        Error::new(ErrorKind::LockLost, op)
            .with_key(key)
            .with_message(format!("the lock {} is no longer held", guard.owner()))
    };
    if guard.is_lost() {
        return Err(lock_lost());
    }
    let session = inner.session(op)?;
    let client = &session.client;
    let owner = guard.owner();
    let mut create = matches!(mode, PutMode::Create);
    // For an Update: the data version and the incarnation fence.
    let mut expect: Option<(i32, Fence)> = match mode {
        PutMode::Update(expected) => Some(kv::expectation(inner, client, key, expected, op).await?),
        _ => None,
    };
    for _ in 0..kv::FENCE_ATTEMPTS {
        let mut roles = vec![Role::LockCheck];
        let mut writer = client.new_multi_writer();
        writer
            .add_check_version(owner, -1)
            .map_err(|e| error::map(e, op, key))?;
        if let Some((_, fence)) = &expect {
            let fenced = kv::add_fence(inner, &mut writer, key, fence, op)?;
            roles.extend(std::iter::repeat_n(Role::Fence, fenced));
        }
        let added = if create {
            writer.add_create(
                key.as_str(),
                &value,
                &zk::CreateMode::Persistent.with_acls(inner.acls()),
            )
        } else {
            writer.add_set_data(key.as_str(), &value, expect.as_ref().map(|(d, _)| *d))
        };
        added.map_err(|e| error::map(e, op, key))?;
        roles.push(Role::Write);
        if release {
            writer
                .add_delete(owner, None)
                .map_err(|e| error::map(e, op, key))?;
            roles.push(Role::Release);
        }
        let committed = writer.commit().await;
        if committed.is_err() {
            if let Some((_, fence)) = &expect {
                kv::failed_with(client, fence);
            }
        }
        let failure = match committed {
            Ok(results) => {
                return match expect {
                    Some(_) => kv::written(inner, key, &results, op),
                    None => written_plain(inner, client, key, &results, op).await,
                }
            }
            Err(zk::MultiWriteError::RequestFailed {
                source: zk::Error::SessionExpired | zk::Error::SessionMoved,
            }) => return Err(lock_lost()),
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                return Err(error::map(source, op, key))
            }
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                (roles.get(index).copied().unwrap_or(Role::Write), source)
            }
        };
        match (failure, mode) {
            ((Role::LockCheck, _), _) => return Err(lock_lost()),
            ((Role::Release, source), _) => return Err(error::map(source, op, key)),
            ((Role::Fence, _), PutMode::Update(expected)) => {
                expect = Some(kv::learn(inner, client, key, expected, op).await?);
            }
            ((Role::Fence, source), _) => return Err(error::map(source, op, key)),
            ((Role::Write, zk::Error::NodeExists), PutMode::Create) => {
                return Err(plain(ErrorKind::AlreadyExists, op, key))
            }
            ((Role::Write, zk::Error::NoNode), PutMode::Create | PutMode::Overwrite) if create => {
                let Some(parent) = key.parent() else {
                    return Err(error::map(zk::Error::NoNode, op, key));
                };
                let dir = zk::CreateMode::Persistent.with_acls(inner.acls());
                client
                    .mkdir(parent.as_str(), &dir)
                    .await
                    .map_err(|e| error::map(e, op, key))?;
            }
            ((Role::Write, zk::Error::NoNode), PutMode::Overwrite) => create = true,
            ((Role::Write, zk::Error::NodeExists), PutMode::Overwrite) => create = false,
            ((Role::Write, zk::Error::BadVersion | zk::Error::NoNode), PutMode::Update(_)) => {
                inner.versions.forget(key.as_str());
                return Err(kv::conflict_now(inner, client, key, op).await);
            }
            ((Role::Write, source), _) => return Err(error::map(source, op, key)),
        }
    }
    Err(kv::fence_gave_up(op, key))
}

/// The version of an unconditional fenced write (create or overwrite).
async fn written_plain(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    results: &[zk::MultiWriteResult],
    op: Operation,
) -> Result<Version> {
    for result in results {
        match result {
            zk::MultiWriteResult::SetData { stat } => return Ok(crate::version_of(stat.mzxid)),
            zk::MultiWriteResult::Create { path, stat } if path == key.as_str() => {
                return kv::created(inner, client, key, *stat, op).await
            }
            _ => {}
        }
    }
    Err(plain(ErrorKind::Other, op, key)
        .with_message("the transaction's answer has no write result"))
}
