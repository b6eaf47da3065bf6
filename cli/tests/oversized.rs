//! An outside writer stores a payload above the backends' 1,000,000-byte
//! `max_value_bytes` (etcd accepts up to 1.5 MiB, ZooKeeper up to its
//! 1 MiB `jute.maxbuffer`; here through the raw clients, as etcdctl or
//! kazoo would). Instances refuse it as a payload problem (`Rejected`,
//! naming the size and the limit) and keep the last good copy; updates fail
//! until an operator overwrites it with `sharedstate set`, after which the
//! instances take the new payload and update again. Both real servers.

mod common;

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sharedstate::{ErrorKind, SharedState, StateEvent};

use common::{run, unique};

const LIMIT: usize = 1_000_000;
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Settings {
    n: u64,
}

/// Valid JSON for `Settings` (it ignores `pad`), `size` bytes long.
fn oversized_payload(size: usize) -> Vec<u8> {
    let head = br#"{"n":99,"pad":""#;
    let tail = br#""}"#;
    let mut bytes = head.to_vec();
    bytes.resize(size - tail.len(), b'x');
    bytes.extend_from_slice(tail);
    bytes
}

/// The scenario; `write_outside(payload_key, bytes)` stores the bytes with
/// a raw client.
fn refused_kept_and_recovered<F, Fut>(url: &str, size: usize, write_outside: F)
where
    F: FnOnce(String, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let path = unique("oversized");
    run(url, &["init", &path, r#"{"n":1}"#], None).ok();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let backend = sharedstate::connect(url).await.expect("connect");
        let state = SharedState::<Settings>::builder(backend, &path)
            .expect_existing(WAIT)
            .open()
            .await
            .expect("open");
        let mut events = state.subscribe();
        write_outside(format!("{path}/payload"), oversized_payload(size)).await;

        let rejected = tokio::time::timeout(WAIT, async {
            loop {
                match events.next().await.expect("events") {
                    StateEvent::Rejected { error, .. } => break error,
                    other => println!("before the refusal: {other:?}"),
                }
            }
        })
        .await
        .expect("the oversized payload is refused in time");
        assert!(
            rejected.contains(&format!("payload of {size} bytes"))
                && rejected.contains(&format!("limit of {LIMIT} bytes")),
            "the refusal names the size and the limit: {rejected}"
        );
        assert_eq!(*state.read().expect("last good copy"), Settings { n: 1 });
        let refused = state
            .update(|s| s.n += 1)
            .await
            .expect_err("no update on an oversized payload");
        assert_eq!(refused.kind(), ErrorKind::Decode, "{refused}");
        assert!(
            refused.to_string().contains("exceeds the limit"),
            "{refused}"
        );

        // The operator's way out.
        let out = run(url, &["set", &path, r#"{"n":3}"#], None);
        out.ok();
        tokio::time::timeout(WAIT, async {
            while state.read().map(|s| s.n).ok() != Some(3) {
                events.next().await.expect("events");
            }
        })
        .await
        .expect("the instance takes the operator's payload");
        state.update(|s| s.n += 1).await.expect("updates resume");
        state.close().await;
    });
    let out = run(url, &["get", &path], None);
    out.ok();
    assert!(out.stdout.contains("\"n\": 4"), "{}", out.stdout);
}

#[test]
fn zookeeper_oversized_payload_from_outside() {
    let server = sharedstate_conformance::fixtures::zookeeper();
    let url = format!("zk://{server}");
    // Above our limit, below ZooKeeper's default jute.maxbuffer (1 MiB).
    refused_kept_and_recovered(&url, 1_040_000, |key, bytes| async move {
        let client = zookeeper_client::Client::connect(&server)
            .await
            .expect("raw ZooKeeper client");
        client
            .set_data(&key, &bytes, None)
            .await
            .expect("an outside writer stores 1,040,000 bytes");
    });
}

#[test]
fn etcd_oversized_payload_from_outside() {
    let server = sharedstate_conformance::fixtures::etcd();
    let url = format!("etcd://{server}");
    // Above our limit, below etcd's default --max-request-bytes (1.5 MiB).
    refused_kept_and_recovered(&url, 1_400_000, |key, bytes| async move {
        let mut client = etcd_client::Client::connect([server.as_str()], None)
            .await
            .expect("raw etcd client");
        client
            .put(key, bytes, None)
            .await
            .expect("an outside writer stores 1,400,000 bytes");
    });
}
