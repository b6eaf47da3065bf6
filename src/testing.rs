//! Real ZooKeeper and etcd for your tests (feature `testing`; needs Docker).
//!
//! - [`zookeeper()`] / [`etcd()`]: `host:port` of a server shared by every
//!   test of one test binary, started on first use (a container through
//!   `testcontainers`) and removed when the binary exits. Or set
//!   `SHAREDSTATE_TEST_ZOOKEEPER` / `SHAREDSTATE_TEST_ETCD` to a running
//!   server. Without Docker and without those variables the call panics
//!   with what to do: a test never passes silently.
//! - [`start_server`]: a server of the caller's own, removed on drop.
//! - [`zookeeper_cluster`] / [`etcd_cluster`]: 3 (or n) members with fault
//!   hooks: [`Cluster::stop`], [`Cluster::start`], [`Cluster::kill`],
//!   [`Cluster::pause`], [`Cluster::unpause`], [`Cluster::leader`],
//!   [`Cluster::wait_healthy`].
//! - [`TcpProxy`]: in front of a server or member, cuts or stalls one
//!   client's connection.
//! - [`TestPki`] and [`start_tls_server`]: certificates made at test time
//!   and ZooKeeper / etcd servers over TLS (optionally requiring client
//!   certificates), for `zks://` and `etcds://`.
//! - [`conformance`]: the behaviour suite, for a backend of your own
//!   (`conformance::conformance_tests!`).
//!
//! Images: `SHAREDSTATE_ZOOKEEPER_IMAGE` / `SHAREDSTATE_ETCD_IMAGE`, default
//! the official `zookeeper:3.9` and `gcr.io/etcd-development/etcd:v3.5.17`.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use sharedstate::{testing, SharedState};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! struct Flags { dark_mode: bool }
//!
//! #[tokio::test]
//! async fn flags_reach_every_instance() {
//!     let url = format!("zk://{}", testing::zookeeper());
//!     let open = || async {
//!         SharedState::builder(sharedstate::connect(&url).await.unwrap(), "/myapp/flags")
//!             .initial(Flags { dark_mode: false })
//!             .open()
//!             .await
//!             .unwrap()
//!     };
//!     let (a, b) = (open().await, open().await);
//!     a.update(|f| f.dark_mode = true).await.unwrap();
//!     // ... wait for b to see it (b.subscribe()), then:
//!     assert!(b.read_consistent().await.unwrap().dark_mode);
//! }
//! # fn main() {}
//! ```

/// The conformance suite: [`conformance_tests!`](sharedstate_conformance::conformance_tests)
/// and the traits a backend's test factory implements.
pub use sharedstate_conformance as conformance;
/// The cluster fault suite: a workload, faults and a Jepsen-style checker
/// on a 3-member cluster (`tests/cluster_faults.rs`, `scripts/chaos.sh`).
pub use sharedstate_conformance::chaos;
/// The fixtures as a module, for paths such as `testing::fixtures::ServiceKind`.
pub use sharedstate_conformance::fixtures;
pub use sharedstate_conformance::fixtures::*;
