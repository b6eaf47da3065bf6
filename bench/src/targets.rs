//! The performance targets table (issue 16): for each target, what was
//! measured, the floor it is compared with (a raw client doing the same
//! round trips, or a peer), met or not, and for a target not met the
//! measured floor that explains it.

use std::fmt::Write as _;

use crate::harness::{fmt_ns, Record};

/// One row: target, backend, measured, floor, met, why not met.
struct Row {
    target: String,
    backend: &'static str,
    measured: String,
    floor: String,
    met: Option<bool>,
    explanation: String,
}

fn find<'a>(
    records: &'a [Record],
    backend: &str,
    implementation: &str,
    scenario: &str,
    variant: &str,
) -> Option<&'a Record> {
    records.iter().find(|r| {
        r.backend == backend
            && r.implementation == implementation
            && r.scenario == scenario
            && r.variant == variant
            && !r.quantiles_ns.is_empty()
    })
}

fn extra_f64(r: &Record, name: &str) -> Option<f64> {
    r.extra.get(name).and_then(|v| v.as_f64())
}

fn slowest(r: &Record) -> Option<u64> {
    r.quantile(1.0)
}

fn lost(r: &Record) -> i64 {
    r.extra
        .get("lost_updates")
        .and_then(|v| v.as_i64())
        .unwrap_or(-1)
}

fn not_measured(target: String, backend: &'static str) -> Row {
    Row {
        target,
        backend,
        measured: "not measured".into(),
        floor: "-".into(),
        met: None,
        explanation: String::new(),
    }
}

/// ZooKeeper contended writers against kazoo, with the measured contention
/// floors (`raw_zk_contended`): the raw lock recipe with the engine's round
/// trips (locked), and one raw writer's conditional-write chain while the
/// other sessions keep a fresh copy through a watch (optimistic).
fn against_kazoo(records: &[Record], out: &mut Vec<Row>) {
    use crate::raw_zk_contended::{chain_variant, lock_variant, CHAIN_SCENARIO, LOCK_SCENARIO};
    let watch = find(records, "zk", "raw", "paired", "raw watch").and_then(Record::p50);
    let chain_alone = find(
        records,
        "zk",
        "raw",
        CHAIN_SCENARIO,
        &chain_variant(1, false),
    );
    let lat = |r: &Record, q: f64| r.quantile(q).map(fmt_ns).unwrap_or_default();
    for writers in [4, 8] {
        for (mode, peer, factor) in [("optimistic", "Counter", 1.5), ("locked", "Lock", 2.0)] {
            let target = format!(
                "{writers} writers {mode}: at least {factor}x kazoo {peer}, 0 lost{}",
                if mode == "optimistic" {
                    ", slowest increment no slower than kazoo's"
                } else {
                    ""
                }
            );
            let ours = find(
                records,
                "zk",
                "sharedstate",
                "contended",
                &format!("{writers} writers {mode}"),
            );
            let kazoo = find(
                records,
                "zk",
                "kazoo",
                "contended",
                &format!("{writers} writers {peer}"),
            );
            let (Some(ours), Some(kazoo)) = (ours, kazoo) else {
                out.push(not_measured(target, "zk"));
                continue;
            };
            let x = ours.ops_per_sec / kazoo.ops_per_sec.max(1e-9);
            let tail_ok = mode == "locked" || slowest(ours) <= slowest(kazoo);
            let met = x >= factor && lost(ours) == 0 && tail_ok;
            // What the service allows at best, measured with the same
            // sessions and window.
            // The optimistic floor writes as the engine must for the same
            // guarantee (the fenced chain); the plain chain shows the fence's
            // share beside it.
            let plain_chain = find(
                records,
                "zk",
                "raw",
                CHAIN_SCENARIO,
                &chain_variant(writers, false),
            );
            let floor = if mode == "optimistic" {
                find(
                    records,
                    "zk",
                    "raw",
                    CHAIN_SCENARIO,
                    &chain_variant(writers, true),
                )
                .or(plain_chain)
            } else {
                find(records, "zk", "raw", LOCK_SCENARIO, &lock_variant(writers))
            };
            let floor_rate = floor.map(|f| f.ops_per_sec);
            let floor_text = floor.map(|f| {
                if mode == "optimistic" {
                    format!(
                        "raw {} chain while {} sessions keep a watched copy: {:.0} ops/s (p50 {}, p90 {}; {:.2} reads per change per watcher){}{}",
                        if f.variant.ends_with("fenced") {
                            "fenced conditional-write"
                        } else {
                            "setData"
                        },
                        writers - 1,
                        f.ops_per_sec,
                        lat(f, 0.5),
                        lat(f, 0.9),
                        extra_f64(f, "reads_per_change_per_watcher").unwrap_or(f64::NAN),
                        plain_chain
                            .filter(|p| p.variant != f.variant)
                            .map(|p| format!("; without the fence {:.0} ops/s", p.ops_per_sec))
                            .unwrap_or_default(),
                        chain_alone
                            .map(|a| format!("; the plain chain alone {:.0} ops/s", a.ops_per_sec))
                            .unwrap_or_default()
                    )
                } else {
                    format!(
                        "raw lock recipe (the engine's round trips), {writers} sessions: {:.0} ops/s (p50 {}, p90 {}), lost {}",
                        f.ops_per_sec,
                        lat(f, 0.5),
                        lat(f, 0.9),
                        lost(f)
                    )
                }
            });
            let raw_cas = find(records, "zk", "raw", "paired", "raw CAS").and_then(Record::p50);
            let tail_floor = match (tail_ok, watch, raw_cas) {
                (false, Some(watch), Some(cas)) => format!(
                    "; the slowest increment is a loser's: the winner writes again after one CAS ({}), a loser learns the new version only from the watch ({} from the write's start)",
                    fmt_ns(cas),
                    fmt_ns(watch)
                ),
                (false, ..) => "; slowest increment slower than kazoo's".into(),
                _ => String::new(),
            };
            let explanation = if met {
                String::new()
            } else if x >= factor && lost(ours) == 0 {
                tail_floor.trim_start_matches("; ").to_string()
            } else {
                let why: String = match floor_rate {
                    Some(rate) if rate < factor * kazoo.ops_per_sec => format!(
                        "the floor allows {:.2}x kazoo at most (ours is at {:.0}% of the floor)",
                        rate / kazoo.ops_per_sec.max(1e-9),
                        100.0 * ours.ops_per_sec / rate.max(1e-9)
                    ),
                    Some(rate) => format!(
                        "below the floor's {:.2}x kazoo: ours is at {:.0}% of the floor",
                        rate / kazoo.ops_per_sec.max(1e-9),
                        100.0 * ours.ops_per_sec / rate.max(1e-9)
                    ),
                    None => "floor not measured".into(),
                };
                why + &tail_floor
            };
            out.push(Row {
                target,
                backend: "zk",
                measured: format!(
                    "{:.0} ops/s = {x:.2}x kazoo ({:.0}); slowest {} vs {}; lost {}",
                    ours.ops_per_sec,
                    kazoo.ops_per_sec,
                    slowest(ours).map(fmt_ns).unwrap_or_default(),
                    slowest(kazoo).map(fmt_ns).unwrap_or_default(),
                    lost(ours)
                ),
                floor: floor_text.unwrap_or_else(|| "-".into()),
                met: Some(met),
                explanation,
            });
        }
    }
}

