//! BENCHMARKS.md and its plots, from the JSON results of one run.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::harness::{fmt_ns, read_records, Record};
use crate::plot::{self, Series};
use crate::Machine;

struct Results {
    records: Vec<Record>,
}

impl Results {
    fn find(
        &self,
        backend: &str,
        implementation: &str,
        scenario: &str,
        variant: &str,
    ) -> Option<&Record> {
        self.records.iter().find(|r| {
            r.backend == backend
                && r.implementation == implementation
                && r.scenario == scenario
                && r.variant == variant
                && !r.quantiles_ns.is_empty()
        })
    }

    fn p50(
        &self,
        backend: &str,
        implementation: &str,
        scenario: &str,
        variant: &str,
    ) -> Option<u64> {
        self.find(backend, implementation, scenario, variant)
            .and_then(Record::p50)
    }

    fn failures(&self, backend: &str) -> Vec<&Record> {
        self.records
            .iter()
            .filter(|r| r.backend == backend && r.variant == "failed")
            .collect()
    }
}

fn ratio(ours: Option<u64>, floor: Option<u64>) -> Option<f64> {
    match (ours, floor) {
        (Some(a), Some(b)) if b > 0 => Some(a as f64 / b as f64),
        _ => None,
    }
}

fn cell_lat(r: Option<&Record>) -> String {
    match r {
        Some(r) => match (r.p50(), r.p99()) {
            (Some(p50), Some(p99)) => format!("{} / {}", fmt_ns(p50), fmt_ns(p99)),
            _ => "-".into(),
        },
        None => "-".into(),
    }
}

fn cell_ops(r: Option<&Record>) -> String {
    match r {
        Some(r) => {
            let lost = r.extra.get("lost_updates").and_then(|v| v.as_i64());
            let until_last = r
                .extra
                .get("ops_per_sec_until_last")
                .and_then(|v| v.as_f64());
            let mut s = format!("{:.0} ops/s", r.ops_per_sec);
            if let Some(u) = until_last {
                let _ = write!(s, " ({u:.0} until the last writer ended)");
            }
            if let Some(max) = r.quantile(1.0) {
                let _ = write!(s, ", slowest op {}", fmt_ns(max));
            }
            if let Some(lost) = lost {
                let _ = write!(s, ", lost {lost}");
            }
            if r.errors > 0 {
                let _ = write!(s, ", {} errors", r.errors);
            }
            s
        }
        None => "-".into(),
    }
}

fn cell_ratio(x: Option<f64>) -> String {
    x.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into())
}

