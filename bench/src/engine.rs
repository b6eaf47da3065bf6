//! The engine (`SharedState<T>`) scenarios, run on any backend URL.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use sharedstate::backend::Bytes;
use sharedstate::{Key, LockOptions, PutMode, WriteMode};

use crate::fixture::{arrival_of, arrivals, blob, close, open, small, Ctx, PAYLOAD_SIZES};
use crate::harness::{histogram, record_ns, sample, sample_batched, Record};

fn mode_name(mode: WriteMode) -> &'static str {
    match mode {
        WriteMode::Locked => "locked",
        WriteMode::Optimistic => "optimistic",
    }
}

/// Runs every engine scenario; a failing scenario becomes an error record.
pub async fn run(ctx: &Ctx) -> Vec<Record> {
    let mut out = Vec::new();
    macro_rules! step {
        ($name:expr, $call:expr) => {
            if !ctx.scenarios.is_empty() && !ctx.scenarios.iter().any(|s| s == $name) {
                // Not asked for in this targeted run.
            } else {
                match $call.await {
                    Ok(records) => out.extend(records),
                    Err(error) => {
                        let record = ctx
                            .record($name, "failed")
                            .note(format!("failed: {error:#}"));
                        crate::harness::announce(&record);
                        out.push(record);
                    }
                }
            }
        };
    }
    step!("read", read(ctx));
    step!("update-uncontended", update_uncontended(ctx));
    step!("locked-split", locked_split(ctx));
    step!("propagation", propagation(ctx));
    step!("contended", contended(ctx));
    step!("payload-size", payload_size(ctx));
    for sessions in ctx.plan.fanout_sizes() {
        step!("fanout", crate::scale::fanout(ctx, sessions));
    }
    step!(
        "requests-per-update",
        crate::scale::requests_per_update(ctx)
    );
    step!(
        "many-states",
        crate::scale::many_states(ctx, ctx.plan.many_states)
    );
    step!(
        "fleet-cost",
        crate::scale::fleet_cost(ctx, ctx.plan.many_states)
    );
    step!("engine-cpu", crate::cpu::run(ctx));
    out
}

fn done(record: Record) -> Record {
    crate::harness::announce(&record);
    record
}

async fn read(ctx: &Ctx) -> anyhow::Result<Vec<Record>> {
    let plan = ctx.plan;
    let parts = vec![open(ctx, &ctx.path("read"), small(), WriteMode::Locked).await?];
    let state = parts[0].1.clone();
    let batches = if plan.smoke { 20 } else { 2000 };
    let (hist, wall, errors) = sample_batched(batches, 1000, plan.budget, || state.read().is_ok());
    let mut records = vec![done(
        ctx.record("read", "read()")
            .with_histogram(&hist, wall)
            .extra("batch", 1000)
            .note("per-call mean of batches of 1000 calls"),
    )];
    records[0].errors = errors;
    records[0].ops_per_sec = (hist.len() * 1000) as f64 / wall.as_secs_f64().max(1e-9);
    let (hist, wall, errors, notes) = sample(&plan, plan.samples, || {
        let state = state.clone();
        async move {
            state.read_consistent().await?;
            Ok(None)
        }
    })
    .await;
    let mut record = ctx
        .record("read", "read_consistent()")
        .with_histogram(&hist, wall);
    record.errors = errors;
    record.notes = notes;
    records.push(done(record));
    close(parts).await;
    Ok(records)
}

async fn update_uncontended(ctx: &Ctx) -> anyhow::Result<Vec<Record>> {
    let plan = ctx.plan;
    let mut records = Vec::new();
    for mode in [WriteMode::Locked, WriteMode::Optimistic] {
        let path = ctx.path(&format!("update-{}", mode_name(mode)));
        let parts = vec![open(ctx, &path, small(), mode).await?];
        let state = parts[0].1.clone();
        let bytes = serde_json::to_vec(&*state.read()?)?.len();
        let (hist, wall, errors, notes) = sample(&plan, plan.samples, || {
            let state = state.clone();
            async move {
                state.update(|v| v.counter += 1).await?;
                Ok(None)
            }
        })
        .await;
        let mut record = ctx
            .record("update-uncontended", mode_name(mode))
            .with_histogram(&hist, wall)
            .extra("payload_bytes", bytes);
        record.errors = errors;
        record.notes = notes;
        records.push(done(record));
        close(parts).await;
    }
    Ok(records)
}

