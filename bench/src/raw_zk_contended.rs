//! ZooKeeper contention floors: what the raw `zookeeper-client` reaches
//! when several sessions in this process contend on one znode, measured
//! like the engine's contended scenario (increments completed inside the
//! fixed window / the window), so the targets table can compare ours, the
//! floor and kazoo from one run.
//!
//! - `contended-lock`: N sessions increment a counter under the lock
//!   recipe with exactly the round trips of the engine's locked update (see
//!   `backend-zookeeper/src/lock.rs`): create an EPHEMERAL_SEQUENTIAL child
//!   of the lock directory, list the directory and read the counter in the
//!   same pipelined flight; while not the lowest, watch only the
//!   predecessor and, once it is gone, list and read again (pipelined);
//!   once lowest, one `multi(check own node, setData(version), delete own
//!   node)`. The hand-over is measured, not estimated from uncontended
//!   latencies. (zookeeper-client's own `LockClient` does not pipeline the
//!   listing and the read with the create, so it is not used.)
//! - `contended-chain`: the best any design can do when N instances must
//!   each keep a fresh copy through a watch: one session chains
//!   conditional `setData`s (it always knows the version from its previous
//!   answer, so it never conflicts) while N-1 sessions each hold a
//!   persistent watch and read once per batch of notifications (folding
//!   those already queued, as the backend's watcher does). With one
//!   session it is the raw chain alone, so the two show what keeping the
//!   copies fresh costs the writer. The `fenced` variants write as the
//!   engine must for the same guarantee (an exact conditional write that
//!   cannot land on a deleted and re-created znode):
//!   `multi(setData(version), create(<parent>/check-, sequential),
//!   delete(<parent>/check-<counter>))`, the counter known from the
//!   previous commit (the engine's transaction also sets its fence hint).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::FutureExt;
use zookeeper_client::{Acls, AddWatchMode, Client, CreateMode, PersistentWatcher};

use crate::fixture::{small, Small};
use crate::harness::{announce, histogram, record_ns, Plan, Record};
use crate::raw_zk::{connect, ensure};

/// Scenario of the lock floor's records.
pub const LOCK_SCENARIO: &str = "contended-lock";
/// Scenario of the chain floor's records.
pub const CHAIN_SCENARIO: &str = "contended-chain";
/// Writers of the lock floor, as in the engine's contended scenario.
const WRITERS: [usize; 2] = [4, 8];
/// Sessions of the chain floor (the writer included): alone, then with
/// 3 and 7 watchers (the engine's 4 and 8 contended writers).
const CHAIN_SESSIONS: [usize; 3] = [1, 4, 8];
/// One increment (all its waits included) or one write, at most.
const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// A predecessor's deletion, a catch-up, a stopping task, at most.
const WAIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Bounds of every loop (the time bounds come first in practice).
const MAX_WAITS: usize = 10_000;
const MAX_OPS: u64 = 1_000_000;
/// The marker between a lock node's writer prefix and its sequence.
const LOCK_NAME: &str = "-lock-";

/// The lock floor's variant for `writers` sessions, each also keeping a
/// watched copy of the counter when `watched`.
pub fn lock_variant(writers: usize, watched: bool) -> String {
    if watched {
        format!("{writers} writers, watched")
    } else {
        format!("{writers} writers")
    }
}

/// The chain floor's variant for `sessions` sessions, the writer included,
/// with the incarnation fence in each write when `fenced`.
pub fn chain_variant(sessions: usize, fenced: bool) -> String {
    let base = if sessions == 1 {
        "1 session".to_string()
    } else {
        format!("{sessions} sessions")
    };
    if fenced {
        format!("{base}, fenced")
    } else {
        base
    }
}

fn record(scenario: &str, variant: &str) -> Record {
    Record::new("zk", "raw", scenario, variant)
}

fn done(record: Record) -> Record {
    announce(&record);
    record
}

