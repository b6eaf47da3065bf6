//! The container fixtures: a real ZooKeeper and etcd (needs Docker or
//! SHAREDSTATE_TEST_ZOOKEEPER / SHAREDSTATE_TEST_ETCD; `bash scripts/test.sh`
//! provides them).
#![cfg(feature = "containers")]

use std::time::Duration;

use sharedstate_conformance::fixtures::{self, TcpProxy};

/// Runs a blocking probe off the runtime's worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

#[test]
fn zookeeper_answers_ruok_and_zkcli() {
    let endpoint = fixtures::zookeeper();
    assert!(endpoint.starts_with("127.0.0.1:") || !fixtures::zookeeper_server().started_here());
    assert!(fixtures::zookeeper_ruok(&endpoint), "ruok on {endpoint}");
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
