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

use crate::engine::{close, open, small, Ctx};
use crate::harness::{announce, histogram, record_ns, Record};

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
fn endpoint(url: &str) -> Option<(&str, &str)> {
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
    let mut all = histogram();
    let mut each = histogram();
    let mut errors = 0u64;
    let mut notes = Vec::new();
    let started = Instant::now();
    for round in 0..plan.fanout_rounds + 1 {
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        if let Err(error) = writer.1.update(|v| v.counter += 1).await {
            errors += 1;
            notes.push(format!("update failed: {error}"));
            continue;
        }
        let target = writer.1.version().as_u64();
        let mut seen = vec![false; readers.len()];
        let mut missing = readers.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last = t0;
        while missing > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((index, version, at))) if version >= target => {
                    if !seen[index] {
                        seen[index] = true;
                        missing -= 1;
                        last = last.max(at);
                        if round > 0 {
                            record_ns(&mut each, at.saturating_duration_since(t0));
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if missing > 0 {
            errors += 1;
            notes.push(format!(
                "round {round}: {missing} sessions got nothing within 30 s"
            ));
        } else if round > 0 {
            record_ns(&mut all, last.saturating_duration_since(t0));
        }
    }
    let wall = started.elapsed();
    let n = readers.len();
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
    let records = vec![done(r_all), done(r_each)];
    drop(tx);
    let mut everything = vec![writer];
    everything.extend(readers);
    close(everything).await;
    Ok(records)
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
