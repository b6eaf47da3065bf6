//! ZooKeeper digest ACLs keep a foreign client out: nodes alice creates
//! with `acl=creator-all` are closed to bob (another digest identity) and
//! to anonymous clients: no read, no write, no lock, no deleting her
//! registration, each `Unauthorized` (nothing applied) with a message
//! naming the ACL. With `acl=read-only-world`, anyone reads and only alice
//! writes.

use bytes::Bytes;
use sharedstate_conformance::fixtures::{self, tls_scenarios};
use sharedstate_conformance::unique_key;
use sharedstate_core::{CoordinationBackend, Error, ErrorKind, LockOptions, Outcome, PutMode};
use sharedstate_zookeeper::ZooKeeperBackend;

async fn connect(query: &str) -> ZooKeeperBackend {
    let url = format!("zk://{}?{query}", fixtures::zookeeper());
    ZooKeeperBackend::from_url(&url)
        .await
        .unwrap_or_else(|e| panic!("connect {query}: {e}"))
}

fn assert_kept_out(result: Result<impl std::fmt::Debug, Error>, what: &str) {
    let error = result.expect_err(what);
    assert_eq!(error.kind(), ErrorKind::Unauthorized, "{what}: {error}");
    assert_eq!(error.outcome(), Outcome::NotApplied, "{what}: {error}");
    assert!(
        error.to_string().contains("ACL does not allow"),
        "{what}: the message should name the ACL: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creator_all_keeps_a_second_identity_out() {
    let alice = connect("user=alice&password=alice-pw&acl=creator-all").await;
    let bob = connect("user=bob&password=bob-pw&acl=creator-all").await;
    let anonymous = connect("").await;
    let root = unique_key("zk-acl-creator");
    let payload = root.child("payload").expect("key");
    let lock = root.child("lock").expect("key");
    let listener = root
        .child("listeners")
        .and_then(|k| k.child("alice-1"))
        .expect("key");
    let registration =
        tls_scenarios::owner_uses_every_key(&alice, &payload, &listener, &lock).await;

    for (who, client) in [("bob", &bob), ("an anonymous client", &anonymous)] {
        assert_kept_out(client.get(&payload).await, &format!("{who} reads"));
        assert_kept_out(
            client
                .put(
                    &payload,
                    Bytes::from_static(b"{\"a\":2}"),
                    PutMode::Overwrite,
                )
                .await,
            &format!("{who} overwrites"),
        );
        assert_kept_out(
            client.lock(&lock, LockOptions::default()).await,
            &format!("{who} takes the lock"),
        );
        assert_kept_out(
            client.delete(&listener, None).await,
            &format!("{who} deletes alice's registration"),
        );
    }
    let still = alice.get(&payload).await.expect("read").expect("present");
    assert_eq!(still.value, Bytes::from_static(b"{\"a\":1}"));
    assert!(alice.get(&listener).await.expect("read").is_some());

    registration.close().await.expect("deregister");
    for client in [alice, bob, anonymous] {
        client.close().await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_world_lets_anyone_read_and_only_the_creator_write() {
    let alice = connect("user=alice&password=alice-pw&acl=read-only-world").await;
    let bob = connect("user=bob&password=bob-pw").await;
    let payload = unique_key("zk-acl-world").child("payload").expect("key");
    alice
        .put(&payload, Bytes::from_static(b"{\"a\":1}"), PutMode::Create)
        .await
        .expect("alice writes");
    let seen = bob
        .get(&payload)
        .await
        .expect("bob reads")
        .expect("present");
    assert_eq!(seen.value, Bytes::from_static(b"{\"a\":1}"));
    assert_kept_out(
        bob.put(&payload, Bytes::from_static(b"{}"), PutMode::Overwrite)
            .await,
        "bob overwrites a read-only-world node",
    );
    alice
        .put(
            &payload,
            Bytes::from_static(b"{\"a\":2}"),
            PutMode::Overwrite,
        )
        .await
        .expect("alice still writes");
    alice.close().await.expect("close");
    bob.close().await.expect("close");
}
