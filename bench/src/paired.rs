//! The target comparisons measured interleaved: each round does one raw
//! CAS, one optimistic and one locked engine update, one raw propagation,
//! one engine propagation, one raw read and one `read_consistent()`, so the floor and ours see the same machine load
//! (the cores are shared with other builds; suites run minutes apart would
//! compare different moments, not different code).

use std::time::{Duration, Instant};

use anyhow::anyhow;
use sharedstate::WriteMode;
use tokio::sync::mpsc;

use crate::engine::{arrival_of, arrivals, close, open, small, Ctx};
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
    },
    Etcd {
        client: etcd_client::Client,
        cas: (String, i64),
        prop: (String, i64),
        rx: mpsc::UnboundedReceiver<(i64, Instant)>,
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
        Ok(Raw::Zk {
            client,
            _watcher: watcher,
            cas: (cas_path, cas_version),
            prop: (prop_path, prop_version),
            rx,
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
        Ok(Raw::Etcd {
            client,
            cas: (cas_key, cas_rev),
            prop: (prop_key, prop_rev),
            rx,
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
        ("raw", "raw watch"),
        ("sharedstate", "propagation"),
        ("raw", "raw read"),
        ("sharedstate", "read_consistent()"),
    ];
    let mut hists: Vec<_> = names.iter().map(|_| histogram()).collect();
    let mut errors = vec![0u64; names.len()];
    let mut notes = Vec::new();
    let budget = plan.budget * 3;
    let started = Instant::now();
    for i in 0..plan.warmup + plan.samples {
        if started.elapsed() > budget {
            notes.push(format!("stopped by the {budget:?} budget"));
            break;
        }
        let results: [anyhow::Result<Duration>; 7] = [
            raw.cas(&data).await,
            timed(optimistic.1.update(|v| v.counter += 1)).await,
            timed(locked.1.update(|v| v.counter += 1)).await,
            raw.propagate(&data).await,
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
                Ok(at.saturating_duration_since(t0))
            }
            .await,
            raw.read().await,
            timed(optimistic.1.read_consistent()).await,
        ];
        for (k, result) in results.into_iter().enumerate() {
            match result {
                Ok(d) if i >= plan.warmup => record_ns(&mut hists[k], d),
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
        let mut record = Record::new(&ctx.label, implementation, "paired", variant)
            .with_histogram(&hists[k], wall)
            .note("interleaved with the other six, round by round");
        record.ops_per_sec = 0.0; // rounds interleave seven operations
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