/// The uncontended locked update against its raw floor (interleaved).
fn locked_floor(records: &[Record], backend: &'static str, out: &mut Vec<Row>) {
    let target = "locked update (uncontended) within 1.15x the raw locked update (p50)".to_string();
    let ours =
        find(records, backend, "sharedstate", "paired", "locked update").and_then(Record::p50);
    let floor = find(records, backend, "raw", "paired", "raw locked update").and_then(Record::p50);
    let cas = find(records, backend, "raw", "paired", "raw CAS").and_then(Record::p50);
    let fenced = find(
        records,
        backend,
        "raw",
        "paired",
        "raw locked update + fence",
    )
    .and_then(Record::p50);
    let (Some(ours), Some(floor)) = (ours, floor) else {
        out.push(not_measured(target, backend));
        return;
    };
    let x = ours as f64 / floor as f64;
    let requests = records
        .iter()
        .find(|r| {
            r.backend == backend && r.scenario == "requests-per-update" && r.variant == "locked"
        })
        .and_then(|r| extra_f64(r, "requests_per_update"));
    out.push(Row {
        target,
        backend,
        measured: format!(
            "{} = {x:.2}x{}",
            fmt_ns(ours),
            requests
                .map(|n| format!("; {n:.1} server requests per update"))
                .unwrap_or_default()
        ),
        floor: format!(
            "{} ({}){}{}",
            fmt_ns(floor),
            if backend == "zk" {
                "4 requests: create, getChildren, getData pipelined, then multi"
            } else {
                "2 requests: two txns"
            },
            cas.map(|c| format!(
                " ({:.2}x one raw CAS: two round trips)",
                floor as f64 / c as f64
            ))
            .unwrap_or_default(),
            fenced
                .map(|f| format!(
                    "; with the engine's incarnation fence in the same multi (5 operations): {}",
                    fmt_ns(f)
                ))
                .unwrap_or_default()
        ),
        met: Some(x <= 1.15),
        explanation: match fenced {
            _ if x <= 1.15 => String::new(),
            Some(f) => format!(
                "the raw update with the engine's fence (create + delete of a sequential child in the multi, which guards against a deleted and re-created key) is {:.2}x the plain floor, so the fence is not the gap; ours is {:.2}x that fenced floor: the rest is the engine's client-side work per update (encode, merge, apply, task hand-offs) on this host, not a server floor",
                f as f64 / floor as f64,
                ours as f64 / f as f64
            ),
            None => "interleaved p50s: the gap is the engine's own (encode, merge, diff, local queue)"
                .into(),
        },
    });
}

