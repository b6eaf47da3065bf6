//! Convergence on a real server: three instances of an application (two
//! versions of its struct) follow a state while the `sharedstate` binary
//! writes it with `--wait` and shows it with `status`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sharedstate::SharedState;

use super::{run, unique};

/// The agents of the current release: `interval_secs` has a default.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Agent {
    globs: Vec<String>,
    #[serde(default)]
    interval_secs: u64,
}

/// An older agent whose struct requires `interval_secs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct OldAgent {
    globs: Vec<String>,
    interval_secs: u64,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn instance<T>(url: &str, path: &str) -> SharedState<T>
where
    T: Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    let backend = sharedstate::connect(url).await.expect("connect");
    // The default report interval (1 s): what a fleet runs with.
    SharedState::builder(backend, path)
        .expect_existing(Duration::from_secs(30))
        .open()
        .await
        .expect("open an instance")
}

/// A payload one of three instances rejects: `--wait` exits 6 naming it,
/// `status` shows it; a valid write then converges all three and `--wait`
/// exits 0.
pub fn wait_names_the_instance_that_rejected(url: &str) {
    let path = unique("fleet-wait");
    run(
        url,
        &[
            "init",
            &path,
            r#"{"globs": ["systemd*"], "interval_secs": 5}"#,
        ],
        None,
    )
    .ok();
    let rt = runtime();
    let (a, b, old) = rt.block_on(async {
        let a: SharedState<Agent> = instance(url, &path).await;
        let b: SharedState<Agent> = instance(url, &path).await;
        let old: SharedState<OldAgent> = instance(url, &path).await;
        (a, b, old)
    });

    let rejected = run(
        url,
        &["set", &path, r#"{"globs": ["firefox*"]}"#, "--wait=60s"],
        None,
    );
    rejected.expect_code(6);
    let version = rejected.version();
    let reason = "missing field `interval_secs`";
    let stderr = &rejected.stderr;
    assert!(
        stderr.contains(&format!(
            "sharedstate: 1 of 3 instances rejected version {version}: {} (host ",
            old.instance_id()
        )),
        "{rejected:?}"
    );
    assert!(stderr.contains(reason), "{rejected:?}");
    for applied in [&a, &b] {
        assert!(!stderr.contains(applied.instance_id()), "{rejected:?}");
    }
    let summary = format!("3 instances: 2 at v{version}, 1 rejected v{version}: {reason}");
    assert_eq!(
        rejected.stdout.lines().last(),
        Some(summary.as_str()),
        "{rejected:?}"
    );

    let status = run(url, &["status", &path], None);
    let text = &status.ok().stdout;
    assert!(
        text.contains(&format!("listeners:   {summary}")),
        "status shows the summary: {text}"
    );
    let row = text
        .lines()
        .find(|line| line.starts_with(old.instance_id()))
        .unwrap_or_else(|| panic!("status lists the old agent: {text}"));
    assert!(
        row.ends_with(&format!("rejected v{version}: {reason}")),
        "{row}"
    );
    let status = run(url, &["status", &path, "--json"], None);
    let json: Value = serde_json::from_str(&status.ok().stdout).expect("status --json");
    let instances = json["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 3, "{json}");
    for instance in instances {
        let expected = if instance["id"] == old.instance_id() {
            "rejected"
        } else {
            "applied"
        };
        assert_eq!(instance["state"], expected, "{instance}");
    }

    let fixed = run(
        url,
        &[
            "set",
            &path,
            r#"{"globs": ["firefox*"], "interval_secs": 5}"#,
            "--wait=60s",
        ],
        None,
    );
    fixed.ok();
    let version = fixed.version();
    assert_eq!(
        fixed.stdout.lines().last(),
        Some(format!("3 instances: 3 at v{version}").as_str()),
        "{fixed:?}"
    );
    assert_eq!(
        rt.block_on(async { old.read().expect("read").globs.clone() }),
        ["firefox*"]
    );

    // --json: one document with the write and the wait.
    let patched = run(
        url,
        &[
            "patch",
            &path,
            r#"{"interval_secs": 10}"#,
            "--wait=60s",
            "--json",
        ],
        None,
    );
    let report: Value = serde_json::from_str(&patched.ok().stdout).expect("one JSON document");
    assert_eq!(report["wait"]["converged"], true, "{report}");
    assert_eq!(
        report["wait"]["instances"].as_array().map(Vec::len),
        Some(3)
    );

    rt.block_on(async {
        a.close().await;
        b.close().await;
        old.close().await;
    });
}
