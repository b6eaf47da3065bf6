//! The incarnation fence of exact conditional writes.
//!
//! A [`Version`] is the znode's `mzxid`, which never repeats. ZooKeeper
//! itself can only condition a write on the znode's *data version*, which
//! starts again at 0 when the znode is deleted and re-created: a plain
//! `setData(path, data_version)` would succeed against a re-created znode
//! that happens to be at the same data version (an ABA the contract
//! forbids), and there is no condition on `czxid`. What re-creating a znode
//! always does is *create a child of its parent*, which advances the
//! parent's sequence counter (the number a sequential child is named
//! after). A transaction can check that counter: the `multi`
//!
//! ```text
//! setData(<path>, data, <expected data version>)
//! create(<parent>/sharedstate-fence-check-, sequential)   -> named after the counter now
//! delete(<parent>/sharedstate-fence-check-<expected counter, %010d>)
//! setData(<parent>/sharedstate-fence-next, <the counter after this transaction>)
//! ```
//!
//! commits only if no child of the parent was created since the counter was
//! learned (otherwise the delete finds no such node and the whole
//! transaction fails), and the data version proves no write to this
//! incarnation since its stat was read. The write comes first only so that
//! a write that lost to another (a changed data version) fails as such,
//! without a fence to learn again.
//!
//! A counter is only trusted with a stat read *after* the moment it was
//! exact, on the same session (which serves requests in order): then no
//! creation between the two can hide. Where a counter comes from:
//!
//! - our own committed transaction: its create got exactly the expected
//!   name, so the counter after it is known;
//! - the *hint* `<parent>/sharedstate-fence-next`, which every fenced write
//!   sets, in its own transaction, to the counter right after it: read
//!   before the key's stat in one pipelined flight, it costs no write. It is
//!   a guess the fence then checks: a creation since, or a writer that does
//!   not keep the hint, makes it stale, never too large (it was exact when
//!   written, and the counter only grows). Too large would be unsafe: the
//!   creations between the stat read and the transaction could bring the
//!   counter exactly to it, one of them the key's re-creation. So the hint
//!   is written only by fenced transactions, and nobody should edit it by
//!   hand;
//! - when the hint is missing or stale, an ephemeral sequential node
//!   `<parent>/sharedstate-fence-learn-<counter>` created before the stat
//!   read (the exact way, but a write, which moves the counter under every
//!   other writer's feet), deleted by the transaction that uses it.
//!
//! The counter is never learned from `stat.cversion`: which operations
//! move `cversion` differs between ZooKeeper versions (3.8 counts deletes
//! in the stat but not in the counter; newer releases count neither). Only
//! a fence's own create is ever named `sharedstate-fence-check-<digits>`,
//! and the transaction that creates it deletes it, so a fence's delete
//! succeeds only on the node its own create made. (Earlier builds named
//! fence nodes and learned nodes alike, `sharedstate-fence-<digits>`: a
//! learner's node that existed under the name a stale fence expected let
//! that fence pass. Such nodes of older clients cannot pass ours.)
//! Fence nodes never show in `list` (they are filtered, and `Key` reserves
//! the `sharedstate-fence-` prefix); `delete` removes a leftover hint with
//! the last child of its parent.

use sharedstate_core::{Error, ErrorKind, Key, Operation, Result, Version};
use zookeeper_client as zk;

use crate::version_cache::{Counter, Source};
use crate::{error, version_of, Inner};

/// Bound on retrying a conditional write whose fence failed while the key
/// itself was unchanged (a sibling was created meanwhile).
pub(crate) const FENCE_ATTEMPTS: usize = 8;
/// The name prefix of every node of the fence (reserved by `Key`).
pub(crate) const FENCE_PREFIX: &str = "sharedstate-fence-";
/// The name prefix of the nodes a fence creates and deletes.
const CHECK_PREFIX: &str = "sharedstate-fence-check-";
/// The name prefix of the nodes that learn the counter exactly.
const LEARN_PREFIX: &str = "sharedstate-fence-learn-";
/// The hint node's name.
const HINT_NAME: &str = "sharedstate-fence-next";

pub(crate) fn raw(version: Version) -> i64 {
    i64::try_from(version.as_u64()).unwrap_or(i64::MAX)
}

/// `<parent>/<name>` for a child of `key`'s parent.
fn sibling(key: &Key, name: &str) -> String {
    match key.parent() {
        None => format!("/{name}"),
        Some(parent) => format!("{parent}/{name}"),
    }
}

/// The hint node beside `key`.
pub(crate) fn hint_path(key: &Key) -> String {
    sibling(key, HINT_NAME)
}