/// etcd: contended locked writers against the raw lock recipe.
fn etcd_lock(records: &[Record], out: &mut Vec<Row>) {
    for writers in [4, 8] {
        let target = format!(
            "{writers} writers locked: within 1.5x the raw lock recipe's throughput, 0 lost"
        );
        let ours = find(
            records,
            "etcd",
            "sharedstate",
            "contended",
            &format!("{writers} writers locked"),
        );
        let raw = find(
            records,
            "etcd",
            "raw",
            "contended-lock",
            &format!("{writers} writers, watch from now + re-check"),
        );
        let (Some(ours), Some(raw)) = (ours, raw) else {
            out.push(not_measured(target, "etcd"));
            continue;
        };
        let x = raw.ops_per_sec / ours.ops_per_sec.max(1e-9);
        let met = x <= 1.5 && lost(ours) == 0;
        out.push(Row {
            target,
            backend: "etcd",
            measured: format!(
                "{:.0} ops/s (p90 {}), lost {}: raw is {x:.2}x ours",
                ours.ops_per_sec,
                ours.quantile(0.9).map(fmt_ns).unwrap_or_default(),
                lost(ours)
            ),
            floor: format!(
                "raw recipe {:.0} ops/s (p90 {})",
                raw.ops_per_sec,
                raw.quantile(0.9).map(fmt_ns).unwrap_or_default()
            ),
            met: Some(met),
            explanation: if met {
                String::new()
            } else {
                "see the raw recipe's own figures beside it".into()
            },
        });
    }
    let target = "no fixed sleep in a hand-over: 4 writers locked p90 under 50 ms".to_string();
    let ours = find(
        records,
        "etcd",
        "sharedstate",
        "contended",
        "4 writers locked",
    );
    let past = find(
        records,
        "etcd",
        "raw",
        "watch-start",
        "from a past revision",
    )
    .and_then(Record::p50);
    let now = find(records, "etcd", "raw", "watch-start", "from now").and_then(Record::p50);
    match ours.and_then(|r| r.quantile(0.9)) {
        Some(p90) => out.push(Row {
            target,
            backend: "etcd",
            measured: format!("p90 {}", fmt_ns(p90)),
            floor: match (past, now) {
                (Some(p), Some(n)) => format!(
                    "a deletion reaches a watch started at a past revision in {}, one started now in {} (etcd syncs past-revision watches every 100 ms)",
                    fmt_ns(p),
                    fmt_ns(n)
                ),
                _ => "-".into(),
            },
            met: Some(p90 < 50_000_000),
            explanation: String::new(),
        }),
        None => out.push(not_measured(target, "etcd")),
    }
}