/// Runs the floors `scenarios` asks for (empty, `contended`, or their
/// names); a floor that cannot run becomes a `failed` record.
pub async fn run(hosts: &str, root: &str, plan: &Plan, scenarios: &[String]) -> Vec<Record> {
    let wanted = |name: &str| {
        scenarios.is_empty() || scenarios.iter().any(|s| s == name || s == "contended")
    };
    let mut records = Vec::new();
    if wanted(LOCK_SCENARIO) {
        for watched in [false, true] {
            for writers in WRITERS {
                records.push(done(
                    contended_lock(hosts, root, plan, writers, watched)
                        .await
                        .unwrap_or_else(|error| {
                            record(LOCK_SCENARIO, "failed")
                                .note(format!("{}: {error:#}", lock_variant(writers, watched)))
                        }),
                ));
            }
        }
    }
    if wanted(CHAIN_SCENARIO) {
        for fenced in [false, true] {
            for sessions in CHAIN_SESSIONS {
                records.push(done(
                    chain(hosts, root, plan, sessions, fenced)
                        .await
                        .unwrap_or_else(|error| {
                            record(CHAIN_SCENARIO, "failed")
                                .note(format!("{}: {error:#}", chain_variant(sessions, fenced)))
                        }),
                ));
            }
        }
    }
    records
}

/// The counter in the bench's small struct at `path`.
async fn read_counter(client: &Client, path: &str) -> anyhow::Result<u64> {
    let (data, _) = client.get_data(path).await?;
    let value: Small = serde_json::from_slice(&data).context("decoding the counter's payload")?;
    Ok(value.counter)
}

/// The sequence number of a lock node (`w<i>-lock-<seq>`).
fn sequence(name: &str) -> Option<i64> {
    name.rsplit_once(LOCK_NAME)?.1.parse().ok()
}

/// The contender just before ours (sequence `mine`), if any; an error if
/// our own node is not listed (our session ended under us).
fn predecessor(children: &[String], mine: i64) -> anyhow::Result<Option<String>> {
    let mut listed = false;
    let mut before: Option<(i64, &String)> = None;
    for name in children {
        match sequence(name) {
            Some(seq) if seq == mine => listed = true,
            Some(seq) if seq < mine && before.is_none_or(|(b, _)| seq > b) => {
                before = Some((seq, name));
            }
            _ => {}
        }
    }
    if !listed {
        bail!("our lock node (sequence {mine}) is not listed: {children:?}");
    }
    Ok(before.map(|(_, name)| name.clone()))
}

/// One contender of the lock floor, on its own session.
struct LockWriter {
    client: Client,
    /// The lock directory and the counter's znode.
    dir: String,
    counter: String,
    /// This writer's lock node names start with it (`w<i>`), so a node
    /// whose create answer was lost is found again.
    name: String,
}

impl LockWriter {
    /// One locked increment with the engine's round trips: the pipelined
    /// create + list + read, waits on the predecessor only, each followed
    /// by a pipelined list + read, then the one `multi`.
    async fn increment(&self) -> anyhow::Result<()> {
        let options = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
        let prefix = format!("{}/{}{LOCK_NAME}", self.dir, self.name);
        // Sent back to back before the first answer: one flight.
        let create = self.client.create(&prefix, &[], &options);
        let list = self.client.list_children(&self.dir);
        let get = self.client.get_data(&self.counter);
        let created = create.await;
        let (listed, got) = (list.await, get.await);
        let (_, sequence) = created.context("creating the lock node")?;
        let node = format!("{prefix}{sequence}");
        let mine = sequence.into_i64();
        let (mut children, mut read) = (listed?, got?);
        let mut waits = 0;
        while let Some(before) = predecessor(&children, mine)? {
            waits += 1;
            if waits > MAX_WAITS {
                bail!("still not the lowest after {MAX_WAITS} waits");
            }
            let path = format!("{}/{before}", self.dir);
            if let (Some(_), watcher) = self.client.check_and_watch_stat(&path).await? {
                tokio::time::timeout(WAIT_TIMEOUT, watcher.changed())
                    .await
                    .map_err(|_| anyhow!("{path} still there after {WAIT_TIMEOUT:?}"))?;
            }
            let list = self.client.list_children(&self.dir);
            let get = self.client.get_data(&self.counter);
            let (listed, got) = (list.await, get.await);
            (children, read) = (listed?, got?);
        }
        let (data, stat) = read;
        let mut value: Small =
            serde_json::from_slice(&data).context("decoding the counter's payload")?;
        value.counter += 1;
        let encoded = serde_json::to_vec(&value)?;
        let mut multi = self.client.new_multi_writer();
        multi.add_check_version(&node, -1)?;
        multi.add_set_data(&self.counter, &encoded, Some(stat.version))?;
        multi.add_delete(&node, None)?;
        multi.commit().await.context("the locked multi")?;
        Ok(())
    }

