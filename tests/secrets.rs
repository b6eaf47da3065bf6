//! Secrets are never printed: a run with a ZooKeeper digest password, an
//! etcd user's password (and the auth token etcd hands out for it) and TLS
//! client keys on both backends, with every log line of every crate
//! captured at TRACE, plus the `Debug` and `Display` of the builders,
//! backends, TLS settings, errors and connect failures it meets. None of
//! them may contain a password, a token or a private key.
#![cfg(all(
    feature = "testing",
    feature = "zookeeper",
    feature = "etcd",
    feature = "tls"
))]

use std::io::Write;
use std::sync::{Arc, Mutex};

use sharedstate::backend::Bytes;
use sharedstate::etcd::EtcdBackend;
use sharedstate::testing::fixtures::{
    self, start_tls_server, ClientAuth, ServerCertificate, ServiceKind, TestPki,
};
use sharedstate::zookeeper::{ZooKeeperBackend, ZooKeeperTls};
use sharedstate::{CoordinationBackend, Key, LockOptions, PutMode};

const ZK_PASSWORD: &str = "zk-Pa55-d1gest-secret";
const ETCD_PASSWORD: &str = "etcd-Pa55-user-secret";

/// Every log line, at TRACE, from every crate.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// What was shown besides the logs: `Debug` and `Display` of what the run
/// touched.
#[derive(Default)]
struct Shown(Vec<String>);

impl Shown {
    fn debug(&mut self, what: &str, value: &dyn std::fmt::Debug) {
        self.0.push(format!("{what}: {value:?}"));
    }
    fn error(&mut self, what: &str, error: &sharedstate::Error) {
        let mut chain = format!("{what}: {error} | {error:?}");
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            chain.push_str(&format!(" | caused by: {cause}"));
            source = cause.source();
        }
        self.0.push(chain);
    }
}

/// The lines of a PEM private key's base64 body (each would give it away).
fn key_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|line| !line.starts_with("-----") && line.len() >= 16)
        .map(str::to_owned)
        .collect()
}

