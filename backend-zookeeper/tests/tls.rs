//! TLS against a real ZooKeeper on its `secureClientPort` (Netty, PEM key
//! and trust stores, `ssl.clientAuth=need`), with certificates made at test
//! time: the right CA connects; a wrong CA, a missing or expired client
//! certificate, an expired server certificate, a host name mismatch and a
//! plain port are each refused at once with the kind and the cause.

use std::time::Duration;

use bytes::Bytes;
use sharedstate_conformance::fixtures::{
    self, start_tls_server, ClientAuth, SecureServer, ServerCertificate, ServiceKind, TestPki,
};
use sharedstate_conformance::unique_key;
use sharedstate_core::{CoordinationBackend, Error, ErrorKind, Outcome, PutMode};
use sharedstate_zookeeper::{ZooKeeperBackend, ZooKeeperTls};
use tokio::sync::OnceCell;

/// Far above how long a refusal takes (the probe answers within a second
/// or two); a refusal that only came from the timeout would say so.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(12);

struct Servers {
    pki: TestPki,
    /// Valid certificate, client certificates required.
    main: SecureServer,
    /// Expired certificate, no client certificates asked for.
    expired: SecureServer,
}

/// The first failure is kept: the other tests fail at once with it.
static SERVERS: OnceCell<Result<Servers, String>> = OnceCell::const_new();

async fn servers() -> &'static Servers {
    let started = SERVERS
        .get_or_init(|| async {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "warn".into()),
                )
                .with_test_writer()
                .try_init();
            let pki = TestPki::generate()?;
            let main = start_tls_server(
                ServiceKind::ZooKeeper,
                &pki,
                ServerCertificate::Valid,
                ClientAuth::Required,
            );
            let expired = start_tls_server(
                ServiceKind::ZooKeeper,
                &pki,
                ServerCertificate::Expired,
                ClientAuth::None,
            );
            let (main, expired) = tokio::join!(main, expired);
            Ok(Servers {
                main: main?,
                expired: expired?,
                pki,
            })
        })
        .await;
    match started {
        Ok(servers) => servers,
        Err(message) => panic!("{message}"),
    }
}

fn url(endpoint: &str, pki: &TestPki, ca: &str, identity: Option<(&str, &str)>) -> String {
    let mut url = format!(
        "zks://{endpoint}?connect_timeout_ms={}&session_timeout_ms=6000&ca_file={}",
        CONNECT_TIMEOUT.as_millis(),
        pki.path(ca).display()
    );
    if let Some((cert, key)) = identity {
        url.push_str(&format!(
            "&cert_file={}&key_file={}",
            pki.path(cert).display(),
            pki.path(key).display()
        ));
    }
    url
}

async fn refused(url: &str) -> Error {
    let connect = ZooKeeperBackend::from_url(url);
    match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(5), connect).await {
        Err(_) => panic!("connecting to {url} neither failed nor succeeded in time"),
        Ok(Ok(_)) => panic!("{url} connected, but should have been refused"),
        Ok(Err(error)) => error,
    }
}

fn assert_refusal(error: &Error, kind: ErrorKind, words: &str) {
    println!("refused as expected: {error}");
    assert_eq!(error.kind(), kind, "{error}");
    assert_eq!(error.outcome(), Outcome::NotApplied, "{error}");
    assert!(
        error.to_string().contains(words),
        "the message should say {words:?}: {error}"
    );
}

#[tokio::test]
async fn connects_with_the_right_ca_and_a_client_certificate() {
    let s = servers().await;
    let url = url(
        &s.main.tls_endpoint(),
        &s.pki,
        "ca.pem",
        Some(("client.pem", "client.key")),
    );
    let backend = ZooKeeperBackend::from_url(&url).await.expect("TLS connect");
    let key = unique_key("tls-zk");
    let written = backend
        .put(&key, Bytes::from_static(b"over tls"), PutMode::Create)
        .await
        .expect("put over TLS");
    let read = backend.get(&key).await.expect("get").expect("present");
    assert_eq!(read.value, Bytes::from_static(b"over tls"));
    assert_eq!(read.version, written);
    backend.close().await.expect("close");
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
async fn a_wrong_ca_is_refused_naming_the_unknown_issuer() {
    let s = servers().await;
    let url = url(
        &s.main.tls_endpoint(),
        &s.pki,
        "other-ca.pem",
        Some(("client.pem", "client.key")),
    );
    let error = refused(&url).await;
    assert_refusal(&error, ErrorKind::Unauthorized, "unknown issuer");
}

#[tokio::test]
async fn a_missing_client_certificate_is_refused() {
    let s = servers().await;
    let error = refused(&url(&s.main.tls_endpoint(), &s.pki, "ca.pem", None)).await;
    assert_refusal(
        &error,
        ErrorKind::Unauthorized,
        "requires a client certificate",
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let s = servers().await;
    let url = url(
        &s.main.tls_endpoint(),
        &s.pki,
        "ca.pem",
        Some(("other-client.pem", "other-client.key")),
    );
    let error = refused(&url).await;
    assert_refusal(
        &error,
        ErrorKind::Unauthorized,
        "refused this client's certificate",
    );
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let s = servers().await;
    let url = url(
        &s.main.tls_endpoint(),
        &s.pki,
        "ca.pem",
        Some(("client-expired.pem", "client-expired.key")),
    );
    let error = refused(&url).await;
    assert_refusal(&error, ErrorKind::Unauthorized, "client's certificate");
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let s = servers().await;
    let error = refused(&url(&s.expired.tls_endpoint(), &s.pki, "ca.pem", None)).await;
    assert_refusal(&error, ErrorKind::Unauthorized, "has expired");
}

#[tokio::test]
async fn a_host_name_mismatch_is_refused() {
    let s = servers().await;
    let url = url(
        &s.main.tls_endpoint_by_address(),
        &s.pki,
        "ca.pem",
        Some(("client.pem", "client.key")),
    );
    let error = refused(&url).await;
    assert_refusal(&error, ErrorKind::Unauthorized, "host name mismatch");
    assert!(error.to_string().contains("localhost"), "{error}");
}

#[tokio::test]
async fn tls_to_a_plain_port_says_it_is_not_tls() {
    let s = servers().await;
    // The shared plain server's client port.
    let plain = fixtures::zookeeper();
    let error = refused(&url(&plain, &s.pki, "ca.pem", None)).await;
    assert_refusal(&error, ErrorKind::Unavailable, "secureClientPort");
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
