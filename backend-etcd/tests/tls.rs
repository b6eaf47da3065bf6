//! TLS against a real etcd (`https` client URL, `--client-cert-auth`), with
//! certificates made at test time: the right CA connects; a wrong CA, a
//! missing, foreign or expired client certificate, an expired server
//! certificate, a host name mismatch and a plain port are each refused at
//! once with the kind and the cause.
//! The refusals are the scenarios shared with ZooKeeper
//! (`sharedstate_conformance::tls_scenarios!`); the builder and the URL
//! checks are this backend's own.

use std::time::Duration;

use sharedstate_conformance::fixtures::{self, tls_scenarios, ServiceKind, TestPki};
use sharedstate_conformance::{tls_scenarios, unique_key};
use sharedstate_core::{CoordinationBackend, ErrorKind};
use sharedstate_etcd::EtcdBackend;

/// Far above how long a refusal takes (the probe answers within a second
/// or two); a refusal that only came from the timeout would say so.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(12);

fn url(endpoint: &str, pki: &TestPki, ca: &str, identity: Option<(&str, &str)>) -> String {
    let base = format!(
        "etcds://{endpoint}?connect_timeout_ms={}&session_ttl_s=6",
        CONNECT_TIMEOUT.as_millis()
    );
    tls_scenarios::tls_url(&base, pki, ca, identity)
}

tls_scenarios! {
    kind: ServiceKind::Etcd,
    connect: EtcdBackend::from_url,
    url: url,
    plain: fixtures::etcd(),
    not_tls: "TLS handshake",
    bound: CONNECT_TIMEOUT + Duration::from_secs(5),
}

#[tokio::test]
async fn the_builder_connects_by_address_with_a_domain() {
    let s = servers().await;
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(s.pki.ca.clone()))
        .identity(etcd_client::Identity::from_pem(
            s.pki.client.cert.clone(),
            s.pki.client.key.clone(),
        ))
        .domain_name(fixtures::TLS_SERVER_NAME);
    let backend = EtcdBackend::builder([s.main.tls_endpoint_by_address()])
        .connect_timeout(CONNECT_TIMEOUT)
        .tls(tls)
        .connect()
        .await
        .expect("TLS connect through the builder");
    assert!(backend
        .get(&unique_key("tls-etcd-builder"))
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
        format!(
            "etcds://localhost:1?ca_file={}&cert_file={}",
            ca.display(),
            ca.display()
        ),
        format!("etcd://localhost:1?ca_file={}", ca.display()),
        "etcds://localhost:1?ca_file=/nonexistent/ca.pem".to_owned(),
    ];
    for url in cases {
        let error = EtcdBackend::from_url(&url).await.expect_err(&url);
        assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{url}: {error}");
    }
}
