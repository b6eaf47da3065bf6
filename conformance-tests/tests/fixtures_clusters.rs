//! The cluster fixtures and their fault hooks, against real 3-member
//! ZooKeeper and etcd clusters (needs Docker; `bash scripts/test.sh`
//! provides it). Every wait is bounded.
#![cfg(feature = "containers")]

use std::time::{Duration, Instant};

use sharedstate_conformance::fixtures::{
    self, etcd_cluster, zookeeper_cluster, Cluster, MemberState, ServiceKind, TcpProxy,
};

/// Runs a blocking probe off the runtime's worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Waits (at most `limit`) until `check` holds.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let began = Instant::now();
    while !check().await {
        assert!(began.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn report(cluster: &Cluster) {
    eprintln!(
        "{} cluster of {} ({}) formed in {:?}: {}",
        cluster.kind().name(),
        cluster.len(),
        cluster.image(),
        cluster.formed_in(),
        cluster.url()
    );
}

/// Kill the leader: a new one is elected among the others and the cluster
/// answers; the killed member comes back at the same address with its data.
async fn kill_leader_then_restart(cluster: &Cluster, write: &str, read_back: &str) {
    let leader = cluster.leader().await.expect("a leader");
    let began = Instant::now();
    cluster.kill(leader).await.expect("kill the leader");
    assert_eq!(cluster.state(leader), MemberState::Stopped);
    let new_leader = cluster.leader().await.expect("a new leader");
    eprintln!(
        "{}: new leader after {:?}",
        cluster.kind().name(),
        began.elapsed()
    );
    assert_ne!(new_leader, leader, "the killed member cannot lead");
    assert!(
        !cluster.serving(leader).await.expect("probe"),
        "killed member answers"
    );
    let other = (0..cluster.len())
        .find(|&i| i != leader)
        .expect("another member");
    cluster
        .cli(other, &split(write))
        .await
        .expect("write with the leader down");

    let endpoint = cluster.endpoint(leader).to_owned();
    cluster.start(leader).await.expect("start again");
    cluster
        .wait_healthy()
        .await
        .expect("healthy after the restart");
    assert_eq!(
        cluster.endpoint(leader),
        endpoint,
        "same address after a restart"
    );
    let out = cluster
        .cli(leader, &split(read_back))
        .await
        .expect("read on the restarted member");
    assert!(
        out.contains("after-kill"),
        "restarted member lost data: {out:?}"
    );
}

fn split(command: &str) -> Vec<&str> {
    command.split(' ').collect()
}

/// Pause: the member is silent (a client's probe times out) and the others
/// still answer; unpause: it serves again.
async fn pause_then_unpause(cluster: &Cluster) {
    let member = (cluster.leader().await.expect("leader") + 1) % cluster.len();
    cluster.pause(member).await.expect("pause");
    assert_eq!(cluster.state(member), MemberState::Paused);
    assert!(
        !cluster.serving(member).await.expect("probe"),
        "paused member answered"
    );
    cluster.wait_healthy().await.expect("the others serve");
    assert!(
        cluster.stop(member).await.is_err(),
        "stop of a paused member must be refused"
    );
    cluster.unpause(member).await.expect("unpause");
    cluster.wait_healthy().await.expect("healthy after unpause");
    assert!(cluster.serving(member).await.expect("probe"));
}

/// Stop (graceful) and start a follower; a proxy in front of a member cuts
/// only the client behind it.
async fn stop_start_and_proxy(cluster: &Cluster) {
    let follower = (cluster.leader().await.expect("leader") + 1) % cluster.len();
    cluster.stop(follower).await.expect("stop");
    assert!(!cluster.serving(follower).await.expect("probe"));
    let running = (follower + 1) % cluster.len();
    assert!(
        cluster.start(running).await.is_err(),
        "start of a running member must be refused"
    );
    cluster.start(follower).await.expect("start");
    cluster
        .wait_healthy()
        .await
        .expect("healthy after stop/start");

    let proxy = TcpProxy::start(cluster.endpoint(follower).to_owned())
        .await
        .expect("proxy");
    let kind = cluster.kind();
    let through = proxy.endpoint();
    let probe = move || {
        let through = through.clone();
        async move { blocking(move || kind.probe(&through)).await }
    };
    assert!(probe().await, "probe through the proxy");
    proxy.suspend();
    assert!(!probe().await, "the proxy must cut its client");
    assert!(
        cluster.serving(follower).await.expect("probe"),
        "the member itself is fine"
    );
    proxy.resume();
    eventually("probe after resume", Duration::from_secs(10), probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_cluster_fault_hooks() {
    let cluster = zookeeper_cluster(3).await;
    report(&cluster);
    assert_eq!(cluster.kind(), ServiceKind::ZooKeeper);
    assert_eq!(cluster.endpoints().len(), 3);
    assert!(cluster.url().starts_with("zk://127.0.0.1:"));
    let conf = cluster
        .exec(0, &["sh", "-c", "cat \"${ZOO_CONF_DIR:-/conf}/zoo.cfg\""])
        .await
        .expect("zoo.cfg");
    for line in [
        "tickTime=500",
        "4lw.commands.whitelist=*",
        "maxSessionTimeout=60000",
    ] {
        assert!(conf.contains(line), "zoo.cfg lacks {line}: {conf}");
    }
    let path = format!("/cluster-{}", std::process::id());
    kill_leader_then_restart(
        &cluster,
        &format!("create {path} after-kill"),
        &format!("get {path}"),
    )
    .await;
    pause_then_unpause(&cluster).await;
    stop_start_and_proxy(&cluster).await;
    check_removed_on_drop(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_fault_hooks() {
    let cluster = etcd_cluster(3).await;
    report(&cluster);
    assert_eq!(cluster.kind(), ServiceKind::Etcd);
    let members = cluster
        .cli(0, &["member", "list"])
        .await
        .expect("member list");
    for i in 0..3 {
        // Advertised client URLs are the host-published addresses.
        assert!(
            members.contains(&format!("http://{}", cluster.endpoint(i))),
            "member list lacks {}: {members}",
            cluster.endpoint(i)
        );
    }
    let key = format!("/cluster-{}", std::process::id());
    kill_leader_then_restart(
        &cluster,
        &format!("put {key} after-kill"),
        &format!("get {key} --print-value-only"),
    )
    .await;
    pause_then_unpause(&cluster).await;
    stop_start_and_proxy(&cluster).await;
    check_removed_on_drop(cluster).await;
}

/// Dropping the handle removes its containers and network (looked at
/// with a Docker client of the test's own).
async fn check_removed_on_drop(cluster: Cluster) {
    let names: Vec<String> = (0..cluster.len())
        .map(|i| cluster.container(i).to_owned())
        .collect();
    let network = cluster.network().to_owned();
    let docker = testcontainers::bollard::Docker::connect_with_defaults().expect("Docker client");
    for name in &names {
        docker
            .inspect_container(name, None)
            .await
            .expect("a member exists");
    }
    blocking(move || drop(cluster)).await;
    for name in names {
        assert!(
            docker.inspect_container(&name, None).await.is_err(),
            "{name} outlived its cluster handle"
        );
    }
    assert!(
        docker.inspect_network(&network, None).await.is_err(),
        "{network} outlived its cluster handle"
    );
}

#[test]
fn bad_member_index_is_an_error_not_a_panic() {
    // Needs no cluster: the size check comes first.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let made = runtime.block_on(Cluster::create(ServiceKind::ZooKeeper, 0));
    assert!(made.is_err(), "a cluster of 0 must be refused");
    let _ = fixtures::TEST_CONTAINER_LABEL;
}
