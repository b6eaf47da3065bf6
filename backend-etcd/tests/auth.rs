//! etcd users and roles keep a foreign client out: on an etcd of its own
//! with auth on, alice's role may read and write `/alice/` only, bob's
//! `/bob/` only. Bob cannot read, write, take the lock of, or delete a
//! registration under `/alice/`: each is `Unauthorized`, refused (nothing
//! applied), with a message that says the role grants no access. Each works
//! under his own prefix.

mod common;

use bytes::Bytes;
use common::{dedicated_etcd, init_tracing};
use etcd_client::Permission;
use sharedstate_conformance::fixtures::tls_scenarios;
use sharedstate_core::{CoordinationBackend, Error, ErrorKind, Key, LockOptions, Outcome, PutMode};
use sharedstate_etcd::EtcdBackend;

async fn user(client: &mut etcd_client::Client, name: &str, password: &str, prefix: &str) {
    let role = format!("{name}-role");
    client.role_add(role.as_str()).await.expect("role add");
    client
        .role_grant_permission(role.as_str(), Permission::read_write(prefix).with_prefix())
        .await
        .expect("grant the prefix");
    client
        .user_add(name, password, None)
        .await
        .expect("user add");
    client
        .user_grant_role(name, role.as_str())
        .await
        .expect("grant role");
}

fn key(path: &str) -> Key {
    Key::new(path).expect("key")
}

fn assert_kept_out(result: Result<impl std::fmt::Debug, Error>, what: &str, access: &str) {
    let error = result.expect_err(what);
    assert_eq!(error.kind(), ErrorKind::Unauthorized, "{what}: {error}");
    assert_eq!(error.outcome(), Outcome::NotApplied, "{what}: {error}");
    let shown = error.to_string();
    assert!(
        shown.contains("permission denied") && shown.contains(access),
        "{what}: the message should say the role grants no {access} access: {shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_limited_to_one_prefix_keeps_another_prefix_out() {
    init_tracing();
    let server = dedicated_etcd().await;
    let endpoint = server.endpoint().to_owned();
    let mut admin = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .expect("admin connect");
    admin.user_add("root", "root-pw", None).await.expect("root");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("root role");
    user(&mut admin, "alice", "alice-pw", "/alice/").await;
    user(&mut admin, "bob", "bob-pw", "/bob/").await;
    admin.auth_enable().await.expect("auth enable");

    let alice = EtcdBackend::from_url(&format!("etcd://alice:alice-pw@{endpoint}"))
        .await
        .expect("alice connects");
    let bob = EtcdBackend::from_url(&format!("etcd://bob:bob-pw@{endpoint}"))
        .await
        .expect("bob connects");

    let payload = key("/alice/app/payload");
    let lock = key("/alice/app/lock");
    let listener = key("/alice/app/listeners/alice-1");
    let registration =
        tls_scenarios::owner_uses_every_key(&alice, &payload, &listener, &lock).await;

    assert_kept_out(bob.get(&payload).await, "bob reads alice's payload", "read");
    assert_kept_out(
        bob.put(
            &payload,
            Bytes::from_static(b"{\"a\":2}"),
            PutMode::Overwrite,
        )
        .await,
        "bob overwrites alice's payload",
        "write",
    );
    assert_kept_out(
        bob.lock(&lock, LockOptions::default()).await,
        "bob takes alice's lock",
        "write",
    );
    assert_kept_out(
        bob.delete(&listener, None).await,
        "bob deletes alice's registration",
        "write",
    );
    // Nothing of bob's attempts landed.
    let still = alice
        .get(&payload)
        .await
        .expect("alice reads")
        .expect("present");
    assert_eq!(still.value, Bytes::from_static(b"{\"a\":1}"));
    assert!(alice.get(&listener).await.expect("alice reads").is_some());

    // Bob's own prefix works: the refusals are about the prefix.
    let own = key("/bob/app/payload");
    bob.put(&own, Bytes::from_static(b"{}"), PutMode::Create)
        .await
        .expect("bob writes his prefix");
    bob.lock(&key("/bob/app/lock"), LockOptions::default())
        .await
        .expect("bob locks his prefix")
        .release()
        .await
        .expect("release");
    assert_kept_out(alice.get(&own).await, "alice reads bob's payload", "read");

    registration.close().await.expect("deregister");
    alice.close().await.expect("close");
    bob.close().await.expect("close");
}