/// The locked update's round trips, one by one, through the backend
/// contract: lock, get, fenced_put_and_release (what `update` does today).
async fn locked_split(ctx: &Ctx) -> anyhow::Result<Vec<Record>> {
    let plan = ctx.plan;
    let backend = ctx.connect().await?;
    let root = ctx.path("split");
    let payload = Key::new(format!("{root}/payload"))?;
    let lock = Key::new(format!("{root}/lock"))?;
    let value = Bytes::from(serde_json::to_vec(&small())?);
    backend
        .put(&payload, value.clone(), PutMode::Overwrite)
        .await?;
    let mut phases = [histogram(), histogram(), histogram(), histogram()];
    let mut errors = 0u64;
    let mut notes = Vec::new();
    let started = Instant::now();
    for i in 0..plan.warmup + plan.samples {
        if started.elapsed() > plan.budget {
            notes.push(format!("stopped by the {:?} budget", plan.budget));
            break;
        }
        let result: anyhow::Result<[Duration; 4]> = async {
            let t0 = Instant::now();
            let guard = backend
                .lock(&lock, LockOptions::with_timeout(Duration::from_secs(10)))
                .await?;
            let t1 = Instant::now();
            let current = backend
                .get(&payload)
                .await?
                .ok_or_else(|| anyhow!("payload gone"))?;
            let t2 = Instant::now();
            backend
                .fenced_put_and_release(
                    &payload,
                    value.clone(),
                    PutMode::Update(current.version),
                    guard,
                )
                .await?;
            let t3 = Instant::now();
            Ok([t1 - t0, t2 - t1, t3 - t2, t3 - t0])
        }
        .await;
        match result {
            Ok(times) if i >= plan.warmup => {
                for (hist, t) in phases.iter_mut().zip(times) {
                    record_ns(hist, t);
                }
            }
            Ok(_) => {}
            Err(error) => {
                errors += 1;
                if notes.len() < 3 {
                    notes.push(format!("error: {error:#}"));
                }
            }
        }
    }
    let wall = started.elapsed();
    let names = ["lock()", "get()", "fenced_put_and_release()", "total"];
    let mut records = Vec::new();
    for (hist, name) in phases.iter().zip(names) {
        let mut record = ctx.record("locked-split", name).with_histogram(hist, wall);
        record.errors = errors;
        record.notes = notes.clone();
        records.push(done(record));
    }
    // The optimistic write's only round trip, through the contract: what
    // the backend adds to the raw CAS, without the engine around it.
    let version = Arc::new(tokio::sync::Mutex::new(
        backend
            .get(&payload)
            .await?
            .ok_or_else(|| anyhow!("payload gone"))?
            .version,
    ));
    let (hist, wall, errors, notes) = sample(&plan, plan.samples, || {
        let (backend, payload, value, version) = (&backend, &payload, &value, version.clone());
        async move {
            let mut version = version.lock().await;
            *version = backend
                .put(payload, value.clone(), PutMode::Update(*version))
                .await?;
            Ok(None)
        }
    })
    .await;
    let mut record = ctx
        .record("optimistic-split", "put(Update)")
        .with_histogram(&hist, wall);
    record.errors = errors;
    record.notes = notes;
    records.push(done(record));
    let _ = backend.close().await;
    Ok(records)
}

async fn propagation(ctx: &Ctx) -> anyhow::Result<Vec<Record>> {
    let plan = ctx.plan;
    let mut records = Vec::new();
    for mode in [WriteMode::Optimistic, WriteMode::Locked] {
        let path = ctx.path(&format!("propagation-{}", mode_name(mode)));
        let a = open(ctx, &path, small(), mode).await?;
        let b = open(ctx, &path, small(), mode).await?;
        let writer = a.1.clone();
        let rx = Arc::new(tokio::sync::Mutex::new(arrivals(&b.1)));
        let (hist, wall, errors, notes) = sample(&plan, plan.samples, || {
            let writer = writer.clone();
            let rx = rx.clone();
            async move {
                let mut rx = rx.lock().await;
                while rx.try_recv().is_ok() {}
                let t0 = Instant::now();
                writer.update(|v| v.counter += 1).await?;
                let at =
                    arrival_of(&mut rx, writer.version().as_u64(), Duration::from_secs(10)).await?;
                Ok(Some(at.saturating_duration_since(t0)))
            }
        })
        .await;
        let mut record = ctx
            .record("propagation", mode_name(mode))
            .with_histogram(&hist, wall)
            .note("from the start of A's update() to B's change set");
        record.errors = errors;
        record.notes.extend(notes);
        records.push(done(record));
        close(vec![a, b]).await;
    }
    Ok(records)
}

async fn contended(ctx: &Ctx) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    for writers in [4usize, 8] {
        for mode in [WriteMode::Locked, WriteMode::Optimistic] {
            records.push(done(contended_one(ctx, writers, mode).await?));
        }
    }
    Ok(records)
}

