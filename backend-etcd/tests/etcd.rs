//! etcd-specific checks beyond the conformance suite: URLs and forced
//! expiry, connect errors, user/password auth (dedicated container), a
//! partition longer than the lease TTL, locks and registrations within one
//! client.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{dedicated_etcd, factory, init_tracing, next, within};
use sharedstate_conformance::{unique_key, BackendFactory};
use sharedstate_core::{CoordinationBackend, ErrorKind, Key, PutMode, SessionState, WatchEvent};
use sharedstate_etcd::EtcdBackend;

/// `from_url` parses hosts and options and connects; `lease_id` names a
/// live lease; `force_session_expiry` revokes it through a second
/// connection and the client moves to a new lease and epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_url_and_forced_expiry() {
    let f = factory().await;
    let url = format!(
        "etcd://{}?session_ttl_s=5&request_timeout_ms=3000",
        f.server
    );
    let backend = EtcdBackend::from_url(&url).await.expect("from_url");
    let first = backend.lease_id();
    assert_ne!(first, 0);
    let mut admin = f.raw().await;
    let ttl = admin.lease_time_to_live(first, None).await.expect("ttl");
    assert!(ttl.ttl() > 0, "the session lease is alive");

    let mut status = backend.session();
    backend.force_session_expiry().await.expect("expire");
    within("a new session", async {
        loop {
            let now = *status.borrow_and_update();
            if now.state == SessionState::Connected && now.epoch == 1 {
                break;
            }
            status.changed().await.expect("session channel");
        }
    })
    .await;
    assert_ne!(backend.lease_id(), first);
    backend.close().await.expect("close");
    assert_eq!(
        backend
            .get(&Key::new("/x").expect("key"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Closed
    );
}

/// A bad URL is `InvalidArgument`, an unreachable endpoint `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors() {
    let bad = EtcdBackend::from_url("etcd://h:1?nope=1")
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidArgument);
    let down = EtcdBackend::builder(["127.0.0.1:1"])
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(down.kind(), ErrorKind::Unavailable, "{down}");
}

/// User/password auth against a dedicated etcd (auth cannot be switched on
/// on the shared server): the right credentials work for the whole
/// contract surface used here, a wrong password or none is `Unauthorized`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_auth() {
    init_tracing();
    let server = dedicated_etcd().await;
    let endpoint = server.endpoint().to_owned();
    let mut admin = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .expect("admin connect");
    admin
        .user_add("root", "s3cret", None)
        .await
        .expect("user add");
    admin.user_grant_role("root", "root").await.expect("grant");
    admin.auth_enable().await.expect("auth enable");

    let backend = EtcdBackend::builder([endpoint.clone()])
        .user("root", "s3cret")
        .connect()
        .await
        .expect("connect with credentials");
    let key = unique_key("etcd_auth").child("k").expect("key");
    let version = backend
        .put(&key, Bytes::from_static(b"v"), PutMode::Create)
        .await
        .expect("put");
    let found = backend.get(&key).await.expect("get").expect("present");
    assert_eq!(found.version, version);
    let mut stream = backend.watch(&key).await.expect("watch");
    assert!(matches!(
        next(&mut stream, "Initial").await,
        WatchEvent::Initial(Some(_))
    ));
    let lock_key = unique_key("etcd_auth").child("lock").expect("key");
    let guard = backend
        .lock(&lock_key, sharedstate_core::LockOptions::default())
        .await
        .expect("lock");
    guard.release().await.expect("release");
    backend.close().await.expect("close");

    let wrong = EtcdBackend::builder([endpoint.clone()])
        .user("root", "wrong")
        .connect()
        .await
        .expect_err("wrong password");
    assert_eq!(wrong.kind(), ErrorKind::Unauthorized, "{wrong}");
    // etcd grants leases without credentials, so connecting works; the
    // first key operation is refused.
    let anonymous = EtcdBackend::builder([endpoint.clone()])
        .connect()
        .await
        .expect("connect without credentials");
    let refused = anonymous
        .put(&key, Bytes::from_static(b"x"), PutMode::Overwrite)
        .await
        .expect_err("put without credentials");
    assert_eq!(refused.kind(), ErrorKind::Unauthorized, "{refused}");
    let refused = anonymous
        .get(&key)
        .await
        .expect_err("get without credentials");
    assert_eq!(refused.kind(), ErrorKind::Unauthorized, "{refused}");
    anonymous.close().await.expect("close");
}