/// The side-by-side rows: (label, ours, floor, zkstate, kazoo), each a
/// (implementation, scenario, variant) triple.
type Ref = Option<(&'static str, &'static str, &'static str)>;

type Row = (&'static str, Ref, Ref, Ref, Ref, bool);

fn rows(backend: &str) -> Vec<Row> {
    let zk = backend == "zk";
    let cas = if zk {
        "set_data(version)"
    } else {
        "txn(mod_revision)"
    };
    let get = if zk { "sync+get_data" } else { "get" };
    let peer = |r: Ref| if zk { r } else { None };
    let mut out = vec![
        (
            "read() (local copy)",
            Some(("sharedstate", "read", "read()")),
            None,
            peer(Some(("zkstate", "read", "read()"))),
            None,
            false,
        ),
        (
            "read_consistent()",
            Some(("sharedstate", "read", "read_consistent()")),
            Some(("raw", "raw-read", get)),
            None,
            None,
            false,
        ),
        (
            "update, locked",
            Some(("sharedstate", "update-uncontended", "locked")),
            Some(("raw", "raw-cas", cas)),
            peer(Some((
                "zkstate",
                "update-uncontended",
                "locked (LeaderLatch)",
            ))),
            peer(Some(("kazoo", "update-uncontended", "Lock+get+set"))),
            false,
        ),
        (
            "  locked split: lock()",
            Some(("sharedstate", "locked-split", "lock()")),
            Some(("raw", "raw-cas", cas)),
            None,
            None,
            false,
        ),
        (
            "  locked split: get()",
            Some(("sharedstate", "locked-split", "get()")),
            Some(("raw", "raw-read", get)),
            None,
            None,
            false,
        ),
        (
            "  locked split: fenced_put_and_release()",
            Some(("sharedstate", "locked-split", "fenced_put_and_release()")),
            Some(("raw", "raw-cas", cas)),
            None,
            None,
            false,
        ),
        (
            "  backend put(Update) alone (no engine)",
            Some(("sharedstate", "optimistic-split", "put(Update)")),
            Some(("raw", "raw-cas", cas)),
            None,
            None,
            false,
        ),
        (
            "update, optimistic",
            Some(("sharedstate", "update-uncontended", "optimistic")),
            Some(("raw", "raw-cas", cas)),
            None,
            peer(Some(("kazoo", "update-uncontended", "Counter"))),
            false,
        ),
        (
            "propagation (optimistic writer)",
            Some(("sharedstate", "propagation", "optimistic")),
            Some(("raw", "propagation", "raw watch")),
            peer(Some(("zkstate", "propagation", "locked (LeaderLatch)"))),
            peer(Some(("kazoo", "propagation", "DataWatch"))),
            false,
        ),
        (
            "propagation (locked writer)",
            Some(("sharedstate", "propagation", "locked")),
            Some(("raw", "propagation", "raw watch")),
            None,
            None,
            false,
        ),
        (
            "contended, 4 writers, locked",
            Some(("sharedstate", "contended", "4 writers locked")),
            None,
            peer(Some(("zkstate", "contended", "4 writers locked"))),
            peer(Some(("kazoo", "contended", "4 writers Lock"))),
            true,
        ),
        (
            "contended, 4 writers, optimistic",
            Some(("sharedstate", "contended", "4 writers optimistic")),
            None,
            None,
            peer(Some(("kazoo", "contended", "4 writers Counter"))),
            true,
        ),
        (
            "contended, 8 writers, locked",
            Some(("sharedstate", "contended", "8 writers locked")),
            None,
            peer(Some(("zkstate", "contended", "8 writers locked"))),
            peer(Some(("kazoo", "contended", "8 writers Lock"))),
            true,
        ),
        (
            "contended, 8 writers, optimistic",
            Some(("sharedstate", "contended", "8 writers optimistic")),
            None,
            None,
            peer(Some(("kazoo", "contended", "8 writers Counter"))),
            true,
        ),
    ];
    // One pair of rows per entry of `fixture::PAYLOAD_SIZES`.
    for (name, update, prop) in [
        ("1KiB", "update 1 KiB", "propagation 1 KiB"),
        ("16KiB", "update 16 KiB", "propagation 16 KiB"),
        ("64KiB", "update 64 KiB", "propagation 64 KiB"),
        ("256KiB", "update 256 KiB", "propagation 256 KiB"),
        ("512KiB", "update 512 KiB", "propagation 512 KiB"),
        (
            "966KiB",
            "update 966 KiB (under the 1,000,000-byte value limit)",
            "propagation 966 KiB",
        ),
    ] {
        out.push((
            update,
            Some(("sharedstate", "payload-update", name)),
            Some(("raw", "payload-update", name)),
            None,
            None,
            false,
        ));
        out.push((
            prop,
            Some(("sharedstate", "payload-propagation", name)),
            Some(("raw", "payload-propagation", name)),
            None,
            None,
            false,
        ));
    }
    out
}

fn comparison(md: &mut String, res: &Results, backend: &str) {
    let _ = writeln!(md, "| scenario | sharedstate p50 / p99 | floor (raw client) p50 / p99 | ours / floor (p50) | zkstate 0.1.23 | kazoo |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    let get = |r: Ref| r.and_then(|(i, s, v)| res.find(backend, i, s, v));
    for (label, ours, floor, zkstate, kazoo, throughput) in rows(backend) {
        let (o, f, z, k) = (get(ours), get(floor), get(zkstate), get(kazoo));
        if o.is_none() && f.is_none() {
            continue;
        }
        let cell = |r| if throughput { cell_ops(r) } else { cell_lat(r) };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            cell(o),
            cell(f),
            if throughput {
                "-".into()
            } else {
                cell_ratio(ratio(o.and_then(Record::p50), f.and_then(Record::p50)))
            },
            if backend == "zk" {
                cell(z)
            } else {
                "n/a".into()
            },
            if backend == "zk" {
                cell(k)
            } else {
                "n/a".into()
            },
        );
    }
    if let Some(all) = res.records.iter().find(|r| {
        r.backend == backend
            && r.scenario == "fanout"
            && r.variant.ends_with(": all")
            && !r.quantiles_ns.is_empty()
    }) {
        let _ = writeln!(
            md,
            "| fanout: {} | {} | - | - | - | - |",
            all.variant,
            cell_lat(Some(all))
        );
    }
    if let Some(each) = res.records.iter().find(|r| {
        r.backend == backend
            && r.scenario == "fanout"
            && r.variant.ends_with(": each")
            && !r.quantiles_ns.is_empty()
    }) {
        let _ = writeln!(
            md,
            "| fanout: {} | {} | - | - | - | - |",
            each.variant,
            cell_lat(Some(each))
        );
    }
}

fn all_records(md: &mut String, res: &Results, backend: &str) {
    let _ = writeln!(
        md,
        "<details><summary>Every measurement on {backend}</summary>\n"
    );
    let _ = writeln!(md, "| implementation | scenario | variant | n | errors | p50 | p90 | p99 | max | ops/s | notes |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in res.records.iter().filter(|r| r.backend == backend) {
        let q = |x| r.quantile(x).map(fmt_ns).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |",
            r.implementation,
            r.scenario,
            r.variant,
            r.samples,
            r.errors,
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0),
            r.ops_per_sec,
            r.notes.join("; ").replace('|', "\\|")
        );
    }
    let _ = writeln!(md, "\n</details>\n");
}

