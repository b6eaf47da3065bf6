//! The cluster fault suite on real 3-member clusters (containers): each
//! fault once per backend (the short run `scripts/test.sh` does), or the
//! long run of `scripts/chaos.sh` (`SHAREDSTATE_CHAOS_REPEAT=N` repeats the
//! faults N times; `SHAREDSTATE_CHAOS_FAULTS=cut,kill-node,kill-leader,pause`
//! picks some; `SHAREDSTATE_CHAOS_REPORT=path` appends the table).
//! Fails on any violation of the checker (lost or duplicated acknowledged
//! writes, definite failures present, stale reads without `Stale`, writer
//! stalls past the session timeout while the cluster accepted writes, no
//! convergence, a counter out of bounds).
#![cfg(all(feature = "testing", feature = "zookeeper", feature = "etcd"))]

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use sharedstate::testing::chaos::{self, check, Connect, Fault, RunConfig};
use sharedstate::testing::fixtures::ServiceKind;

fn connect() -> Connect {
    Arc::new(|url: String| Box::pin(async move { sharedstate::connect(&url).await }))
}

fn config(kind: ServiceKind) -> RunConfig {
    let mut config = RunConfig::short(kind);
    if let Some(repeat) = std::env::var("SHAREDSTATE_CHAOS_REPEAT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        config.faults = (0..repeat).flat_map(|_| Fault::ALL).collect();
        config.settle = Duration::from_secs(8);
    }
    // SHAREDSTATE_CHAOS_FAULTS=cut,kill-node,kill-leader,pause: only those.
    if let Ok(only) = std::env::var("SHAREDSTATE_CHAOS_FAULTS") {
        config.faults = only
            .split(',')
            .map(|name| match name.trim() {
                "cut" => Fault::CutClientConnection,
                "kill-node" => Fault::KillClientsNode,
                "kill-leader" => Fault::KillLeader,
                "pause" => Fault::PausePastSessionTimeout,
                other => panic!("unknown fault {other:?} in SHAREDSTATE_CHAOS_FAULTS"),
            })
            .collect();
    }
    config
}

async fn run(kind: ServiceKind) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,sharedstate_conformance::chaos=info".into()),
        )
        .with_test_writer()
        .try_init();
    let report = chaos::run(config(kind), connect()).await;
    let table = check::table(&report.verdicts);
    println!("{}\n\n{table}", report.log.join("\n"));
    if let Ok(path) = std::env::var("SHAREDSTATE_CHAOS_REPORT") {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            let _ = writeln!(
                file,
                "\n### {kind:?}, run of {:.0?}\n\n{table}",
                report.took
            );
            let _ = writeln!(
                file,
                "<details><summary>log</summary>\n\n```text\n{}\n```\n</details>",
                report.log.join("\n")
            );
        }
    }
    let violations: Vec<&String> = report.verdicts.iter().flat_map(|v| &v.violations).collect();
    assert!(
        violations.is_empty(),
        "violations:\n{violations:#?}\n{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_ensemble_under_faults() {
    run(ServiceKind::ZooKeeper).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_cluster_under_faults() {
    run(ServiceKind::Etcd).await;
}
