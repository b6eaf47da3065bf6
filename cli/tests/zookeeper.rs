//! The `sharedstate` binary against a real ZooKeeper server (a container
//! from the test fixtures, or `$SHAREDSTATE_TEST_ZOOKEEPER`).

mod common;

fn url() -> String {
    format!("zk://{}", sharedstate_conformance::fixtures::zookeeper())
}

cli_scenarios!("zk", url());