/// (target, measured, met) per backend.
fn targets(res: &Results, backend: &str) -> Vec<(String, String, Option<bool>)> {
    let mut out = Vec::new();
    let read = res.p50(backend, "sharedstate", "read", "read()");
    out.push((
        "read() under 100 ns".into(),
        read.map(|ns| format!("p50 {}", fmt_ns(ns)))
            .unwrap_or_else(|| "not measured".into()),
        read.map(|ns| ns < 100),
    ));
    let cas_variant = if backend == "zk" {
        "set_data(version)"
    } else {
        "txn(mod_revision)"
    };
    let cas = res.p50(backend, "raw", "raw-cas", cas_variant);
    let paired_cas = res.p50(backend, "raw", "paired", "raw CAS");
    for (mode, limit) in [("optimistic", 1.25), ("locked", 2.5)] {
        let paired = ratio(
            res.p50(backend, "sharedstate", "paired", &format!("{mode} update")),
            paired_cas,
        );
        let separate = ratio(
            res.p50(backend, "sharedstate", "update-uncontended", mode),
            cas,
        );
        let mut measured = measured_pair(paired, separate);
        if mode == "optimistic" {
            measured += &against_fenced(res, backend, "optimistic update", "raw fenced CAS");
        }
        out.push((
            format!("{mode} uncontended update within {limit}x raw CAS (p50)"),
            measured,
            paired.or(separate).map(|r| r <= limit),
        ));
    }
    let paired = ratio(
        res.p50(backend, "sharedstate", "paired", "propagation"),
        res.p50(backend, "raw", "paired", "raw watch"),
    );
    let separate = ratio(
        res.p50(backend, "sharedstate", "propagation", "optimistic"),
        res.p50(backend, "raw", "propagation", "raw watch"),
    );
    out.push((
        "propagation p50 within 1.2x raw watch".into(),
        measured_pair(paired, separate)
            + &against_fenced(res, backend, "propagation", "raw fenced watch"),
        paired.or(separate).map(|r| r <= 1.2),
    ));
    if backend == "zk" {
        for mode in ["optimistic", "locked"] {
            let ours = res.find(
                backend,
                "sharedstate",
                "contended",
                &format!("4 writers {mode}"),
            );
            let kazoo = res.find(backend, "kazoo", "contended", "4 writers Counter");
            let measured = match (ours, kazoo) {
                (Some(o), Some(k)) if k.ops_per_sec > 0.0 => {
                    let lost = o
                        .extra
                        .get("lost_updates")
                        .and_then(|v| v.as_i64())
                        .unwrap_or(-1);
                    Some((o.ops_per_sec / k.ops_per_sec, lost))
                }
                _ => None,
            };
            out.push((
                format!("4 writers ({mode}) at least 1.5x kazoo Counter, zero lost updates"),
                measured
                    .map(|(x, lost)| format!("{x:.2}x, {lost} lost"))
                    .unwrap_or_else(|| "not measured".into()),
                measured.map(|(x, lost)| x >= 1.5 && lost == 0),
            ));
        }
    }
    let sizes: Vec<(f64, u64)> = ["1KiB", "64KiB", "512KiB"]
        .iter()
        .zip([1.0, 64.0, 512.0])
        .filter_map(|(v, kib)| {
            res.p50(backend, "sharedstate", "payload-update", v)
                .map(|p| (kib, p))
        })
        .collect();
    if sizes.len() == 3 {
        // Marginal cost per KiB on each segment: linear means about equal.
        let s1 = (sizes[1].1 as f64 - sizes[0].1 as f64) / 63.0;
        let s2 = (sizes[2].1 as f64 - sizes[1].1 as f64) / 448.0;
        let r = if s1 > 0.0 { s2 / s1 } else { f64::INFINITY };
        let shape = if r > 1.5 {
            "superlinear"
        } else if r < 0.67 {
            "sublinear (fixed costs dominate small sizes)"
        } else {
            "linear"
        };
        out.push((
            "payload-size cost at most linear (update p50)".into(),
            format!(
                "{}/KiB from 1 to 64 KiB, {}/KiB from 64 to 512 KiB: slope ratio {r:.2}, {shape}",
                fmt_ns(s1.max(0.0) as u64),
                fmt_ns(s2.max(0.0) as u64)
            ),
            Some(r <= 1.5),
        ));
    } else {
        out.push((
            "payload-size cost linear".into(),
            "not measured".into(),
            None,
        ));
    }
    out
}

