//! The predecessor, `zkstate` 0.1.23 (synchronous, on the `zookeeper` 0.6
//! crate), measured with the same scenarios where it has the feature.
//!
//! Its API, from its source: `ZkState::new(Arc<ZooKeeper>, path, initial)`,
//! `read() -> RwLockReadGuard<T>`, `update(FnOnce(&mut T))` (a LeaderLatch
//! polled every 5 ms for at most 1 s, then `set_data` with the local epoch),
//! `update_handler(Fn(Change))` for the change stream. `c_read` is
//! `unimplemented!()`, so there is no consistent read to measure.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use zkstate::{ZkState, ZkStructError};
use zookeeper::{WatchedEvent, Watcher, ZooKeeper};

use crate::fixture::{small, Small};
use crate::harness::{announce, histogram, record_ns, sample_batched, Plan, Record};

struct Quiet;

impl Watcher for Quiet {
    fn handle(&self, _event: WatchedEvent) {}
}

fn record(scenario: &str, variant: &str) -> Record {
    Record::new("zk", "zkstate", scenario, variant)
}

fn done(record: Record) -> Record {
    announce(&record);
    record
}

fn connect(hosts: &str) -> anyhow::Result<Arc<ZooKeeper>> {
    let zk = ZooKeeper::connect(hosts, Duration::from_secs(10), Quiet)
        .map_err(|e| anyhow!("zookeeper 0.6 connect to {hosts}: {e:?}"))?;
    Ok(Arc::new(zk))
}

fn open(hosts: &str, path: &str) -> anyhow::Result<(Arc<ZooKeeper>, ZkState<Small>)> {
    let zk = connect(hosts)?;
    let state = ZkState::new(zk.clone(), path.to_string(), small()).context("ZkState::new")?;
    Ok((zk, state))
}

fn kind(error: &ZkStructError) -> String {
    match error {
        ZkStructError::LockAcquireTimeout => "LockAcquireTimeout".into(),
        ZkStructError::StaleRead => "StaleRead".into(),
        ZkStructError::StaleWrite => "StaleWrite".into(),
        ZkStructError::ZkError(e) => format!("ZkError({e:?})"),
        ZkStructError::Poisoned => "Poisoned".into(),
    }
}

/// The payload's counter as stored on the server (zkstate has no working
/// consistent read).
fn server_counter(zk: &ZooKeeper, path: &str) -> anyhow::Result<u64> {
    let (data, _) = zk
        .get_data(&format!("{path}/payload"), false)
        .map_err(|e| anyhow!("get_data: {e:?}"))?;
    Ok(serde_json::from_slice::<Small>(&data)?.counter)
}

/// Runs the zkstate scenarios on a blocking thread; never hangs the bench
/// for longer than the scenario bounds (stuck threads are abandoned).
pub async fn run(hosts: &str, root: &str, plan: &Plan) -> Vec<Record> {
    let (hosts, root, plan) = (hosts.to_string(), root.to_string(), *plan);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run_blocking(&hosts, &root, &plan));
    });
    let limit = Duration::from_secs(if plan.smoke { 60 } else { 600 });
    match tokio::task::spawn_blocking(move || rx.recv_timeout(limit)).await {
        Ok(Ok(records)) => records,
        _ => vec![done(
            record("all", "failed").note("the zkstate suite hung and was abandoned"),
        )],
    }
}

/// One zkstate scenario: (hosts, root, plan) to records.
type Step = fn(&str, &str, &Plan) -> anyhow::Result<Vec<Record>>;

fn run_blocking(hosts: &str, root: &str, plan: &Plan) -> Vec<Record> {
    let mut out = Vec::new();
    let steps: [(&str, Step); 4] = [
        ("read", read),
        ("update-uncontended", update),
        ("propagation", propagation),
        ("contended", contended),
    ];
    for (name, step) in steps {
        match step(hosts, root, plan) {
            Ok(records) => out.extend(records),
            Err(error) => out.push(done(
                record(name, "failed").note(format!("failed: {error:#}")),
            )),
        }
    }
    out
}

