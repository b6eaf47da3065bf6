//! The process-monitor agent: every agent watches the host's processes for
//! the globs in one shared `Monitor` state, and an operator changes the globs
//! from elsewhere.
//!
//! ```text
//! cargo run --example process_monitor                      # demo: 3 agents + operator, in memory
//! cargo run --example process_monitor --features sharedstate-examples/zookeeper -- --backend zk://127.0.0.1:2181
//! cargo run --example process_monitor --features sharedstate-examples/etcd -- --backend etcd://127.0.0.1:2379
//! ```
//!
//! On `memory://` the whole scenario runs in this one process and exits by
//! itself. On a real backend this is one agent that runs until Ctrl-C; change
//! its globs with the `sharedstate` command from another terminal.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use sharedstate::{CoordinationBackend, SharedState, StateEvent};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

/// What every agent shares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Monitor {
    /// Process-name globs to watch.
    globs: Vec<String>,
    /// Seconds between scans of the process table.
    interval_secs: u64,
    /// Report processes that stopped matching, too.
    report_gone: bool,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            globs: vec!["systemd*".into(), "rsync*".into()],
            interval_secs: 5,
            report_gone: true,
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "A fleet agent whose process globs are shared state")]
struct Args {
    /// Backend URL: memory:// (in-process demo), zk://host:2181[/chroot], etcd://host:2379.
    #[arg(long, env = "SHAREDSTATE_BACKEND", default_value = "memory://")]
    backend: String,
    /// Path of the shared state.
    #[arg(long, default_value = "/sharedstate/examples/process-monitor")]
    path: String,
    /// Agents to run in the in-memory demo.
    #[arg(long, default_value_t = 3)]
    agents: usize,
}

#[tokio::main]
async fn main() {
    // Logs go to stderr (stdout is the agent's report), coloured only on a
    // terminal and without NO_COLOR, so a log file holds no escape codes.
    let stderr_is_terminal = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(stderr_is_terminal && std::env::var_os("NO_COLOR").is_none())
        .init();
    let args = Args::parse();
    let outcome = if args.backend.starts_with("memory://") {
        demo(&args).await
    } else {
        agent_until_ctrl_c(&args).await
    };
    if let Err(error) = outcome {
        eprintln!("process_monitor: {error}");
        std::process::exit(1);
    }
}

/// Several agents and an operator in one process: the operator adds
/// `firefox*` and every agent reports exactly that change.
async fn demo(args: &Args) -> Result<(), sharedstate::Error> {
    let mut agents = Vec::new();
    for n in 1..=args.agents.max(1) {
        let backend = sharedstate::connect(&args.backend).await?;
        agents.push(Agent::open(format!("agent-{n}"), backend, &args.path).await?);
    }
    let operator =
        SharedState::<Monitor>::builder(sharedstate::connect(&args.backend).await?, &args.path)
            .expect_existing(Duration::from_secs(5))
            .register_instance(false)
            .open()
            .await?;
    println!("listeners: {}", operator.instances().await?.len());
    println!("operator: adding \"firefox*\" to the globs");
    operator.update(|m| m.globs.push("firefox*".into())).await?;
    for agent in &mut agents {
        agent.report_next_change().await?;
    }
    for agent in agents {
        agent.close().await;
    }
    println!(
        "listeners after close: {}",
        operator.instances().await?.len()
    );
    operator.close().await;
    Ok(())
}

/// One agent on a real backend, until Ctrl-C.
async fn agent_until_ctrl_c(args: &Args) -> Result<(), sharedstate::Error> {
    let backend = sharedstate::connect(&args.backend).await?;
    let mut agent = Agent::open("agent".into(), backend, &args.path).await?;
    // One listener for the whole loop: a fresh `ctrl_c()` per iteration
    // misses a Ctrl-C that arrives while the loop body runs (a scan).
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let interval = Duration::from_secs(agent.monitor()?.interval_secs.max(1));
        tokio::select! {
            _ = &mut ctrl_c => break,
            reported = agent.report_next_change() => reported?,
            _ = tokio::time::sleep(interval) => agent.scan()?,
        }
    }
    println!("[{}] closing (listener removed)", agent.name);
    agent.close().await;
    Ok(())
}

struct Agent {
    name: String,
    state: SharedState<Monitor>,
    changes: sharedstate::Subscription,
    system: System,
    /// The copy could not be proven current last time we looked.
    stale: bool,
}

