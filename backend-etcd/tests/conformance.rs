//! The conformance suite against a real etcd (a container, or the server
//! `SHAREDSTATE_TEST_ETCD` points at), plus the etcd checks issue 4 asks
//! for: an outside operator's raw etcd put arriving through `watch`, and
//! watches across a compaction (on a dedicated container: compacting the
//! shared server would race other tests' watches). Every client gets its
//! own session through its own fault-injecting proxy.

mod common;

use bytes::Bytes;
use common::{dedicated_factory, factory, next, within};
use sharedstate_conformance::{unique_key, BackendFactory};
use sharedstate_core::{CoordinationBackend, PutMode, SessionState, Version, WatchEvent};

sharedstate_conformance::conformance_tests!(common::factory);

/// An operator edits the JSON payload with a plain etcd-client put (as
/// `etcdctl put` would); the change arrives through `watch` with the put's
/// revision as version, and a conditional update at that version works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_operator_edit_arrives_through_watch() {
    let f = factory().await;
    let client = f.client().await;
    let b = &client.backend;
    let key = unique_key("etcd_operator_edit")
        .child("payload")
        .expect("key");
    let v1 = b
        .put(
            &key,
            Bytes::from_static(br#"{"globs":["a*"]}"#),
            PutMode::Create,
        )
        .await
        .expect("create");
    let mut stream = b.watch(&key).await.expect("watch");
    match next(&mut stream, "Initial").await {
        WatchEvent::Initial(Some(found)) => assert_eq!(found.version, v1),
        other => panic!("expected Initial(Some), got {other:?}"),
    }

    let mut operator = f.raw().await;
    let edited = br#"{"globs":["a*","b*"]}"#;
    let put = operator
        .put(key.as_str(), edited.to_vec(), None)
        .await
        .expect("operator put");
    let revision = put.header().expect("header").revision();

    match next(&mut stream, "the operator's change").await {
        WatchEvent::Changed(found) => {
            assert_eq!(&found.value[..], &edited[..]);
            assert_eq!(found.version.as_u64(), revision as u64);
            let json: serde_json::Value = serde_json::from_slice(&found.value).expect("json");
            assert_eq!(json["globs"][1], "b*");
        }
        other => panic!("expected Changed, got {other:?}"),
    }
    let v3 = b
        .put(
            &key,
            Bytes::from_static(br#"{"globs":[]}"#),
            PutMode::Update(Version::new(revision as u64)),
        )
        .await
        .expect("update at the operator's version");
    assert!(v3.as_u64() > revision as u64);
    b.close().await.expect("close");
}

/// The watcher's connection is stalled (no byte moves) while another client
/// writes many large revisions and the keyspace is compacted past all of
/// them. After resume the watch must not skip silently: it yields `Resync`
/// with the latest value, and any `Changed` event is a later write than the
/// item before it (the bounded delivery may fold versions the consumer has
/// not taken yet, as the contract allows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_during_watch_resyncs_without_gap() {
    let (f, _server) = dedicated_factory().await;
    let (watcher, proxy) = f.connect().await;
    let writer = f.client().await;
    let key = unique_key("etcd_compaction").child("k").expect("key");
    let first = writer
        .backend
        .put(&key, Bytes::from_static(b"0"), PutMode::Create)
        .await
        .expect("create");
    let mut stream = watcher.watch(&key).await.expect("watch");
    match next(&mut stream, "Initial").await {
        WatchEvent::Initial(Some(found)) => assert_eq!(found.version, first),
        other => panic!("expected Initial(Some), got {other:?}"),
    }
    // A change seen through the watch: the etcd watch stream is live.
    let first = writer
        .backend
        .put(&key, Bytes::from_static(b"1"), PutMode::Overwrite)
        .await
        .expect("put");
    match next(&mut stream, "the first change").await {
        WatchEvent::Changed(found) => assert_eq!(found.version, first),
        other => panic!("expected Changed, got {other:?}"),
    }

    proxy.stall();
    // Enough bytes to fill the socket buffers and the HTTP/2 window, so
    // etcd cannot hand these events to the stalled watcher before the
    // compaction.
    let mut written = vec![first];
    for i in 0..300u32 {
        let mut value = vec![b'x'; 16 * 1024];
        value.extend_from_slice(i.to_string().as_bytes());
        let version = writer
            .backend
            .put(&key, Bytes::from(value), PutMode::Overwrite)
            .await
            .expect("put");
        written.push(version);
    }
    let last = *written.last().expect("writes");
    let mut admin = f.raw().await;
    admin
        .compact(last.as_u64() as i64, None)
        .await
        .expect("compact");
    // Hold the stall until the watcher notices (Suspended, or Lost when the
    // writes took longer than the lease TTL): from then on continuity cannot
    // be proven, so a Resync is due after the resume.
    let mut status = watcher.session();
    within("Suspended while stalled", async {
        while status.borrow_and_update().state == SessionState::Connected {
            status.changed().await.expect("session channel");
        }
    })
    .await;
    proxy.resume();

    let mut seen_resync = false;
    let mut previous = first;
    loop {
        match next(&mut stream, "the latest version after the compaction").await {
            WatchEvent::Resync(Some(found)) => {
                seen_resync = true;
                previous = found.version;
                if found.version == last {
                    assert_eq!(found.value.len(), 16 * 1024 + 3);
                    break;
                }
            }
            WatchEvent::Changed(found) => {
                // A Changed is one of the writes, newer than the last item:
                // the delivery may fold the versions a slow consumer has
                // not taken yet (the contract allows it), and the latest
                // always arrives (the loop ends only at `last`).
                assert!(
                    written.contains(&found.version) && found.version > previous,
                    "Changed({:?}) after {previous:?} is not a later write",
                    found.version
                );
                previous = found.version;
                if found.version == last {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(seen_resync, "a suspension must end in a Resync");
    watcher.close().await.expect("close");
}

/// A watch restarted from an old revision replays the history when it is
/// still there, and yields `Resync` with the latest value once the history
/// was compacted: never a silent gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_old_revision_replays_or_resyncs_after_compaction() {
    let (f, _server) = dedicated_factory().await;
    let (backend, _proxy) = f.connect().await;
    let key = unique_key("etcd_watch_from").child("k").expect("key");
    let mut versions = Vec::new();
    for i in 0..5u8 {
        let value = Bytes::from(vec![b'0' + i]);
        versions.push(
            backend
                .put(&key, value, PutMode::Overwrite)
                .await
                .expect("put"),
        );
    }
    // History intact: the writes after the first arrive one by one.
    let mut replay = backend
        .watch_from(&key, versions[0])
        .await
        .expect("watch_from");
    for (i, version) in versions.iter().enumerate().skip(1) {
        match next(&mut replay, "a replayed change").await {
            WatchEvent::Changed(found) => {
                assert_eq!(found.version, *version);
                assert_eq!(found.value, Bytes::from(vec![b'0' + i as u8]));
            }
            other => panic!("expected the replayed write {i}, got {other:?}"),
        }
    }
    drop(replay);

    // History compacted: Resync with the latest value first.
    let last = *versions.last().expect("writes");
    let mut admin = f.raw().await;
    admin
        .compact(last.as_u64() as i64, None)
        .await
        .expect("compact");
    let mut stream = backend
        .watch_from(&key, versions[0])
        .await
        .expect("watch_from");
    match next(&mut stream, "Resync after compaction").await {
        WatchEvent::Resync(Some(found)) => {
            assert_eq!(
                (found.version, found.value),
                (last, Bytes::from_static(b"4"))
            );
        }
        other => panic!("expected Resync(latest), got {other:?}"),
    }
    // And it keeps following.
    let next_version = backend
        .put(&key, Bytes::from_static(b"5"), PutMode::Overwrite)
        .await
        .expect("put");
    match next(&mut stream, "the change after the Resync").await {
        WatchEvent::Changed(found) => assert_eq!(found.version, next_version),
        other => panic!("expected Changed, got {other:?}"),
    }
    backend.close().await.expect("close");
}