    /// Deletes this writer's lock nodes after a failed or abandoned
    /// increment, so the next waiter is not blocked until the session ends.
    async fn release(&self) {
        let work = async {
            let children = self.client.list_children(&self.dir).await?;
            let prefix = format!("{}{LOCK_NAME}", self.name);
            for child in children.iter().filter(|c| c.starts_with(&prefix)) {
                match self
                    .client
                    .delete(&format!("{}/{child}", self.dir), None)
                    .await
                {
                    Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                    Err(error) => return Err(anyhow::Error::from(error)),
                }
            }
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(5), work).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "raw lock floor: removing our lock node failed")
            }
            Err(_) => tracing::warn!("raw lock floor: removing our lock node timed out"),
        }
    }
}

/// What one writer task measured: latencies, errors, its first error.
type WriterResult = (hdrhistogram::Histogram<u64>, u64, Option<String>);

/// `writers` raw sessions incrementing one counter under the lock for the
/// contended window; the same figures as the engine's contended records.
/// With `watched`, each session also keeps a fresh copy of the counter
/// through a persistent watch, as every engine instance does.
async fn contended_lock(
    hosts: &str,
    root: &str,
    plan: &Plan,
    writers: usize,
    watched: bool,
) -> anyhow::Result<Record> {
    let base = format!(
        "{root}/zk-raw-contended/lock-{writers}{}",
        if watched { "-watched" } else { "" }
    );
    let (dir, counter) = (format!("{base}/lock"), format!("{base}/counter"));
    let admin = connect(hosts).await?;
    ensure(&admin, &dir, b"").await?;
    ensure(&admin, &counter, &serde_json::to_vec(&small())?).await?;
    let before = read_counter(&admin, &counter).await?;
    let mut all = Vec::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut copies = Vec::new();
    for index in 0..writers {
        let client = connect(hosts).await?;
        if watched {
            // On the writer's own session, as an instance's watch is.
            let watcher = client.watch(&counter, AddWatchMode::Persistent).await?;
            copies.push(tokio::spawn(keep_fresh(
                client.clone(),
                watcher,
                counter.clone(),
                Arc::new(AtomicI64::new(0)),
                stopped.clone(),
            )));
        }
        all.push(LockWriter {
            client,
            dir: dir.clone(),
            counter: counter.clone(),
            name: format!("w{index}"),
        });
    }
    let successes = Arc::new(AtomicU64::new(0));
    // Completed inside the window: the throughput figure.
    let in_window = Arc::new(AtomicU64::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(writers));
    let run_for = plan.contended_for;
    let mut tasks = Vec::new();
    for writer in all {
        let (successes, in_window, start) = (successes.clone(), in_window.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let t0 = Instant::now();
            let mut hist = histogram();
            let (mut errors, mut ops, mut first_error) = (0u64, 0u64, None);
            while t0.elapsed() < run_for && ops < MAX_OPS {
                ops += 1;
                let op_start = Instant::now();
                let error = match tokio::time::timeout(OP_TIMEOUT, writer.increment()).await {
                    Ok(Ok(())) => {
                        successes.fetch_add(1, Ordering::SeqCst);
                        if t0.elapsed() <= run_for {
                            in_window.fetch_add(1, Ordering::SeqCst);
                        }
                        record_ns(&mut hist, op_start.elapsed());
                        continue;
                    }
                    Ok(Err(error)) => format!("{error:#}"),
                    Err(_) => format!("an increment took over {OP_TIMEOUT:?}"),
                };
                errors += 1;
                first_error.get_or_insert(error);
                writer.release().await;
                // A persistent failure must not spin the loop hot.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Dropping the client closes its session.
            drop(writer);
            (hist, errors, first_error)
        }));
    }
    let t0 = Instant::now();
    let mut hist = histogram();
    let mut errors = 0;
    let mut notes = Vec::new();
    for task in tasks {
        let (h, e, first): WriterResult = tokio::time::timeout(run_for + OP_TIMEOUT * 2, task)
            .await
            .map_err(|_| anyhow!("a writer did not stop"))??;
        hist.add(&h)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
        errors += e;
        if notes.len() < 3 {
            notes.extend(first);
        }
    }
    let wall = t0.elapsed();
    let _ = stop.send(true);
    let mut copy_reads = 0;
    for copy in copies {
        let (reads, _) = tokio::time::timeout(WAIT_TIMEOUT, copy)
            .await
            .map_err(|_| anyhow!("a watcher did not stop"))???;
        copy_reads += reads;
    }
    let after = read_counter(&admin, &counter).await?;
    let ok = successes.load(Ordering::SeqCst);
    let delta = after.saturating_sub(before);
    let lost = ok as i64 - delta as i64;
    let mut r = record(LOCK_SCENARIO, &lock_variant(writers, watched))
        .with_histogram(&hist, wall)
        .extra("writers", writers)
        .extra("successes", ok)
        .extra("final_delta", delta)
        .extra("lost_updates", lost)
        .extra(
            "ops_per_sec_until_last",
            ok as f64 / wall.as_secs_f64().max(1e-9),
        )
        .extra("window_s", run_for.as_secs_f64())
        .note(format!(
            "final count delta {delta} vs {ok} successful updates: {}",
            if lost == 0 { "exact" } else { "MISMATCH" }
        ))
        .extra("copy_reads", copy_reads)
        .note(if watched {
            "create+list+get pipelined, watch the predecessor, list+get, multi(check, setData, delete); each session also keeps a watched copy (one getData per batch of notifications)"
        } else {
            "create+list+get pipelined, watch the predecessor, list+get, multi(check, setData, delete)"
        });
    r.ops_per_sec = in_window.load(Ordering::SeqCst) as f64 / run_for.as_secs_f64();
    r.errors = errors;
    r.notes
        .extend(notes.into_iter().map(|e| format!("error: {e}")));
    Ok(r)
}

