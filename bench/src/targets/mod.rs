//! The performance targets table (issue 16): for each target, what was
//! measured, the floor it is compared with (a raw client doing the same
//! round trips, or a peer), met or not, and for a target not met the
//! measured floor that explains it.

use std::fmt::Write as _;

use crate::harness::{fmt_ns, Record};

mod contention;

use contention::{against_kazoo, etcd_lock, locked_floor};

/// One row: target, backend, measured, floor, met, why not met.
pub(super) struct Row {
    pub target: String,
    pub backend: &'static str,
    pub measured: String,
    pub floor: String,
    pub met: Option<bool>,
    pub explanation: String,
}

pub(super) fn find<'a>(
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

pub(super) fn extra_f64(r: &Record, name: &str) -> Option<f64> {
    r.extra.get(name).and_then(|v| v.as_f64())
}

pub(super) fn slowest(r: &Record) -> Option<u64> {
    r.quantile(1.0)
}

pub(super) fn lost(r: &Record) -> i64 {
    r.extra
        .get("lost_updates")
        .and_then(|v| v.as_i64())
        .unwrap_or(-1)
}

pub(super) fn not_measured(target: String, backend: &'static str) -> Row {
    Row {
        target,
        backend,
        measured: "not measured".into(),
        floor: "-".into(),
        met: None,
        explanation: String::new(),
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