/// A partition longer than the lease TTL: the client cannot hear from etcd,
/// so once the TTL has passed since the last answered keep-alive it reports
/// `Lost` on its own (lock guards fire) without waiting for the network.
/// After the partition heals it opens a new session (epoch + 1) and
/// re-creates its registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_longer_than_ttl_loses_the_session() {
    let f = factory().await;
    let (backend, proxy) = f.connect().await;
    let observer = f.client().await;
    let base = unique_key("etcd_partition");
    let lock_key = base.child("lock").expect("key");
    let reg_key = base.child("member").expect("key");
    let guard = backend
        .lock(&lock_key, sharedstate_core::LockOptions::default())
        .await
        .expect("lock");
    let _registration = backend
        .register(&reg_key, Bytes::from_static(b"me"))
        .await
        .expect("register");
    let mut status = backend.session();
    let first = *status.borrow_and_update();

    proxy.suspend();
    within("Lost after the TTL", async {
        while status.borrow_and_update().state != SessionState::Lost {
            status.changed().await.expect("session channel");
        }
    })
    .await;
    assert!(guard.is_lost(), "the lock guard fires with the session");
    // The server expired the lease too: another client can take the lock.
    let other = observer
        .backend
        .lock(&lock_key, sharedstate_core::LockOptions::default())
        .await
        .expect("another client takes the lock");
    assert!(other.fencing_token() > guard.fencing_token());
    other.release().await.expect("release");

    proxy.resume();
    within("a new session", async {
        loop {
            let now = *status.borrow_and_update();
            if now.state == SessionState::Connected && now.epoch > first.epoch {
                break;
            }
            status.changed().await.expect("session channel");
        }
    })
    .await;
    let found = observer.backend.get(&reg_key).await.expect("get");
    assert_eq!(
        found.map(|v| v.value),
        Some(Bytes::from_static(b"me")),
        "the registration is back on the new lease"
    );
    backend.close().await.expect("close");
}

/// Two callers of the same client are exclusive too (they queue locally for
/// the session's waiter key); a timed-out waiter leaves no key behind, and
/// tokens grow across acquisitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_exclusive_within_one_client() {
    use sharedstate_core::LockOptions;
    let f = factory().await;
    let client = f.client().await;
    let other = f.client().await;
    let b = &client.backend;
    let lock_key = unique_key("etcd_lock_local").child("lock").expect("key");
    let first = b
        .lock(&lock_key, LockOptions::default())
        .await
        .expect("first");
    let short = LockOptions::with_timeout(Duration::from_millis(300));
    let second = b
        .lock(&lock_key, short.clone())
        .await
        .expect_err("second, same client");
    assert_eq!(second.kind(), ErrorKind::LockTimeout);
    let third = other
        .backend
        .lock(&lock_key, short)
        .await
        .expect_err("other client");
    assert_eq!(third.kind(), ErrorKind::LockTimeout);
    let waiters = other.backend.list(&lock_key).await.expect("list");
    assert_eq!(
        waiters.len(),
        1,
        "only the holder's key is left: {waiters:?}"
    );

    let backend = Arc::clone(b);
    let key = lock_key.clone();
    let waiting = tokio::spawn(async move { backend.lock(&key, LockOptions::default()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the second caller waits");
    let token = first.fencing_token();
    first.release().await.expect("release");
    let next = within("the second caller", waiting)
        .await
        .expect("task")
        .expect("lock");
    assert!(next.fencing_token() > token);
    next.release().await.expect("release");
    assert!(other
        .backend
        .list(&lock_key)
        .await
        .expect("list")
        .is_empty());
}

/// A client cannot register the same key twice: the second call is
/// `AlreadyExists` (and closing the first removes the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_twice_on_one_client_already_exists() {
    let f = factory().await;
    let client = f.client().await;
    let b = &client.backend;
    let key = unique_key("etcd_register_twice").child("me").expect("key");
    let first = b
        .register(&key, Bytes::from_static(b"1"))
        .await
        .expect("register");
    let again = b
        .register(&key, Bytes::from_static(b"2"))
        .await
        .expect_err("second registration");
    assert_eq!(again.kind(), ErrorKind::AlreadyExists);
    first.close().await.expect("close");
    assert!(b.get(&key).await.expect("get").is_none());
}
