//! The workload of a fault run: appenders in both write modes, a locked
//! counter, readers sampling `read()` every 50 ms, and a probe that tells
//! when the cluster accepted writes. Everything they do is recorded with
//! instants, for the checker.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sharedstate_core::backend::Bytes;
use sharedstate_core::{
    CoordinationBackend, ErrorKind, Key, Outcome, PutMode, SharedState, WriteMode,
};
use tokio_util::sync::CancellationToken;

/// The appenders' state: every acknowledged id must be in it exactly once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    /// Ids in commit order.
    pub ids: Vec<String>,
}

/// The counter's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    /// Incremented by one per acknowledged update.
    pub n: u64,
}

/// How one write ended, as its caller saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Acknowledged.
    Acked,
    /// Failed, and the error says nothing was applied.
    Failed,
    /// Failed with an unknown outcome, or given up on by the caller (its
    /// future dropped): it may have landed.
    Indeterminate,
}

/// One write attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Which writer made it.
    pub writer: String,
    /// The appended id (empty for counter increments).
    pub id: String,
    /// When the call was made.
    pub started: Instant,
    /// When it returned.
    pub ended_at: Instant,
    /// How.
    pub ended: Ended,
    /// The error, if any.
    pub error: Option<String>,
    /// How many times the update ran its closure (1 + conflicts retried).
    pub runs: u32,
}

/// One `read()` sample of a reader.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Which state (its path).
    pub state: String,
    /// When it was taken.
    pub at: Instant,
    /// `Some(len, last id)` when `read()` served a copy, `None` for `Stale`.
    pub copy: Option<(usize, Option<String>)>,
}

/// Everything a run recorded.
#[derive(Default, Debug)]
pub struct Recording {
    /// Every write attempt of the appenders and the counter.
    pub attempts: Vec<Attempt>,
    /// Every read sample.
    pub samples: Vec<Sample>,
    /// When the probe's unconditional writes succeeded.
    pub probe_ok: Vec<Instant>,
    /// Errors of `read()` other than `Stale` (each is a violation).
    pub read_errors: Vec<String>,
}

/// The shared recording the workload tasks append to.
pub type Shared = Arc<Mutex<Recording>>;

fn record<T>(shared: &Shared, f: impl FnOnce(&mut Recording) -> T) -> T {
    let mut recording = shared.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut recording)
}

/// How long one write may take before the writer gives up on it (its future
/// is dropped: the attempt is indeterminate). Longer than any healthy write,
/// shorter than a fault.
pub const WRITE_BOUND: Duration = Duration::from_secs(20);
/// Pause between a writer's operations in locked mode: writers queue on
/// the lock, so they may hammer.
pub const LOCKED_PAUSE: Duration = Duration::from_millis(25);
/// Pause between an optimistic writer's operations. Optimistic mode is for
/// low contention: it has no fairness, and under sustained contention a
/// writer on a slower member loses every race (seen: 20 conflicts in a row,
/// 7 s, against a writer on a warm member writing every 30 ms). Ten writes a
/// second per writer is contention enough to exercise the conflict path.
pub const OPTIMISTIC_PAUSE: Duration = Duration::from_millis(100);
/// How often readers sample.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);

fn ended_of(error: &sharedstate_core::Error) -> Ended {
    match error.outcome() {
        Outcome::NotApplied => Ended::Failed,
        Outcome::Unknown => Ended::Indeterminate,
    }
}

/// Runs `write(n)` for n = 1, 2, ... until `stop`, recording each attempt
/// under the id `id(n)`.
async fn writer<F, Fut>(
    name: String,
    shared: Shared,
    stop: CancellationToken,
    pause: Duration,
    id: impl Fn(u64) -> String,
    mut write: F,
) where
    F: FnMut(u64, Arc<AtomicU32>) -> Fut,
    Fut: std::future::Future<Output = sharedstate_core::Result<()>>,
{
    let mut n = 0u64;
    while !stop.is_cancelled() {
        n += 1;
        let started = Instant::now();
        let runs = Arc::new(AtomicU32::new(0));
        let written = write(n, runs.clone());
        let (ended, error) = match tokio::time::timeout(WRITE_BOUND, written).await {
            Ok(Ok(())) => (Ended::Acked, None),
            Ok(Err(e)) => (ended_of(&e), Some(e.to_string())),
            Err(_) => (
                Ended::Indeterminate,
                Some(format!("given up after {WRITE_BOUND:?}")),
            ),
        };
        record(&shared, |r| {
            r.attempts.push(Attempt {
                writer: name.clone(),
                id: id(n),
                started,
                ended_at: Instant::now(),
                ended,
                error,
                runs: runs.load(Ordering::Relaxed),
            })
        });
        if ended != Ended::Acked {
            // Do not hammer a service that just refused.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Writers do not fire in lockstep: 0.5 to 1.5 times the pause.
        tokio::time::sleep(pause.mul_f64(0.5 + fastrand::f64())).await;
    }
}

/// Appends `<name>-<n>` ids until `stop`.
pub async fn appender(
    name: String,
    state: SharedState<Journal>,
    shared: Shared,
    stop: CancellationToken,
) {
    let prefix = name.clone();
    let id = move |n: u64| format!("{prefix}-{n}");
    let ids = id.clone();
    let pause = match state.status().write_mode {
        WriteMode::Locked => LOCKED_PAUSE,
        _ => OPTIMISTIC_PAUSE,
    };
    writer(name, shared, stop, pause, id, |n, runs| {
        let pushed = ids(n);
        let state = state.clone();
        async move {
            state
                .update(move |journal| {
                    runs.fetch_add(1, Ordering::Relaxed);
                    journal.ids.push(pushed.clone())
                })
                .await
        }
    })
    .await;
}

/// Increments the counter until `stop`.
pub async fn counter(
    name: String,
    state: SharedState<Counter>,
    shared: Shared,
    stop: CancellationToken,
) {
    writer(
        name,
        shared,
        stop,
        LOCKED_PAUSE,
        |_| String::new(),
        |_, runs| {
            let state = state.clone();
            async move {
                state
                    .update(move |c| {
                        runs.fetch_add(1, Ordering::Relaxed);
                        c.n += 1
                    })
                    .await
            }
        },
    )
    .await;
}

/// Samples `read()` of every state every 50 ms until `stop`.
pub async fn reader(states: Vec<SharedState<Journal>>, shared: Shared, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    while !stop.is_cancelled() {
        ticker.tick().await;
        for state in &states {
            let at = Instant::now();
            let copy = match state.read() {
                Ok(journal) => Some((journal.ids.len(), journal.ids.last().cloned())),
                Err(e) if e.kind() == ErrorKind::Stale => None,
                Err(e) => {
                    record(&shared, |r| r.read_errors.push(e.to_string()));
                    continue;
                }
            };
            record(&shared, |r| {
                r.samples.push(Sample {
                    state: state.path().to_string(),
                    at,
                    copy,
                })
            });
        }
    }
}

/// Writes a probe key every 100 ms: when the cluster accepts writes.
pub async fn probe(
    backend: Arc<dyn CoordinationBackend>,
    key: Key,
    shared: Shared,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let put = backend.put(&key, Bytes::from_static(b"probe"), PutMode::Overwrite);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), put).await {
            record(&shared, |r| r.probe_ok.push(Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The write mode of an appender by its index: even ones locked.
pub fn mode_of(index: usize) -> WriteMode {
    if index.is_multiple_of(2) {
        WriteMode::Locked
    } else {
        WriteMode::Optimistic
    }
}