/// Scale targets, per backend.
fn scale(records: &[Record], backend: &'static str, out: &mut Vec<Row>) {
    let fanout = |n: usize| {
        records.iter().find(|r| {
            r.backend == backend
                && r.implementation == "sharedstate"
                && r.scenario == "fanout"
                && r.variant == format!("{n} sessions: all")
                && !r.quantiles_ns.is_empty()
        })
    };
    let raw_fanout = |n: usize| {
        find(
            records,
            backend,
            "raw",
            "fanout",
            &format!("{n} sessions: all"),
        )
    };
    let target = "propagation p99 to 1,000 sessions within 3x that to 100".to_string();
    match (fanout(100), fanout(1000)) {
        (Some(small), Some(large)) => {
            let (a, b) = (small.p99().unwrap_or(0), large.p99().unwrap_or(0));
            let x = b as f64 / a.max(1) as f64;
            let raw = raw_fanout(100)
                .and_then(Record::p99)
                .zip(raw_fanout(1000).and_then(Record::p99));
            let raw_x = raw.map(|(ra, rb)| rb as f64 / ra.max(1) as f64);
            out.push(Row {
                target,
                backend,
                measured: format!(
                    "1,000: p50 {} / p99 {} = {x:.2}x the p99 to 100{}",
                    large.p50().map(fmt_ns).unwrap_or_default(),
                    fmt_ns(b),
                    large
                        .extra
                        .get("open_all_ms")
                        .map(|v| format!("; opened in {v} ms"))
                        .unwrap_or_default()
                ),
                floor: format!(
                    "100: p99 {}{}",
                    fmt_ns(a),
                    raw.map(|(ra, rb)| format!(
                        "; {}, interleaved: p99 {} to 100, {} to 1,000 ({:.2}x)",
                        if backend == "memory" {
                            "in-process floor (one tokio broadcast, each task decodes the JSON)"
                        } else {
                            "raw client, same process"
                        },
                        fmt_ns(ra),
                        fmt_ns(rb),
                        rb as f64 / ra.max(1) as f64
                    ))
                    .unwrap_or_else(|| "; raw fan-out floor not measured".into())
                ),
                met: Some(x <= 3.0),
                explanation: match raw_x {
                    _ if x <= 3.0 => String::new(),
                    Some(rx) if rx > 3.0 && backend == "memory" => format!(
                        "the in-process floor (a broadcast to 1,000 tasks, each decoding the payload) is itself {rx:.2}x on this runtime and these cores, so 3x is out of reach for any design here; ours is {:.2}x the floor's ratio",
                        x / rx
                    ),
                    Some(rx) if rx > 3.0 => format!(
                        "the raw client's own fan-out in one process is {rx:.2}x: 1,000 sessions and the server share the host's cores, so 3x is out of reach for any client here"
                    ),
                    Some(rx) => format!(
                        "the floor reaches {rx:.2}x: the rest is the engine's per-instance work"
                    ),
                    None => "raw fan-out floor not measured".into(),
                },
            });
        }
        _ => out.push(not_measured(target, backend)),
    }
    let many = records.iter().find(|r| {
        r.backend == backend && r.scenario == "many-states" && r.variant.ends_with(": open")
    });
    let target =
        "memory per idle instance under 64 KiB beyond two copies of the payload".to_string();
    match many {
        Some(r) => {
            let beyond = extra_f64(r, "rss_beyond_two_payloads_bytes").unwrap_or(f64::NAN);
            let per = extra_f64(r, "rss_per_instance_bytes").unwrap_or(f64::NAN);
            let rate = extra_f64(r, "idle_server_requests_per_s");
            out.push(Row {
                target,
                backend,
                measured: format!(
                    "{:.1} KiB per instance, {:.1} KiB beyond two payloads ({}){}",
                    per / 1024.0,
                    beyond / 1024.0,
                    r.variant.trim_end_matches(": open"),
                    rate.map(|r| format!("; idle: {r:.0} server requests/s"))
                        .unwrap_or_default()
                ),
                floor: "-".into(),
                met: Some(beyond < 64.0 * 1024.0),
                explanation: String::new(),
            });
        }
        None => out.push(not_measured(target, backend)),
    }
}