fn read(hosts: &str, root: &str, plan: &Plan) -> anyhow::Result<Vec<Record>> {
    let (_zk, state) = open(hosts, &format!("{root}/zkstate/read"))?;
    let batches = if plan.smoke { 20 } else { 2000 };
    let (hist, wall, errors) = sample_batched(batches, 1000, plan.budget, || state.read().is_ok());
    let mut r = record("read", "read()")
        .with_histogram(&hist, wall)
        .note("per-call mean of batches of 1000 calls");
    r.ops_per_sec = (hist.len() * 1000) as f64 / wall.as_secs_f64().max(1e-9);
    r.errors = errors;
    Ok(vec![
        done(r),
        done(
            record("read", "read_consistent()")
                .note("c_read() is unimplemented!() in zkstate 0.1.23"),
        ),
    ])
}

/// After a failed update zkstate leaks its LeaderLatch node (it returns
/// before `latch.stop()`), and every later update on that path times out
/// until the session ends. To keep measuring, the bench then reopens on a
/// fresh path (counted in `reopened`).
fn update(hosts: &str, root: &str, plan: &Plan) -> anyhow::Result<Vec<Record>> {
    let base = format!("{root}/zkstate/update");
    let (mut _zk, mut state) = open(hosts, &base)?;
    let mut hist = histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut reopened = 0u64;
    let started = Instant::now();
    for i in 0..plan.warmup + plan.samples {
        if started.elapsed() > plan.budget {
            break;
        }
        let t0 = Instant::now();
        match state.update(|v| v.counter += 1) {
            Ok(()) if i >= plan.warmup => record_ns(&mut hist, t0.elapsed()),
            Ok(()) => {}
            Err(error) => {
                *errors.entry(kind(&error)).or_default() += 1;
                reopened += 1;
                (_zk, state) = open(hosts, &format!("{base}-{reopened}"))?;
            }
        }
    }
    let mut r = record("update-uncontended", "locked (LeaderLatch)")
        .with_histogram(&hist, started.elapsed())
        .extra("reopened", reopened);
    r.errors = errors.values().sum();
    if !errors.is_empty() {
        r.notes.push(format!(
            "errors: {errors:?}; each failure leaks the instance's LeaderLatch node, so the bench reopened on a fresh path {reopened} times"
        ));
    }
    Ok(vec![done(r)])
}

type Pair = (
    Arc<ZooKeeper>,
    ZkState<Small>,
    Arc<ZooKeeper>,
    ZkState<Small>,
    mpsc::Receiver<Instant>,
);

fn pair(hosts: &str, path: &str) -> anyhow::Result<Pair> {
    let (za, a) = open(hosts, path)?;
    let (zb, b) = open(hosts, path)?;
    let (tx, rx) = mpsc::channel::<Instant>();
    let tx = std::sync::Mutex::new(tx);
    b.update_handler(move |_change| {
        if let Ok(tx) = tx.lock() {
            let _ = tx.send(Instant::now());
        }
    })
    .map_err(|e| anyhow!("update_handler: {}", kind(&e)))?;
    Ok((za, a, zb, b, rx))
}

