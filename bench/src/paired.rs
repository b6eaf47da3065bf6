//! The target comparisons measured interleaved: each round does one raw
//! CAS, one optimistic and one locked engine update, one raw locked update
//! (the same round trips as the engine's), one raw propagation, one engine
//! propagation, one raw read and one `read_consistent()`, and on ZooKeeper
//! the raw floors with the incarnation fence the engine's exact writes
//! carry (locked update, CAS, propagation), so the floor and ours see the
//! same machine load (the cores are shared with other builds; suites run
//! minutes apart would compare different moments, not different code).

use std::time::{Duration, Instant};

use anyhow::anyhow;
use sharedstate::WriteMode;
use tokio::sync::mpsc;

use crate::fixture::{arrival_of, arrivals, close, open, small, Ctx};

/// The name prefix of the raw floors' fence nodes.
const FENCE_NAME: &str = "bench-fence-";

/// Warm-up rounds of a full run (see `run_inner`).
const PAIRED_WARMUP_ROUNDS: usize = 2_000;
use crate::harness::{announce, histogram, record_ns, Record};
use crate::{raw_etcd, raw_zk};

/// The raw client's side: a CAS key and a watched key.
#[allow(clippy::large_enum_variant)] // one value per run
pub enum Raw {
    Zk {
        client: zookeeper_client::Client,
        _watcher: zookeeper_client::Client,
        cas: (String, i32),
        prop: (String, i32),
        rx: mpsc::UnboundedReceiver<(i32, Instant)>,
        /// The lock parent and the key written under the lock.
        locked: (String, String),
        /// The next sequence number of a child of the locked key's parent
        /// (its `cversion`): the incarnation fence's counter.
        fence: i32,
    },
    Etcd {
        client: etcd_client::Client,
        cas: (String, i64),
        prop: (String, i64),
        rx: mpsc::UnboundedReceiver<(i64, Instant)>,
        /// The waiter key (on `lease`) and the key written under the lock.
        locked: (String, String),
        lease: i64,
    },
}

impl Raw {
    pub async fn zk(hosts: &str, root: &str) -> anyhow::Result<Raw> {
        let client = raw_zk::connect(hosts).await?;
        let watcher = raw_zk::connect(hosts).await?;
        let data = serde_json::to_vec(&small())?;
        let cas_path = format!("{root}/paired-raw/cas");
        let prop_path = format!("{root}/paired-raw/prop");
        let cas_version = raw_zk::ensure(&client, &cas_path, &data).await?;
        let prop_version = raw_zk::ensure(&client, &prop_path, &data).await?;
        let mut rx = raw_zk::watch(watcher.clone(), prop_path.clone());
        raw_zk::arrival(&mut rx, prop_version).await?;
        let lock_dir = format!("{root}/paired-raw/lock");
        let locked_path = format!("{root}/paired-raw/locked");
        raw_zk::ensure(&client, &lock_dir, b"").await?;
        raw_zk::ensure(&client, &locked_path, &data).await?;
        let fence = learn_fence(&client, &format!("{root}/paired-raw")).await?;
        Ok(Raw::Zk {
            client,
            _watcher: watcher,
            cas: (cas_path, cas_version),
            prop: (prop_path, prop_version),
            rx,
            locked: (lock_dir, locked_path),
            fence,
        })
    }

    pub async fn etcd(endpoint: &str, root: &str) -> anyhow::Result<Raw> {
        let mut client = etcd_client::Client::connect([endpoint], None).await?;
        let watcher = etcd_client::Client::connect([endpoint], None).await?;
        let data = serde_json::to_vec(&small())?;
        let cas_key = format!("{root}/paired-raw/cas");
        let prop_key = format!("{root}/paired-raw/prop");
        let put = client.put(cas_key.as_str(), data.clone(), None).await?;
        let cas_rev = put.header().map(|h| h.revision()).unwrap_or_default();
        let put = client.put(prop_key.as_str(), data, None).await?;
        let prop_rev = put.header().map(|h| h.revision()).unwrap_or_default();
        let rx = raw_etcd::watch(watcher, prop_key.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
        // A lease that outlives the run (300 s): the waiter key's, as the
        // engine's session lease.
        let lease = client.lease_grant(300, None).await?.id();
        let locked_key = format!("{root}/paired-raw/locked");
        client
            .put(locked_key.as_str(), serde_json::to_vec(&small())?, None)
            .await?;
        Ok(Raw::Etcd {
            client,
            cas: (cas_key, cas_rev),
            prop: (prop_key, prop_rev),
            rx,
            locked: (format!("{root}/paired-raw/lock/{lease:x}"), locked_key),
            lease,
        })
    }

    async fn cas(&mut self, data: &[u8]) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        match self {
            Raw::Zk { client, cas, .. } => {
                let stat = client.set_data(&cas.0, data, Some(cas.1)).await?;
                cas.1 = stat.version;
            }
            Raw::Etcd { client, cas, .. } => {
                cas.1 = raw_etcd::cas(client, &cas.0, data, cas.1).await?;
            }
        }
        Ok(t0.elapsed())
    }

