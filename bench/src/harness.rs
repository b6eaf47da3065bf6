//! Sampling: warm-up, bounded sample loops, HDR histograms, and the JSON
//! result records every suite (and the kazoo script) writes.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Percentiles kept in every result, for tables and distribution plots.
pub const QUANTILES: &[f64] = &[
    0.0, 0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95, 0.99, 0.999,
    1.0,
];

/// How much to measure: the full run or the CI smoke run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub smoke: bool,
    /// Warm-up iterations before timed samples.
    pub warmup: usize,
    /// Timed samples for latency scenarios.
    pub samples: usize,
    /// Wall-clock cap for one scenario's sample loop.
    pub budget: Duration,
    /// How long each contended run lasts.
    pub contended_for: Duration,
    /// Sessions in the fan-out scenario (and `fanout_large`, when not 0:
    /// the scale target compares the two).
    pub fanout: usize,
    pub fanout_large: usize,
    /// `SharedState`s opened on one client in the many-states scenario.
    pub many_states: usize,
    /// Fan-out rounds (updates) measured.
    pub fanout_rounds: usize,
    /// Samples per payload size.
    pub payload_samples: usize,
}

impl Plan {
    pub fn new(smoke: bool) -> Self {
        if smoke {
            Plan {
                smoke,
                warmup: 3,
                samples: 20,
                budget: Duration::from_secs(5),
                contended_for: Duration::from_millis(700),
                fanout: 5,
                fanout_large: 0,
                many_states: 20,
                fanout_rounds: 3,
                payload_samples: 5,
            }
        } else {
            Plan {
                smoke,
                warmup: 50,
                samples: 1000,
                budget: Duration::from_secs(30),
                contended_for: Duration::from_secs(8),
                fanout: 100,
                fanout_large: 1000,
                many_states: 1000,
                fanout_rounds: 20,
                payload_samples: 60,
            }
        }
    }
}

impl Plan {
    /// The fan-out sizes measured.
    pub fn fanout_sizes(&self) -> Vec<usize> {
        let mut sizes = vec![self.fanout];
        if self.fanout_large > 0 {
            sizes.push(self.fanout_large);
        }
        sizes
    }
}

/// One measured scenario, as stored in `target/bench-results/*.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Record {
    /// `zk`, `etcd` or `memory`.
    pub backend: String,
    /// `sharedstate`, `raw`, `zkstate`, `kazoo`.
    pub implementation: String,
    /// Scenario name from the issue (`update-uncontended`, `propagation`, ...).
    pub scenario: String,
    /// Mode or size (`locked`, `optimistic`, `64KiB`, `4 writers`, ...).
    pub variant: String,
    /// Timed samples that succeeded.
    pub samples: u64,
    /// Failed samples (errors, timeouts).
    pub errors: u64,
    /// Latency percentiles in nanoseconds, one per [`QUANTILES`] entry.
    pub quantiles_ns: Vec<(f64, u64)>,
    pub mean_ns: f64,
    /// Successful operations per second of wall time.
    pub ops_per_sec: f64,
    /// Free-form facts (final counts, lost updates, error kinds).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Numbers a table needs beyond latency (payload bytes, lost updates...).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Record {
    pub fn new(backend: &str, implementation: &str, scenario: &str, variant: &str) -> Self {
        Record {
            backend: backend.into(),
            implementation: implementation.into(),
            scenario: scenario.into(),
            variant: variant.into(),
            ..Record::default()
        }
    }

    /// Fills the latency fields from a histogram and a wall time.
    pub fn with_histogram(mut self, hist: &Histogram<u64>, wall: Duration) -> Self {
        self.samples = hist.len();
        if !hist.is_empty() {
            self.quantiles_ns = QUANTILES
                .iter()
                .map(|&q| (q, hist.value_at_quantile(q)))
                .collect();
            self.mean_ns = hist.mean();
        }
        let secs = wall.as_secs_f64();
        if secs > 0.0 {
            self.ops_per_sec = hist.len() as f64 / secs;
        }
        self
    }

    pub fn quantile(&self, q: f64) -> Option<u64> {
        self.quantiles_ns
            .iter()
            .find(|(k, _)| (*k - q).abs() < 1e-9)
            .map(|(_, v)| *v)
    }

    pub fn p50(&self) -> Option<u64> {
        self.quantile(0.5)
    }

    pub fn p99(&self) -> Option<u64> {
        self.quantile(0.99)
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn extra(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }
}