fn propagation(hosts: &str, root: &str, plan: &Plan) -> anyhow::Result<Vec<Record>> {
    let base = format!("{root}/zkstate/propagation");
    let (mut _za, mut a, mut _zb, mut _b, mut rx) = pair(hosts, &base)?;
    let mut hist = histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut reopened = 0u64;
    let started = Instant::now();
    for i in 0..plan.warmup + plan.samples {
        if started.elapsed() > plan.budget {
            break;
        }
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        if let Err(error) = a.update(|v| v.counter += 1) {
            *errors.entry(kind(&error)).or_default() += 1;
            reopened += 1;
            (_za, a, _zb, _b, rx) = pair(hosts, &format!("{base}-{reopened}"))?;
            continue;
        }
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(at) if i >= plan.warmup => record_ns(&mut hist, at.saturating_duration_since(t0)),
            Ok(_) => {}
            Err(_) => *errors.entry("no change within 10 s".into()).or_default() += 1,
        }
    }
    let mut r = record("propagation", "locked (LeaderLatch)")
        .with_histogram(&hist, started.elapsed())
        .extra("reopened", reopened)
        .note("from the start of A's update() to B's first Change");
    r.errors = errors.values().sum();
    if !errors.is_empty() {
        r.notes.push(format!(
            "errors: {errors:?}; reopened on a fresh path {reopened} times"
        ));
    }
    Ok(vec![done(r)])
}

fn contended(hosts: &str, root: &str, plan: &Plan) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    for writers in [4usize, 8] {
        let path = format!("{root}/zkstate/contended-{writers}");
        let mut parts = Vec::new();
        for _ in 0..writers {
            parts.push(open(hosts, &path)?);
        }
        let before = server_counter(&parts[0].0, &path)?;
        let successes = Arc::new(AtomicU64::new(0));
        let barrier = Arc::new(Barrier::new(writers));
        let (tx, rx) = mpsc::channel();
        for (_, state) in &parts {
            let (state, successes, barrier, tx) = (
                state.clone(),
                successes.clone(),
                barrier.clone(),
                tx.clone(),
            );
            let run_for = plan.contended_for;
            std::thread::spawn(move || {
                barrier.wait();
                let t0 = Instant::now();
                let mut hist = histogram();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let mut ops = 0u64;
                while t0.elapsed() < run_for && ops < 1_000_000 {
                    ops += 1;
                    let op_start = Instant::now();
                    match state.update(|v| v.counter += 1) {
                        Ok(()) => {
                            successes.fetch_add(1, Ordering::SeqCst);
                            record_ns(&mut hist, op_start.elapsed());
                        }
                        Err(error) => *errors.entry(kind(&error)).or_default() += 1,
                    }
                }
                let _ = tx.send((hist, errors));
            });
        }
        drop(tx);
        let t0 = Instant::now();
        let mut hist = histogram();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut reported = 0;
        let deadline = t0 + plan.contended_for + Duration::from_secs(20);
        while reported < writers {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((h, e)) => {
                    reported += 1;
                    let _ = hist.add(&h);
                    for (k, v) in e {
                        *errors.entry(k).or_default() += v;
                    }
                }
                Err(_) => break,
            }
        }
        let wall = t0.elapsed();
        std::thread::sleep(Duration::from_millis(200));
        let after = server_counter(&parts[0].0, &path)?;
        let ok = successes.load(Ordering::SeqCst);
        let lost = (before + ok) as i64 - after as i64;
        let mut r = record("contended", &format!("{writers} writers locked"))
            .with_histogram(&hist, wall)
            .extra("writers", writers)
            .extra("successes", ok)
            .extra("final_delta", after.saturating_sub(before))
            .extra("lost_updates", lost);
        r.errors = errors.values().sum();
        r.notes.push(format!(
            "final count delta {} vs {ok} successful updates: {}",
            after.saturating_sub(before),
            if lost == 0 {
                "exact".to_string()
            } else {
                format!("MISMATCH ({lost})")
            }
        ));
        if !errors.is_empty() {
            r.notes.push(format!("errors by kind: {errors:?}"));
        }
        if reported < writers {
            r.notes.push(format!(
                "{} writer threads hung and were abandoned",
                writers - reported
            ));
        }
        records.push(done(r));
        // zkstate has no close: its background threads hold the sessions
        // (closing them under it makes those threads panic on unwrap), so
        // they live until the process exits. Each run uses its own path.
        drop(parts);
    }
    Ok(records)
}
