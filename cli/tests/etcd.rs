//! The `sharedstate` binary against a real etcd server (a container from
//! the test fixtures, or `$SHAREDSTATE_TEST_ETCD`).

mod common;

fn url() -> String {
    format!("etcd://{}", sharedstate_conformance::fixtures::etcd())
}

cli_scenarios!("etcd", url());