    /// The raw-client minimum of a locked update (uncontended): ZooKeeper's
    /// pipelined create ephemeral-sequential + getChildren + getData, then
    /// `multi(check, setData, delete)`; etcd's txn (create the waiter key
    /// on the lease + read the oldest waiter + read the value), then the
    /// fenced txn that writes and deletes the waiter key.
    async fn locked_update(&mut self, data: &[u8]) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        match self {
            Raw::Zk { client, locked, .. } => {
                let path = &locked.1;
                let (node, stat) = zk_lock_flight(client, locked).await?;
                let mut multi = client.new_multi_writer();
                multi.add_check_version(&node, -1)?;
                multi.add_set_data(path, data, Some(stat.version))?;
                multi.add_delete(&node, None)?;
                multi.commit().await?;
            }
            Raw::Etcd {
                client,
                locked,
                lease,
                ..
            } => {
                use etcd_client::{
                    Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
                };
                let (waiter, key) = (locked.0.as_str(), locked.1.as_str());
                let prefix = waiter
                    .rsplit_once('/')
                    .map(|(p, _)| format!("{p}/"))
                    .unwrap_or_default();
                let oldest = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend)
                    .with_limit(1)
                    .with_keys_only();
                let txn = Txn::new()
                    .when([Compare::create_revision(waiter, CompareOp::Equal, 0)])
                    .and_then([
                        TxnOp::put(
                            waiter,
                            Vec::new(),
                            Some(PutOptions::new().with_lease(*lease)),
                        ),
                        TxnOp::get(prefix.as_str(), Some(oldest)),
                        TxnOp::get(key, None),
                    ]);
                let response = client.txn(txn).await?;
                let token = response
                    .header()
                    .map(|h| h.revision())
                    .ok_or_else(|| anyhow!("txn without a header"))?;
                if !response.succeeded() {
                    return Err(anyhow!("raw waiter key exists already"));
                }
                let fenced = Txn::new()
                    .when([Compare::create_revision(waiter, CompareOp::Equal, token)])
                    .and_then([TxnOp::put(key, data, None), TxnOp::delete(waiter, None)])
                    .or_else([TxnOp::delete(waiter, None)]);
                if !client.txn(fenced).await?.succeeded() {
                    return Err(anyhow!("raw fenced txn failed"));
                }
            }
        }
        Ok(t0.elapsed())
    }

    /// ZooKeeper only (`None` on etcd, whose floor has no extra
    /// operation): the raw locked update with the engine's incarnation
    /// fence inside the same `multi` (create a sequential child of the
    /// key's parent and delete it, which fails if the parent's child
    /// counter moved: the key was deleted and re-created), so the `multi`
    /// carries the engine's five operations.
    async fn locked_update_fenced(&mut self, data: &[u8]) -> anyhow::Result<Option<Duration>> {
        let t0 = Instant::now();
        let Raw::Zk {
            client,
            locked,
            fence,
            ..
        } = self
        else {
            return Ok(None);
        };
        let path = &locked.1;
        let (node, stat) = zk_lock_flight(client, locked).await?;
        let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        let mut multi = client.new_multi_writer();
        multi.add_check_version(&node, -1)?;
        raw_zk::add_fence(&mut multi, parent, FENCE_NAME, *fence)?;
        multi.add_set_data(path, data, Some(stat.version))?;
        multi.add_delete(&node, None)?;
        match multi.commit().await {
            Ok(_) => {
                // Our create moved the counter (deletes do not).
                *fence += 1;
                Ok(Some(t0.elapsed()))
            }
            Err(error) => {
                let _ = client.delete(&node, None).await;
                *fence = learn_fence(client, parent).await?;
                Err(anyhow!(
                    "raw fenced multi failed (fence re-learned): {error}"
                ))
            }
        }
    }

    /// ZooKeeper only (`None` on etcd, whose revision compare is exact by
    /// itself): the raw conditional write with the incarnation fence the
    /// same guarantee needs, `multi(setData(version), create a sequential
    /// child of the key's parent, delete it by the learned counter)`, the
    /// counter known from the previous commit (the engine's transaction
    /// also keeps its fence hint: one operation more).
    async fn cas_fenced(&mut self, data: &[u8]) -> anyhow::Result<Option<Duration>> {
        let t0 = Instant::now();
        let Raw::Zk {
            client, cas, fence, ..
        } = self
        else {
            return Ok(None);
        };
        cas.1 = fenced_set(client, &cas.0, data, cas.1, fence).await?;
        Ok(Some(t0.elapsed()))
    }

    /// ZooKeeper only: [`propagate`](Self::propagate) with the writer's
    /// fenced conditional write ([`cas_fenced`](Self::cas_fenced)).
    async fn propagate_fenced(&mut self, data: &[u8]) -> anyhow::Result<Option<Duration>> {
        let t0 = Instant::now();
        let Raw::Zk {
            client,
            prop,
            rx,
            fence,
            ..
        } = self
        else {
            return Ok(None);
        };
        while rx.try_recv().is_ok() {}
        prop.1 = fenced_set(client, &prop.0, data, prop.1, fence).await?;
        let at = raw_zk::arrival(rx, prop.1).await?;
        Ok(Some(at.saturating_duration_since(t0)))
    }

    /// The plain read of each client: ZooKeeper `sync` + `getData`
    /// pipelined (sequentially consistent), etcd's default (linearizable)
    /// range.
    async fn read(&mut self) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        match self {
            Raw::Zk { client, cas, .. } => {
                let sync = client.sync(&cas.0);
                let get = client.get_data(&cas.0);
                sync.await?;
                get.await?;
            }
            Raw::Etcd { client, cas, .. } => {
                client.get(cas.0.as_str(), None).await?;
            }
        }
        Ok(t0.elapsed())
    }

    async fn propagate(&mut self, data: &[u8]) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let at = match self {
            Raw::Zk {
                client, prop, rx, ..
            } => {
                while rx.try_recv().is_ok() {}
                let stat = client.set_data(&prop.0, data, Some(prop.1)).await?;
                prop.1 = stat.version;
                raw_zk::arrival(rx, prop.1).await?
            }
            Raw::Etcd {
                client, prop, rx, ..
            } => {
                while rx.try_recv().is_ok() {}
                prop.1 = raw_etcd::cas(client, &prop.0, data, prop.1).await?;
                raw_etcd::arrival(rx, prop.1).await?
            }
        };
        Ok(at.saturating_duration_since(t0))
    }
}

