//! The cluster fault suite (feature `containers`): a 3-member ZooKeeper
//! ensemble or etcd cluster, a workload of appenders in both write modes, a
//! locked counter and readers sampling `read()` every 50 ms, faults (kill
//! and restart the node a client is on, kill the leader, pause a node past
//! the session timeout, cut a client's connection), then a Jepsen-style
//! check of what the service holds against what every client saw.
//!
//! The suite is generic over how a client is made from a backend URL
//! (`connect`), so it runs wherever the backends are (the facade's
//! `tests/cluster_faults.rs`, `scripts/chaos.sh`).
//!
//! Every client reaches every member through a [`TcpProxy`] of its own, so
//! a client's connection can be cut without touching the members, and the
//! member a client is on is the one its proxies hold a live connection to.

pub mod check;
pub mod workload;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sharedstate_core::{CoordinationBackend, Key, Result, SharedState, WriteMode};
use tokio_util::sync::CancellationToken;

use crate::fixtures::{Cluster, ServiceKind, TcpProxy};
use check::{check_counter, check_journal, Verdict};
use workload::{Counter, Journal, Recording};

/// Makes a client from a backend URL (`zk://...`, `etcd://...`).
pub type Connect =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<Arc<dyn CoordinationBackend>>> + Send + Sync>;

/// One fault of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Kill (SIGKILL) the member the first appender is on, restart it.
    KillClientsNode,
    /// Kill the leader, restart it.
    KillLeader,
    /// Freeze the member the second appender is on for longer than the
    /// session timeout, then thaw it.
    PausePastSessionTimeout,
    /// Cut the third appender's connections (no server fault) for a while
    /// shorter than the session timeout: it reconnects on the same session.
    CutClientConnection,
}

impl Fault {
    /// Every fault once, in this order.
    pub const ALL: [Fault; 4] = [
        Fault::CutClientConnection,
        Fault::KillClientsNode,
        Fault::KillLeader,
        Fault::PausePastSessionTimeout,
    ];
}

/// What to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Which service.
    pub kind: ServiceKind,
    /// The faults, one after the other.
    pub faults: Vec<Fault>,
    /// Appenders per write mode (at least 2).
    pub appenders_per_mode: usize,
    /// Read-only instances.
    pub readers: usize,
    /// The instances' `max_staleness`.
    pub max_staleness: Duration,
    /// The clients' session timeout (ZooKeeper) / lease TTL (etcd).
    pub session_timeout: Duration,
    /// Quiet time before the first fault, between faults and after the
    /// last one.
    pub settle: Duration,
}

impl RunConfig {
    /// Each fault once, short settles: the run `scripts/test.sh` does.
    pub fn short(kind: ServiceKind) -> Self {
        RunConfig {
            kind,
            faults: Fault::ALL.to_vec(),
            appenders_per_mode: 2,
            readers: 2,
            max_staleness: Duration::from_secs(3),
            session_timeout: Duration::from_secs(4),
            settle: Duration::from_secs(4),
        }
    }