/// A histogram from 1 ns to 10 min with 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    match Histogram::new_with_bounds(1, 600_000_000_000, 3) {
        Ok(hist) => hist,
        Err(_) => {
            Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
        }
    }
}

pub fn record_ns(hist: &mut Histogram<u64>, elapsed: Duration) {
    let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
    hist.saturating_record(ns);
}

/// Runs `op` `warmup` times untimed, then up to `samples` timed times (or
/// until `budget` runs out). `op` may return its own measured latency
/// (`Some`, e.g. up to a watch delivery timestamped elsewhere); otherwise
/// the call's duration is recorded. Errors count, and are kept (first few)
/// as notes.
pub async fn sample<F, Fut>(
    plan: &Plan,
    samples: usize,
    mut op: F,
) -> (Histogram<u64>, Duration, u64, Vec<String>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<Duration>>>,
{
    for _ in 0..plan.warmup {
        let _ = tokio::time::timeout(plan.budget, op()).await;
    }
    let mut hist = histogram();
    let mut errors = 0u64;
    let mut notes = Vec::new();
    let started = Instant::now();
    for _ in 0..samples {
        if started.elapsed() > plan.budget {
            notes.push(format!("stopped by the {:?} budget", plan.budget));
            break;
        }
        let t0 = Instant::now();
        match tokio::time::timeout(plan.budget, op()).await {
            Ok(Ok(measured)) => record_ns(&mut hist, measured.unwrap_or_else(|| t0.elapsed())),
            Ok(Err(error)) => {
                errors += 1;
                if notes.len() < 3 {
                    notes.push(format!("error: {error:#}"));
                }
            }
            Err(_) => {
                errors += 1;
                notes.push(format!("a sample timed out after {:?}", plan.budget));
                break;
            }
        }
    }
    (hist, started.elapsed(), errors, notes)
}

/// Measures a microsecond-scale synchronous call: time batches of `batch`
/// calls and record the per-call mean of each batch (timing each call alone
/// would mostly measure the clock).
pub fn sample_batched<F: FnMut() -> bool>(
    batches: usize,
    batch: usize,
    budget: Duration,
    mut op: F,
) -> (Histogram<u64>, Duration, u64) {
    let mut hist = histogram();
    let mut errors = 0u64;
    for _ in 0..batch {
        if !op() {
            errors += 1;
        }
    }
    let started = Instant::now();
    for _ in 0..batches {
        if started.elapsed() > budget {
            break;
        }
        let t0 = Instant::now();
        for _ in 0..batch {
            if !op() {
                errors += 1;
            }
        }
        let per_call = t0.elapsed().as_nanos() / batch.max(1) as u128;
        hist.saturating_record(u64::try_from(per_call).unwrap_or(u64::MAX).max(1));
    }
    (hist, started.elapsed(), errors)
}

/// Appends records to a suite file (JSON array), creating it if needed.
pub fn write_records(dir: &Path, suite: &str, records: &[Record]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{suite}.json"));
    let json = serde_json::to_string_pretty(records)?;
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), records = records.len(), "results written");
    Ok(())
}

/// Reads every `*.json` suite file in `dir` (except `machine.json`).
pub fn read_records(dir: &Path) -> anyhow::Result<Vec<Record>> {
    let mut all = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "machine.json"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path)?;
        let records: Vec<Record> =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        all.extend(records);
    }
    Ok(all)
}

/// Prints one line per record so a run shows progress.
pub fn announce(record: &Record) {
    let p50 = record.p50().map(fmt_ns).unwrap_or_else(|| "-".into());
    let p99 = record.p99().map(fmt_ns).unwrap_or_else(|| "-".into());
    eprintln!(
        "  {:<6} {:<11} {:<20} {:<18} n={:<5} err={:<3} p50={:<9} p99={:<9} {:>9.0} ops/s {}",
        record.backend,
        record.implementation,
        record.scenario,
        record.variant,
        record.samples,
        record.errors,
        p50,
        p99,
        record.ops_per_sec,
        record.notes.join("; ")
    );
}

/// Human latency: ns, µs, ms or s with 3 significant digits.
pub fn fmt_ns(ns: u64) -> String {
    let v = ns as f64;
    if v < 1e3 {
        format!("{ns} ns")
    } else if v < 1e6 {
        format!("{:.1} µs", v / 1e3)
    } else if v < 1e9 {
        format!("{:.2} ms", v / 1e6)
    } else {
        format!("{:.2} s", v / 1e9)
    }
}