/// The counter after the sequence number in a node name made with `prefix`.
fn counter_after(path: &str, prefix: &str) -> Option<i32> {
    let split = path.rfind(prefix)? + prefix.len();
    path.get(split..)?.parse::<i32>().ok()?.checked_add(1)
}

/// Whether a child name is one of our fence nodes (never listed).
pub(crate) fn is_fence(name: &str) -> bool {
    name.starts_with(FENCE_PREFIX)
}

/// The counter a hint node's data names, when it is one.
pub(crate) fn parse_hint(data: &[u8]) -> Option<i32> {
    std::str::from_utf8(data).ok()?.trim().parse().ok()
}

/// The counter guess a read of the hint node gave, to record with a stat
/// read after it on the same session (see the module docs).
pub(crate) fn hint_guess(
    read: std::result::Result<(Vec<u8>, zk::Stat), zk::Error>,
) -> Option<Counter> {
    let (data, _) = read.ok()?;
    parse_hint(&data).map(|value| Counter {
        value,
        source: Source::Hint,
    })
}

/// A fence the next transaction must carry.
#[derive(Debug, Clone)]
pub(crate) struct Fence {
    /// The counter the fence's create must be named after.
    counter: i32,
    source: Source,
    /// The ephemeral node that learned `counter` exactly (deleted by the
    /// transaction).
    learned_from: Option<String>,
    /// How the transaction writes the hint.
    hint: HintOp,
}

/// How a fenced transaction keeps the hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HintOp {
    /// Set it (it exists).
    Set,
    /// Create it (it is missing).
    Create,
    /// Leave it: this client may not write it (its ACL), or it is not
    /// ours to keep. The write goes on without it.
    Skip,
}

impl Fence {
    /// A fence from what the version cache knows.
    pub(crate) fn known(counter: Counter) -> Self {
        Fence {
            counter: counter.value,
            source: counter.source,
            learned_from: None,
            hint: HintOp::Set,
        }
    }

    /// After a transaction carrying this fence failed: its learned node
    /// (if any) still exists and no transaction will delete it, so it is
    /// deleted in the background and the fence goes on without it (the
    /// counter it taught stays a valid guess: deleting a node does not move
    /// the counter).
    pub(crate) fn discard_learned_node(&mut self, client: &zk::Client) {
        if let Some(node) = self.learned_from.take() {
            discard(client, &node);
        }
    }

    /// The parent's counter right after a transaction carrying this fence
    /// committed: its fence node, then the hint when it creates it.
    pub(crate) fn next(&self) -> Option<i32> {
        self.counter
            .checked_add(1 + i32::from(self.hint == HintOp::Create))
    }
}

/// Where a transaction's fence operations are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FenceOps {
    /// The index of the first one.
    pub first: usize,
    /// How many there are.
    pub count: usize,
    /// Whether the last of them writes the hint.
    pub hint: bool,
}

/// What a failed operation of a transaction means for its fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FenceFailure {
    /// Not a fence operation.
    None,
    /// The counter moved (or a learned node went): learn it again.
    Counter,
    /// The hint node was missing (set failed) or there already (create
    /// failed): write it the other way.
    Hint,
}

impl FenceOps {
    /// What the failure of the operation at `index` means.
    pub(crate) fn failure(&self, index: usize) -> FenceFailure {
        if index < self.first || index >= self.first + self.count {
            FenceFailure::None
        } else if self.hint && index == self.first + self.count - 1 {
            FenceFailure::Hint
        } else {
            FenceFailure::Counter
        }
    }
}

/// Adds `fence`'s operations (see the module docs) to `writer`, whose next
/// operation has index `first`.
pub(crate) fn add(
    inner: &Inner,
    writer: &mut zk::MultiWriter<'_>,
    key: &Key,
    fence: &Fence,
    op: Operation,
    first: usize,
) -> Result<FenceOps> {
    let map = |e| error::map(e, op, key);
    let next = fence.next().ok_or_else(|| counter_exhausted(op, key))?;
    let mut count = 0;
    if let Some(node) = &fence.learned_from {
        writer.add_delete(node, None).map_err(map)?;
        count += 1;
    }
    let prefix = sibling(key, CHECK_PREFIX);
    let options = zk::CreateMode::PersistentSequential.with_acls(inner.acls());
    writer.add_create(&prefix, &[], &options).map_err(map)?;
    writer
        .add_delete(&format!("{prefix}{:010}", fence.counter), None)
        .map_err(map)?;
    let hint = hint_path(key);
    let next = next.to_string();
    match fence.hint {
        HintOp::Set => writer
            .add_set_data(&hint, next.as_bytes(), None)
            .map_err(map)?,
        HintOp::Create => {
            let options = zk::CreateMode::Persistent.with_acls(inner.acls());
            writer
                .add_create(&hint, next.as_bytes(), &options)
                .map_err(map)?;
        }
        HintOp::Skip => {}
    }
    let hint = fence.hint != HintOp::Skip;
    Ok(FenceOps {
        first,
        count: count + 2 + usize::from(hint),
        hint,
    })
}

