//! Fenced writes: one `multi` that checks the lock node, writes, carries
//! the incarnation fence of an `Update` (see the `fence` module), and with
//! `release` deletes the lock node, all or nothing.

use bytes::Bytes;
use sharedstate_core::{Error, ErrorKind, Key, LockGuard, Operation, PutMode, Result, Version};
use zookeeper_client as zk;

use crate::fence::{self, Fence, FenceFailure, FenceOps};
use crate::{error, kv, plain, Inner};

/// The role of each operation in the transaction, to read a failure's
/// index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    LockCheck,
    Write,
    /// The fence's counter check (or its learned node).
    Fence,
    /// The fence's hint.
    Hint,
    Release,
}

/// A fenced write in progress: what it writes, and what it learned so far
/// about how to write it.
struct Attempt<'a> {
    inner: &'a Inner,
    client: &'a zk::Client,
    key: &'a Key,
    value: &'a Bytes,
    mode: PutMode,
    /// The lock node whose existence the write is fenced on.
    owner: &'a str,
    /// Delete the lock node in the same transaction.
    release: bool,
    /// Create the node (else set its data).
    create: bool,
    /// For an `Update`: the data version and the incarnation fence.
    expect: Option<(i32, Fence)>,
}

/// Writes `value` to `key` only while `guard`'s lock node exists (and with
/// `release` deletes it in the same transaction): one `multi` per attempt,
/// and after a failed one, what the failure taught (a parent to create, a
/// create that must be a set, a fence to learn again) before the next.
pub(crate) async fn fenced_put(
    inner: &Inner,
    key: &Key,
    value: Bytes,
    mode: PutMode,
    guard: &LockGuard,
    release: bool,
) -> Result<Version> {
    let op = Operation::FencedPut;
    if guard.is_lost() {
        return Err(lock_lost(key, guard));
    }
    let session = inner.session(op)?;
    let client = &session.client;
    let expect = match mode {
        PutMode::Update(expected) => {
            Some(fence::expectation(inner, client, key, expected, op).await?)
        }
        _ => None,
    };
    // Before the write is sent: its notification may reach our watches
    // before its answer reaches us (see `own_writes`).
    let in_flight = match mode {
        PutMode::Update(expected) => Some(inner.own_writes.begin(key.as_str(), expected)),
        _ => None,
    };
    let mut attempt = Attempt {
        inner,
        client,
        key,
        value: &value,
        mode,
        owner: guard.owner(),
        release,
        create: matches!(mode, PutMode::Create),
        expect,
    };
    for _ in 0..fence::FENCE_ATTEMPTS {
        let (mut writer, roles) = attempt.transaction()?;
        let committed = writer.commit().await;
        if committed.is_err() {
            if let Some((_, fence)) = &mut attempt.expect {
                fence.discard_learned_node(client);
            }
        }
        let (role, source) = match committed {
            Ok(results) => {
                let version = attempt.written(&results).await?;
                if let Some(in_flight) = in_flight {
                    in_flight.landed(version, value.clone());
                }
                return Ok(version);
            }
            Err(zk::MultiWriteError::RequestFailed {
                source: zk::Error::SessionExpired | zk::Error::SessionMoved,
            }) => return Err(lock_lost(key, guard)),
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                return Err(error::map(source, op, key))
            }
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                (roles.get(index).copied().unwrap_or(Role::Write), source)
            }
        };
        if role == Role::LockCheck {
            return Err(lock_lost(key, guard));
        }
        attempt.recover(role, source).await?;
    }
    Err(fence::gave_up(op, key))
}

/// `LockLost`: `guard`'s lock node is gone.
fn lock_lost(key: &Key, guard: &LockGuard) -> Error {
    Error::new(ErrorKind::LockLost, Operation::FencedPut)
        .with_key(key)
        .with_message(format!("the lock {} is no longer held", guard.owner()))
}