/// ZooKeeper: ours (interleaved) against the raw floor that writes with
/// the incarnation fence exact conditional writes need (issue 9; the raw
/// CAS cannot land on a deleted and re-created znode only by luck), for
/// the measured cell; empty where that floor was not measured.
fn against_fenced(res: &Results, backend: &str, ours: &str, floor: &str) -> String {
    let fenced = res.p50(backend, "raw", "paired", floor);
    match ratio(res.p50(backend, "sharedstate", "paired", ours), fenced) {
        Some(x) => format!(
            "; {x:.2}x the {floor} ({}: setData with the fence's create and delete, the same guarantee)",
            fenced.map(fmt_ns).unwrap_or_default()
        ),
        None => String::new(),
    }
}

fn measured_pair(paired: Option<f64>, separate: Option<f64>) -> String {
    match (paired, separate) {
        (Some(p), Some(s)) => format!("{p:.2}x interleaved ({s:.2}x in the separate runs)"),
        (Some(p), None) => format!("{p:.2}x interleaved"),
        (None, Some(s)) => format!("{s:.2}x (separate runs)"),
        (None, None) => "not measured".into(),
    }
}

fn paired_table(md: &mut String, res: &Results, backend: &str) {
    let floor_cas = res.p50(backend, "raw", "paired", "raw CAS");
    let floor_watch = res.p50(backend, "raw", "paired", "raw watch");
    let floor_read = res.p50(backend, "raw", "paired", "raw read");
    let rows = [
        ("raw", "raw CAS", None),
        ("sharedstate", "optimistic update", floor_cas),
        ("sharedstate", "locked update", floor_cas),
        ("raw", "raw locked update", floor_cas),
        ("raw", "raw watch", None),
        ("sharedstate", "propagation", floor_watch),
        ("raw", "raw read", None),
        ("sharedstate", "read_consistent()", floor_read),
        ("raw", "raw locked update + fence", floor_cas),
    ];
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|(i, v, _)| {
            *v != "raw locked update + fence" || res.find(backend, i, "paired", v).is_some()
        })
        .collect();
    if rows
        .iter()
        .all(|(i, v, _)| res.find(backend, i, "paired", v).is_none())
    {
        return;
    }
    let _ = writeln!(md, "Interleaved (each round runs all of them, so they share the same moment's load; these ratios are the ones in the targets table):\n");
    let _ = writeln!(md, "| operation | n | p50 / p99 | ours / floor (p50) |");
    let _ = writeln!(md, "|---|---|---|---|");
    for (implementation, variant, floor) in rows {
        let r = res.find(backend, implementation, "paired", variant);
        let _ = writeln!(
            md,
            "| {implementation}: {variant} | {} | {} | {} |",
            r.map(|r| r.samples).unwrap_or(0),
            cell_lat(r),
            if floor.is_some() {
                cell_ratio(ratio(r.and_then(Record::p50), floor))
            } else {
                "floor".into()
            },
        );
    }
    if let (Some(read), Some(cas)) = (
        res.find(backend, "sharedstate", "paired", "read_consistent()"),
        floor_cas,
    ) {
        let _ = writeln!(
            md,
            "\n`read_consistent()` against one raw CAS (a write, which is what a linearizable \
             ZooKeeper read costs at least): {} (p50).",
            cell_ratio(ratio(read.p50(), Some(cas))),
        );
    }
    let _ = writeln!(
        md,
        "\nEvery scenario, each measured in its own block (floor and ours minutes apart):\n"
    );
}