pub async fn run(ctx: &Ctx, raw: anyhow::Result<Raw>) -> Vec<Record> {
    match run_inner(ctx, raw).await {
        Ok(records) => records,
        Err(error) => {
            let record = ctx
                .record("paired", "failed")
                .note(format!("failed: {error:#}"));
            announce(&record);
            vec![record]
        }
    }
}

/// The fenced conditional write of `path` at data version `version` (see
/// [`Raw::cas_fenced`]); the new data version. A failed fence learns the
/// counter again and fails.
async fn fenced_set(
    client: &zookeeper_client::Client,
    path: &str,
    data: &[u8],
    version: i32,
    fence: &mut i32,
) -> anyhow::Result<i32> {
    let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
    let mut multi = client.new_multi_writer();
    multi.add_set_data(path, data, Some(version))?;
    raw_zk::add_fence(&mut multi, parent, FENCE_NAME, *fence)?;
    match multi.commit().await {
        Ok(results) => {
            *fence += 1;
            raw_zk::set_data_version(&results)
        }
        Err(error) => {
            *fence = learn_fence(client, parent).await?;
            Err(anyhow!(
                "raw fenced write failed (fence re-learned): {error}"
            ))
        }
    }
}

/// The child counter of `parent`, learned as the engine learns it: from
/// the name the server gives a sequential node (created and deleted here,
/// outside the timed rounds).
async fn learn_fence(client: &zookeeper_client::Client, parent: &str) -> anyhow::Result<i32> {
    let options = zookeeper_client::CreateMode::EphemeralSequential
        .with_acls(zookeeper_client::Acls::anyone_all());
    let prefix = format!("{parent}/{FENCE_NAME}");
    let (_, sequence) = client.create(&prefix, &[], &options).await?;
    client.delete(&format!("{prefix}{sequence}"), None).await?;
    let learned: i32 = sequence.to_string().parse()?;
    Ok(learned + 1)
}

