//! The shared behaviour suite, run against the in-memory cluster: one
//! fresh cluster per behaviour, one client (session) per `client()` call.

use std::sync::Arc;

use sharedstate_conformance::{BackendFactory, FaultInjector, TestClient};
use sharedstate_core::backend::async_trait;
use sharedstate_core::Result;
use sharedstate_memory::{MemoryBackend, MemoryCluster};

struct MemoryFactory {
    cluster: MemoryCluster,
}

struct MemoryFaults(Arc<MemoryBackend>);

#[async_trait]
impl FaultInjector for MemoryFaults {
    async fn expire_session(&self) -> Result<()> {
        self.0.expire_session()
    }

    async fn suspend(&self) -> Result<()> {
        self.0.suspend()
    }

    async fn resume(&self) -> Result<()> {
        self.0.resume()
    }

    async fn stall(&self) -> Result<()> {
        self.0.stall()
    }

    async fn silence_watches(&self) -> Result<()> {
        self.0.silence_watches()
    }
}

#[async_trait]
impl BackendFactory for MemoryFactory {
    fn name(&self) -> &str {
        "memory"
    }

    async fn client(&self) -> TestClient {
        let backend = Arc::new(self.cluster.client());
        TestClient {
            backend: backend.clone(),
            faults: Arc::new(MemoryFaults(backend)),
        }
    }
}

async fn factory() -> impl BackendFactory {
    MemoryFactory {
        cluster: MemoryCluster::new(),
    }
}

sharedstate_conformance::conformance_tests!(factory);
