//! The etcd floors: the raw `etcd-client` doing the same round trips the
//! engine needs (a txn on mod_revision, a linearizable get, a watch).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use etcd_client::{Client, Compare, CompareOp, EventType, Txn, TxnOp};
use tokio::sync::{mpsc, Mutex};

use crate::fixture::{blob, small, PAYLOAD_SIZES};
use crate::harness::{announce, histogram, record_ns, sample, Plan, Record};

fn record(scenario: &str, variant: &str) -> Record {
    Record::new("etcd", "raw", scenario, variant)
}

fn done(record: Record) -> Record {
    announce(&record);
    record
}

/// The compare-and-swap the engine's optimistic write does: put only if
/// the key is still at `revision`; returns the new revision.
pub(crate) async fn cas(
    client: &mut Client,
    key: &str,
    value: &[u8],
    revision: i64,
) -> anyhow::Result<i64> {
    let txn = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
        .and_then([TxnOp::put(key, value, None)]);
    let response = client.txn(txn).await?;
    if !response.succeeded() {
        return Err(anyhow!("txn compare failed at revision {revision}"));
    }
    response
        .header()
        .map(|h| h.revision())
        .ok_or_else(|| anyhow!("txn response without a header"))
}

pub(crate) fn watch(mut client: Client, key: String) -> mpsc::UnboundedReceiver<(i64, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = match client.watch(key.as_bytes(), None).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "raw etcd watch failed");
                return;
            }
        };
        while let Ok(Some(message)) = stream.message().await {
            let now = Instant::now();
            for event in message.events() {
                if event.event_type() == EventType::Put {
                    if let Some(kv) = event.kv() {
                        if tx.send((kv.mod_revision(), now)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    rx
}

pub(crate) async fn arrival(
    rx: &mut mpsc::UnboundedReceiver<(i64, Instant)>,
    revision: i64,
) -> anyhow::Result<Instant> {
    let wait = async {
        while let Some((seen, at)) = rx.recv().await {
            if seen >= revision {
                return Ok(at);
            }
        }
        Err(anyhow!("raw watch ended"))
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .map_err(|_| anyhow!("raw watch: revision {revision} not seen in 20 s"))?
}

pub async fn run(endpoint: &str, root: &str, plan: &Plan) -> Vec<Record> {
    match run_inner(endpoint, root, plan).await {
        Ok(records) => records,
        Err(error) => vec![done(
            record("raw", "failed").note(format!("failed: {error:#}")),
        )],
    }
}

async fn run_inner(endpoint: &str, root: &str, plan: &Plan) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    let connect = || async {
        Client::connect([endpoint], None)
            .await
            .with_context(|| format!("raw etcd-client connecting to {endpoint}"))
    };
    let mut a = connect().await?;
    let b = connect().await?;
    let key = format!("{root}/etcd-raw/payload");
    let data = serde_json::to_vec(&small())?;
    let put = a.put(key.as_str(), data.clone(), None).await?;
    let revision = put.header().map(|h| h.revision()).unwrap_or_default();

    // raw-cas: the txn on mod_revision.
    let cell = Arc::new(Mutex::new((a.clone(), revision)));
    let (hist, wall, errors, notes) = sample(plan, plan.samples, || {
        let (key, data, cell) = (&key, &data, cell.clone());
        async move {
            let mut guard = cell.lock().await;
            let (client, revision) = &mut *guard;
            *revision = cas(client, key, data, *revision).await?;
            Ok(None)
        }
    })
    .await;
    let mut revision = cell.lock().await.1;
    let mut r = record("raw-cas", "txn(mod_revision)")
        .with_histogram(&hist, wall)
        .extra("payload_bytes", data.len());
    r.errors = errors;
    r.notes = notes;
    records.push(done(r));

    // Linearizable get: the floor of read_consistent.
    let reader = Arc::new(Mutex::new(a.clone()));
    let (hist, wall, errors, notes) = sample(plan, plan.samples, || {
        let (key, reader) = (&key, reader.clone());
        async move {
            reader.lock().await.get(key.as_str(), None).await?;
            Ok(None)
        }
    })
    .await;
    let mut r = record("raw-read", "get").with_histogram(&hist, wall);
    r.errors = errors;
    r.notes = notes;
    records.push(done(r));

    // Propagation floor: A's txn until B's watch delivers the event (etcd
    // events carry the value: no read after it).
    let mut rx = watch(b.clone(), key.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    revision = cas(&mut a, &key, &data, revision).await?;
    arrival(&mut rx, revision).await?;
    let rx = Arc::new(Mutex::new(rx));
    let cell = Arc::new(Mutex::new((a.clone(), revision)));
    let (hist, wall, errors, notes) = sample(plan, plan.samples, || {
        let (key, data, cell, rx) = (&key, &data, cell.clone(), rx.clone());
        async move {
            let mut rx = rx.lock().await;
            let mut guard = cell.lock().await;
            let (client, revision) = &mut *guard;
            let t0 = Instant::now();
            *revision = cas(client, key, data, *revision).await?;
            let at = arrival(&mut rx, *revision).await?;
            Ok(Some(at.saturating_duration_since(t0)))
        }
    })
    .await;
    let mut r = record("propagation", "raw watch")
        .with_histogram(&hist, wall)
        .note("A's txn until B's watch event (with the value)");
    r.errors = errors;
    r.notes.extend(notes);
    records.push(done(r));

    for &(bytes, name) in PAYLOAD_SIZES {
        let key = format!("{root}/etcd-raw/payload-{name}");
        let mut value = blob(bytes);
        let put = a
            .put(key.as_str(), serde_json::to_vec(&value)?, None)
            .await?;
        let mut revision = put.header().map(|h| h.revision()).unwrap_or_default();
        let mut rx = watch(b.clone(), key.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
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
            match cas(&mut a, &key, &encoded, revision).await {
                Ok(new) => {
                    let t_update = t0.elapsed();
                    revision = new;
                    let seen = arrival(&mut rx, revision).await?;
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
                .note("serde_json::to_vec + txn(mod_revision); watch event");
            r.errors = errors;
            records.push(done(r));
        }
    }
    Ok(records)
}
