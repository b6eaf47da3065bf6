//! The container fixtures: a real ZooKeeper and etcd (needs Docker or
//! SHAREDSTATE_TEST_ZOOKEEPER / SHAREDSTATE_TEST_ETCD; `bash scripts/test.sh`
//! provides them).
#![cfg(feature = "containers")]

use std::time::Duration;

use sharedstate_conformance::fixtures::{self, ServiceKind, TcpProxy};
use testcontainers::bollard::Docker;

/// Runs a blocking probe off the runtime's worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// The smoke test for the Docker API handshake: testcontainers' client
/// talks to this daemon. When an upgrade breaks it ("client version 1.5x
/// is too new"), this fails first, naming the cause and the fix.
#[test]
fn docker_api_handshake() {
    if std::env::var(fixtures::ZOOKEEPER_ENDPOINT_VAR).is_ok()
        && std::env::var(fixtures::ETCD_ENDPOINT_VAR).is_ok()
    {
        // Servers from the environment: the tests need no Docker, but the
        // handshake is still checked when a daemon is there.
        if let Err(e) = fixtures::docker_handshake() {
            assert!(!e.contains("handshake broke"), "{e}");
        }
        return;
    }
    let daemon = fixtures::docker_handshake().unwrap_or_else(|e| panic!("{e}"));
    assert!(daemon.contains("API"), "{daemon}");
    eprintln!("testcontainers talks to {daemon}");
}

/// A Docker client of the test's own (not the fixtures'), to look at
/// containers from outside.
fn outside_docker() -> Docker {
    Docker::connect_with_defaults().expect("a Docker client")
}

/// A server of the test's own works, and its container is gone once the
/// handle is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_server_is_removed_on_drop() {
    let began = std::time::Instant::now();
    let server = fixtures::start_server(ServiceKind::Etcd)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("dedicated etcd ready after {:?}", began.elapsed());
    assert!(server.started_here());
    assert!(server.url().starts_with("etcd://127.0.0.1:"));
    let endpoint = server.endpoint().to_owned();
    assert!(blocking(move || fixtures::etcd_healthy(&endpoint)).await);
    assert_ne!(server.endpoint(), fixtures::etcd(), "not the shared server");
    let id = server.container().expect("a container").to_owned();
    let docker = outside_docker();
    let labels = docker
        .inspect_container(&id, None)
        .await
        .expect("inspect")
        .config
        .and_then(|c| c.labels)
        .unwrap_or_default();
    assert_eq!(
        labels.get("sharedstate.test").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        labels.get("sharedstate.test.pid"),
        Some(&std::process::id().to_string())
    );
    blocking(move || drop(server)).await;
    assert!(
        docker.inspect_container(&id, None).await.is_err(),
        "{id} outlived its handle"
    );
}

#[test]
fn zookeeper_answers_ruok_and_zkcli() {
    let began = std::time::Instant::now();
    let endpoint = fixtures::zookeeper();
    eprintln!("shared ZooKeeper at {endpoint} after {:?}", began.elapsed());
    assert!(endpoint.starts_with("127.0.0.1:") || !fixtures::zookeeper_server().started_here());
    assert!(fixtures::zookeeper_ruok(&endpoint), "ruok on {endpoint}");
    assert_eq!(
        fixtures::zookeeper_mode(&endpoint).as_deref(),
        Some("standalone"),
        "srvr on {endpoint}"
    );
    // The same server for every caller in this binary.
    assert_eq!(fixtures::zookeeper(), endpoint);

    let server = fixtures::zookeeper_server();
    if server.container().is_some() {
        let path = format!("/fixtures-{}", std::process::id());
        server
            .cli(&["create", &path, "from-zkcli"])
            .expect("zkCli.sh create");
        let out = server.cli(&["get", &path]).expect("zkCli.sh get");
        assert!(out.contains("from-zkcli"), "zkCli.sh get printed {out:?}");
        let conf = server.exec(&["sh", "-c", "cat \"${ZOO_CONF_DIR:-/conf}/zoo.cfg\""]);
        let conf = conf.expect("read zoo.cfg");
        if server.started_here() {
            assert!(
                conf.contains(&format!("tickTime={}", fixtures::ZOOKEEPER_TICK_MS)),
                "zoo.cfg: {conf}"
            );
        }
    }
}

#[test]
fn etcd_is_healthy_and_etcdctl_works() {
    let endpoint = fixtures::etcd();
    assert!(fixtures::etcd_healthy(&endpoint), "health on {endpoint}");
    let status = fixtures::etcd_status(&endpoint).expect("maintenance status");
    assert_ne!(status.member_id, 0);
    assert_eq!(
        status.leader, status.member_id,
        "a lone server leads itself"
    );
    assert_eq!(fixtures::etcd(), endpoint);

    let server = fixtures::etcd_server();
    if server.container().is_some() {
        // Prints to stderr; a failure exits non-zero.
        server
            .cli(&["endpoint", "health"])
            .expect("etcdctl endpoint health");
        let key = format!("/fixtures-{}", std::process::id());
        server.cli(&["put", &key, "from-etcdctl"]).expect("put");
        let out = server
            .cli(&["get", &key, "--print-value-only"])
            .expect("get");
        assert_eq!(out.trim(), "from-etcdctl");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_in_front_of_zookeeper() {
    let endpoint = blocking(fixtures::zookeeper).await;
    let proxy = TcpProxy::start(endpoint).await.expect("proxy");
    let through = proxy.endpoint();
    let probe = move || {
        let through = through.clone();
        async move { blocking(move || fixtures::zookeeper_ruok(&through)).await }
    };
    assert!(probe().await, "ruok through the proxy");
    proxy.suspend();
    assert!(!probe().await, "ruok must fail while suspended");
    proxy.resume();
    let mut ok = false;
    for _ in 0..20 {
        if probe().await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "ruok through the proxy after resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_in_front_of_etcd() {
    let endpoint = blocking(fixtures::etcd).await;
    let proxy = TcpProxy::start(endpoint).await.expect("proxy");
    let through = proxy.endpoint();
    let t = through.clone();
    assert!(blocking(move || fixtures::etcd_healthy(&t)).await);
    proxy.suspend();
    let t = through.clone();
    assert!(!blocking(move || fixtures::etcd_healthy(&t)).await);
    proxy.resume();
    let t = through.clone();
    assert!(blocking(move || fixtures::etcd_healthy(&t)).await);
}
