//! The conformance suite, as an outside backend crate runs it: one named
//! test per behaviour, against a fresh in-memory cluster each.

use std::sync::Arc;

use sharedstate_conformance::sharedstate_core::Result;
use sharedstate_conformance::{async_trait, BackendFactory, FaultInjector, TestClient};
use sharedstate_example_outside_backend::{MemoryBackend, MemoryCluster};

/// Makes clients of one cluster; each `client()` is a new session.
struct Factory {
    cluster: MemoryCluster,
}

/// Faults on one client: the memory backend injects them itself (a
/// network backend would use `fixtures::TcpProxy` and the server's API).
struct Faults(Arc<MemoryBackend>);

#[async_trait]
impl FaultInjector for Faults {
    async fn expire_session(&self) -> Result<()> {
        self.0.expire_session()
    }

    async fn suspend(&self) -> Result<()> {
        self.0.suspend()
    }

    async fn resume(&self) -> Result<()> {
        self.0.resume()
    }
}

#[async_trait]
impl BackendFactory for Factory {
    fn name(&self) -> &str {
        "outside (memory)"
    }

    async fn client(&self) -> TestClient {
        let backend = Arc::new(self.cluster.client());
        TestClient {
            backend: backend.clone(),
            faults: Arc::new(Faults(backend)),
        }
    }
}

async fn factory() -> Factory {
    Factory {
        cluster: MemoryCluster::new(),
    }
}

sharedstate_conformance::conformance_tests!(factory);