fn plots(res: &Results, dir: &Path, backend: &str) -> anyhow::Result<Vec<String>> {
    let mut made = Vec::new();
    let cas = if backend == "zk" {
        "set_data(version)"
    } else {
        "txn(mod_revision)"
    };
    // The interleaved rounds when there are some (same load for floor and
    // ours), else the separate blocks.
    let paired = res.find(backend, "raw", "paired", "raw CAS").is_some();
    let mut wanted: Vec<(&str, &str, &str, &str)> = if paired {
        vec![
            (
                "ours: update, locked",
                "sharedstate",
                "paired",
                "locked update",
            ),
            (
                "ours: update, optimistic",
                "sharedstate",
                "paired",
                "optimistic update",
            ),
            ("raw CAS (floor)", "raw", "paired", "raw CAS"),
            ("ours: propagation", "sharedstate", "paired", "propagation"),
            ("raw watch (floor)", "raw", "paired", "raw watch"),
        ]
    } else {
        vec![
            (
                "ours: update, locked",
                "sharedstate",
                "update-uncontended",
                "locked",
            ),
            (
                "ours: update, optimistic",
                "sharedstate",
                "update-uncontended",
                "optimistic",
            ),
            ("raw CAS (floor)", "raw", "raw-cas", cas),
            (
                "ours: propagation",
                "sharedstate",
                "propagation",
                "optimistic",
            ),
            ("raw watch (floor)", "raw", "propagation", "raw watch"),
        ]
    };
    wanted.extend([
        (
            "zkstate: update",
            "zkstate",
            "update-uncontended",
            "locked (LeaderLatch)",
        ),
        (
            "kazoo: Lock+get+set",
            "kazoo",
            "update-uncontended",
            "Lock+get+set",
        ),
        ("kazoo: Counter", "kazoo", "update-uncontended", "Counter"),
    ]);
    let found: Vec<(&str, &Record)> = wanted
        .iter()
        .filter_map(|(label, i, s, v)| res.find(backend, i, s, v).map(|r| (*label, r)))
        .collect();
    let name = format!("latency-{backend}.svg");
    if plot::latency_cdf(
        &dir.join(&name),
        &format!(
            "{backend}: latency distribution, uncontended{}",
            if paired {
                " (floor and ours interleaved)"
            } else {
                ""
            }
        ),
        &found,
    )? {
        made.push(name);
    }
    let mut series = Vec::new();
    for (label, i, s) in [
        ("ours: update", "sharedstate", "payload-update"),
        ("ours: propagation", "sharedstate", "payload-propagation"),
        ("raw: CAS", "raw", "payload-update"),
        ("raw: watch", "raw", "payload-propagation"),
    ] {
        let points = crate::fixture::PAYLOAD_SIZES
            .iter()
            .filter_map(|&(_, v)| {
                res.p50(backend, i, s, v)
                    .map(|p| (crate::fixture::payload_kib(v), p as f64 / 1e6))
            })
            .collect();
        series.push(Series {
            label: label.into(),
            points,
        });
    }
    let name = format!("payload-{backend}.svg");
    if plot::cost_vs_size(
        &dir.join(&name),
        &format!("{backend}: cost vs payload size (p50)"),
        series,
    )? {
        made.push(name);
    }
    Ok(made)
}

fn relative(from_dir: &Path, to: &Path) -> String {
    // BENCHMARKS.md sits at the repo root and plots under bench/report: keep
    // it simple and relative to the markdown's folder when possible.
    to.strip_prefix(from_dir)
        .unwrap_or(to)
        .display()
        .to_string()
}

