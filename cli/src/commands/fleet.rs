//! What the fleet applied: where each live instance stands against a
//! payload version (for `status`), and `--wait` after `set`, `patch` and
//! `edit`, which waits until every live instance applied or rejected the
//! new version, like `kubectl rollout status`.
//!
//! Instances report in their registration (`<PATH>/listeners/<id>`)
//! the version they applied, the latest one they saw and their problem with
//! it; reports are coalesced (about once a second per instance), so a fresh
//! write shows as `stale` for a moment.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sharedstate::{instances_of, InstanceInfo, Version};

use super::Env;
use crate::errors::{CliError, CliResult, Exit};
use crate::interrupt::Interrupts;

/// How often `--wait` looks at the listener registrations.
const POLL: Duration = Duration::from_millis(500);

/// Where one instance stands against the payload's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// It applied this version (the target, or a later one).
    Applied(Version),
    /// It saw `version` (the target or a later one) and rejected it.
    Rejected { version: Version, reason: String },
    /// It has not reported the target yet: it is behind, or its report is
    /// on its way (reports are coalesced).
    Stale { applied: Version, seen: Version },
    /// It reports nothing: an older sharedstate, or reports switched off.
    Silent,
}

impl Standing {
    /// Where `info` stands against `target` (`None`: there is no payload).
    pub fn of(info: &InstanceInfo, target: Option<Version>) -> Standing {
        let Some(applied) = info.applied_version else {
            return Standing::Silent;
        };
        let seen = info.seen_version.unwrap_or(applied).max(applied);
        let reached = target.is_none_or(|target| seen >= target);
        match &info.problem {
            Some(problem) if reached => Standing::Rejected {
                version: seen,
                reason: reason(problem),
            },
            _ if target.is_none_or(|target| applied >= target) => Standing::Applied(applied),
            _ => Standing::Stale { applied, seen },
        }
    }

    /// The instance applied or rejected the version: nothing more to wait for.
    pub fn settled(&self) -> bool {
        matches!(self, Standing::Applied(_) | Standing::Rejected { .. })
    }

