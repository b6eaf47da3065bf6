//! zookeeper-client builds its TLS config with `rustls::ClientConfig::builder()`,
//! which panics when the process has no default crypto provider and rustls
//! was built with more than one (aws-lc-rs from zookeeper-client, ring from
//! etcd-client's TLS in the same application: this test binary has both
//! through its dev-dependency). The backend installs one before connecting.
//! Its own binary: the provider is process-wide.

use std::time::Duration;

use sharedstate_core::ErrorKind;
use sharedstate_zookeeper::{ZooKeeperBackend, ZooKeeperTls};

#[tokio::test]
async fn tls_connects_do_not_panic_with_two_crypto_providers_built_in() {
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "nothing installed a provider yet"
    );
    // The dependency's hazard: what zookeeper-client calls panics here.
    let built = std::panic::catch_unwind(rustls::ClientConfig::builder);
    assert!(
        built.is_err(),
        "rustls picks no provider by itself when two are built in"
    );
    let pki = sharedstate_conformance::fixtures::TestPki::generate().expect("certificates");
    // Port 1: nothing listens; the connect fails instead of panicking.
    let error = ZooKeeperBackend::builder("localhost:1")
        .connect_timeout(Duration::from_secs(2))
        .tls(ZooKeeperTls::new(pki.ca.clone()))
        .connect()
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(rustls::crypto::CryptoProvider::get_default().is_some());
}