impl Agent {
    async fn open(
        name: String,
        backend: Arc<dyn CoordinationBackend>,
        path: &str,
    ) -> Result<Self, sharedstate::Error> {
        let state = SharedState::builder(backend, path)
            .initial(Monitor::default())
            .open()
            .await?;
        let changes = state.subscribe();
        println!(
            "[{name}] listening as {} on {path}, globs {:?}",
            state.instance_id(),
            state.read()?.globs
        );
        let mut agent = Agent {
            name,
            state,
            changes,
            system: System::new(),
            stale: false,
        };
        agent.scan()?;
        Ok(agent)
    }

    /// Waits for the next event and prints it with what now matches.
    async fn report_next_change(&mut self) -> Result<(), sharedstate::Error> {
        use futures::StreamExt;
        let Some(event) = self.changes.next().await else {
            return Err(sharedstate::Error::new(
                sharedstate::ErrorKind::Closed,
                sharedstate::Operation::Watch,
            ));
        };
        match event {
            StateEvent::Changed(set) => {
                let origin = format!("{:?}", set.origin).to_lowercase();
                for change in &set.changes {
                    println!("[{}] v{} {origin}: {change}", self.name, set.version);
                }
                self.scan()?;
            }
            StateEvent::Rejected { version, error } => {
                println!(
                    "[{}] v{version} rejected, keeping the last good globs: {error}",
                    self.name
                );
            }
            StateEvent::PayloadDeleted => println!(
                "[{}] payload deleted, keeping the last good globs until it is written again",
                self.name
            ),
            StateEvent::Lagged { missed } => println!(
                "[{}] fell {missed} events behind; the next change is the net difference",
                self.name
            ),
            other => println!("[{}] unknown event: {other:?}", self.name),
        }
        Ok(())
    }

    /// The monitor settings to use now. While the service cannot prove the
    /// copy current (an outage, a partition), `read()` says `Stale`: the
    /// agent says so once and keeps working with the last settings it
    /// knew, and says when they are verified again. Only a closed state is
    /// an error.
    fn monitor(&mut self) -> Result<Arc<Monitor>, sharedstate::Error> {
        match self.state.read() {
            Ok(monitor) => {
                if std::mem::take(&mut self.stale) {
                    println!("[{}] settings verified again with the service", self.name);
                }
                Ok(monitor)
            }
            Err(error) if error.kind() == sharedstate::ErrorKind::Stale => {
                let (monitor, unverified_for) = self.state.last_known();
                if !std::mem::replace(&mut self.stale, true) {
                    println!(
                        "[{}] cannot verify the settings with the service (unverified for {:.0?}); \
                         keeping the last known globs {:?} until it is back",
                        self.name, unverified_for, monitor.globs
                    );
                }
                Ok(monitor)
            }
            Err(error) => Err(error),
        }
    }

    /// Matches the globs against the running processes and prints the hits.
    fn scan(&mut self) -> Result<(), sharedstate::Error> {
        let monitor = self.monitor()?;
        let globs = compile(&monitor.globs);
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing(),
        );
        let mut hits: Vec<String> = self
            .system
            .processes()
            .values()
            .filter_map(|p| {
                let name = p.name().to_string_lossy();
                globs
                    .is_match(name.as_ref())
                    .then(|| format!("{name}({})", p.pid()))
            })
            .collect();
        hits.sort();
        let scanned = self.system.processes().len();
        let shown = if hits.is_empty() {
            "nothing".to_owned()
        } else {
            hits.join(", ")
        };
        println!(
            "[{}] globs {:?} match: {shown} (of {scanned} processes)",
            self.name, monitor.globs
        );
        Ok(())
    }

    async fn close(self) {
        self.state.close().await;
    }
}

/// Builds the matcher; a glob that does not parse is reported and skipped
/// rather than stopping the agent (operators make typos).
fn compile(globs: &[String]) -> GlobSet {
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        match Glob::new(glob) {
            Ok(glob) => {
                builder.add(glob);
            }
            Err(error) => eprintln!("ignoring glob {glob:?}: {error}"),
        }
    }
    builder.build().unwrap_or_else(|error| {
        eprintln!("glob set failed to build ({error}); matching nothing");
        GlobSet::empty()
    })
}
