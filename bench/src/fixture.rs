//! What every engine scenario opens: the payloads, the run's context, the
//! open/close of a state, and the timestamps of change sets. Kept apart from
//! the scenarios so the raw-client floors and the scale, CPU and paired suites
//! can share them without importing the engine suite (and it them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sharedstate::{CoordinationBackend, SharedState, StateEvent, WriteMode};
use tokio::sync::mpsc;

use crate::harness::{Plan, Record};

/// The ~200-byte struct of the uncontended and contended scenarios.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Small {
    pub counter: u64,
    pub name: String,
    pub enabled: bool,
    pub tags: Vec<String>,
    pub limits: BTreeMap<String, u64>,
}

pub fn small() -> Small {
    Small {
        counter: 0,
        name: "process-monitor/eu-west-1/agents".into(),
        enabled: true,
        tags: vec![
            "systemd*".into(),
            "rsync*".into(),
            "sshd".into(),
            "nginx*".into(),
        ],
        limits: [
            ("cpu_millis", 1500u64),
            ("rss_mib", 512),
            ("open_files", 4096),
            ("threads", 64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    }
}

/// A payload of about `bytes` bytes of JSON: 64-byte strings plus a counter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Blob {
    pub counter: u64,
    pub items: Vec<String>,
}

pub fn blob(bytes: usize) -> Blob {
    let n = (bytes / 65).max(1);
    Blob {
        counter: 0,
        items: (0..n)
            .map(|i| format!("{i:08}-{}", "x".repeat(52)))
            .collect(),
    }
}

/// Payload sizes measured (bytes asked of [`blob`], variant name). The top
/// one stays under the 1,000,000-byte value limit both backends enforce
/// (ZooKeeper's default `jute.maxbuffer` is 1 MiB for a whole packet; etcd's
/// request limit is 1.5 MiB): about 966 KiB of JSON (989,500 bytes).
pub const PAYLOAD_SIZES: &[(usize, &str)] = &[
    (1024, "1KiB"),
    (16 * 1024, "16KiB"),
    (64 * 1024, "64KiB"),
    (256 * 1024, "256KiB"),
    (512 * 1024, "512KiB"),
    (1_005_000, "966KiB"),
];

/// The payload sizes in KiB, for tables and plots (as named).
pub fn payload_kib(name: &str) -> f64 {
    name.trim_end_matches("KiB").parse().unwrap_or(0.0)
}

/// Where one run's keys go; unique per run so runs never see each other.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub label: String,
    pub url: String,
    pub root: String,
    pub plan: Plan,
    /// Only these engine scenarios (empty: all), for targeted runs.
    pub scenarios: Vec<String>,
}

impl Ctx {
    pub(crate) fn path(&self, scenario: &str) -> String {
        format!("{}/{}/{scenario}", self.root, self.label)
    }

    pub(crate) async fn connect(&self) -> anyhow::Result<Arc<dyn CoordinationBackend>> {
        sharedstate::connect(&self.url)
            .await
            .with_context(|| format!("connecting to {}", self.url))
    }

    pub(crate) fn record(&self, scenario: &str, variant: &str) -> Record {
        Record::new(&self.label, "sharedstate", scenario, variant)
    }
}

pub(crate) async fn open<T>(
    ctx: &Ctx,
    path: &str,
    initial: T,
    mode: WriteMode,
) -> anyhow::Result<(Arc<dyn CoordinationBackend>, SharedState<T>)>
where
    T: Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    let backend = ctx.connect().await?;
    let state = SharedState::builder(backend.clone(), path)
        .initial(initial)
        .write_mode(mode)
        .lock_timeout(Duration::from_secs(20))
        .max_attempts(1000)
        .open()
        .await
        .with_context(|| format!("opening {path}"))?;
    Ok((backend, state))
}

pub(crate) async fn close<T>(parts: Vec<(Arc<dyn CoordinationBackend>, SharedState<T>)>)
where
    T: Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    for (backend, state) in parts {
        state.close().await;
        if let Err(error) = backend.close().await {
            tracing::debug!(%error, "closing a bench client");
        }
    }
}

/// Timestamps every change set a subscription delivers.
pub(crate) fn arrivals<T>(state: &SharedState<T>) -> mpsc::UnboundedReceiver<(u64, Instant)>
where
    T: Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let mut subscription = state.subscribe();
    tokio::spawn(async move {
        while let Some(event) = subscription.next().await {
            if let StateEvent::Changed(set) = event {
                if tx.send((set.version.as_u64(), Instant::now())).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

pub(crate) async fn arrival_of(
    rx: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    version: u64,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let wait = async {
        while let Some((seen, at)) = rx.recv().await {
            if seen >= version {
                return Ok(at);
            }
        }
        Err(anyhow!("the subscription ended"))
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| anyhow!("no change set for version {version} within {timeout:?}"))?
}
