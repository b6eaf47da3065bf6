//! The conformance suite against a real etcd (a container, or the server
//! `SHAREDSTATE_TEST_ETCD` points at), plus etcd-specific checks: an outside
//! operator's raw etcd put, a partition longer than the lease TTL, locks
//! within one client, and, each on a dedicated container (Docker needed),
//! watches across a compaction and user/password auth. Every client gets
//! its own session through its own fault-injecting proxy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use sharedstate_conformance::fixtures::{self, TcpProxy};
use sharedstate_conformance::{unique_key, BackendFactory, FaultInjector, TestClient};
use sharedstate_core::{
    CoordinationBackend, ErrorKind, Key, PutMode, Result, SessionState, Version, WatchEvent,
    WatchStream,
};
use sharedstate_etcd::EtcdBackend;

/// Short enough that a lost session is noticed quickly, long enough that a
/// brief suspension survives.
const SESSION_TTL: Duration = Duration::from_secs(6);
/// Calls through a cut proxy fail with `Unavailable` after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

struct EtcdFactory {
    server: String,
    /// Every proxy lives as long as the factory (the whole test): behaviours
    /// may drop a `TestClient` and keep only its backend (inside a
    /// `SharedState`), and the backend must stay connected.
    proxies: Mutex<Vec<Arc<TcpProxy>>>,
}

async fn factory() -> EtcdFactory {
    init_tracing();
    EtcdFactory {
        server: fixtures::etcd(),
        proxies: Mutex::new(Vec::new()),
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

impl EtcdFactory {
    /// A backend behind its own proxy.
    async fn connect(&self) -> (EtcdBackend, Arc<TcpProxy>) {
        let proxy = TcpProxy::start(self.server.clone())
            .await
            .unwrap_or_else(|e| {
                panic!("cannot start a TCP proxy in front of {}: {e}", self.server)
            });
        let proxy = Arc::new(proxy);
        self.proxies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Arc::clone(&proxy));
        let backend = EtcdBackend::builder([proxy.endpoint()])
            .session_ttl(SESSION_TTL)
            .request_timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to etcd at {} (through {}): {e}; is the server up? \
                     Set SHAREDSTATE_TEST_ETCD=host:port or run scripts/test.sh",
                    self.server,
                    proxy.endpoint()
                )
            });
        (backend, proxy)
    }

    /// A plain etcd-client connection straight to the server (an outside
    /// operator, or an administrator).
    async fn raw(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.server.as_str()], None)
            .await
            .unwrap_or_else(|e| panic!("raw etcd-client connect to {}: {e}", self.server))
    }
}

#[async_trait]
impl BackendFactory for EtcdFactory {
    fn name(&self) -> &str {
        "etcd"
    }

    async fn client(&self) -> TestClient {
        let (backend, proxy) = self.connect().await;
        let backend = Arc::new(backend);
        let faults = Arc::new(EtcdFaults {
            backend: backend.clone(),
            proxy,
            server: self.server.clone(),
        });
        TestClient { backend, faults }
    }
}

struct EtcdFaults {
    backend: Arc<EtcdBackend>,
    proxy: Arc<TcpProxy>,
    server: String,
}

#[async_trait]
impl FaultInjector for EtcdFaults {
    async fn expire_session(&self) -> Result<()> {
        // Straight to the server: works while the proxy is suspended too.
        self.backend
            .force_session_expiry_via(std::slice::from_ref(&self.server))
            .await
    }

    async fn suspend(&self) -> Result<()> {
        self.proxy.suspend();
        Ok(())
    }

    async fn resume(&self) -> Result<()> {
        self.proxy.resume();
        Ok(())
    }
}

sharedstate_conformance::conformance_tests!(factory);

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn next(stream: &mut WatchStream, what: &str) -> WatchEvent {
    match within(what, stream.next()).await {
        Some(Ok(event)) => event,
        other => panic!("{what}: expected an event, got {other:?}"),
    }
}

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
/// with the latest value, and any `Changed` events before it follow the
/// writes one by one.
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
                // Without a Resync in between, a Changed is the very next write.
                let at = written
                    .iter()
                    .position(|v| *v == previous)
                    .expect("previous version is a write");
                assert_eq!(
                    written.get(at + 1),
                    Some(&found.version),
                    "a silent gap after {previous}"
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

/// The etcd image for a dedicated container: `$SHAREDSTATE_ETCD_IMAGE`,
/// else the locally built test image when present, else the official one.
fn dedicated_etcd_image() -> String {
    if let Ok(image) = std::env::var(fixtures::ETCD_IMAGE_VAR) {
        if !image.is_empty() {
            return image;
        }
    }
    let local_present = std::process::Command::new("docker")
        .args(["image", "inspect", fixtures::LOCAL_ETCD_IMAGE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if local_present {
        fixtures::LOCAL_ETCD_IMAGE.to_owned()
    } else {
        fixtures::DEFAULT_ETCD_IMAGE.to_owned()
    }
}

/// A dedicated etcd container for this test only (stopped when the test
/// binary exits), for what must not touch the shared server: compaction
/// (it would race other tests' watches) and auth.
async fn dedicated_etcd() -> fixtures::Server {
    let image = dedicated_etcd_image();
    tokio::task::spawn_blocking(move || {
        fixtures::start_container(fixtures::ServiceKind::Etcd, &image)
    })
    .await
    .expect("fixture thread")
    .unwrap_or_else(|message| panic!("this test needs its own etcd container: {message}"))
}

/// A factory on a dedicated etcd container.
async fn dedicated_factory() -> (EtcdFactory, fixtures::Server) {
    init_tracing();
    let server = dedicated_etcd().await;
    let factory = EtcdFactory {
        server: server.endpoint().to_owned(),
        proxies: Mutex::new(Vec::new()),
    };
    (factory, server)
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