/// Reported-only targets: payload sizes, engine CPU per change (and no
/// diff without subscribers), the fleet's server cost.
fn reported(records: &[Record], backend: &'static str, out: &mut Vec<Row>) {
    let by = |scenario: &str, variant: &str| {
        records.iter().find(|r| {
            r.backend == backend
                && r.implementation == "sharedstate"
                && r.scenario == scenario
                && r.variant == variant
        })
    };
    if backend != "memory" {
        let target = "payloads from 1 KiB to 1 MiB: update and propagation p50 / p99".to_string();
        let top = crate::fixture::PAYLOAD_SIZES
            .last()
            .map(|&(_, n)| n)
            .unwrap_or("");
        let cells: Vec<String> = crate::fixture::PAYLOAD_SIZES
            .iter()
            .filter_map(|&(_, name)| {
                let u = find(records, backend, "sharedstate", "payload-update", name)?;
                let p = find(records, backend, "sharedstate", "payload-propagation", name)?;
                let raw =
                    find(records, backend, "raw", "payload-update", name).and_then(Record::p50);
                Some(format!(
                    "{name}: {} / {}, {} / {}{}",
                    u.p50().map(fmt_ns).unwrap_or_default(),
                    u.p99().map(fmt_ns).unwrap_or_default(),
                    p.p50().map(fmt_ns).unwrap_or_default(),
                    p.p99().map(fmt_ns).unwrap_or_default(),
                    raw.map(|r| format!(" (raw CAS {})", fmt_ns(r)))
                        .unwrap_or_default()
                ))
            })
            .collect();
        if cells.is_empty() {
            out.push(not_measured(target, backend));
        } else {
            out.push(Row {
                target,
                backend,
                measured: cells.join("; "),
                floor: format!(
                    "raw CAS per size in the payload table; {top} is the largest under the 1,000,000-byte value limit (ZooKeeper's jute.maxbuffer is 1 MiB per packet)"
                ),
                met: Some(cells.len() == crate::fixture::PAYLOAD_SIZES.len()),
                explanation: String::new(),
            });
        }
    }
    let target =
        "engine CPU per change reported; no diff computed when nobody subscribes".to_string();
    let cpu = |variant: &str| {
        by("engine-cpu", variant).and_then(|r| extra_f64(r, "cpu_us_per_applied_change"))
    };
    let pairs: Vec<String> = ["200 B", "64 KiB"]
        .iter()
        .filter_map(|size| {
            let off = cpu(&format!("{size}, no subscribers"))?;
            let on = cpu(&format!("{size}, one subscriber per instance"))?;
            Some(format!(
                "{size}: {off:.0} µs without subscribers, {on:.0} µs with one"
            ))
        })
        .collect();
    if pairs.is_empty() {
        out.push(not_measured(target, backend));
    } else {
        out.push(Row {
            target,
            backend,
            measured: format!("process CPU per applied change (11 instances): {}", pairs.join("; ")),
            floor: "-".into(),
            met: Some(true),
            explanation: "reported; the diff skip is proven by the core unit test no_change_set_is_computed_while_nobody_subscribes".into(),
        });
    }
    if backend == "memory" {
        return;
    }
    let target =
        "freshness verification and applied-version reporting at 1,000 instances: server requests/s".to_string();
    let rate = |variant: String| {
        by("fleet-cost", &variant).and_then(|r| extra_f64(r, "server_requests_per_s"))
    };
    let n = records
        .iter()
        .find(|r| r.backend == backend && r.scenario == "fleet-cost" && r.variant != "client alone")
        .and_then(|r| r.extra.get("instances").and_then(|v| v.as_u64()))
        .unwrap_or(0);
    let alone = rate("client alone".into());
    let idle_off = rate(format!("{n} instances, reporting off: idle"));
    let idle_on = rate(format!("{n} instances, reporting on (1 s): idle"));
    let busy_off = rate(format!("{n} instances, reporting off: 5 changes/s"));
    let busy_on = rate(format!("{n} instances, reporting on (1 s): 5 changes/s"));
    match (alone, idle_off, idle_on, busy_off, busy_on) {
        (Some(alone), Some(idle_off), Some(idle_on), Some(busy_off), Some(busy_on)) => {
            out.push(Row {
                target,
                backend,
                measured: format!(
                    "{n} instances on one client: verification {:.0}/s ({:.2}/s per instance; idle with reporting on {idle_on:.0}/s); at 5 changes/s: {busy_off:.0}/s with reporting off, reporting adds {:.0}/s ({:.2} per instance per change)",
                    (idle_off - alone).max(0.0),
                    (idle_off - alone).max(0.0) / n.max(1) as f64,
                    (busy_on - busy_off).max(0.0),
                    (busy_on - busy_off).max(0.0) / (5.0 * n.max(1) as f64),
                ),
                floor: format!("the client alone (keep-alive, the writer): {alone:.0}/s"),
                met: Some(true),
                explanation: "reported".into(),
            });
        }
        _ => out.push(not_measured(target, backend)),
    }
}

/// Writes the targets table.
pub fn table(md: &mut String, records: &[Record]) {
    let mut rows = Vec::new();
    against_kazoo(records, &mut rows);
    for backend in ["zk", "etcd"] {
        locked_floor(records, backend, &mut rows);
    }
    etcd_lock(records, &mut rows);
    for backend in ["zk", "etcd", "memory"] {
        scale(records, backend, &mut rows);
        reported(records, backend, &mut rows);
    }
    let _ = writeln!(
        md,
        "## Targets (issue 16: contention, the locked floor, scale)\n"
    );
    let _ = writeln!(
        md,
        "| target | backend | measured | floor | met | why not met (measured floor) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for row in rows {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {met} | {} |",
            row.target, row.backend, row.measured, row.floor, row.explanation
        );
    }
    let _ = writeln!(md);
}
