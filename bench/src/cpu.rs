//! Engine CPU per change: the process CPU time (user + system, from
//! `/proc/self/stat`) one applied change costs, with and without
//! subscribers, at two payload sizes. One writer and `READERS` reader
//! instances, each on its own client, follow one state; the writer makes
//! paced updates (the next once every reader applied the last, so no
//! version is folded away), and the process's CPU over the run is divided
//! by the changes applied (`updates x (1 + READERS)`). On the memory backend
//! that is the engine's own work (plus the in-process service); on zk and
//! etcd it includes the client library's (the same for both variants).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sharedstate::{SharedState, StateEvent, WriteMode};

use crate::fixture::{blob, close, open, small, Blob, Ctx, Small};
use crate::harness::{announce, Record};

/// Reader instances beside the writer.
const READERS: usize = 10;

/// Process CPU time so far (user + system), from `/proc/self/stat`.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), in brackets.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ: 100 on every Linux the bench runs on.
    Some(Duration::from_millis((utime + stime) * 10))
}

trait Bump {
    fn bump(&mut self);
}

impl Bump for Small {
    fn bump(&mut self) {
        self.counter += 1;
    }
}

impl Bump for Blob {
    fn bump(&mut self) {
        self.counter += 1;
        let n = self.items.len();
        let at = (self.counter as usize) % n;
        self.items[at] = format!("{:08}-{}", self.counter, "y".repeat(52));
    }
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    for subscribed in [false, true] {
        records.push(one(ctx, "200 B", small(), subscribed).await?);
        records.push(one(ctx, "64 KiB", blob(64 * 1024), subscribed).await?);
    }
    Ok(records)
}

async fn one<T>(ctx: &Ctx, size: &str, initial: T, subscribed: bool) -> anyhow::Result<Record>
where
    T: Bump + Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let updates: u64 = if ctx.plan.smoke { 10 } else { 300 };
    let variant = format!(
        "{size}, {}",
        if subscribed {
            "one subscriber per instance"
        } else {
            "no subscribers"
        }
    );
    let path = ctx.path(&format!(
        "engine-cpu-{}-{}",
        size.replace(' ', ""),
        if subscribed { "sub" } else { "nosub" }
    ));
    let writer = open(ctx, &path, initial.clone(), WriteMode::Optimistic).await?;
    let mut parts = vec![writer];
    for _ in 0..READERS {
        parts.push(open(ctx, &path, initial.clone(), WriteMode::Optimistic).await?);
    }
    let mut handlers = Vec::new();
    if subscribed {
        for (_, state) in &parts {
            let mut subscription = state.subscribe();
            handlers.push(tokio::spawn(async move {
                let mut changes = 0u64;
                while let Some(event) = subscription.next().await {
                    if let StateEvent::Changed(set) = event {
                        changes += set.changes.len() as u64;
                    }
                }
                changes
            }));
        }
    }
    // Warm-up: a few changes everywhere.
    for _ in 0..3 {
        paced(&parts, |v: &mut T| v.bump()).await?;
    }
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    for _ in 0..updates {
        paced(&parts, |v: &mut T| v.bump()).await?;
    }
    let wall = t0.elapsed();
    let cpu = process_cpu()
        .zip(cpu0)
        .map(|(b, a)| b.saturating_sub(a))
        .unwrap_or_default();
    let payload_bytes = serde_json::to_vec(&*parts[0].1.read()?)?.len();
    let applied = updates * (1 + READERS as u64);
    let per_change_us = cpu.as_secs_f64() * 1e6 / applied as f64;
    let per_update_us = cpu.as_secs_f64() * 1e6 / updates as f64;
    close(parts).await;
    for handler in handlers {
        let _ = handler.await;
    }
    let mut record = ctx
        .record("engine-cpu", &variant)
        .extra("cpu_us_per_applied_change", per_change_us)
        .extra("cpu_us_per_update", per_update_us)
        .extra("payload_bytes", payload_bytes)
        .extra("instances", 1 + READERS)
        .extra("subscribed", subscribed)
        .note(format!(
            "{per_change_us:.0} µs of process CPU per applied change ({:.1?} over {updates} paced updates x {} instances in {wall:.1?}; client libraries included)",
            cpu,
            1 + READERS
        ));
    record.samples = updates;
    record.ops_per_sec = updates as f64 / wall.as_secs_f64().max(1e-9);
    announce(&record);
    Ok(record)
}

/// One update by the first instance, then waits until every instance has
/// applied it (polling their versions: no subscription of its own).
async fn paced<T, F>(
    parts: &[(
        std::sync::Arc<dyn sharedstate::CoordinationBackend>,
        SharedState<T>,
    )],
    f: F,
) -> anyhow::Result<()>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: FnMut(&mut T) + Send,
{
    let writer = &parts[0].1;
    writer.update(f).await?;
    let target = writer.version();
    let deadline = Instant::now() + Duration::from_secs(20);
    for (_, state) in &parts[1..] {
        while state.version() < target {
            if Instant::now() > deadline {
                anyhow::bail!("an instance did not apply {target} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(())
}
