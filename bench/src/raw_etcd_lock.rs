//! etcd lock floors: the raw `etcd-client` lock recipe (waiter keys on a
//! lease, each waiter watching the deletion of its predecessor) under
//! contention, and the probe that shows why a watch must not start at a
//! past revision.
//!
//! etcd puts a watch whose start revision is not after the store's current
//! revision in its "unsynced" group, which a background loop catches up
//! only every 100 ms (`syncWatchersLoop` in etcd's mvcc package). Go's
//! `concurrency.Mutex` watches its predecessor from the revision of its
//! read, so every hand-over where anything was written between that read
//! and the watch waits for that loop. The probe measures both kinds of
//! watch; the contended recipe runs both ways.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};

use crate::harness::{announce, histogram, record_ns, Plan, Record};

fn record(scenario: &str, variant: &str) -> Record {
    Record::new("etcd", "raw", scenario, variant)
}

fn done(record: Record) -> Record {
    announce(&record);
    record
}

/// Where a waiter's watch on its predecessor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchFrom {
    /// At the revision of the read that found the predecessor, as Go's
    /// `concurrency.Mutex` does: an unsynced watch as soon as anything
    /// else was written meanwhile.
    ReadRevision,
    /// At the store's current revision (a synced watch, delivered at once),
    /// then a re-read of the predecessor closes the gap since the read.
    Now,
}

impl WatchFrom {
    fn name(self) -> &'static str {
        match self {
            WatchFrom::ReadRevision => "watch from the read revision (Go concurrency.Mutex)",
            WatchFrom::Now => "watch from now + re-check",
        }
    }
}

pub async fn run(endpoint: &str, root: &str, plan: &Plan) -> Vec<Record> {
    let mut records = Vec::new();
    match watch_start_probe(endpoint, root, plan).await {
        Ok(found) => records.extend(found),
        Err(error) => records.push(done(
            record("watch-start", "failed").note(format!("failed: {error:#}")),
        )),
    }
    for writers in [4usize, 8] {
        for from in [WatchFrom::Now, WatchFrom::ReadRevision] {
            match contended(endpoint, root, plan, writers, from).await {
                Ok(r) => records.push(done(r)),
                Err(error) => records.push(done(
                    record("contended-lock", "failed").note(format!("failed: {error:#}")),
                )),
            }
        }
    }
    records
}

async fn connect(endpoint: &str) -> anyhow::Result<Client> {
    Client::connect([endpoint], None)
        .await
        .with_context(|| format!("raw etcd-client connecting to {endpoint}"))
}

fn header_revision(response: &TxnResponse) -> anyhow::Result<i64> {
    response
        .header()
        .map(|h| h.revision())
        .ok_or_else(|| anyhow!("txn response without a header"))
}

/// The time from a delete request until a watch on that key delivers the
/// deletion, for a watch started at a past revision (with a write in
/// between, as in a contended lock) and for one started now.
async fn watch_start_probe(endpoint: &str, root: &str, plan: &Plan) -> anyhow::Result<Vec<Record>> {
    let mut client = connect(endpoint).await?;
    let key = format!("{root}/etcd-raw-lock/probe");
    let other = format!("{root}/etcd-raw-lock/probe-other");
    let samples = if plan.smoke { 10 } else { 100 };
    let mut records = Vec::new();
    for past in [true, false] {
        let mut hist = histogram();
        let started = Instant::now();
        for _ in 0..samples {
            let put = client.put(key.as_str(), "x", None).await?;
            let revision = put.header().map(|h| h.revision()).unwrap_or_default();
            // Another write moves the store past the revision of our read.
            client.put(other.as_str(), "y", None).await?;
            let options = past.then(|| WatchOptions::new().with_start_revision(revision + 1));
            let mut stream = client.watch_client().watch(key.as_str(), options).await?;
            // The first answer confirms the watch exists.
            stream
                .message()
                .await?
                .ok_or_else(|| anyhow!("watch ended before it was created"))?;
            let t0 = Instant::now();
            client.delete(key.as_str(), None).await?;
            let wait = async {
                while let Some(message) = stream.message().await? {
                    if message
                        .events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete)
                    {
                        return Ok(());
                    }
                }
                Err(anyhow!("watch ended before the deletion"))
            };
            tokio::time::timeout(Duration::from_secs(5), wait)
                .await
                .map_err(|_| anyhow!("no deletion event within 5 s"))??;
            record_ns(&mut hist, t0.elapsed());
        }
        let variant = if past {
            "from a past revision"
        } else {
            "from now"
        };
        records.push(done(
            record("watch-start", variant)
                .with_histogram(&hist, started.elapsed())
                .note("delete request until the watch delivers it; one other write between the read and the watch"),
        ));
    }
    Ok(records)
}

