//! TLS against a real ZooKeeper on its `secureClientPort` (Netty, PEM key
//! and trust stores, `ssl.clientAuth=need`), with certificates made at test
//! time: the right CA connects; a wrong CA, a missing or expired client
//! certificate, an expired server certificate, a host name mismatch and a
//! plain port are each refused at once with the kind and the cause.
//! The refusals are the scenarios shared with etcd
//! (`sharedstate_conformance::tls_scenarios!`); the builder and the URL
//! checks are this backend's own.

use std::time::Duration;

use sharedstate_conformance::fixtures::{self, tls_scenarios, ServiceKind, TestPki};
use sharedstate_conformance::{tls_scenarios, unique_key};
use sharedstate_core::{CoordinationBackend, ErrorKind};
use sharedstate_zookeeper::{ZooKeeperBackend, ZooKeeperTls};

/// Far above how long a refusal takes (the probe answers within a second
/// or two); a refusal that only came from the timeout would say so.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(12);

fn url(endpoint: &str, pki: &TestPki, ca: &str, identity: Option<(&str, &str)>) -> String {
    let base = format!(
        "zks://{endpoint}?connect_timeout_ms={}&session_timeout_ms=6000",
        CONNECT_TIMEOUT.as_millis()
    );
    tls_scenarios::tls_url(&base, pki, ca, identity)
}

tls_scenarios! {
    kind: ServiceKind::ZooKeeper,
    connect: ZooKeeperBackend::from_url,
    url: url,
    plain: fixtures::zookeeper(),
    not_tls: "secureClientPort",
    bound: CONNECT_TIMEOUT + Duration::from_secs(5),
}

#[tokio::test]
async fn the_builder_connects_with_pem_in_memory() {
    let s = servers().await;
    let tls = ZooKeeperTls::new(s.pki.ca.clone())
        .with_identity(s.pki.client.cert.clone(), s.pki.client.key.clone());
    let backend = ZooKeeperBackend::builder(s.main.tls_endpoint())
        .connect_timeout(CONNECT_TIMEOUT)
        .tls(tls)
        .connect()
        .await
        .expect("TLS connect through the builder");
    assert!(backend
        .get(&unique_key("tls-zk-builder"))
        .await
        .expect("get")
        .is_none());
    backend.close().await.expect("close");
}

#[tokio::test]
async fn urls_check_tls_settings_before_connecting() {
    let s = servers().await;
    let ca = s.pki.path("ca.pem");
    let cases = [
        format!("zks://localhost:1?cert_file={}", ca.display()),
        "zks://localhost:1".to_owned(),
        format!("zk://localhost:1?ca_file={}", ca.display()),
        "zks://localhost:1?ca_file=/nonexistent/ca.pem".to_owned(),
        format!("zks://not_a_host!:1?ca_file={}", ca.display()),
        format!(
            "zks://localhost:1?ca_file={}",
            s.pki.path("client.key").display()
        ),
    ];
    for url in cases {
        let error = ZooKeeperBackend::from_url(&url).await.expect_err(&url);
        assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{url}: {error}");
    }
}
