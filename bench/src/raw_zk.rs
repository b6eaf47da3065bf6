//! The ZooKeeper floors: the raw `zookeeper-client` doing the same round
//! trips the engine needs, with nothing around them.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tokio::sync::mpsc;
use zookeeper_client::{Acls, AddWatchMode, Client, CreateMode};

use crate::fixture::{blob, small, PAYLOAD_SIZES};
use crate::harness::{announce, histogram, record_ns, sample, Plan, Record};

fn record(scenario: &str, variant: &str) -> Record {
    Record::new("zk", "raw", scenario, variant)
}

fn done(record: Record) -> Record {
    announce(&record);
    record
}

pub(crate) async fn connect(hosts: &str) -> anyhow::Result<Client> {
    Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(hosts)
        .await
        .with_context(|| format!("raw zookeeper-client connecting to {hosts}"))
}

/// Creates `path` (and its parents) holding `data`, returning its data version.
pub(crate) async fn ensure(client: &Client, path: &str, data: &[u8]) -> anyhow::Result<i32> {
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    if let Some((parent, _)) = path.rsplit_once('/') {
        if !parent.is_empty() {
            match client.mkdir(parent, &options).await {
                Ok(()) | Err(zookeeper_client::Error::NodeExists) => {}
                Err(error) => return Err(error).context("mkdir"),
            }
        }
    }
    match client.create(path, data, &options).await {
        Ok((stat, _)) => Ok(stat.version),
        Err(zookeeper_client::Error::NodeExists) => {
            let stat = client.set_data(path, data, None).await?;
            Ok(stat.version)
        }
        Err(error) => Err(error).context("create"),
    }
}

/// Adds the incarnation fence of an exact conditional write to `multi`:
/// create a sequential child `<parent>/<name>` and delete it by the
/// expected `counter`, so that the transaction commits only if no child of
/// `parent` was created since the counter was learned (the engine's
/// fence, without its hint).
pub(crate) fn add_fence(
    multi: &mut zookeeper_client::MultiWriter<'_>,
    parent: &str,
    name: &str,
    counter: i32,
) -> anyhow::Result<()> {
    multi.add_create(
        &format!("{parent}/{name}"),
        &[],
        &CreateMode::PersistentSequential.with_acls(Acls::anyone_all()),
    )?;
    multi.add_delete(&format!("{parent}/{name}{counter:010}"), None)?;
    Ok(())
}

/// The data version a committed transaction's `setData` left.
pub(crate) fn set_data_version(
    results: &[zookeeper_client::MultiWriteResult],
) -> anyhow::Result<i32> {
    results
        .iter()
        .find_map(|r| match r {
            zookeeper_client::MultiWriteResult::SetData { stat } => Some(stat.version),
            _ => None,
        })
        .ok_or_else(|| anyhow!("the transaction's answer has no setData result"))
}

/// Watches `path` from another session with a persistent watch (what the
/// backend uses), reading the data after each event, timestamping each
/// version seen.
pub(crate) fn watch(client: Client, path: String) -> mpsc::UnboundedReceiver<(i32, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut watcher = match client.watch(&path, AddWatchMode::Persistent).await {
            Ok(watcher) => watcher,
            Err(error) => {
                tracing::warn!(%error, "raw persistent watch failed");
                return;
            }
        };
        for round in 0u64.. {
            if round > 0 {
                let _event = watcher.changed().await;
            }
            let stat = match client.get_data(&path).await {
                Ok((_data, stat)) => stat,
                Err(error) => {
                    tracing::warn!(%error, "raw watch read failed");
                    break;
                }
            };
            if tx.send((stat.version, Instant::now())).is_err() {
                break;
            }
        }
    });
    rx
}