/// One raw writer: its own client and lease.
struct Writer {
    client: Client,
    lease: i64,
    waiter: String,
}

impl Writer {
    async fn new(endpoint: &str, prefix: &str) -> anyhow::Result<Self> {
        let mut client = connect(endpoint).await?;
        let lease = client.lease_grant(10, None).await?.id();
        // Keep the lease alive for the whole run.
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                if !matches!(answers.message().await, Ok(Some(_))) {
                    break;
                }
            }
        });
        Ok(Writer {
            client,
            lease,
            waiter: format!("{prefix}{lease:x}"),
        })
    }

    /// One locked increment: the same transactions as the engine's locked
    /// update (create the waiter key + read the oldest waiter + read the
    /// value; wait; the fenced write that also deletes the waiter key).
    async fn increment(&mut self, prefix: &str, data: &str, from: WatchFrom) -> anyhow::Result<()> {
        let oldest = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1)
            .with_keys_only();
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.waiter.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(
                    self.waiter.as_str(),
                    Vec::new(),
                    Some(PutOptions::new().with_lease(self.lease)),
                ),
                TxnOp::get(prefix, Some(oldest)),
                TxnOp::get(data, None),
            ]);
        let response = self.client.txn(txn).await?;
        if !response.succeeded() {
            return Err(anyhow!("waiter key {} exists already", self.waiter));
        }
        let token = header_revision(&response)?;
        let owner = kv_at(&response, 1).map(|(_, create, _)| create);
        let mut value = kv_at(&response, 2).map(|(_, _, value)| value);
        if owner != Some(token) {
            value = self.wait_for_turn(prefix, data, token, from).await?;
        }
        let count: u64 = value
            .as_deref()
            .map(|v| std::str::from_utf8(v).unwrap_or("0").parse().unwrap_or(0))
            .unwrap_or(0);
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.waiter.as_str(),
                CompareOp::Equal,
                token,
            )])
            .and_then([
                TxnOp::put(data, (count + 1).to_string(), None),
                TxnOp::delete(self.waiter.as_str(), None),
            ])
            .or_else([TxnOp::delete(self.waiter.as_str(), None)]);
        if !self.client.txn(txn).await?.succeeded() {
            return Err(anyhow!("lost the lock"));
        }
        Ok(())
    }

    /// Waits until no older waiter is left; returns the value read then.
    async fn wait_for_turn(
        &mut self,
        prefix: &str,
        data: &str,
        token: i64,
        from: WatchFrom,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            let older = GetOptions::new()
                .with_prefix()
                .with_max_create_revision(token - 1)
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_limit(1)
                .with_keys_only();
            let txn =
                Txn::new().and_then([TxnOp::get(prefix, Some(older)), TxnOp::get(data, None)]);
            let response = self.client.txn(txn).await?;
            let revision = header_revision(&response)?;
            let Some((predecessor, create, _)) = kv_at(&response, 0) else {
                return Ok(kv_at(&response, 1).map(|(_, _, value)| value));
            };
            let options = match from {
                WatchFrom::ReadRevision => Some(WatchOptions::new().with_start_revision(revision)),
                WatchFrom::Now => None,
            };
            let mut stream = self
                .client
                .watch_client()
                .watch(predecessor.clone(), options)
                .await?;
            if from == WatchFrom::Now {
                let created = stream
                    .message()
                    .await?
                    .ok_or_else(|| anyhow!("watch ended before it was created"))?;
                let at = created.header().map(|h| h.revision()).unwrap_or(i64::MAX);
                if at > revision {
                    // Something was written since the read: is the
                    // predecessor still there?
                    let still = self
                        .client
                        .get(
                            predecessor.clone(),
                            Some(GetOptions::new().with_keys_only()),
                        )
                        .await?;
                    if still.kvs().first().map(|kv| kv.create_revision()) != Some(create) {
                        continue;
                    }
                }
            }
            loop {
                let message = stream
                    .message()
                    .await?
                    .ok_or_else(|| anyhow!("watch ended"))?;
                if message
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    break;
                }
            }
        }
    }
}