    fn url(&self, endpoints: &[String]) -> String {
        let hosts = endpoints.join(",");
        let session_ms = self.session_timeout.as_millis();
        match self.kind {
            ServiceKind::ZooKeeper => {
                format!("zk://{hosts}?session_timeout_ms={session_ms}&connect_timeout_ms=10000")
            }
            ServiceKind::Etcd => format!(
                "etcd://{hosts}?session_ttl_s={}&request_timeout_ms=2000&connect_timeout_ms=5000",
                self.session_timeout.as_secs().max(2)
            ),
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// One verdict per journal and the counter.
    pub verdicts: Vec<Verdict>,
    /// What was done when, for the log.
    pub log: Vec<String>,
    /// How long the run took.
    pub took: Duration,
}

impl Report {
    /// Whether nothing was violated.
    pub fn ok(&self) -> bool {
        self.verdicts.iter().all(Verdict::ok)
    }
}

/// One client with its proxies (one per member).
struct Client {
    backend: Arc<dyn CoordinationBackend>,
    proxies: Vec<TcpProxy>,
}

impl Client {
    async fn open(config: &RunConfig, cluster: &Cluster, home: usize, connect: &Connect) -> Client {
        let n = cluster.len();
        let mut proxies = Vec::with_capacity(n);
        for i in 0..n {
            let member = (home + i) % n;
            let proxy = TcpProxy::start(cluster.endpoint(member).to_owned())
                .await
                .unwrap_or_else(|e| panic!("proxy for member {member}: {e}"));
            proxies.push((member, proxy));
        }
        let endpoints: Vec<String> = proxies.iter().map(|(_, p)| p.endpoint()).collect();
        let backend = connect(config.url(&endpoints))
            .await
            .unwrap_or_else(|e| panic!("connecting a chaos client: {e}"));
        // Index proxies by member.
        proxies.sort_by_key(|(member, _)| *member);
        Client {
            backend,
            proxies: proxies.into_iter().map(|(_, p)| p).collect(),
        }
    }

    /// The member this client is connected to now (its proxy with a live
    /// connection), if exactly one is.
    fn member(&self) -> Option<usize> {
        let live: Vec<usize> = (0..self.proxies.len())
            .filter(|&i| self.proxies[i].live_connections() > 0)
            .collect();
        live.first().copied()
    }
}

/// Runs the workload under `config.faults` on a fresh 3-member cluster and
/// checks it.
pub async fn run(config: RunConfig, connect: Connect) -> Report {
    let started = Instant::now();
    let mut log = Vec::new();
    let note = |log: &mut Vec<String>, text: String| {
        let line = format!("{:>6.1}s {text}", started.elapsed().as_secs_f64());
        tracing::info!("{line}");
        log.push(line);
    };
    let cluster = match config.kind {
        ServiceKind::ZooKeeper => crate::fixtures::zookeeper_cluster(3).await,
        ServiceKind::Etcd => crate::fixtures::etcd_cluster(3).await,
    };
    note(
        &mut log,
        format!("cluster formed in {:?}", cluster.formed_in()),
    );
    let root = crate::unique_key("chaos");
    let paths = [
        root.child("journal-locked").expect("key"),
        root.child("journal-optimistic").expect("key"),
        root.child("counter").expect("key"),
    ];
    let shared: workload::Shared = Arc::new(Mutex::new(Recording::default()));
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    let mut instances: Vec<(String, SharedState<Journal>)> = Vec::new();
    let mut appender_names: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    let n_appenders = config.appenders_per_mode * 2;
    for i in 0..n_appenders {
        let client = Client::open(&config, &cluster, i % cluster.len(), &connect).await;
        let mode = workload::mode_of(i);
        let slot = usize::from(mode == WriteMode::Optimistic);
        let state = SharedState::builder(client.backend.clone(), paths[slot].as_str())
            .initial(Journal::default())
            .write_mode(mode)
            .max_staleness(config.max_staleness)
            .lock_timeout(Duration::from_secs(15))
            .open()
            .await
            .unwrap_or_else(|e| panic!("opening a journal: {e}"));
        let name = format!("a{i}-{mode:?}").to_lowercase();
        appender_names[slot].push(name.clone());
        instances.push((name.clone(), state.clone()));
        tasks.push(tokio::spawn(workload::appender(
            name,
            state,
            shared.clone(),
            stop.clone(),
        )));
        clients.push(client);
    }
    let counter_client = Client::open(&config, &cluster, 0, &connect).await;
    let counter_state = SharedState::builder(counter_client.backend.clone(), paths[2].as_str())
        .initial(Counter::default())
        .write_mode(WriteMode::Locked)
        .max_staleness(config.max_staleness)
        .lock_timeout(Duration::from_secs(15))
        .open()
        .await
        .unwrap_or_else(|e| panic!("opening the counter: {e}"));
    tasks.push(tokio::spawn(workload::counter(
        "counter".into(),
        counter_state.clone(),
        shared.clone(),
        stop.clone(),
    )));
    for r in 0..config.readers {
        let client = Client::open(&config, &cluster, r % cluster.len(), &connect).await;
        let mut states = Vec::new();
        for path in &paths[..2] {
            let state = SharedState::builder(client.backend.clone(), path.as_str())
                .initial(Journal::default())
                .max_staleness(config.max_staleness)
                .open()
                .await
                .unwrap_or_else(|e| panic!("opening a reader: {e}"));
            instances.push((format!("r{r}"), state.clone()));
            states.push(state);
        }
        tasks.push(tokio::spawn(workload::reader(
            states,
            shared.clone(),
            stop.clone(),
        )));
        clients.push(client);
    }
    let probe_backend = connect(config.url(&cluster.endpoints()))
        .await
        .unwrap_or_else(|e| panic!("connecting the probe: {e}"));
    let probe_key = root.child("probe").expect("key");
    tasks.push(tokio::spawn(workload::probe(
        probe_backend.clone(),
        probe_key,
        shared.clone(),
        stop.clone(),
    )));
    note(
        &mut log,
        format!("workload running: {} instances", instances.len()),
    );

    tokio::time::sleep(config.settle).await;
    for fault in &config.faults {
        inject(*fault, &config, &cluster, &clients, &mut log, &started).await;
        tokio::time::sleep(config.settle).await;
    }
    if let Err(e) = cluster.wait_healthy().await {
        note(
            &mut log,
            format!("the cluster is not healthy after the faults: {e}"),
        );
    }
    stop.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(workload::WRITE_BOUND * 2, task).await;
    }
    let healed_at = Instant::now();
    note(&mut log, "workload stopped; checking".into());

    // What the service holds, read linearizably by a client of its own.
    let mut finals: Vec<Vec<String>> = Vec::new();
    for path in &paths[..2] {
        finals.push(final_journal(&probe_backend, path).await);
    }
    let final_counter = final_value::<Counter>(&probe_backend, &paths[2]).await.n;

    // Every instance converges within max_staleness of the end.
    let mut converged = [true, true];
    for (name, state) in &instances {
        let slot = usize::from(state.path() == &paths[1]);
        let target = &finals[slot];
        let deadline = healed_at + config.max_staleness + Duration::from_secs(1);
        loop {
            let reached = state
                .read()
                .map(|j| j.ids.len() == target.len() && j.ids.last() == target.last())
                .unwrap_or(false);
            if reached {
                break;
            }
            if Instant::now() > deadline {
                converged[slot] = false;
                note(
                    &mut log,
                    format!("{name} did not converge within max_staleness after the end"),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let recording = std::mem::take(&mut *shared.lock().unwrap_or_else(|p| p.into_inner()));
    let backend_name = match config.kind {
        ServiceKind::ZooKeeper => "zookeeper",
        ServiceKind::Etcd => "etcd",
    };
    let mut verdicts = Vec::new();
    for (slot, mode) in ["locked", "optimistic"].iter().enumerate() {
        let mut verdict = check_journal(
            &format!("{backend_name} {mode} appends"),
            &finals[slot],
            &recording,
            paths[slot].as_str(),
            &appender_names[slot],
            config.max_staleness,
            config.session_timeout,
        );
        verdict.converged = converged[slot];
        if !verdict.converged {
            verdict
                .violations
                .push("an instance did not converge after the last heal".into());
        }
        verdicts.push(verdict);
    }
    verdicts.push(check_counter(
        &format!("{backend_name} locked counter"),
        final_counter,
        &recording,
        &["counter".to_owned()],
        config.session_timeout,
    ));
    for verdict in &verdicts {
        if let Some(stall) = &verdict.stall {
            note(
                &mut log,
                format!(
                    "{}: longest stall {:?}, {} from {:.1}s to {:.1}s ({} runs of its closure, \
                     longest attempt {:?}); errors meanwhile: {:?}",
                    verdict.name,
                    verdict.longest_stall,
                    stall.writer,
                    stall.from.saturating_duration_since(started).as_secs_f64(),
                    stall.to.saturating_duration_since(started).as_secs_f64(),
                    stall.runs,
                    stall.longest_attempt,
                    stall.errors
                ),
            );
        }
    }
    if !recording.read_errors.is_empty() {
        if let Some(first) = verdicts.first_mut() {
            first.violations.push(format!(
                "read() failed other than Stale: {:?}",
                &recording.read_errors[..recording.read_errors.len().min(3)]
            ));
        }
    }
    for (_, state) in instances {
        state.close().await;
    }
    counter_state.close().await;
    for client in &clients {
        let _ = client.backend.close().await;
    }
    let _ = counter_client.backend.close().await;
    let _ = probe_backend.close().await;
    Report {
        verdicts,
        log,
        took: started.elapsed(),
    }
}

async fn inject(
    fault: Fault,
    config: &RunConfig,
    cluster: &Cluster,
    clients: &[Client],
    log: &mut Vec<String>,
    started: &Instant,
) {
    let mut note = |text: String| {
        let line = format!("{:>6.1}s {text}", started.elapsed().as_secs_f64());
        tracing::info!("{line}");
        log.push(line);
    };
    let down_for = Duration::from_secs(5);
    match fault {
        Fault::KillClientsNode => {
            let member = clients[0].member().unwrap_or(0);
            note(format!("fault: kill member {member} (appender 0 is on it)"));
            ok_or_note(cluster.kill(member).await, &mut note);
            tokio::time::sleep(down_for).await;
            ok_or_note(cluster.start(member).await, &mut note);
            note(format!("member {member} restarted"));
        }
        Fault::KillLeader => match cluster.leader().await {
            Ok(leader) => {
                note(format!("fault: kill the leader, member {leader}"));
                ok_or_note(cluster.kill(leader).await, &mut note);
                tokio::time::sleep(down_for).await;
                ok_or_note(cluster.start(leader).await, &mut note);
                note(format!("member {leader} restarted"));
            }
            Err(e) => note(format!("no leader to kill: {e}")),
        },
        Fault::PausePastSessionTimeout => {
            let member = clients.get(1).and_then(Client::member).unwrap_or(1);
            let frozen = config.session_timeout + Duration::from_secs(2);
            note(format!("fault: pause member {member} for {frozen:?}"));
            ok_or_note(cluster.pause(member).await, &mut note);
            tokio::time::sleep(frozen).await;
            ok_or_note(cluster.unpause(member).await, &mut note);
            note(format!("member {member} thawed"));
        }
        Fault::CutClientConnection => {
            let client = &clients[2.min(clients.len() - 1)];
            let cut = config.session_timeout / 2;
            note(format!("fault: cut appender 2's connections for {cut:?}"));
            for proxy in &client.proxies {
                proxy.suspend();
            }
            tokio::time::sleep(cut).await;
            for proxy in &client.proxies {
                proxy.resume();
            }
            note("appender 2's connections restored".into());
        }
    }
    if let Err(e) = cluster.wait_healthy().await {
        note(format!("not healthy after {fault:?}: {e}"));
    }
}

fn ok_or_note(result: std::io::Result<()>, note: &mut impl FnMut(String)) {
    if let Err(e) = result {
        note(format!("fault hook failed: {e}"));
    }
}

async fn final_value<T: serde::de::DeserializeOwned + Default>(
    backend: &Arc<dyn CoordinationBackend>,
    path: &Key,
) -> T {
    let payload = path.child("payload").expect("key");
    for _ in 0..50 {
        match backend.get_linearizable(&payload).await {
            Ok(Some(found)) => {
                return serde_json::from_slice(&found.value)
                    .unwrap_or_else(|e| panic!("the final payload of {path} does not decode: {e}"))
            }
            Ok(None) => return T::default(),
            Err(e) => {
                tracing::warn!(%e, "reading the final state; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    panic!("the final state of {path} could not be read")
}

async fn final_journal(backend: &Arc<dyn CoordinationBackend>, path: &Key) -> Vec<String> {
    final_value::<Journal>(backend, path).await.ids
}