impl<'a> Attempt<'a> {
    /// The transaction of one attempt, and the role of each of its
    /// operations (to read a failure's index): the lock check, the write,
    /// the fence of an `Update` (after the write, so that losing to a
    /// writer that ignores the lock is reported as such), and the release.
    fn transaction(&self) -> Result<(zk::MultiWriter<'a>, Vec<Role>)> {
        let (op, key) = (Operation::FencedPut, self.key);
        let mut roles = vec![Role::LockCheck];
        let mut writer = self.client.new_multi_writer();
        writer
            .add_check_version(self.owner, -1)
            .map_err(|e| error::map(e, op, key))?;
        let added = if self.create {
            writer.add_create(
                key.as_str(),
                self.value,
                &zk::CreateMode::Persistent.with_acls(self.inner.acls()),
            )
        } else {
            writer.add_set_data(
                key.as_str(),
                self.value,
                self.expect.as_ref().map(|(d, _)| *d),
            )
        };
        added.map_err(|e| error::map(e, op, key))?;
        roles.push(Role::Write);
        if let Some((_, fence)) = &self.expect {
            let ops = fence::add(self.inner, &mut writer, key, fence, op, roles.len())?;
            roles.extend((ops.first..ops.first + ops.count).map(|index| role_in(ops, index)));
        }
        if self.release {
            writer
                .add_delete(self.owner, None)
                .map_err(|e| error::map(e, op, key))?;
            roles.push(Role::Release);
        }
        Ok((writer, roles))
    }

    /// The version the committed transaction wrote.
    async fn written(&self, results: &[zk::MultiWriteResult]) -> Result<Version> {
        let op = Operation::FencedPut;
        match self.expect {
            Some((_, ref fence)) => kv::written(self.inner, self.key, results, fence, op),
            None => written_plain(self.inner, self.client, self.key, results, op).await,
        }
    }

    /// After the operation with `role` failed with `source` (not the lock
    /// check): prepares the next attempt, or says why there is none.
    async fn recover(&mut self, role: Role, source: zk::Error) -> Result<()> {
        let (op, key, inner, client) = (Operation::FencedPut, self.key, self.inner, self.client);
        match (role, source, self.mode) {
            (Role::Fence, _, PutMode::Update(expected)) => {
                if let Some((_, failed)) = &self.expect {
                    self.expect =
                        Some(fence::relearn(inner, client, key, expected, op, failed).await?);
                }
            }
            (Role::Hint, source, PutMode::Update(_)) => {
                if let Some((_, fence)) = &mut self.expect {
                    fence::hint_failed(fence, &source);
                }
            }
            (Role::Write, zk::Error::NodeExists, PutMode::Create) => {
                return Err(plain(ErrorKind::AlreadyExists, op, key))
            }
            (Role::Write, zk::Error::NoNode, PutMode::Create | PutMode::Overwrite)
                if self.create =>
            {
                let Some(parent) = key.parent() else {
                    return Err(error::map(zk::Error::NoNode, op, key));
                };
                let dir = zk::CreateMode::Persistent.with_acls(inner.acls());
                client
                    .mkdir(parent.as_str(), &dir)
                    .await
                    .map_err(|e| error::map(e, op, key))?;
            }
            (Role::Write, zk::Error::NoNode, PutMode::Overwrite) => self.create = true,
            (Role::Write, zk::Error::NodeExists, PutMode::Overwrite) => self.create = false,
            (Role::Write, zk::Error::BadVersion | zk::Error::NoNode, PutMode::Update(_)) => {
                inner.versions.forget(key.as_str());
                return Err(kv::conflict_now(inner, client, key, op).await);
            }
            (
                Role::LockCheck | Role::Release | Role::Fence | Role::Hint | Role::Write,
                source,
                _,
            ) => return Err(error::map(source, op, key)),
        }
        Ok(())
    }
}

/// The role of the fence operation at `index`.
fn role_in(ops: FenceOps, index: usize) -> Role {
    match ops.failure(index) {
        FenceFailure::Hint => Role::Hint,
        FenceFailure::Counter | FenceFailure::None => Role::Fence,
    }
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