/// Key, create revision and value of the first key of the `index`th
/// range answer.
fn kv_at(response: &TxnResponse, index: usize) -> Option<(Vec<u8>, i64, Vec<u8>)> {
    match response.op_responses().into_iter().nth(index) {
        Some(TxnOpResponse::Get(get)) => get
            .kvs()
            .first()
            .map(|kv| (kv.key().to_vec(), kv.create_revision(), kv.value().to_vec())),
        _ => None,
    }
}

/// `writers` raw writers incrementing one counter under the lock for the
/// contended window; the same figures as the engine's contended scenario.
async fn contended(
    endpoint: &str,
    root: &str,
    plan: &Plan,
    writers: usize,
    from: WatchFrom,
) -> anyhow::Result<Record> {
    let base = format!(
        "{root}/etcd-raw-lock/{writers}-{}",
        if from == WatchFrom::Now {
            "now"
        } else {
            "read"
        }
    );
    let prefix = format!("{base}/lock/");
    let data = format!("{base}/counter");
    let mut client = connect(endpoint).await?;
    client.put(data.as_str(), "0", None).await?;
    let mut all = Vec::new();
    for _ in 0..writers {
        all.push(Writer::new(endpoint, &prefix).await?);
    }
    let successes = Arc::new(AtomicU64::new(0));
    let in_window = Arc::new(AtomicU64::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(writers));
    let run_for = plan.contended_for;
    let mut tasks = Vec::new();
    for mut writer in all {
        let (successes, in_window, start) = (successes.clone(), in_window.clone(), start.clone());
        let (prefix, data) = (prefix.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let t0 = Instant::now();
            let mut hist = histogram();
            let mut errors = 0u64;
            while t0.elapsed() < run_for {
                let op_start = Instant::now();
                match tokio::time::timeout(
                    Duration::from_secs(30),
                    writer.increment(&prefix, &data, from),
                )
                .await
                {
                    Ok(Ok(())) => {
                        successes.fetch_add(1, Ordering::SeqCst);
                        if t0.elapsed() <= run_for {
                            in_window.fetch_add(1, Ordering::SeqCst);
                        }
                        record_ns(&mut hist, op_start.elapsed());
                    }
                    Ok(Err(error)) => {
                        errors += 1;
                        tracing::warn!(%error, "raw etcd lock increment failed");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            let _ = writer.client.lease_revoke(writer.lease).await;
            (hist, errors)
        }));
    }
    let t0 = Instant::now();
    let mut hist = histogram();
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await?;
        hist.add(&h)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
        errors += e;
    }
    let wall = t0.elapsed();
    let after: u64 = client
        .get(data.as_str(), None)
        .await?
        .kvs()
        .first()
        .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse().ok())
        .unwrap_or(0);
    let ok = successes.load(Ordering::SeqCst);
    let lost = ok as i64 - after as i64;
    let mut r = record(
        "contended-lock",
        &format!("{writers} writers, {}", from.name()),
    )
    .with_histogram(&hist, wall)
    .extra("writers", writers)
    .extra("successes", ok)
    .extra("lost_updates", lost)
    .extra("window_s", run_for.as_secs_f64())
    .note(format!(
        "final count {after} vs {ok} successful updates: {}",
        if lost == 0 { "exact" } else { "MISMATCH" }
    ));
    r.ops_per_sec = in_window.load(Ordering::SeqCst) as f64 / run_for.as_secs_f64();
    r.errors = errors;
    Ok(r)
}
