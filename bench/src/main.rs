//! `sharedstate-bench`: measures the sharedstate engine on each backend
//! against the raw clients (the round-trip floors; on ZooKeeper also the
//! contention floors of `raw_zk_contended`; on memory the in-process
//! fan-out floor of `raw_fanout`) and the peers (zkstate, kazoo through
//! `bench/kazoo_bench.py`), then writes `BENCHMARKS.md` and its plots from
//! the JSON results.
//!
//! ```text
//! sharedstate-bench run --zk 127.0.0.1:2181 --etcd 127.0.0.1:2379 [--smoke]
//! sharedstate-bench report
//! ```
//! `scripts/bench.sh` starts the servers and runs both.

mod cpu;
mod engine;
mod fixture;
mod harness;
mod paired;
mod plot;
mod raw_etcd;
mod raw_etcd_lock;
mod raw_fanout;
mod raw_zk;
mod raw_zk_contended;
mod report;
mod scale;
mod targets;
mod zkstate_peer;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use harness::{write_records, Plan};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Benchmarks sharedstate against the raw clients and its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the scenarios and writes JSON results.
    Run {
        /// ZooKeeper `host:port` (engine, raw client, zkstate).
        #[arg(long)]
        zk: Option<String>,
        /// etcd `host:port` (engine, raw client).
        #[arg(long)]
        etcd: Option<String>,
        /// Skip the in-memory reference runs.
        #[arg(long)]
        no_memory: bool,
        /// A few samples and a fan-out of 5: seconds, for CI.
        #[arg(long)]
        smoke: bool,
        /// Only these suites (comma separated): memory, zk-paired, zk,
        /// zk-raw, zk-raw-contended, zkstate, etcd-paired, etcd, etcd-raw,
        /// etcd-raw-lock.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Only these scenarios (comma separated). Engine suites: read,
        /// update-uncontended, locked-split, propagation, contended,
        /// payload-size, fanout (with its raw floor interleaved: on memory
        /// a broadcast to as many tasks), requests-per-update,
        /// many-states, fleet-cost, engine-cpu. zk-raw-contended:
        /// contended-lock, contended-chain (`contended` selects both).
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        /// Where the JSON results go.
        #[arg(long, default_value = "target/bench-results")]
        out: PathBuf,
    },
    /// Writes BENCHMARKS.md and the plots from the JSON results.
    Report {
        #[arg(long, default_value = "target/bench-results")]
        results: PathBuf,
        #[arg(long, default_value = "BENCHMARKS.md")]
        markdown: PathBuf,
        /// Where the SVG plots go (BENCHMARKS.md links them relative to
        /// its own folder).
        #[arg(long, default_value = "bench/report")]
        plots: PathBuf,
    },
}

/// What the report says about the machine a run was made on.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Machine {
    pub date_unix: u64,
    pub nproc: usize,
    pub cpu: String,
    pub mem_total: String,
    pub kernel: String,
    pub docker: String,
    pub rustc: String,
    pub smoke: bool,
    pub zookeeper_server: String,
    pub etcd_server: String,
    /// /proc/loadavg when the run started (other builds share the cores).
    #[serde(default)]
    pub loadavg: String,
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn machine(smoke: bool) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    Machine {
        date_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu: field(&cpuinfo, "model name"),
        mem_total: field(&meminfo, "MemTotal"),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        docker: command_line("docker", &["version", "--format", "{{.Server.Version}}"]),
        rustc: command_line("rustc", &["--version"]),
        smoke,
        zookeeper_server: std::env::var("SHAREDSTATE_BENCH_ZK_VERSION").unwrap_or_default(),
        etcd_server: std::env::var("SHAREDSTATE_BENCH_ETCD_VERSION").unwrap_or_default(),
        loadavg: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run {
            zk,
            etcd,
            no_memory,
            smoke,
            only,
            scenarios,
            out,
        } => run(zk, etcd, !no_memory, smoke, &only, &scenarios, &out).await,
        Command::Report {
            results,
            markdown,
            plots,
        } => report::write(&results, &markdown, &plots),
    }
}

async fn run(
    zk: Option<String>,
    etcd: Option<String>,
    memory: bool,
    smoke: bool,
    only: &[String],
    scenarios: &[String],
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let plan = Plan::new(smoke);
    let wanted = |suite: &str| only.is_empty() || only.iter().any(|o| o == suite);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let root = format!("/sharedstate-bench/run-{stamp}");
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("machine.json"),
        serde_json::to_string_pretty(&machine(smoke))?,
    )?;
    let ctx = |label: &str, url: String| fixture::Ctx {
        label: label.into(),
        url,
        root: root.clone(),
        plan,
        scenarios: scenarios.to_vec(),
    };
    if memory && wanted("memory") {
        eprintln!("== memory: sharedstate engine (in-process reference)");
        let records = engine::run(&ctx("memory", format!("memory://bench-{stamp}"))).await;
        write_records(out, "memory-sharedstate", &records)?;
    }
    if let Some(hosts) = &zk {
        if wanted("zk-paired") {
            eprintln!("== zk: floor and engine interleaved (target ratios)");
            let raw = paired::Raw::zk(hosts, &root).await;
            let records = paired::run(&ctx("zk", format!("zk://{hosts}")), raw).await;
            write_records(out, "zk-paired", &records)?;
        }
        if wanted("zk-raw") {
            eprintln!("== zk: raw zookeeper-client floors");
            write_records(out, "zk-raw", &raw_zk::run(hosts, &root, &plan).await)?;
        }
        if wanted("zk-raw-contended") {
            eprintln!("== zk: raw zookeeper-client contention floors (lock recipe, watched chain)");
            write_records(
                out,
                "zk-raw-contended",
                &raw_zk_contended::run(hosts, &root, &plan, scenarios).await,
            )?;
        }
        if wanted("zk") {
            eprintln!("== zk: sharedstate engine");
            let records = engine::run(&ctx("zk", format!("zk://{hosts}"))).await;
            write_records(out, "zk-sharedstate", &records)?;
        }
        if wanted("zkstate") {
            eprintln!("== zk: zkstate 0.1.23 (predecessor)");
            write_records(
                out,
                "zk-zkstate",
                &zkstate_peer::run(hosts, &root, &plan).await,
            )?;
        }
    }
    if let Some(endpoint) = &etcd {
        if wanted("etcd-paired") {
            eprintln!("== etcd: floor and engine interleaved (target ratios)");
            let raw = paired::Raw::etcd(endpoint, &root).await;
            let records = paired::run(&ctx("etcd", format!("etcd://{endpoint}")), raw).await;
            write_records(out, "etcd-paired", &records)?;
        }
        if wanted("etcd-raw") {
            eprintln!("== etcd: raw etcd-client floors");
            write_records(
                out,
                "etcd-raw",
                &raw_etcd::run(endpoint, &root, &plan).await,
            )?;
        }
        if wanted("etcd-raw-lock") {
            eprintln!("== etcd: raw etcd-client lock recipe (contended) and the watch-start probe");
            write_records(
                out,
                "etcd-raw-lock",
                &raw_etcd_lock::run(endpoint, &root, &plan).await,
            )?;
        }
        if wanted("etcd") {
            eprintln!("== etcd: sharedstate engine");
            let records = engine::run(&ctx("etcd", format!("etcd://{endpoint}"))).await;
            write_records(out, "etcd-sharedstate", &records)?;
        }
    }
    // zkstate's threads (and their sessions) never stop: leave now.
    std::process::exit(0)
}