pub(crate) async fn arrival(
    rx: &mut mpsc::UnboundedReceiver<(i32, Instant)>,
    version: i32,
) -> anyhow::Result<Instant> {
    let wait = async {
        while let Some((seen, at)) = rx.recv().await {
            if seen >= version {
                return Ok(at);
            }
        }
        Err(anyhow!("raw watch ended"))
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .map_err(|_| anyhow!("raw watch: version {version} not seen in 20 s"))?
}

pub async fn run(hosts: &str, root: &str, plan: &Plan) -> Vec<Record> {
    match run_inner(hosts, root, plan).await {
        Ok(records) => records,
        Err(error) => vec![done(
            record("raw", "failed").note(format!("failed: {error:#}")),
        )],
    }
}

async fn run_inner(hosts: &str, root: &str, plan: &Plan) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    let a = connect(hosts).await?;
    let b = connect(hosts).await?;
    let path = format!("{root}/zk-raw/payload");
    let data = serde_json::to_vec(&small())?;
    let mut version = ensure(&a, &path, &data).await?;

    // raw-cas: set_data with the expected version, the engine's write floor.
    let cell = std::sync::Arc::new(tokio::sync::Mutex::new(version));
    let (hist, wall, errors, notes) = sample(plan, plan.samples, || {
        let (a, path, data, cell) = (&a, &path, &data, cell.clone());
        async move {
            let mut version = cell.lock().await;
            let stat = a.set_data(path, data, Some(*version)).await?;
            *version = stat.version;
            Ok(None)
        }
    })
    .await;
    version = *cell.lock().await;
    let mut r = record("raw-cas", "set_data(version)")
        .with_histogram(&hist, wall)
        .extra("payload_bytes", data.len());
    r.errors = errors;
    r.notes = notes;
    records.push(done(r));

    // Reads: the floor of read_consistent (the backend syncs, then reads).
    for (variant, with_sync) in [("get_data", false), ("sync+get_data", true)] {
        let (hist, wall, errors, notes) = sample(plan, plan.samples, || {
            let (a, path) = (&a, &path);
            async move {
                if with_sync {
                    a.sync(path).await?;
                }
                a.get_data(path).await?;
                Ok(None)
            }
        })
        .await;
        let mut r = record("raw-read", variant).with_histogram(&hist, wall);
        r.errors = errors;
        r.notes = notes;
        records.push(done(r));
    }

    // Propagation floor: A's set_data until B has the new data through a
    // (re-armed) data watch.
    let mut rx = watch(b.clone(), path.clone());
    arrival(&mut rx, version).await?;
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
    let cell = std::sync::Arc::new(tokio::sync::Mutex::new(version));
    let (hist, wall, errors, notes) = sample(plan, plan.samples, || {
        let (a, path, data, cell, rx) = (&a, &path, &data, cell.clone(), rx.clone());
        async move {
            let mut rx = rx.lock().await;
            let mut version = cell.lock().await;
            let t0 = Instant::now();
            let stat = a.set_data(path, data, Some(*version)).await?;
            *version = stat.version;
            let at = arrival(&mut rx, stat.version).await?;
            Ok(Some(at.saturating_duration_since(t0)))
        }
    })
    .await;
    let mut r = record("propagation", "raw watch")
        .with_histogram(&hist, wall)
        .note("A's set_data until B's persistent watch fired and B read the data");
    r.errors = errors;
    r.notes.extend(notes);
    records.push(done(r));

    // Payload sizes: the write and the propagation floors.
    for &(bytes, name) in PAYLOAD_SIZES {
        let path = format!("{root}/zk-raw/payload-{name}");
        let mut value = blob(bytes);
        let mut version = ensure(&a, &path, &serde_json::to_vec(&value)?).await?;
        let mut rx = watch(b.clone(), path.clone());
        arrival(&mut rx, version).await?;
        let (mut update, mut prop) = (histogram(), histogram());
        let mut errors = 0u64;
        let started = Instant::now();
        for i in 0..plan.warmup.min(5) + plan.payload_samples {
            if started.elapsed() > plan.budget {
                break;
            }
            value.counter += 1;
            let at = (value.counter as usize) % value.items.len();
            value.items[at] = format!("{:08}-{}", value.counter, "y".repeat(52));
            let t0 = Instant::now();
            let encoded = serde_json::to_vec(&value)?;
            match a.set_data(&path, &encoded, Some(version)).await {
                Ok(stat) => {
                    let t_update = t0.elapsed();
                    version = stat.version;
                    let seen = arrival(&mut rx, version).await?;
                    if i >= plan.warmup.min(5) {
                        record_ns(&mut update, t_update);
                        record_ns(&mut prop, seen.saturating_duration_since(t0));
                    }
                }
                Err(_) => errors += 1,
            }
        }
        let wall = started.elapsed();
        for (scenario, hist) in [("payload-update", &update), ("payload-propagation", &prop)] {
            let mut r = record(scenario, name)
                .with_histogram(hist, wall)
                .extra("payload_bytes", bytes)
                .note("serde_json::to_vec + set_data(version); watch + get_data");
            r.errors = errors;
            records.push(done(r));
        }
    }
    drop(a);
    drop(b);
    Ok(records)
}
