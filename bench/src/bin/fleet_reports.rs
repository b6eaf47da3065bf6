//! What the instances' reports (the applied version in each listener
//! registration) cost the service: server writes per payload change and per
//! second, and how long until every instance has reported, at N instances.
//!
//! ```text
//! cargo run --release -p sharedstate-bench --bin fleet_reports -- \
//!     --zk 127.0.0.1:2181 --etcd 127.0.0.1:2379 --instances 10,100
//! ```
//!
//! Writes are counted by the service itself: a probe key is written before
//! and after each scenario, and the difference of its versions (ZooKeeper's
//! zxid, etcd's and memory's revision: every write transaction advances
//! them, reads and keep-alives do not) less the payload writes is the
//! number of registration writes. Each instance has its own session and the
//! default report interval (1 s).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;
use sharedstate::backend::Bytes;
use sharedstate::{CoordinationBackend, Key, PutMode, SharedState, Version};

#[derive(Parser, Debug)]
struct Args {
    /// ZooKeeper `host:port`.
    #[arg(long)]
    zk: Option<String>,
    /// etcd `host:port`.
    #[arg(long)]
    etcd: Option<String>,
    /// Fleet sizes (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    instances: Vec<usize>,
    /// Payload changes in the burst scenario (100 ms apart).
    #[arg(long, default_value_t = 20)]
    burst: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut backends = vec![("memory", "memory://fleet-reports".to_owned())];
    if let Some(zk) = &args.zk {
        backends.push(("zookeeper", format!("zk://{zk}")));
    }
    if let Some(etcd) = &args.etcd {
        backends.push(("etcd", format!("etcd://{etcd}")));
    }
    println!("| backend | instances | scenario | payload writes | registration writes | per instance | registration writes/s | all reported after |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, url) in &backends {
        for &n in &args.instances {
            for row in run(url, n, args.burst)
                .await
                .with_context(|| format!("{name} at {n} instances"))?
            {
                println!(
                    "| {name} | {n} | {} | {} | {} | {:.2} | {:.0} | {} |",
                    row.scenario,
                    row.payload_writes,
                    row.registration_writes,
                    row.registration_writes as f64 / n as f64,
                    row.registration_writes as f64 / row.window.as_secs_f64(),
                    row.converged
                        .map(|d| format!("{} ms", d.as_millis()))
                        .unwrap_or_else(|| "-".to_owned()),
                );
            }
        }
    }
    Ok(())
}

struct Row {
    scenario: &'static str,
    payload_writes: u64,
    registration_writes: u64,
    /// From the first payload write to the end of the quiet period after
    /// the last report.
    window: Duration,
    /// From the last payload write until every instance reported it.
    converged: Option<Duration>,
}

/// After the last report, how long nothing more may be written.
const QUIET: Duration = Duration::from_millis(2500);

async fn run(url: &str, n: usize, burst: u64) -> Result<Vec<Row>> {
    let id = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = format!("/bench/fleet-reports-{id}-{nanos}-{n}");
    let writer = sharedstate::connect(url).await?;
    let payload = Key::new(format!("{path}/payload"))?;
    let probe = Key::new(format!("{path}-probe"))?;
    writer
        .put(&payload, json_bytes(0), PutMode::Overwrite)
        .await?;
    let mut states: Vec<SharedState<serde_json::Value>> = Vec::with_capacity(n);
    for _ in 0..n {
        let backend = sharedstate::connect(url).await?;
        states.push(
            SharedState::builder(backend, &path)
                .expect_existing(Duration::from_secs(30))
                .open()
                .await?,
        );
    }
    // Let the opening settle (sessions, registrations).
    tokio::time::sleep(QUIET).await;
    let mut rows = Vec::new();
    for (scenario, changes, spacing) in [
        ("one change", 1, Duration::ZERO),
        ("burst, 100 ms apart", burst, Duration::from_millis(100)),
    ] {
        let before = probe_version(writer.as_ref(), &probe).await?;
        let started = Instant::now();
        let mut last = Version::new(0);
        let mut last_at = started;
        for i in 0..changes {
            last = writer
                .put(&payload, json_bytes(i + 1), PutMode::Overwrite)
                .await?;
            last_at = Instant::now();
            tokio::time::sleep(spacing).await;
        }
        let reported_at = all_reported(&states[0], last, n).await?;
        let converged = reported_at.duration_since(last_at);
        tokio::time::sleep(QUIET).await;
        let after = probe_version(writer.as_ref(), &probe).await?;
        // The probe's own second write is one of the versions in between.
        let writes = after.as_u64() - before.as_u64() - 1;
        let registration_writes = writes
            .checked_sub(changes)
            .context("fewer writes than payload changes")?;
        rows.push(Row {
            scenario,
            payload_writes: changes,
            registration_writes,
            window: reported_at
                .duration_since(started)
                .max(Duration::from_millis(1)),
            converged: Some(converged),
        });
    }
    for state in states {
        state.close().await;
    }
    let _ = writer.delete(&probe, None).await;
    let _ = writer.close().await;
    Ok(rows)
}

fn json_bytes(n: u64) -> Bytes {
    Bytes::from(serde_json::to_vec(&json!({"n": n, "padding": "x".repeat(64)})).unwrap_or_default())
}

async fn probe_version(backend: &dyn CoordinationBackend, probe: &Key) -> Result<Version> {
    Ok(backend
        .put(probe, Bytes::from_static(b"probe"), PutMode::Overwrite)
        .await?)
}

/// When every one of the `n` instances has reported `version`.
async fn all_reported(
    observer: &SharedState<serde_json::Value>,
    version: Version,
    n: usize,
) -> Result<Instant> {
    let started = Instant::now();
    loop {
        let instances = observer.instances().await?;
        let reported = instances
            .iter()
            .filter(|l| l.applied_version >= Some(version))
            .count();
        if reported == n {
            return Ok(Instant::now());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("only {reported} of {n} instances reported version {version} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
