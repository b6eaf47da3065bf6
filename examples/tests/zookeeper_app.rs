//! Testing an application against a real ZooKeeper, the way a user's crate
//! does it: `sharedstate = { features = ["zookeeper", "testing"] }` as a
//! dev-dependency, and `sharedstate::testing::zookeeper()` for the server
//! (a container shared by this test binary, removed when it exits; needs
//! Docker, or `SHAREDSTATE_TEST_ZOOKEEPER=host:port`).
//!
//! The application here is the process monitor's shared state: two agents
//! and an operator who edits the payload with `zkCli.sh`.

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sharedstate::{testing, Change, Origin, SharedState, StateEvent, Subscription};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Monitor {
    globs: Vec<String>,
    interval_secs: u64,
}

/// How long a change may take to reach another instance.
const DELIVERY: Duration = Duration::from_secs(15);

async fn agent(url: &str, path: &str) -> SharedState<Monitor> {
    let backend = sharedstate::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    SharedState::builder(backend, path)
        .initial(Monitor {
            globs: vec!["systemd*".into()],
            interval_secs: 5,
        })
        .open()
        .await
        .unwrap_or_else(|e| panic!("open {path}: {e}"))
}

/// The next change set, skipping nothing: anything else is a failure.
async fn next_change(changes: &mut Subscription, who: &str) -> sharedstate::ChangeSet {
    match tokio::time::timeout(DELIVERY, changes.next()).await {
        Ok(Some(StateEvent::Changed(set))) => set,
        Ok(other) => panic!("{who}: expected a change set, got {other:?}"),
        Err(_) => panic!("{who}: no change within {DELIVERY:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_an_operator_share_the_globs_through_zookeeper() {
    // Blocking on first use (the container starts): off the async workers.
    let endpoint = tokio::task::spawn_blocking(testing::zookeeper)
        .await
        .expect("fixture thread");
    let url = format!("zk://{endpoint}");
    let path = format!("/examples-test/monitor-{}", std::process::id());

    let a = agent(&url, &path).await;
    let b = agent(&url, &path).await;
    let mut seen_by_a = a.subscribe();
    let mut seen_by_b = b.subscribe();

    // One agent's update reaches the other as exactly that change.
    a.update(|m| m.globs.push("firefox*".into()))
        .await
        .expect("update");
    let local = next_change(&mut seen_by_a, "a").await;
    assert_eq!(local.origin, Origin::Local);
    let remote = next_change(&mut seen_by_b, "b").await;
    assert_eq!(remote.origin, Origin::Remote);
    assert_eq!(remote.version, local.version);
    assert_eq!(
        remote.changes,
        vec![Change::Added {
            path: "/globs/1".into(),
            value: json!("firefox*"),
        }]
    );
    assert_eq!(b.read().expect("fresh").globs, ["systemd*", "firefox*"]);

    // An operator rewrites the payload from outside (zkCli.sh in the
    // server's container); both agents get it as a remote change.
    let edited = Monitor {
        globs: vec!["sshd*".into()],
        interval_secs: 10,
    };
    let payload = serde_json::to_string(&edited).expect("json");
    let payload_path = format!("{path}/payload");
    tokio::task::spawn_blocking(move || {
        testing::zookeeper_server().cli(&["set", &payload_path, &payload])
    })
    .await
    .expect("fixture thread")
    .expect("zkCli.sh set");
    for (who, changes, state) in [("a", &mut seen_by_a, &a), ("b", &mut seen_by_b, &b)] {
        let set = next_change(changes, who).await;
        assert_eq!(set.origin, Origin::Remote, "{who}");
        assert!(set.version > local.version, "{who}: versions only grow");
        assert_eq!(*state.read().expect("fresh"), edited, "{who}");
    }

    a.close().await;
    b.close().await;
}
