//! Scale: fan-out to many sessions on one server, many `SharedState`s on
//! one client, memory per idle instance, the server's watch count, and the
//! server requests per second an idle fleet costs (periodic freshness
//! verification and applied-version reports).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use futures::StreamExt;
use sharedstate::{StateEvent, WriteMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::fixture::{close, open, small, Ctx};
use crate::harness::{announce, histogram, record_ns, Record};
use crate::raw_fanout::RawFan;

fn done(record: Record) -> Record {
    announce(&record);
    record
}

/// Resident memory of this process in bytes (Linux `/proc/self/statm`).
fn rss_bytes() -> u64 {
    let page = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// Server-side counters: watches and requests handled so far.
#[derive(Debug, Clone, Copy, Default)]
struct ServerCounters {
    watches: Option<u64>,
    requests: Option<u64>,
}

/// `host:port` of the server behind a bench URL (`zk://h:p`, `etcd://h:p`).
pub(crate) fn endpoint(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    Some((scheme, rest.split(['/', ',']).next()?))
}

async fn exchange(address: &str, request: &[u8]) -> anyhow::Result<String> {
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .map_err(|_| anyhow!("connecting to {address} timed out"))??;
    stream.write_all(request).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| anyhow!("{address} did not answer within 5 s"))??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// ZooKeeper's `mntr` (watch count, packets received) or etcd's
/// `/metrics` (watchers, gRPC messages received).
async fn server_counters(url: &str) -> ServerCounters {
    let Some((scheme, address)) = endpoint(url) else {
        return ServerCounters::default();
    };
    let field = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .map(|l| {
                l.split_whitespace()
                    .last()
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .sum::<Option<f64>>()
            .map(|v| v as u64)
    };
    match scheme {
        "zk" => match exchange(address, b"mntr").await {
            Ok(text) => ServerCounters {
                watches: field(&text, "zk_watch_count"),
                requests: field(&text, "zk_packets_received"),
            },
            Err(error) => {
                tracing::debug!(%error, "ZooKeeper mntr failed");
                ServerCounters::default()
            }
        },
        "etcd" => {
            let request =
                format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n");
            match exchange(address, request.as_bytes()).await {
                Ok(text) => ServerCounters {
                    watches: field(&text, "etcd_debugging_mvcc_watcher_total"),
                    requests: field(&text, "grpc_server_msg_received_total"),
                },
                Err(error) => {
                    tracing::debug!(%error, "etcd /metrics failed");
                    ServerCounters::default()
                }
            }
        }
        _ => ServerCounters::default(),
    }
}

/// Fan-out to `sessions` instances, each with its own client session.
pub async fn fanout(ctx: &Ctx, sessions: usize) -> anyhow::Result<Vec<Record>> {
    let plan = ctx.plan;
    let path = ctx.path(&format!("fanout-{sessions}"));
    let writer = open(ctx, &path, small(), WriteMode::Optimistic).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, u64, Instant)>();
    let mut readers = Vec::new();
    let before_open = server_counters(&ctx.url).await;
    let rss_before = rss_bytes();
    let open_started = Instant::now();
    // Open in chunks: all at once would mostly measure connection storms.
    for chunk in (0..sessions).collect::<Vec<_>>().chunks(20) {
        let opened = futures::future::join_all(
            chunk
                .iter()
                .map(|_| open(ctx, &path, small(), WriteMode::Optimistic)),
        )
        .await;
        for (offset, part) in opened.into_iter().enumerate() {
            let part = part.with_context(|| format!("opening reader {}", readers.len()))?;
            let index = chunk[0] + offset;
            let tx = tx.clone();
            let mut subscription = part.1.subscribe();
            tokio::spawn(async move {
                while let Some(event) = subscription.next().await {
                    if let StateEvent::Changed(set) = event {
                        if tx
                            .send((index, set.version.as_u64(), Instant::now()))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            });
            readers.push(part);
        }
    }
    let open_time = open_started.elapsed();
    let rss_per = rss_bytes().saturating_sub(rss_before) / sessions.max(1) as u64;
    let (idle_rate, watches) = idle_cost(ctx, before_open).await;
    // The floor: the raw client, as many sessions each watching one key in
    // this same process (memory: a broadcast to as many tasks, each decoding
    // the payload), written in turns with ours (interleaved rounds).
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<(usize, u64, Instant)>();
    let mut raw = RawFan::open(ctx, sessions, raw_tx).await;
    let mut all = histogram();
    let mut each = histogram();
    let (mut raw_all, mut raw_each) = (histogram(), histogram());
    let mut errors = 0u64;
    let mut raw_errors = 0u64;
    let mut notes = Vec::new();
    let started = Instant::now();
    for round in 0..plan.fanout_rounds + 1 {
        if let Ok(raw) = raw.as_mut() {
            while raw_rx.try_recv().is_ok() {}
            let t0 = Instant::now();
            match raw.write().await {
                Ok(target) => {
                    let hists = (round > 0).then_some((&mut raw_all, &mut raw_each));
                    if let Err(missing) =
                        arrivals_to_all(&mut raw_rx, sessions, target, t0, hists).await
                    {
                        raw_errors += 1;
                        notes.push(format!(
                            "raw round {round}: {missing} sessions got nothing within 30 s"
                        ));
                    }
                }
                Err(error) => {
                    raw_errors += 1;
                    notes.push(format!("raw write failed: {error:#}"));
                }
            }
        }
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        if let Err(error) = writer.1.update(|v| v.counter += 1).await {
            errors += 1;
            notes.push(format!("update failed: {error}"));
            continue;
        }
        let target = writer.1.version().as_u64();
        let hists = (round > 0).then_some((&mut all, &mut each));
        if let Err(missing) = arrivals_to_all(&mut rx, readers.len(), target, t0, hists).await {
            errors += 1;
            notes.push(format!(
                "round {round}: {missing} sessions got nothing within 30 s"
            ));
        }
    }
    let wall = started.elapsed();
    let n = readers.len();
    let mut raw_records = Vec::new();
    match raw {
        Ok(raw) => {
            let what = raw.describe();
            for (variant, hist) in [("all", &raw_all), ("each", &raw_each)] {
                let mut r = Record::new(
                    &ctx.label,
                    "raw",
                    "fanout",
                    &format!("{sessions} sessions: {variant}"),
                )
                .with_histogram(hist, wall)
                .extra("sessions", sessions)
                .note(what.clone());
                r.errors = raw_errors;
                raw_records.push(done(r));
            }
            raw.close().await;
        }
        Err(error) => raw_records.push(done(
            Record::new(
                &ctx.label,
                "raw",
                "fanout",
                &format!("{sessions} sessions: failed"),
            )
            .note(format!("failed: {error:#}")),
        )),
    }
    let mut r_all = ctx
        .record("fanout", &format!("{n} sessions: all"))
        .with_histogram(&all, wall)
        .extra("sessions", n)
        .extra("open_all_ms", open_time.as_millis() as u64)
        .extra("rss_per_instance_bytes", rss_per)
        .note(format!(
            "opening {n} sessions took {open_time:.1?}; {} KiB of client memory per instance",
            rss_per / 1024
        ));
    if let Some(rate) = idle_rate {
        r_all = r_all
            .extra("idle_server_requests_per_s", rate)
            .note(format!("idle fleet: {rate:.0} server requests/s"));
    }
    if let Some(watches) = watches {
        r_all = r_all
            .extra("server_watches", watches)
            .note(format!("{watches} watches on the server"));
    }
    r_all.errors = errors;
    r_all.notes.extend(notes);
    let r_each = ctx
        .record("fanout", &format!("{n} sessions: each"))
        .with_histogram(&each, wall)
        .extra("sessions", n);
    let mut records = vec![done(r_all), done(r_each)];
    records.extend(raw_records);
    drop(tx);
    let mut everything = vec![writer];
    everything.extend(readers);
    close(everything).await;
    Ok(records)
}

/// Waits until each of `sessions` reported a version at or above `target`
/// (30 s at most); records, when asked, the time to the last one (`all`)
/// and to each. `Err` holds how many never reported.
async fn arrivals_to_all(
    rx: &mut mpsc::UnboundedReceiver<(usize, u64, Instant)>,
    sessions: usize,
    target: u64,
    t0: Instant,
    mut hists: Option<(
        &mut hdrhistogram::Histogram<u64>,
        &mut hdrhistogram::Histogram<u64>,
    )>,
) -> Result<(), usize> {
    let mut seen = vec![false; sessions];
    let mut missing = sessions;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = t0;
    while missing > 0 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((index, version, at))) if version >= target => {
                if index < sessions && !seen[index] {
                    seen[index] = true;
                    missing -= 1;
                    last = last.max(at);
                    if let Some((_, each)) = hists.as_mut() {
                        record_ns(each, at.saturating_duration_since(t0));
                    }
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    if missing > 0 {
        return Err(missing);
    }
    if let Some((all, _)) = hists {
        record_ns(all, last.saturating_duration_since(t0));
    }
    Ok(())
}

/// The server's request rate while the opened instances sit idle (their
/// freshness verification and reports only), and its watch count.
async fn idle_cost(ctx: &Ctx, before: ServerCounters) -> (Option<f64>, Option<u64>) {
    let window = if ctx.plan.smoke {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(10)
    };
    // Let the opening settle (registrations, first reports).
    tokio::time::sleep(window / 5).await;
    let start = server_counters(&ctx.url).await;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let end = server_counters(&ctx.url).await;
    // Our own two probes count as requests on etcd (one each).
    let rate = match (start.requests, end.requests) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / t0.elapsed().as_secs_f64()),
        _ => None,
    };
    let watches = end
        .watches
        .map(|w| w.saturating_sub(before.watches.unwrap_or(0)));
    (rate, watches)
}

/// `count` `SharedState`s on one client (one backend connection), each at
/// its own path: open time, memory per idle instance, the idle server cost.
pub async fn many_states(ctx: &Ctx, count: usize) -> anyhow::Result<Vec<Record>> {
    let backend = sharedstate::connect(&ctx.url)
        .await
        .with_context(|| format!("connecting to {}", ctx.url))?;
    let payload_bytes = serde_json::to_vec(&small())?.len() as u64;
    let before = server_counters(&ctx.url).await;
    let rss_before = rss_bytes();
    let mut opening = histogram();
    let started = Instant::now();
    let mut states = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(50) {
        let opened = futures::future::join_all(chunk.iter().map(|i| {
            let backend = backend.clone();
            let path = ctx.path(&format!("many-{count}/state-{i}"));
            async move {
                let t0 = Instant::now();
                let state = sharedstate::SharedState::builder(backend, path.as_str())
                    .initial(small())
                    .write_mode(WriteMode::Optimistic)
                    .open()
                    .await
                    .with_context(|| format!("opening {path}"))?;
                anyhow::Ok((state, t0.elapsed()))
            }
        }))
        .await;
        for opened in opened {
            let (state, took) = opened?;
            record_ns(&mut opening, took);
            states.push(state);
        }
    }
    let open_time = started.elapsed();
    let rss_per = rss_bytes().saturating_sub(rss_before) / count.max(1) as u64;
    let (idle_rate, watches) = idle_cost(ctx, before).await;
    let beyond_payload = rss_per.saturating_sub(2 * payload_bytes);
    let mut r = ctx
        .record("many-states", &format!("{count} states on one client: open"))
        .with_histogram(&opening, open_time)
        .extra("states", count)
        .extra("open_all_ms", open_time.as_millis() as u64)
        .extra("rss_per_instance_bytes", rss_per)
        .extra("rss_beyond_two_payloads_bytes", beyond_payload)
        .extra("payload_bytes", payload_bytes)
        .note(format!(
            "opening {count} took {open_time:.1?}; {} KiB per idle instance ({} KiB beyond two copies of the {payload_bytes}-byte payload)",
            rss_per / 1024,
            beyond_payload / 1024
        ));
    if let Some(rate) = idle_rate {
        r = r
            .extra("idle_server_requests_per_s", rate)
            .note(format!("idle: {rate:.0} server requests/s"));
    }
    if let Some(watches) = watches {
        r = r
            .extra("server_watches", watches)
            .note(format!("{watches} watches on the server"));
    }
    for state in states {
        state.close().await;
    }
    let _ = backend.close().await;
    Ok(vec![done(r)])
}

/// Server requests per uncontended update, per write mode: counted on the
/// server (ZooKeeper `mntr` packets received, etcd gRPC messages received),
/// so the figure does not depend on the machine's load. The raw floors'
/// counts are fixed by construction (ZooKeeper's locked update: create,
/// getChildren, getData, multi; etcd's: two txns).
pub async fn requests_per_update(ctx: &Ctx) -> anyhow::Result<Vec<Record>> {
    let updates: u64 = if ctx.plan.smoke { 10 } else { 200 };
    let mut records = Vec::new();
    for mode in [WriteMode::Locked, WriteMode::Optimistic] {
        let name = match mode {
            WriteMode::Locked => "locked",
            WriteMode::Optimistic => "optimistic",
        };
        let path = ctx.path(&format!("requests-{name}"));
        let part = open(ctx, &path, small(), mode).await?;
        for _ in 0..5 {
            part.1.update(|v| v.counter += 1).await?;
        }
        let before = server_counters(&ctx.url).await;
        let t0 = Instant::now();
        for _ in 0..updates {
            part.1.update(|v| v.counter += 1).await?;
        }
        let wall = t0.elapsed();
        let after = server_counters(&ctx.url).await;
        close(vec![part]).await;
        let Some(delta) = before
            .requests
            .zip(after.requests)
            .map(|(a, b)| b.saturating_sub(a))
        else {
            continue;
        };
        // Background traffic (pings, keep-alives, reports) over the run is
        // included: it is a small share of 200 updates' worth.
        let per = delta as f64 / updates as f64;
        let mut r = ctx
            .record("requests-per-update", name)
            .extra("requests_per_update", per)
            .extra("updates", updates)
            .note(format!(
                "{per:.2} server requests per update ({updates} updates in {wall:.1?}, background traffic included)"
            ));
        r.samples = updates;
        records.push(done(r));
    }
    Ok(records)
}

/// What periodic freshness verification and applied-version reporting cost
/// the server with `count` instances of one state on one client, as server
/// requests per second, separated: the client alone (session keep-alive);
/// the idle fleet with reporting off (adds the verification) and on (idle,
/// reports cost nothing); then the fleet while a writer on its own client
/// changes the payload `CHANGES_PER_S` times a second, reporting off (the
/// watch notifications and reads) and on (adds the reports).
pub async fn fleet_cost(ctx: &Ctx, count: usize) -> anyhow::Result<Vec<Record>> {
    const CHANGES_PER_S: u64 = 5;
    let window = if ctx.plan.smoke {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(10)
    };
    let path = ctx.path(&format!("fleet-{count}"));
    let writer = open(ctx, &path, small(), WriteMode::Optimistic).await?;
    let backend = sharedstate::connect(&ctx.url)
        .await
        .with_context(|| format!("connecting to {}", ctx.url))?;
    let rate = |a: ServerCounters, b: ServerCounters, took: Duration| {
        a.requests
            .zip(b.requests)
            .map(|(a, b)| b.saturating_sub(a) as f64 / took.as_secs_f64())
    };
    let measure = |changing: bool| {
        let writer = &writer.1;
        async move {
            let a = server_counters(&ctx.url).await;
            let t0 = Instant::now();
            let mut changes = 0u64;
            if changing {
                let mut tick = tokio::time::interval(Duration::from_millis(1000 / CHANGES_PER_S));
                while t0.elapsed() < window {
                    tick.tick().await;
                    if writer.update(|v| v.counter += 1).await.is_ok() {
                        changes += 1;
                    }
                }
            } else {
                tokio::time::sleep(window).await;
            }
            let b = server_counters(&ctx.url).await;
            (rate(a, b, t0.elapsed()), changes)
        }
    };
    let mut records = Vec::new();
    let mut push = |variant: String, per_s: Option<f64>, changes: u64, note: String| {
        let mut r = ctx
            .record("fleet-cost", &variant)
            .extra("instances", count)
            .extra("changes", changes)
            .note(note);
        if let Some(per_s) = per_s {
            r = r.extra("server_requests_per_s", per_s);
        }
        records.push(done(r));
    };
    tokio::time::sleep(window / 5).await;
    let (alone, _) = measure(false).await;
    push(
        "client alone".into(),
        alone,
        0,
        "the client's session (keep-alive) and the writer instance, no fleet".into(),
    );
    for reporting in [false, true] {
        let mut states = Vec::with_capacity(count);
        for chunk in (0..count).collect::<Vec<_>>().chunks(50) {
            let opened = futures::future::join_all(chunk.iter().map(|_| {
                sharedstate::SharedState::builder(backend.clone(), path.as_str())
                    .initial(small())
                    .write_mode(WriteMode::Optimistic)
                    .report_applied(reporting)
                    .open()
            }))
            .await;
            for state in opened {
                states.push(state.with_context(|| format!("opening {path}"))?);
            }
        }
        let label = if reporting {
            "reporting on (1 s)"
        } else {
            "reporting off"
        };
        // Let the opening settle (registrations, first reports).
        tokio::time::sleep(window / 5).await;
        let (idle, _) = measure(false).await;
        push(
            format!("{count} instances, {label}: idle"),
            idle,
            0,
            "idle: freshness verification (plus the keep-alive)".into(),
        );
        let (changing, changes) = measure(true).await;
        push(
            format!("{count} instances, {label}: {CHANGES_PER_S} changes/s"),
            changing,
            changes,
            format!("{changes} payload changes by a writer on its own client during the window"),
        );
        for state in states {
            state.close().await;
        }
    }
    let _ = backend.close().await;
    close(vec![writer]).await;
    Ok(records)
}