/// etcd's simple auth tokens look like `<16 letters>.<index>`.
fn simple_tokens(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i + 17 < bytes.len() {
        let letters = bytes[i..i + 16].iter().all(u8::is_ascii_alphabetic);
        let boundary = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        if letters && boundary && bytes[i + 16] == b'.' && bytes[i + 17].is_ascii_digit() {
            found.push(String::from_utf8_lossy(&bytes[i..i + 18]).into_owned());
            i += 17;
        }
        i += 1;
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_token_or_private_key_is_ever_printed() {
    // The servers first: the fixtures' Docker client logs the requests that
    // copy the servers' own keys into their containers at TRACE, which is
    // test infrastructure, not a client of sharedstate.
    let pki = TestPki::generate().expect("certificates");
    let zk_server = fixtures::zookeeper();
    let zk_tls = start_tls_server(
        ServiceKind::ZooKeeper,
        &pki,
        ServerCertificate::Valid,
        ClientAuth::Required,
    );
    let etcd_tls = start_tls_server(
        ServiceKind::Etcd,
        &pki,
        ServerCertificate::Valid,
        ClientAuth::Required,
    );
    let etcd_server = fixtures::start_server(ServiceKind::Etcd);
    let (zk_tls, etcd_tls, etcd_server) = tokio::join!(zk_tls, etcd_tls, etcd_server);
    let (zk_tls, etcd_tls, etcd_server) = (
        zk_tls.expect("zk TLS server"),
        etcd_tls.expect("etcd TLS server"),
        etcd_server.expect("etcd server"),
    );
    // From here on every log line of every crate is kept.
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let mut shown = Shown::default();

    // ZooKeeper: digest credentials, then TLS with a client key.
    let zk_url =
        format!("zk://{zk_server}/secrets?user=alice&password={ZK_PASSWORD}&acl=creator-all");
    let zk = sharedstate::connect(&zk_url).await.expect("zk connect");
    exercise(zk.as_ref(), &mut shown).await;
    shown.debug("zk backend", &zk);
    zk.close().await.expect("close");
    let builder = ZooKeeperBackend::builder(zk_server.clone())
        .with_auth("alice", ZK_PASSWORD)
        .tls(
            ZooKeeperTls::new(pki.ca.clone())
                .with_identity(pki.client.cert.clone(), pki.client.key.clone()),
        );
    shown.debug("zk builder", &builder);
    let zks_url = format!(
        "zks://{}?user=alice&password={ZK_PASSWORD}&ca_file={}&cert_file={}&key_file={}",
        zk_tls.tls_endpoint(),
        pki.path("ca.pem").display(),
        pki.path("client.pem").display(),
        pki.path("client.key").display()
    );
    let zks = sharedstate::connect(&zks_url).await.expect("zks connect");
    exercise(zks.as_ref(), &mut shown).await;
    shown.debug("zks backend", &zks);
    zks.close().await.expect("close");
    let refused = sharedstate::connect(&zks_url.replace("ca.pem", "other-ca.pem"))
        .await
        .expect_err("wrong CA");
    shown.error("zks wrong CA", &refused);

    // etcd: a user with a password on an etcd of its own with auth on.
    let endpoint = etcd_server.endpoint().to_owned();
    let mut admin = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .expect("admin");
    admin
        .user_add("root", ETCD_PASSWORD, None)
        .await
        .expect("root");
    admin.user_grant_role("root", "root").await.expect("role");
    admin.auth_enable().await.expect("auth on");
    // A token of the same kind the backend holds, to know what one looks like.
    let with_token = etcd_client::Client::connect(
        [endpoint.as_str()],
        Some(etcd_client::ConnectOptions::new().with_user("root", ETCD_PASSWORD)),
    )
    .await
    .expect("token client");
    let token = with_token
        .auth_client()
        .authenticate("root".into(), ETCD_PASSWORD.into())
        .await
        .expect("authenticate")
        .token()
        .to_owned();
    assert!(
        !simple_tokens(&token).is_empty() || token.starts_with("eyJ"),
        "{token}"
    );
    let etcd_url = format!("etcd://root:{ETCD_PASSWORD}@{endpoint}");
    let etcd = sharedstate::connect(&etcd_url).await.expect("etcd connect");
    exercise(etcd.as_ref(), &mut shown).await;
    shown.debug("etcd backend", &etcd);
    etcd.close().await.expect("close");
    let wrong = sharedstate::connect(&format!("etcd://root:not-{ETCD_PASSWORD}@{endpoint}"))
        .await
        .expect_err("wrong password");
    shown.error("etcd wrong password", &wrong);
    let unreachable = sharedstate::connect(&format!(
        "etcd://root:{ETCD_PASSWORD}@127.0.0.1:1?connect_timeout_ms=500"
    ))
    .await
    .expect_err("nothing listens on port 1");
    shown.error("etcd unreachable", &unreachable);
    let malformed = sharedstate::connect(&format!("etcd://root:{ETCD_PASSWORD}@"))
        .await
        .expect_err("no host");
    shown.error("etcd malformed", &malformed);
    shown.debug(
        "etcd builder",
        &EtcdBackend::builder([endpoint.clone()]).user("root", ETCD_PASSWORD),
    );

    // etcd over TLS with a client key.
    let etcds_url = format!(
        "etcds://{}?ca_file={}&cert_file={}&key_file={}",
        etcd_tls.tls_endpoint(),
        pki.path("ca.pem").display(),
        pki.path("client.pem").display(),
        pki.path("client.key").display()
    );
    let etcds = sharedstate::connect(&etcds_url)
        .await
        .expect("etcds connect");
    exercise(etcds.as_ref(), &mut shown).await;
    shown.debug("etcds backend", &etcds);
    etcds.close().await.expect("close");
    let no_cert = sharedstate::connect(&format!(
        "etcds://{}?ca_file={}",
        etcd_tls.tls_endpoint(),
        pki.path("ca.pem").display()
    ))
    .await
    .expect_err("no client certificate");
    shown.error("etcds without a client certificate", &no_cert);

    let logs = captured.text();
    assert!(
        logs.lines().count() > 100 && logs.contains("TRACE"),
        "the capture holds the run's TRACE logs ({} lines)",
        logs.lines().count()
    );
    let everything = format!("{logs}\n{}", shown.0.join("\n"));
    for secret in [ZK_PASSWORD, ETCD_PASSWORD, token.as_str()] {
        let at = everything
            .find(secret)
            .map(|i| &everything[i.saturating_sub(200)..i]);
        assert!(at.is_none(), "a secret was printed after: {at:?}");
    }
    for line in key_lines(&pki.client.key) {
        assert!(
            !everything.contains(&line),
            "a line of the client's private key was printed"
        );
    }
    let tokens = simple_tokens(&everything);
    assert!(
        tokens.is_empty(),
        "something shaped like an etcd token was printed: {tokens:?}"
    );
    let pem = everything.find("PRIVATE KEY").map(|i| {
        let start = everything[..i].rfind('\n').map_or(0, |n| n + 1);
        &everything[start..(start + 300).min(i)]
    });
    assert!(pem.is_none(), "a PEM private key was printed: {pem:?}");
}

/// What an application does: write, read, watch, lock, register.
async fn exercise(backend: &dyn CoordinationBackend, shown: &mut Shown) {
    let root = sharedstate::testing::conformance::unique_key("secrets");
    let key = root.child("payload").expect("key");
    backend
        .put(&key, Bytes::from_static(b"{\"a\":1}"), PutMode::Create)
        .await
        .expect("put");
    backend.get(&key).await.expect("get");
    let _watch = backend.watch(&key).await.expect("watch");
    let guard = backend
        .lock(&root.child("lock").expect("key"), LockOptions::default())
        .await
        .expect("lock");
    shown.debug("lock guard", &guard);
    guard.release().await.expect("release");
    let listener: Key = root
        .child("listeners")
        .and_then(|k| k.child("one"))
        .expect("key");
    let registration = backend
        .register(&listener, Bytes::from_static(b"{}"))
        .await
        .expect("register");
    registration.close().await.expect("deregister");
    let conflict = backend
        .put(&key, Bytes::from_static(b"{}"), PutMode::Create)
        .await
        .expect_err("already exists");
    shown.error("conflict", &conflict);
}