async fn run_inner(ctx: &Ctx, raw: anyhow::Result<Raw>) -> anyhow::Result<Vec<Record>> {
    let plan = ctx.plan;
    let mut raw = raw?;
    let data = serde_json::to_vec(&small())?;
    let optimistic = open(
        ctx,
        &ctx.path("paired-optimistic"),
        small(),
        WriteMode::Optimistic,
    )
    .await?;
    let locked = open(ctx, &ctx.path("paired-locked"), small(), WriteMode::Locked).await?;
    let writer = open(
        ctx,
        &ctx.path("paired-propagation"),
        small(),
        WriteMode::Optimistic,
    )
    .await?;
    let reader = open(
        ctx,
        &ctx.path("paired-propagation"),
        small(),
        WriteMode::Optimistic,
    )
    .await?;
    let mut rx = arrivals(&reader.1);
    let names = [
        ("raw", "raw CAS"),
        ("sharedstate", "optimistic update"),
        ("sharedstate", "locked update"),
        ("raw", "raw locked update"),
        ("raw", "raw watch"),
        ("sharedstate", "propagation"),
        ("raw", "raw read"),
        ("sharedstate", "read_consistent()"),
        ("raw", "raw locked update + fence"),
        ("raw", "raw fenced CAS"),
        ("raw", "raw fenced watch"),
    ];
    let mut hists: Vec<_> = names.iter().map(|_| histogram()).collect();
    let mut errors = vec![0u64; names.len()];
    let mut notes = Vec::new();
    let budget = plan.budget * 3;
    let started = Instant::now();
    // The servers were just started (a JVM, for ZooKeeper): the rounds run
    // the interleaved operations some twenty thousand times before
    // measuring, so that the server's hot paths are compiled for the
    // floors and for ours alike. On a just-started ZooKeeper the fenced
    // transaction was 1.29x the raw CAS after 300 rounds, 1.23x after
    // 1,600 and 1.21x after 2,900 (three runs in a row on one server).
    let warmup = if plan.smoke {
        plan.warmup
    } else {
        plan.warmup.max(PAIRED_WARMUP_ROUNDS)
    };
    for i in 0..warmup + plan.samples {
        if started.elapsed() > budget {
            notes.push(format!("stopped by the {budget:?} budget"));
            break;
        }
        let results: [anyhow::Result<Option<Duration>>; 11] = [
            raw.cas(&data).await.map(Some),
            timed(optimistic.1.update(|v| v.counter += 1))
                .await
                .map(Some),
            timed(locked.1.update(|v| v.counter += 1)).await.map(Some),
            raw.locked_update(&data).await.map(Some),
            raw.propagate(&data).await.map(Some),
            async {
                while rx.try_recv().is_ok() {}
                let t0 = Instant::now();
                writer.1.update(|v| v.counter += 1).await?;
                let at = arrival_of(
                    &mut rx,
                    writer.1.version().as_u64(),
                    Duration::from_secs(10),
                )
                .await?;
                Ok(Some(at.saturating_duration_since(t0)))
            }
            .await,
            raw.read().await.map(Some),
            timed(optimistic.1.read_consistent()).await.map(Some),
            raw.locked_update_fenced(&data).await,
            raw.cas_fenced(&data).await,
            raw.propagate_fenced(&data).await,
        ];
        for (k, result) in results.into_iter().enumerate() {
            match result {
                Ok(Some(d)) if i >= warmup => record_ns(&mut hists[k], d),
                Ok(_) => {}
                Err(error) => {
                    errors[k] += 1;
                    if notes.len() < 3 {
                        notes.push(format!("{}: {error:#}", names[k].1));
                    }
                }
            }
        }
    }
    let wall = started.elapsed();
    let mut records = Vec::new();
    for (k, (implementation, variant)) in names.iter().enumerate() {
        if hists[k].is_empty() && errors[k] == 0 {
            // Not measured on this backend (the fenced floor is ZooKeeper's).
            continue;
        }
        let mut record = Record::new(&ctx.label, implementation, "paired", variant)
            .with_histogram(&hists[k], wall)
            .note("interleaved with the others, round by round");
        record.ops_per_sec = 0.0; // rounds interleave several operations
        record.errors = errors[k];
        record.notes.extend(notes.clone());
        announce(&record);
        records.push(record);
    }
    close(vec![optimistic, locked, writer, reader]).await;
    Ok(records)
}

async fn timed<R>(
    fut: impl std::future::Future<Output = sharedstate::Result<R>>,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    fut.await.map_err(|e| anyhow!(e))?;
    Ok(t0.elapsed())
}

/// The raw lock's first flight on ZooKeeper, as the engine sends it: create
/// an ephemeral-sequential node under the lock directory, list the
/// directory and read the value, pipelined. Uncontended only: any other
/// lock node is an error. Returns the lock node's path and the value's stat.
async fn zk_lock_flight(
    client: &zookeeper_client::Client,
    (dir, path): &(String, String),
) -> anyhow::Result<(String, zookeeper_client::Stat)> {
    let options = zookeeper_client::CreateMode::EphemeralSequential
        .with_acls(zookeeper_client::Acls::anyone_all());
    let prefix = format!("{dir}/lock-");
    let create = client.create(&prefix, &[], &options);
    let list = client.list_children(dir);
    let get = client.get_data(path);
    let (_, sequence) = create.await?;
    let children = list.await?;
    let (_, stat) = get.await?;
    if children.len() != 1 {
        return Err(anyhow!("raw lock contended: {children:?}"));
    }
    Ok((format!("{prefix}{sequence}"), stat))
}
