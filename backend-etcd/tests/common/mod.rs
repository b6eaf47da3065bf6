//! Shared by the etcd test binaries: the conformance factory (one session
//! per client, each through its own fault-injecting proxy), dedicated
//! containers, and small waiting helpers.
#![allow(dead_code)] // each test binary uses a part

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use sharedstate_conformance::fixtures::{self, TcpProxy};
use sharedstate_conformance::{BackendFactory, FaultInjector, TestClient};
use sharedstate_core::{Result, WatchEvent, WatchStream};
use sharedstate_etcd::EtcdBackend;

/// Short enough that a lost session is noticed quickly, long enough that a
/// brief suspension survives.
pub const SESSION_TTL: Duration = Duration::from_secs(6);
/// Calls through a cut proxy fail with `Unavailable` after this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

pub struct EtcdFactory {
    pub server: String,
    /// Every proxy lives as long as the factory (the whole test): behaviours
    /// may drop a `TestClient` and keep only its backend (inside a
    /// `SharedState`), and the backend must stay connected.
    pub proxies: Mutex<Vec<Arc<TcpProxy>>>,
}

pub async fn factory() -> EtcdFactory {
    init_tracing();
    EtcdFactory {
        server: fixtures::etcd(),
        proxies: Mutex::new(Vec::new()),
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

impl EtcdFactory {
    /// A backend behind its own proxy.
    pub async fn connect(&self) -> (EtcdBackend, Arc<TcpProxy>) {
        let proxy = TcpProxy::start(self.server.clone())
            .await
            .unwrap_or_else(|e| {
                panic!("cannot start a TCP proxy in front of {}: {e}", self.server)
            });
        let proxy = Arc::new(proxy);
        self.proxies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Arc::clone(&proxy));
        let backend = EtcdBackend::builder([proxy.endpoint()])
            .session_ttl(SESSION_TTL)
            .request_timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to etcd at {} (through {}): {e}; is the server up? \
                     Set SHAREDSTATE_TEST_ETCD=host:port or run scripts/test.sh",
                    self.server,
                    proxy.endpoint()
                )
            });
        (backend, proxy)
    }

    /// A plain etcd-client connection straight to the server (an outside
    /// operator, or an administrator).
    pub async fn raw(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.server.as_str()], None)
            .await
            .unwrap_or_else(|e| panic!("raw etcd-client connect to {}: {e}", self.server))
    }
}

#[async_trait]
impl BackendFactory for EtcdFactory {
    fn name(&self) -> &str {
        "etcd"
    }

    async fn client(&self) -> TestClient {
        let (backend, proxy) = self.connect().await;
        let backend = Arc::new(backend);
        let faults = Arc::new(EtcdFaults {
            backend: backend.clone(),
            proxy,
            server: self.server.clone(),
        });
        TestClient { backend, faults }
    }
}

pub struct EtcdFaults {
    backend: Arc<EtcdBackend>,
    proxy: Arc<TcpProxy>,
    server: String,
}

#[async_trait]
impl FaultInjector for EtcdFaults {
    async fn expire_session(&self) -> Result<()> {
        // Straight to the server: works while the proxy is suspended too.
        self.backend
            .force_session_expiry_via(std::slice::from_ref(&self.server))
            .await
    }

    async fn suspend(&self) -> Result<()> {
        self.proxy.suspend();
        Ok(())
    }

    async fn resume(&self) -> Result<()> {
        self.proxy.resume();
        Ok(())
    }

    async fn stall(&self) -> Result<()> {
        self.proxy.stall();
        Ok(())
    }
}

pub async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub async fn next(stream: &mut WatchStream, what: &str) -> WatchEvent {
    match within(what, stream.next()).await {
        Some(Ok(event)) => event,
        other => panic!("{what}: expected an event, got {other:?}"),
    }
}

/// A dedicated etcd container for this test only (removed when the handle
/// is dropped), for what must not touch the shared server: compaction (it
/// would race other tests' watches) and auth.
pub async fn dedicated_etcd() -> fixtures::Server {
    fixtures::start_server(fixtures::ServiceKind::Etcd)
        .await
        .unwrap_or_else(|message| panic!("this test needs its own etcd container: {message}"))
}

/// A factory on a dedicated etcd container.
pub async fn dedicated_factory() -> (EtcdFactory, fixtures::Server) {
    init_tracing();
    let server = dedicated_etcd().await;
    let factory = EtcdFactory {
        server: server.endpoint().to_owned(),
        proxies: Mutex::new(Vec::new()),
    };
    (factory, server)
}