    /// `at v254`, `rejected v254: ...`, `stale: at v250`, `not reporting`.
    pub fn text(&self) -> String {
        match self {
            Standing::Applied(version) => format!("at v{version}"),
            Standing::Rejected { version, reason } => format!("rejected v{version}: {reason}"),
            Standing::Stale { applied, seen } if seen > applied => {
                format!("stale: at v{applied}, rejected v{seen}")
            }
            Standing::Stale { applied, .. } => format!("stale: at v{applied}"),
            Standing::Silent => "not reporting".to_owned(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Standing::Applied(_) => "applied",
            Standing::Rejected { .. } => "rejected",
            Standing::Stale { .. } => "stale",
            Standing::Silent => "not_reporting",
        }
    }

    /// Summary groups come in this order, then by version, newest first.
    fn rank(&self) -> (u8, std::cmp::Reverse<Version>) {
        let (rank, version) = match self {
            Standing::Applied(version) => (0, *version),
            Standing::Rejected { version, .. } => (1, *version),
            Standing::Stale { applied, .. } => (2, *applied),
            Standing::Silent => (3, Version::new(0)),
        };
        (rank, std::cmp::Reverse(version))
    }
}

/// The engine's rejection without its fixed prefix: serde's own words.
fn reason(problem: &str) -> String {
    problem
        .strip_prefix("payload does not match the state's type: ")
        .unwrap_or(problem)
        .to_owned()
}

/// `5 instances: 4 at v254, 1 rejected v254: invalid type: ...`; `0
/// instances` when there are none.
pub fn summary(instances: &[(InstanceInfo, Standing)]) -> String {
    let mut groups: BTreeMap<((u8, std::cmp::Reverse<Version>), String), usize> = BTreeMap::new();
    for (_, standing) in instances {
        *groups
            .entry((standing.rank(), standing.text()))
            .or_default() += 1;
    }
    let count = instances.len();
    let noun = if count == 1 { "instance" } else { "instances" };
    if groups.is_empty() {
        return format!("{count} {noun}");
    }
    let parts: Vec<String> = groups
        .into_iter()
        .map(|((_, text), n)| format!("{n} {text}"))
        .collect();
    format!("{count} {noun}: {}", parts.join(", "))
}

/// The listener registrations and where each stands against `target`.
pub async fn standings(
    env: &Env,
    target: Option<Version>,
) -> CliResult<Vec<(InstanceInfo, Standing)>> {
    let found = env
        .bounded(
            "listing the instances",
            instances_of(env.backend.as_ref(), &env.paths.listeners),
        )
        .await?;
    Ok(found
        .into_iter()
        .map(|info| {
            let standing = Standing::of(&info, target);
            (info, standing)
        })
        .collect())
}

/// One instance as JSON: its registration plus its `state`.
pub fn instance_json(info: &InstanceInfo, standing: &Standing) -> Value {
    json!({
        "id": info.id,
        "host": info.host,
        "pid": info.pid,
        "since_unix_ms": info.since_unix_ms,
        "applied_version": info.applied_version,
        "seen_version": info.seen_version,
        "problem": info.problem,
        "state": standing.name(),
        "standing": standing.text(),
    })
}

/// The instance table of `status`: ID, HOST, PID, STATE.
pub fn table(instances: &[(InstanceInfo, Standing)]) -> String {
    let header = ["ID", "HOST", "PID", "STATE"].map(str::to_owned);
    let rows: Vec<[String; 4]> = instances
        .iter()
        .map(|(info, standing)| {
            [
                info.id.clone(),
                info.host.clone(),
                info.pid.to_string(),
                standing.text(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            let line = row
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect::<Vec<_>>()
                .join("  ");
            line.trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How a `--wait` ended.
#[derive(Debug)]
pub struct Convergence {
    pub target: Version,
    pub instances: Vec<(InstanceInfo, Standing)>,
    pub timed_out: bool,
    pub waited: Duration,
}

impl Convergence {
    /// `{"target_version", "converged", "timed_out", "summary", "instances"}`.
    pub fn json(&self) -> Value {
        json!({
            "target_version": self.target,
            "converged": self.error().is_none(),
            "timed_out": self.timed_out,
            "summary": summary(&self.instances),
            "instances": self
                .instances
                .iter()
                .map(|(info, standing)| instance_json(info, standing))
                .collect::<Vec<_>>(),
        })
    }

    /// Exit 6 naming the instances that rejected the version; exit 7
    /// naming those that did not get to it in time; `None` when every
    /// reporting instance applied it.
    pub fn error(&self) -> Option<CliError> {
        let total = self.instances.len();
        let who = |keep: &dyn Fn(&Standing) -> bool| -> Vec<String> {
            self.instances
                .iter()
                .filter(|(_, standing)| keep(standing))
                .map(|(info, standing)| {
                    format!(
                        "{} (host {}, pid {}): {}",
                        info.id,
                        info.host,
                        info.pid,
                        standing.text()
                    )
                })
                .collect()
        };
        let rejected = who(&|s| matches!(s, Standing::Rejected { .. }));
        let stale = who(&|s| matches!(s, Standing::Stale { .. }));
        let target = self.target;
        if !rejected.is_empty() {
            let mut message = format!(
                "{} of {total} instances rejected version {target}: {}",
                rejected.len(),
                rejected.join("; ")
            );
            if !stale.is_empty() {
                message.push_str(&format!(
                    "; and {} did not apply it within {:?}: {}",
                    stale.len(),
                    self.waited,
                    stale.join("; ")
                ));
            }
            return Some(CliError::new(Exit::Rejected, message));
        }
        if !stale.is_empty() {
            return Some(CliError::new(
                Exit::NotConverged,
                format!(
                    "{} of {total} instances did not apply version {target} within {:?}: {}; raise the wait (--wait=2m) or look at those instances",
                    stale.len(),
                    self.waited,
                    stale.join("; ")
                ),
            ));
        }
        None
    }

    /// Instances that report nothing, named for a note (they are not
    /// waited for).
    pub fn silent(&self) -> Vec<&InstanceInfo> {
        self.instances
            .iter()
            .filter(|(_, standing)| *standing == Standing::Silent)
            .map(|(info, _)| info)
            .collect()
    }
}

/// Waits up to `timeout` until every live instance that reports applied or
/// rejected `target` (instances that appear meanwhile count, those that go
/// do not). Ctrl-C ends the wait (exit 130; the write stays made).
pub async fn wait(env: &Env, target: Version, timeout: Duration) -> CliResult<Convergence> {
    let mut interrupts = Interrupts::install()?;
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let instances = tokio::select! {
            found = standings(env, Some(target)) => found?,
            signal = interrupts.next() => {
                return Err(signal.exit_with(format!(
                    "interrupted while waiting for the instances; version {target} was written"
                )))
            }
        };
        let settled = instances
            .iter()
            .all(|(_, s)| s.settled() || *s == Standing::Silent);
        let now = Instant::now();
        if settled || now >= deadline {
            return Ok(Convergence {
                target,
                instances,
                timed_out: !settled,
                waited: now.duration_since(started),
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL.min(deadline - now)) => {}
            signal = interrupts.next() => {
                return Err(signal.exit_with(format!(
                    "interrupted while waiting for the instances; version {target} was written"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(
        id: &str,
        applied: Option<u64>,
        seen: Option<u64>,
        problem: Option<&str>,
    ) -> InstanceInfo {
        InstanceInfo {
            id: id.into(),
            host: "web-1".into(),
            pid: 42,
            since_unix_ms: 0,
            applied_version: applied.map(Version::new),
            seen_version: seen.map(Version::new),
            problem: problem.map(str::to_owned),
        }
    }

    const SERDE: &str = r#"payload does not match the state's type: invalid type: string "firefox*", expected a sequence"#;

    #[test]
    fn standings_against_the_payload_version() {
        let v = Some(Version::new(254));
        assert_eq!(
            Standing::of(&info("a", Some(254), Some(254), None), v),
            Standing::Applied(Version::new(254))
        );
        assert_eq!(
            Standing::of(&info("b", Some(250), Some(254), Some(SERDE)), v).text(),
            r#"rejected v254: invalid type: string "firefox*", expected a sequence"#
        );
        assert_eq!(
            Standing::of(&info("c", Some(250), Some(250), None), v).text(),
            "stale: at v250"
        );
        // Rejected an older version and not at the new one yet: stale.
        let old_problem = Standing::of(&info("d", Some(240), Some(250), Some(SERDE)), v);
        assert_eq!(old_problem.text(), "stale: at v240, rejected v250");
        assert!(!old_problem.settled());
        assert_eq!(
            Standing::of(&info("e", None, None, None), v),
            Standing::Silent
        );
        // A later version applied counts for the target.
        assert!(Standing::of(&info("f", Some(260), Some(260), None), v).settled());
    }

    #[test]
    fn the_summary_groups_instances() {
        let v = Some(Version::new(254));
        let list: Vec<_> = [
            info("a", Some(254), Some(254), None),
            info("b", Some(254), Some(254), None),
            info("c", Some(250), Some(254), Some(SERDE)),
            info("d", Some(254), Some(254), None),
            info("e", Some(254), Some(254), None),
        ]
        .into_iter()
        .map(|i| {
            let s = Standing::of(&i, v);
            (i, s)
        })
        .collect();
        assert_eq!(
            summary(&list),
            r#"5 instances: 4 at v254, 1 rejected v254: invalid type: string "firefox*", expected a sequence"#
        );
        assert_eq!(summary(&list[..1]), "1 instance: 1 at v254");
        assert_eq!(summary(&[]), "0 instances");
        let table = table(&list[2..3]);
        assert_eq!(
            table,
            "ID  HOST   PID  STATE\nc   web-1  42   rejected v254: invalid type: string \"firefox*\", expected a sequence"
        );
    }

    #[test]
    fn a_wait_names_who_rejected_or_did_not_get_there() {
        let v = Version::new(9);
        let make = |list: Vec<InstanceInfo>, timed_out| Convergence {
            target: v,
            instances: list
                .into_iter()
                .map(|i| {
                    let s = Standing::of(&i, Some(v));
                    (i, s)
                })
                .collect(),
            timed_out,
            waited: Duration::from_secs(3),
        };
        let done = make(
            vec![
                info("a", Some(9), Some(9), None),
                info("s", None, None, None),
            ],
            false,
        );
        assert!(done.error().is_none());
        assert_eq!(done.silent().len(), 1);
        assert_eq!(done.json()["converged"], true);
        let rejected = make(
            vec![
                info("a", Some(9), Some(9), None),
                info("b", Some(8), Some(9), Some("missing field `x`")),
            ],
            false,
        );
        let error = rejected.error().expect("not converged");
        assert_eq!(error.exit, Exit::Rejected);
        assert_eq!(
            error.message,
            "1 of 2 instances rejected version 9: b (host web-1, pid 42): rejected v9: missing field `x`"
        );
        let late = make(vec![info("c", Some(8), Some(8), None)], true);
        let error = late.error().expect("not converged");
        assert_eq!(error.exit, Exit::NotConverged);
        assert!(error.message.starts_with("1 of 1 instances did not apply version 9 within 3s: c (host web-1, pid 42): stale: at v8"), "{error}");
        assert_eq!(late.json()["timed_out"], true);
    }

    mod end_to_end {
        use serde::{Deserialize, Serialize};
        use serde_json::Value;
        use sharedstate::memory::MemoryCluster;
        use sharedstate::{CoordinationBackend, SharedState};
        use std::sync::Arc;
        use std::time::Duration;

        use super::super::super::tests::{fails, ok};
        use crate::errors::Exit;

        /// An instance that wants `globs` to be a list.
        #[derive(Clone, Debug, Serialize, Deserialize)]
        struct Agent {
            globs: Vec<String>,
        }

        async fn instance<T>(backend: Arc<dyn CoordinationBackend>, path: &str) -> SharedState<T>
        where
            T: Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
        {
            SharedState::builder(backend, path)
                .expect_existing(Duration::from_secs(5))
                .report_interval(Duration::from_millis(20))
                .open()
                .await
                .expect("open an instance")
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn wait_and_status_follow_what_each_instance_applied() {
            let name = "fleet-wait";
            let b = ["--backend", "memory://fleet-wait"];
            let cluster = MemoryCluster::named(name);
            ok(&[b[0], b[1], "init", "/f", r#"{"globs":["a"]}"#]).await;
            let tolerant: SharedState<Value> = instance(Arc::new(cluster.client()), "/f").await;
            let typed: SharedState<Agent> = instance(Arc::new(cluster.client()), "/f").await;

            let bad = r#"{"globs":"firefox*"}"#;
            let err = fails(&[b[0], b[1], "set", "/f", bad, "--wait=20s"]).await;
            assert_eq!(err.exit, Exit::Rejected, "{err}");
            assert!(err.message.contains(typed.instance_id()), "{err}");
            assert!(!err.message.contains(tolerant.instance_id()), "{err}");
            assert!(
                err.message
                    .starts_with("1 of 2 instances rejected version ")
                    && err
                        .message
                        .ends_with(r#"invalid type: string "firefox*", expected a sequence"#),
                "{err}"
            );
            let status = ok(&[b[0], b[1], "status", "/f"]).await;
            let line = status
                .lines()
                .find(|l| l.starts_with("listeners:"))
                .expect("a listeners line");
            let version = tolerant.version();
            assert_eq!(
                line,
                format!(
                    r#"listeners:   2 instances: 1 at v{version}, 1 rejected v{version}: invalid type: string "firefox*", expected a sequence"#
                )
            );
            assert!(
                status.contains(&format!("{}  ", typed.instance_id())),
                "the instance table names it: {status}"
            );
            let json: Value =
                serde_json::from_str(&ok(&[b[0], b[1], "status", "/f", "--json"]).await)
                    .expect("json");
            let states: Vec<&str> = json["instances"]
                .as_array()
                .expect("instances")
                .iter()
                .filter_map(|i| i["state"].as_str())
                .collect();
            assert_eq!(
                states.iter().filter(|s| **s == "rejected").count(),
                1,
                "{json}"
            );

            // A valid write converges both; --json is one document.
            let out = ok(&[b[0], b[1], "set", "/f", r#"{"globs":["b"]}"#, "--wait=20s"]).await;
            let last = out.lines().last().expect("a summary line");
            assert_eq!(last, format!("2 instances: 2 at v{}", typed.version()));
            let out = ok(&[
                b[0],
                b[1],
                "patch",
                "/f",
                r#"{"globs":["c"]}"#,
                "--wait=20s",
                "--json",
            ])
            .await;
            let report: Value = serde_json::from_str(&out).expect("one JSON document");
            assert_eq!(report["result"], "changed");
            assert_eq!(report["wait"]["converged"], true, "{report}");
            assert_eq!(report["wait"]["target_version"], report["version"]);

            // An instance cut off from the service does not get there.
            let cut = Arc::new(cluster.client());
            let stuck: SharedState<Agent> = instance(cut.clone(), "/f").await;
            cut.suspend().expect("suspend");
            let err = fails(&[b[0], b[1], "set", "/f", r#"{"globs":["d"]}"#, "--wait=1s"]).await;
            assert_eq!(err.exit, Exit::NotConverged, "{err}");
            assert!(err.message.contains(stuck.instance_id()), "{err}");
            assert!(
                err.message
                    .starts_with("1 of 3 instances did not apply version"),
                "{err}"
            );
            cut.resume().expect("resume");
            for state in [typed, stuck] {
                state.close().await;
            }
            tolerant.close().await;
        }
    }
}