pub fn write(results: &Path, markdown: &Path, plot_dir: &Path) -> anyhow::Result<()> {
    let res = Results {
        records: read_records(results)?,
    };
    let machine: Machine = std::fs::read_to_string(results.join("machine.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    std::fs::create_dir_all(plot_dir)
        .with_context(|| format!("creating {}", plot_dir.display()))?;
    let md_dir = markdown
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let md_dir = std::fs::canonicalize(md_dir).unwrap_or_else(|_| md_dir.to_path_buf());
    let plot_abs = std::fs::canonicalize(plot_dir).unwrap_or_else(|_| plot_dir.to_path_buf());

    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(md, "Generated by `scripts/bench.sh`{} from `target/bench-results/*.json` (`sharedstate-bench report`). Do not edit by hand: edit `bench/analysis.md` (included below) or the generator.\n", if machine.smoke { " **in smoke mode (few samples: not meaningful numbers)**" } else { "" });
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| CPU | {} x {} |", machine.nproc, machine.cpu);
    let _ = writeln!(md, "| memory | {} |", machine.mem_total);
    let _ = writeln!(md, "| kernel | {} |", machine.kernel);
    let _ = writeln!(md, "| docker | {} |", machine.docker);
    let _ = writeln!(md, "| rustc | {} |", machine.rustc);
    if !machine.zookeeper_server.is_empty() {
        let _ = writeln!(md, "| ZooKeeper server | {} |", machine.zookeeper_server);
    }
    if !machine.etcd_server.is_empty() {
        let _ = writeln!(md, "| etcd server | {} |", machine.etcd_server);
    }
    let _ = writeln!(
        md,
        "| load average at start (1, 5, 15 min) | {} |",
        machine.loadavg
    );
    let _ = writeln!(md, "| run at | unix {} |", machine.date_unix);
    let _ = writeln!(md, "\nServers run in Docker containers on the same machine (loopback through docker-proxy); clients, servers and the other engineers' builds share the same cores.\n");
    let _ = writeln!(md, "## How to reproduce\n\n```sh\nbash scripts/bench.sh          # full run, ~15 min: servers in containers, release build, BENCHMARKS.md + plots\nbash scripts/bench.sh --smoke  # seconds: few samples, fan-out 5 (what CI runs; writes under target/ only)\n```\n");
    let _ = writeln!(md, "Each latency is measured per call with warm-up first; p50 / p99 come from an HDR histogram (3 significant digits). `read()` is the per-call mean of batches of 1000 calls. Propagation is timed from the start of A's update to the moment B's subscription task receives the change set (B is another session). Contended runs start all writers together for a fixed window (8 s); throughput is the increments completed inside the window divided by the window (the same for kazoo), and afterwards the counter is read back and compared with the number of successful updates (all of them, also those finishing after the window).\n");

    let _ = writeln!(md, "## Targets (issue 6)\n");
    let _ = writeln!(md, "| target | backend | measured | met |");
    let _ = writeln!(md, "|---|---|---|---|");
    for backend in ["zk", "etcd", "memory"] {
        for (target, measured, met) in targets(&res, backend) {
            if backend == "memory" && !target.starts_with("read()") {
                continue;
            }
            let verdict = match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            let _ = writeln!(md, "| {target} | {backend} | {measured} | {verdict} |");
        }
    }
    let _ = writeln!(md);
    crate::targets::table(&mut md, &res.records);

    for (backend, title) in [
        ("zk", "ZooKeeper"),
        ("etcd", "etcd"),
        ("memory", "In-memory backend (reference, no network)"),
    ] {
        if !res.records.iter().any(|r| r.backend == backend) {
            let _ = writeln!(md, "## {title}\n\nNot measured in this run.\n");
            continue;
        }
        let _ = writeln!(md, "## {title}\n");
        for failed in res.failures(backend) {
            let _ = writeln!(
                md,
                "- **{} / {} failed**: {}",
                failed.implementation,
                failed.scenario,
                failed.notes.join("; ")
            );
        }
        let _ = writeln!(md);
        paired_table(&mut md, &res, backend);
        comparison(&mut md, &res, backend);
        let _ = writeln!(md);
        for name in plots(&res, plot_dir, backend)? {
            let link = relative(&md_dir, &plot_abs.join(&name));
            let _ = writeln!(md, "![{name}]({link})\n");
        }
        all_records(&mut md, &res, backend);
    }
    let analysis = Path::new("bench/analysis.md");
    if let Ok(text) = std::fs::read_to_string(analysis) {
        let _ = writeln!(md, "{text}");
    }
    std::fs::write(markdown, md).with_context(|| format!("writing {}", markdown.display()))?;
    eprintln!(
        "wrote {} and plots in {}",
        markdown.display(),
        plot_dir.display()
    );
    Ok(())
}