fn counter_exhausted(op: Operation, key: &Key) -> Error {
    crate::plain(ErrorKind::Other, op, key)
        .with_message("the parent's sequence counter is exhausted (2^31 children created)")
}

/// After the hint operation of a transaction failed with `source`: the
/// next transaction writes the hint the other way, or, when it may not
/// write it at all (its ACL), without it.
pub(crate) fn hint_failed(fence: &mut Fence, source: &zk::Error) {
    fence.hint = match (fence.hint, source) {
        (HintOp::Set, zk::Error::NoNode) => HintOp::Create,
        (HintOp::Create, zk::Error::NodeExists) => HintOp::Set,
        _ => {
            tracing::debug!(error = %source, "the fence hint cannot be written; writing without it");
            HintOp::Skip
        }
    };
}

/// The data version and fence for a conditional operation at `expected`:
/// from the cache when it knows the counter, else learned (see the module
/// docs). A key not at `expected` is a `Conflict` with the version found.
pub(crate) async fn expectation(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    expected: Version,
    op: Operation,
) -> Result<(i32, Fence)> {
    if let Some(known) = inner.versions.lookup(key.as_str(), raw(expected)) {
        if let Some(counter) = known.counter {
            return Ok((known.data_version, Fence::known(counter)));
        }
    }
    learn(inner, client, key, expected, op, None).await
}

/// After a transaction's fence failed: learns the counter again, exactly
/// when the failed one came from the hint (or the hint says nothing newer).
pub(crate) async fn relearn(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    expected: Version,
    op: Operation,
    failed: &Fence,
) -> Result<(i32, Fence)> {
    match failed.source {
        Source::Hint => learn_exactly(inner, client, key, expected, op, failed.hint).await,
        Source::Exact => learn(inner, client, key, expected, op, Some(failed.counter)).await,
    }
}

/// Learns the counter from the hint (a read), or exactly when the hint is
/// missing, unreadable, or not newer than `stale`.
async fn learn(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    expected: Version,
    op: Operation,
    stale: Option<i32>,
) -> Result<(i32, Fence)> {
    // Sync, hint, stat: one flight, served in this order.
    let synced = client.sync(key.as_str());
    let hinted = client.get_data(&hint_path(key));
    let found = crate::kv::read(inner, client, key, false, false);
    let synced = synced.await;
    let hinted = hinted.await;
    let found = found.await;
    synced.map_err(|e| error::map(e, op, key))?;
    let found = found.map_err(|e| error::map(e, op, key))?;
    let data_version = at_expected(found.map(|(_, stat)| stat), expected, op, key)?;
    let (hint, hint_op) = match hinted {
        Ok((data, _)) => (parse_hint(&data), HintOp::Set),
        Err(zk::Error::NoNode) => (None, HintOp::Create),
        // Not ours to read (its ACL): not ours to write either.
        Err(zk::Error::NoAuth) => (None, HintOp::Skip),
        Err(e) => return Err(error::map(e, op, key)),
    };
    match hint {
        Some(counter) if stale.is_none_or(|stale| counter > stale) => {
            let fence = Fence {
                counter,
                source: Source::Hint,
                learned_from: None,
                hint: hint_op,
            };
            Ok((data_version, fence))
        }
        _ => learn_exactly(inner, client, key, expected, op, hint_op).await,
    }
}

/// The data version of the stat `found`, when it is at `expected`; else the
/// `Conflict` with the version found.
fn at_expected(
    found: Option<zk::Stat>,
    expected: Version,
    op: Operation,
    key: &Key,
) -> Result<i32> {
    match found {
        None => Err(error::conflict(op, key, None)),
        Some(stat) if stat.mzxid != raw(expected) => {
            Err(error::conflict(op, key, Some(version_of(stat.mzxid))))
        }
        Some(stat) => Ok(stat.version),
    }
}