/// One watcher of the chain floor: per batch of notifications (those
/// already queued folded in), one read; the newest version read goes to
/// `seen`. Stops on `stop`. Returns (reads, notifications).
async fn keep_fresh(
    client: Client,
    mut watcher: PersistentWatcher,
    path: String,
    seen: Arc<AtomicI64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(u64, u64)> {
    let (mut reads, mut events) = (0u64, 0u64);
    // zookeeper-client panics when a persistent watcher is polled after
    // its session task is gone: that ends this watcher with an error.
    let ended = || anyhow!("the watcher's session ended");
    while reads < MAX_OPS {
        tokio::select! {
            _ = stop.changed() => break,
            event = AssertUnwindSafe(watcher.changed()).catch_unwind() => {
                event.map_err(|_| ended())?;
                events += 1;
            }
        }
        for _ in 0..MAX_WAITS {
            match AssertUnwindSafe(watcher.changed())
                .catch_unwind()
                .now_or_never()
            {
                Some(Ok(_)) => events += 1,
                Some(Err(_)) => return Err(ended()),
                None => break,
            }
        }
        let (_, stat) = tokio::time::timeout(WAIT_TIMEOUT, client.get_data(&path))
            .await
            .map_err(|_| anyhow!("a read took over {WAIT_TIMEOUT:?}"))??;
        reads += 1;
        seen.fetch_max(i64::from(stat.version), Ordering::SeqCst);
    }
    Ok((reads, events))
}

/// The fence of a `fenced` chain: the counter of the value's parent that
/// the next write's sequential create must be named after.
struct ChainFence {
    parent: String,
    counter: i32,
}

impl ChainFence {
    /// Learns the counter of `parent` from a sequential node of its own
    /// (created and deleted before the window).
    async fn learn(client: &Client, parent: &str) -> anyhow::Result<Self> {
        let options = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
        let (_, sequence) = client
            .create(&format!("{parent}/learn-"), &[], &options)
            .await?;
        client
            .delete(&format!("{parent}/learn-{sequence}"), None)
            .await?;
        let learned: i32 = sequence.to_string().parse()?;
        Ok(ChainFence {
            parent: parent.to_owned(),
            counter: learned + 1,
        })
    }

    /// The fenced conditional write; the new data version.
    async fn write(
        &mut self,
        client: &Client,
        path: &str,
        data: &[u8],
        version: i32,
    ) -> anyhow::Result<i32> {
        let mut multi = client.new_multi_writer();
        multi.add_set_data(path, data, Some(version))?;
        crate::raw_zk::add_fence(&mut multi, &self.parent, "check-", self.counter)?;
        let results = multi.commit().await?;
        self.counter += 1;
        crate::raw_zk::set_data_version(&results)
    }
}

/// One session chaining conditional writes (with the incarnation fence
/// when `fenced`) for the contended window while `sessions - 1` others
/// keep a fresh copy through a persistent watch.
async fn chain(
    hosts: &str,
    root: &str,
    plan: &Plan,
    sessions: usize,
    fenced: bool,
) -> anyhow::Result<Record> {
    // A parent of its own: the fenced chain's counter moves only with it.
    let parent = format!(
        "{root}/zk-raw-contended/chain-{sessions}{}",
        if fenced { "-fenced" } else { "" }
    );
    let path = format!("{parent}/value");
    let writer = connect(hosts).await?;
    let mut value = small();
    let mut version = ensure(&writer, &path, &serde_json::to_vec(&value)?).await?;
    let mut fence = match fenced {
        true => Some(ChainFence::learn(&writer, &parent).await?),
        false => None,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut watchers = Vec::new();
    for _ in 1..sessions {
        let client = connect(hosts).await?;
        // Registered on the server before the first write.
        let watcher = client.watch(&path, AddWatchMode::Persistent).await?;
        let seen = Arc::new(AtomicI64::new(i64::from(version)));
        let task = tokio::spawn(keep_fresh(
            client,
            watcher,
            path.clone(),
            seen.clone(),
            stopped.clone(),
        ));
        watchers.push((seen, task));
    }
    let mut hist = histogram();
    let (mut errors, mut notes) = (0u64, Vec::new());
    let t0 = Instant::now();
    while t0.elapsed() < plan.contended_for && hist.len() < MAX_OPS {
        value.counter += 1;
        let data = serde_json::to_vec(&value)?;
        let op_start = Instant::now();
        let write = async {
            match fence.as_mut() {
                Some(fence) => fence.write(&writer, &path, &data, version).await,
                None => Ok(writer.set_data(&path, &data, Some(version)).await?.version),
            }
        };
        match tokio::time::timeout(OP_TIMEOUT, write).await {
            Ok(Ok(written)) => {
                version = written;
                record_ns(&mut hist, op_start.elapsed());
            }
            Ok(Err(error)) => {
                // Not expected (nobody else writes): learn the version again.
                errors += 1;
                if notes.len() < 3 {
                    notes.push(format!("error: {error}"));
                }
                version = writer.get_data(&path).await?.1.version;
                if fenced {
                    fence = Some(ChainFence::learn(&writer, &parent).await?);
                }
            }
            Err(_) => {
                errors += 1;
                notes.push(format!("a write took over {OP_TIMEOUT:?}"));
                break;
            }
        }
    }
    let wall = t0.elapsed();
    // Every copy fresh: each watcher has read the last version.
    let caught_up = Instant::now();
    while watchers
        .iter()
        .any(|(seen, _)| seen.load(Ordering::SeqCst) < i64::from(version))
    {
        if caught_up.elapsed() > WAIT_TIMEOUT {
            notes.push(format!(
                "a watcher had not read the last version {WAIT_TIMEOUT:?} after the window"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let catch_up = caught_up.elapsed();
    let _ = stop.send(true);
    let (mut reads, mut events) = (0u64, 0u64);
    for (_, task) in watchers {
        let (r, e) = tokio::time::timeout(WAIT_TIMEOUT, task)
            .await
            .map_err(|_| anyhow!("a watcher did not stop"))???;
        reads += r;
        events += e;
    }
    drop(writer);
    let writes = hist.len();
    let watching = sessions - 1;
    let per_change = reads as f64 / (writes.max(1) * watching.max(1) as u64) as f64;
    let mut r = record(CHAIN_SCENARIO, &chain_variant(sessions, fenced))
        .with_histogram(&hist, wall)
        .extra("sessions", sessions)
        .extra("watchers", watching)
        .extra("writes", writes)
        .extra("watcher_reads", reads)
        .extra("watcher_notifications", events)
        .extra("reads_per_change_per_watcher", per_change)
        .extra("catch_up_ms", catch_up.as_secs_f64() * 1e3)
        .extra("window_s", plan.contended_for.as_secs_f64())
        .note({
            let write = if fenced {
                "multi(setData(version), create check-, delete check-<counter>)"
            } else {
                "setData(version)"
            };
            if watching == 0 {
                format!("one session chaining {write}, nobody watching")
            } else {
                format!(
                    "one session chaining {write}; {watching} sessions with a persistent watch + one getData per batch of notifications: {per_change:.2} reads per change per watcher, last version read {catch_up:.1?} after the window"
                )
            }
        });
    r.errors = errors;
    r.notes.extend(notes);
    Ok(r)
}
