//! `read_consistent()` on real 3-member clusters, across a leader kill: a
//! writer and a reader on two different followers (one member each, so
//! neither can move to the leader), many rounds of "update acknowledged,
//! then read_consistent() on the other member", with the leader killed and
//! restarted in the middle. Every `read_consistent()` that succeeds must
//! show every update acknowledged before it started; errors are allowed
//! while there is no quorum, stale successes are not. On ZooKeeper a plain
//! sync + read can return an older copy around a leader change (its docs;
//! ZOOKEEPER-1675): this is the test of the quorum barrier that replaces it.
#![cfg(all(feature = "testing", feature = "zookeeper", feature = "etcd"))]

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sharedstate::testing::fixtures::{etcd_cluster, zookeeper_cluster, Cluster, ServiceKind};
use sharedstate::SharedState;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

/// Successful rounds before the leader is killed, and in all.
const KILL_AT_ROUND: u64 = 40;
const ROUNDS: u64 = 120;
/// Every call is bounded; the whole test too.
const CALL_LIMIT: Duration = Duration::from_secs(15);
/// After a failed call (no quorum yet), before the next.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
const TEST_LIMIT: Duration = Duration::from_secs(240);

fn url(kind: ServiceKind, endpoint: &str) -> String {
    match kind {
        ServiceKind::ZooKeeper => format!("zk://{endpoint}?session_timeout_ms=6000"),
        _ => format!("etcd://{endpoint}"),
    }
}

async fn open(kind: ServiceKind, cluster: &Cluster, member: usize) -> SharedState<Counter> {
    let backend = sharedstate::connect(&url(kind, cluster.endpoint(member)))
        .await
        .unwrap_or_else(|e| panic!("connect to member {member}: {e}"));
    SharedState::builder(backend, "/read-consistent-cluster")
        .initial(Counter::default())
        .max_staleness(Duration::from_secs(3))
        .open()
        .await
        .unwrap_or_else(|e| panic!("open on member {member}: {e}"))
}

async fn run(kind: ServiceKind) {
    let started = Instant::now();
    let cluster = match kind {
        ServiceKind::ZooKeeper => zookeeper_cluster(3).await,
        _ => etcd_cluster(3).await,
    };
    let leader = cluster.leader().await.expect("leader");
    let followers: Vec<usize> = (0..cluster.len()).filter(|&m| m != leader).collect();
    let (writer_member, reader_member) = (followers[0], followers[1]);
    let writer = open(kind, &cluster, writer_member).await;
    let reader = open(kind, &cluster, reader_member).await;

    // The highest value whose update was acknowledged; an update that
    // failed with an unknown outcome may have landed: reads may show it.
    let mut acknowledged = 0u64;
    let (mut reads_ok, mut reads_failed, mut writes_failed) = (0u32, 0u32, 0u32);
    let mut killed = None;
    let mut restarted = false;
    // Rounds count successful updates: while there is no quorum, a failed
    // update is retried after a pause, not counted.
    let mut round = 0u64;
    let mut reads_after_kill = 0u32;
    while round < ROUNDS {
        assert!(
            started.elapsed() < TEST_LIMIT,
            "{kind:?}: the test ran out of time at round {round} \
             ({writes_failed} updates and {reads_failed} reads failed)"
        );
        if round == KILL_AT_ROUND && killed.is_none() {
            cluster.kill(leader).await.expect("kill the leader");
            killed = Some(Instant::now());
        }
        if round == KILL_AT_ROUND + 20 && !restarted {
            cluster.start(leader).await.expect("restart the old leader");
            restarted = true;
        }
        let next = acknowledged + 1;
        match tokio::time::timeout(CALL_LIMIT, writer.update(|c| c.n = next)).await {
            Ok(Ok(_)) => {
                acknowledged = next;
                round += 1;
            }
            Ok(Err(_)) | Err(_) => {
                writes_failed += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        }
        match tokio::time::timeout(CALL_LIMIT, reader.read_consistent()).await {
            Ok(Ok(copy)) => {
                reads_ok += 1;
                if killed.is_some() {
                    reads_after_kill += 1;
                }
                assert!(
                    copy.n >= acknowledged,
                    "{kind:?}, round {round}: read_consistent() on member {reader_member} \
                     started after the update to {acknowledged} was acknowledged by member \
                     {writer_member}, and returned {} (leader {leader} killed {:?} ago)",
                    copy.n,
                    killed.map(|k| k.elapsed())
                );
            }
            Ok(Err(_)) | Err(_) => {
                reads_failed += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    println!(
        "{kind:?}: {ROUNDS} rounds, leader {leader} killed at round {KILL_AT_ROUND}: \
         {acknowledged} updates acknowledged, {writes_failed} failed; \
         read_consistent {reads_ok} ok (all current, {reads_after_kill} after the kill), \
         {reads_failed} failed; {:.1?}",
        started.elapsed()
    );
    // The fault must not have turned the test into a no-op.
    assert!(
        reads_after_kill >= (ROUNDS - KILL_AT_ROUND) as u32 / 2,
        "{kind:?}: too few reads after the leader kill to judge ({reads_after_kill})"
    );
    writer.close().await;
    reader.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_read_consistent_across_a_leader_kill() {
    run(ServiceKind::ZooKeeper).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_read_consistent_across_a_leader_kill() {
    run(ServiceKind::Etcd).await;
}