async fn contended_one(ctx: &Ctx, writers: usize, mode: WriteMode) -> anyhow::Result<Record> {
    let plan = ctx.plan;
    let path = ctx.path(&format!("contended-{writers}-{}", mode_name(mode)));
    let mut parts = Vec::new();
    for _ in 0..writers {
        parts.push(open(ctx, &path, small(), mode).await?);
    }
    let before = parts[0].1.read_consistent().await?.counter;
    let successes = Arc::new(AtomicU64::new(0));
    // Completed inside the fixed window: the throughput figure, so a writer
    // whose last call drags on (backoff) does not stretch the denominator.
    let in_window = Arc::new(AtomicU64::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(writers));
    let mut tasks = Vec::new();
    for (_, state) in &parts {
        let state = state.clone();
        let successes = successes.clone();
        let in_window = in_window.clone();
        let start = start.clone();
        let run_for = plan.contended_for;
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let t0 = Instant::now();
            let mut hist = histogram();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut unknown = 0u64;
            let mut ops = 0u64;
            while t0.elapsed() < run_for && ops < 1_000_000 {
                ops += 1;
                let op_start = Instant::now();
                match tokio::time::timeout(
                    Duration::from_secs(30),
                    state.update(|v| v.counter += 1),
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
                        *errors.entry(format!("{:?}", error.kind())).or_default() += 1;
                        // A persistent failure must not spin the loop hot.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(_) => {
                        unknown += 1;
                        break;
                    }
                }
            }
            (hist, errors, unknown)
        }));
    }
    let t0 = Instant::now();
    let mut hist = histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut unknown = 0;
    for task in tasks {
        let (h, e, u) = task.await?;
        hist.add(&h)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
        unknown += u;
    }
    let wall = t0.elapsed();
    let after = parts[0].1.read_consistent().await?.counter;
    let ok = successes.load(Ordering::SeqCst);
    let lost = (before + ok) as i64 - after as i64;
    let mut record = ctx
        .record(
            "contended",
            &format!("{writers} writers {}", mode_name(mode)),
        )
        .with_histogram(&hist, wall)
        .extra("writers", writers)
        .extra("successes", ok)
        .extra("final_delta", after - before)
        .extra("lost_updates", lost)
        .extra("unknown_outcome", unknown)
        .extra(
            "ops_per_sec_until_last",
            ok as f64 / wall.as_secs_f64().max(1e-9),
        )
        .extra("window_s", plan.contended_for.as_secs_f64());
    record.ops_per_sec = in_window.load(Ordering::SeqCst) as f64 / plan.contended_for.as_secs_f64();
    record.errors = errors.values().sum::<u64>() + unknown;
    record.notes.push(format!(
        "final count delta {} vs {ok} successful updates: {}",
        after - before,
        if lost == 0 {
            "exact".to_string()
        } else {
            format!("MISMATCH ({lost} lost)")
        }
    ));
    if !errors.is_empty() {
        record.notes.push(format!("errors by kind: {errors:?}"));
    }
    close(parts).await;
    Ok(record)
}

async fn payload_size(ctx: &Ctx) -> anyhow::Result<Vec<Record>> {
    let plan = ctx.plan;
    let mut records = Vec::new();
    for &(bytes, name) in PAYLOAD_SIZES {
        let path = ctx.path(&format!("payload-{name}"));
        let a = open(ctx, &path, blob(bytes), WriteMode::Optimistic).await?;
        let b = open(ctx, &path, blob(bytes), WriteMode::Optimistic).await?;
        let actual = serde_json::to_vec(&*a.1.read()?)?.len();
        let mut rx = arrivals(&b.1);
        let mut update = histogram();
        let mut prop = histogram();
        let mut errors = 0u64;
        let mut notes = Vec::new();
        let started = Instant::now();
        for i in 0..plan.warmup.min(5) + plan.payload_samples {
            if started.elapsed() > plan.budget {
                notes.push(format!("stopped by the {:?} budget", plan.budget));
                break;
            }
            while rx.try_recv().is_ok() {}
            let t0 = Instant::now();
            let result = async {
                a.1.update(|v| {
                    v.counter += 1;
                    let n = v.items.len();
                    let at = (v.counter as usize) % n;
                    v.items[at] = format!("{:08}-{}", v.counter, "y".repeat(52));
                })
                .await?;
                let t_update = t0.elapsed();
                let at =
                    arrival_of(&mut rx, a.1.version().as_u64(), Duration::from_secs(20)).await?;
                anyhow::Ok((t_update, at.saturating_duration_since(t0)))
            }
            .await;
            match result {
                Ok((u, p)) if i >= plan.warmup.min(5) => {
                    record_ns(&mut update, u);
                    record_ns(&mut prop, p);
                }
                Ok(_) => {}
                Err(error) => {
                    errors += 1;
                    if notes.len() < 3 {
                        notes.push(format!("error: {error:#}"));
                    }
                }
            }
        }
        let wall = started.elapsed();
        for (scenario, hist) in [("payload-update", &update), ("payload-propagation", &prop)] {
            let mut record = ctx
                .record(scenario, name)
                .with_histogram(hist, wall)
                .extra("payload_bytes", actual)
                .note("optimistic mode; one item of 64 B and the counter change per update");
            record.errors = errors;
            record.notes.extend(notes.clone());
            records.push(done(record));
        }
        close(vec![a, b]).await;
    }
    Ok(records)
}