/// Learns the parent's counter exactly from an ephemeral sequential node,
/// then reads the key's stat after it, pipelined.
async fn learn_exactly(
    inner: &Inner,
    client: &zk::Client,
    key: &Key,
    expected: Version,
    op: Operation,
    hint: HintOp,
) -> Result<(i32, Fence)> {
    let options = zk::CreateMode::EphemeralSequential.with_acls(inner.acls());
    let prefix = sibling(key, LEARN_PREFIX);
    let created = client.create(&prefix, &[], &options);
    let found = crate::kv::read(inner, client, key, true, false);
    let created = created.await;
    let found = found.await;
    let node = match created {
        Ok((_, sequence)) => format!("{prefix}{sequence}"),
        // The parent is gone, so is the key.
        Err(zk::Error::NoNode) => return Err(error::conflict(op, key, None)),
        Err(e) => return Err(error::map(e, op, key)),
    };
    let discard = |why: Error| {
        discard(client, &node);
        why
    };
    let found = found.map_err(|e| discard(error::map(e, op, key)))?;
    let Some(counter) = counter_after(&node, LEARN_PREFIX) else {
        return Err(discard(
            crate::plain(ErrorKind::Other, op, key)
                .with_message(format!("unexpected fence node name {node}")),
        ));
    };
    let data_version =
        at_expected(found.map(|(_, stat)| stat), expected, op, key).map_err(discard)?;
    let fence = Fence {
        counter,
        source: Source::Exact,
        learned_from: Some(node),
        hint,
    };
    Ok((data_version, fence))
}

/// Deletes a learned node that no transaction will delete (it is
/// ephemeral: it goes with the session at the latest).
fn discard(client: &zk::Client, node: &str) {
    let delete = client.delete(node, None);
    tokio::spawn(async move {
        if let Err(error) = delete.await {
            tracing::debug!(%error, "deleting a fence node failed; it goes with the session");
        }
    });
}

/// The `Conflict` after our fence kept failing.
pub(crate) fn gave_up(op: Operation, key: &Key) -> Error {
    error::conflict(op, key, None).with_message(format!(
        "children of the key's parent kept being created ({FENCE_ATTEMPTS} attempts); \
         the write was not applied"
    ))
}

/// Records what a committed transaction with `fence` tells: the key's new
/// stat, and the parent's counter right after it.
pub(crate) fn committed(inner: &Inner, key: &Key, stat: &zk::Stat, fence: &Fence) {
    let counter = fence.next().map(|value| Counter {
        value,
        source: Source::Exact,
    });
    inner.versions.record(key.as_str(), stat, counter);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_paths() {
        let top = Key::new("/top").expect("key");
        assert_eq!(sibling(&top, CHECK_PREFIX), "/sharedstate-fence-check-");
        assert_eq!(hint_path(&top), "/sharedstate-fence-next");
        let deep = Key::new("/app/state/payload").expect("key");
        assert_eq!(
            sibling(&deep, LEARN_PREFIX),
            "/app/state/sharedstate-fence-learn-"
        );
        assert_eq!(
            counter_after(
                "/app/state/sharedstate-fence-learn-0000000042",
                LEARN_PREFIX
            ),
            Some(43)
        );
        assert_eq!(counter_after("/app/other-0000000042", LEARN_PREFIX), None);
        assert!(is_fence("sharedstate-fence-0000000001"));
        assert!(is_fence("sharedstate-fence-next"));
        assert!(is_fence("sharedstate-fence-learn-0000000001"));
        assert!(!is_fence("payload"));
        assert_eq!(parse_hint(b"42"), Some(42));
        assert_eq!(parse_hint(b"x"), None);
    }

    #[test]
    fn the_counter_after_a_transaction_counts_the_hint_it_creates() {
        let mut fence = Fence::known(Counter {
            value: 7,
            source: Source::Hint,
        });
        assert_eq!(fence.next(), Some(8));
        hint_failed(&mut fence, &zk::Error::NoNode);
        assert_eq!(fence.next(), Some(9));
        hint_failed(&mut fence, &zk::Error::NodeExists);
        assert_eq!(fence.next(), Some(8));
        hint_failed(&mut fence, &zk::Error::NoAuth);
        assert_eq!((fence.hint, fence.next()), (HintOp::Skip, Some(8)));
        let last = Fence::known(Counter {
            value: i32::MAX,
            source: Source::Exact,
        });
        assert_eq!(last.next(), None);
    }

    #[test]
    fn failures_are_read_by_position() {
        let ops = FenceOps {
            first: 2,
            count: 3,
            hint: true,
        };
        assert_eq!(ops.failure(0), FenceFailure::None);
        assert_eq!(ops.failure(1), FenceFailure::None);
        assert_eq!(ops.failure(2), FenceFailure::Counter);
        assert_eq!(ops.failure(3), FenceFailure::Counter);
        assert_eq!(ops.failure(4), FenceFailure::Hint);
        assert_eq!(ops.failure(5), FenceFailure::None);
        let without = FenceOps {
            first: 0,
            count: 2,
            hint: false,
        };
        assert_eq!(without.failure(1), FenceFailure::Counter);
    }
}
