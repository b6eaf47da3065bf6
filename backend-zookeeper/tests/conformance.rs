//! The conformance suite against a real ZooKeeper (a container, or the
//! server `SHAREDSTATE_TEST_ZOOKEEPER` points at), plus ZooKeeper-specific
//! checks. Every client gets its own session through its own fault-injecting
//! proxy.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use sharedstate_conformance::fixtures::{self, TcpProxy};
use sharedstate_conformance::{unique_key, BackendFactory, FaultInjector, TestClient};
use sharedstate_core::{CoordinationBackend, ErrorKind, PutMode, Result, SessionState, WatchEvent};
use sharedstate_zookeeper::ZooKeeperBackend;
use zookeeper_client as zk;

/// Short enough that expiries are quick, long enough (server ticks are
/// 500 ms, so 1-10 s is allowed) that a brief suspension survives.
const SESSION_TIMEOUT: Duration = Duration::from_secs(5);

struct ZkFactory {
    server: String,
    /// Proxies live as long as the factory: a behaviour may drop its
    /// `TestClient` and keep using the backend.
    proxies: std::sync::Mutex<Vec<Arc<TcpProxy>>>,
}

async fn factory() -> ZkFactory {
    init_tracing();
    ZkFactory {
        server: fixtures::zookeeper(),
        proxies: std::sync::Mutex::new(Vec::new()),
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

#[async_trait]
impl BackendFactory for ZkFactory {
    fn name(&self) -> &str {
        "zookeeper"
    }

    async fn client(&self) -> TestClient {
        let proxy = TcpProxy::start(self.server.clone())
            .await
            .unwrap_or_else(|e| {
                panic!("cannot start a TCP proxy in front of {}: {e}", self.server)
            });
        let proxy = Arc::new(proxy);
        self.proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(proxy.clone());
        let backend = ZooKeeperBackend::builder(proxy.endpoint())
            .session_timeout(SESSION_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to ZooKeeper at {} (through {}): {e}; is the server up? \
                     Set SHAREDSTATE_TEST_ZOOKEEPER=host:port or run scripts/test.sh",
                    self.server,
                    proxy.endpoint()
                )
            });
        let backend = Arc::new(backend);
        let faults = Arc::new(ZkFaults {
            backend: backend.clone(),
            proxy,
            server: self.server.clone(),
        });
        TestClient { backend, faults }
    }
}

struct ZkFaults {
    backend: Arc<ZooKeeperBackend>,
    proxy: Arc<TcpProxy>,
    server: String,
}

#[async_trait]
impl FaultInjector for ZkFaults {
    async fn expire_session(&self) -> Result<()> {
        // Cut the client's connection while the twin closes the session, so
        // that the client cannot re-attach in between; then restore it
        // unless the test had suspended it.
        let was_forwarding = self.proxy.mode() == fixtures::ProxyMode::Forward;
        if was_forwarding {
            self.proxy.suspend();
        }
        let expired = self.backend.force_session_expiry_via(&self.server).await;
        if was_forwarding {
            self.proxy.resume();
        }
        expired
    }

    async fn suspend(&self) -> Result<()> {
        self.proxy.suspend();
        Ok(())
    }

    async fn resume(&self) -> Result<()> {
        self.proxy.resume();
        Ok(())
    }

    async fn stall(&self) -> Result<()> {
        self.proxy.stall();
        Ok(())
    }
}

sharedstate_conformance::conformance_tests!(factory);

/// A unique key created with the open ACL: the shared parents
/// (`/conformance`) must stay open for the other tests, and parents created
/// implicitly get the creating client's ACL policy.
async fn open_parent(f: &ZkFactory, name: &str) -> sharedstate_core::Key {
    let base = unique_key(name);
    let open = f.client().await;
    open.backend
        .put(&base, bytes::Bytes::new(), PutMode::Overwrite)
        .await
        .expect("open parent");
    base
}

/// A backend authenticated as `user` (digest, password `secret`) that
/// creates nodes with `acl`.
async fn identity(
    server: &str,
    user: &'static str,
    acl: sharedstate_zookeeper::AclPolicy,
) -> Result<ZooKeeperBackend> {
    ZooKeeperBackend::builder(server)
        .with_auth(user, "secret")
        .acl(acl)
        .connect()
        .await
}

/// A backend straight to `server` (no proxy): for the tests that need the
/// concrete `ZooKeeperBackend`.
async fn direct_client(server: &str) -> ZooKeeperBackend {
    ZooKeeperBackend::builder(server)
        .session_timeout(SESSION_TIMEOUT)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {server}: {e}"))
}

async fn raw_client(server: &str) -> zk::Client {
    zk::Client::connector()
        .with_session_timeout(SESSION_TIMEOUT)
        .connect(server)
        .await
        .unwrap_or_else(|e| panic!("raw zookeeper-client connect to {server}: {e}"))
}

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// An operator edits the JSON with a plain ZooKeeper client (as zkCli.sh
/// would); the change arrives through `watch` with the znode's mzxid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_operator_edit_arrives_through_watch() {
    let f = factory().await;
    let client = f.client().await;
    let b = &client.backend;
    let key = unique_key("zk_operator_edit")
        .child("payload")
        .expect("key");
    let v1 = b
        .put(
            &key,
            br#"{"globs":["a*"]}"#.to_vec().into(),
            PutMode::Create,
        )
        .await
        .expect("create");
    let mut stream = b.watch(&key).await.expect("watch");
    match within("Initial", stream.next()).await {
        Some(Ok(WatchEvent::Initial(Some(found)))) => assert_eq!(found.version, v1),
        other => panic!("expected Initial(Some), got {other:?}"),
    }

    let operator = raw_client(&f.server).await;
    let edited = br#"{"globs":["a*","b*"]}"#;
    let stat = operator
        .set_data(key.as_str(), edited, None)
        .await
        .expect("operator set_data");

    match within("the operator's change", stream.next()).await {
        Some(Ok(WatchEvent::Changed(found))) => {
            assert_eq!(&found.value[..], &edited[..]);
            assert_eq!(found.version.as_u64(), stat.mzxid as u64);
            let json: serde_json::Value = serde_json::from_slice(&found.value).expect("json");
            assert_eq!(json["globs"][1], "b*");
        }
        other => panic!("expected Changed, got {other:?}"),
    }
    // The version cache learnt the operator's write from the watch: a
    // conditional update at that version works.
    let v3 = b
        .put(
            &key,
            br#"{"globs":[]}"#.to_vec().into(),
            PutMode::Update(sharedstate_core::Version::new(stat.mzxid as u64)),
        )
        .await
        .expect("update at the operator's version");
    assert!(v3.as_u64() > stat.mzxid as u64);
    b.close().await.expect("close");
}

/// Versions are mzxids: an update through an outside client that does not
/// change the data version semantics still conflicts correctly, and a
/// delete + re-create by the operator makes the old version stale even when
/// the data version repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_recreate_makes_old_version_stale() {
    let f = factory().await;
    let client = f.client().await;
    let b = &client.backend;
    let key = unique_key("zk_operator_recreate").child("k").expect("key");
    let v1 = b
        .put(&key, "1".into(), PutMode::Create)
        .await
        .expect("create");
    let operator = raw_client(&f.server).await;
    operator.delete(key.as_str(), None).await.expect("delete");
    let (stat, _) = operator
        .create(
            key.as_str(),
            b"2",
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        )
        .await
        .expect("re-create");
    // Same data version (0) as v1, different mzxid: must conflict.
    let err = b
        .put(&key, "3".into(), PutMode::Update(v1))
        .await
        .expect_err("stale version");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(
        err.current_version().map(|v| v.as_u64()),
        Some(stat.mzxid as u64)
    );
}

/// `from_url` connects with a chroot it creates, and keys live below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_url_with_chroot() {
    let f = factory().await;
    let root = unique_key("zk_chroot");
    let url = format!("zk://{}{}?session_timeout_ms=4000", f.server, root);
    let b = ZooKeeperBackend::from_url(&url).await.expect("connect");
    assert_eq!(b.session().borrow().state, SessionState::Connected);
    let key = sharedstate_core::Key::new("/inside/k").expect("key");
    b.put(&key, "v".into(), PutMode::Overwrite)
        .await
        .expect("put");
    let operator = raw_client(&f.server).await;
    let (data, _) = operator
        .get_data(&format!("{root}/inside/k"))
        .await
        .expect("the key lives under the chroot");
    assert_eq!(data, b"v");
    b.close().await.expect("close");
}

/// Digest credentials with the creator-only ACL: another identity can
/// neither read nor write (`Unauthorized`); with the read-only-world ACL it
/// can read but not write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_auth_and_acl_policies() {
    use sharedstate_zookeeper::AclPolicy;
    let f = factory().await;
    let base = open_parent(&f, "zk_acl").await;
    let connect = |user: &'static str, acl: AclPolicy| identity(&f.server, user, acl);
    let owner = connect("owner", AclPolicy::CreatorAll)
        .await
        .expect("owner");
    let stranger = connect("stranger", AclPolicy::CreatorAll)
        .await
        .expect("stranger");
    let private = base.child("private").expect("key");
    owner
        .put(&private, "p".into(), PutMode::Create)
        .await
        .expect("owner put");
    assert!(owner.get(&private).await.expect("owner get").is_some());
    let denied = stranger.get(&private).await.expect_err("stranger get");
    assert_eq!(denied.kind(), ErrorKind::Unauthorized);
    let denied = stranger
        .put(&private, "x".into(), PutMode::Overwrite)
        .await
        .expect_err("stranger put");
    assert_eq!(denied.kind(), ErrorKind::Unauthorized);

    let reader = connect("owner", AclPolicy::ReadOnlyWorld)
        .await
        .expect("owner");
    let public = base.child("public").expect("key");
    reader
        .put(&public, "r".into(), PutMode::Create)
        .await
        .expect("put");
    let found = stranger.get(&public).await.expect("world may read");
    assert_eq!(found.expect("present").value, bytes::Bytes::from("r"));
    let denied = stranger
        .put(&public, "x".into(), PutMode::Overwrite)
        .await
        .expect_err("world may not write");
    assert_eq!(denied.kind(), ErrorKind::Unauthorized);
    for b in [owner, stranger, reader] {
        b.close().await.expect("close");
    }
}

/// The public `force_session_expiry` (no proxy: the twin uses the client's
/// own connect string): locks report lost, a new session follows with the
/// next epoch, and registrations come back on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_session_expiry_without_proxy() {
    let f = factory().await;
    let b = direct_client(&f.server).await;
    let base = unique_key("zk_force_expiry");
    let member = base
        .child("members")
        .and_then(|k| k.child("me"))
        .expect("key");
    let _registration = b.register(&member, "me".into()).await.expect("register");
    let guard = b
        .lock(&base.child("lock").expect("key"), Default::default())
        .await
        .expect("lock");
    let old_session = b.session_id().expect("session id");
    let started = std::time::Instant::now();
    b.force_session_expiry().await.expect("force expiry");
    within("lost()", guard.lost()).await;
    let mut status = b.session();
    within(
        "a new session",
        status.wait_for(|s| s.state == SessionState::Connected && s.epoch == 1),
    )
    .await
    .expect("status channel");
    tracing::info!(elapsed = ?started.elapsed(), "expiry to new session");
    assert_ne!(b.session_id().expect("session id"), old_session);
    let observer = raw_client(&f.server).await;
    let (_, stat) = observer
        .get_data(member.as_str())
        .await
        .expect("registration re-created");
    assert_eq!(stat.ephemeral_owner, b.session_id().expect("session id"));
    drop(guard);
    b.close().await.expect("close");
}

/// No server: `connect` fails with `Unavailable` within the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_nothing_is_unavailable() {
    let started = std::time::Instant::now();
    let err = ZooKeeperBackend::builder("127.0.0.1:1,127.0.0.1:2/app")
        .connect_timeout(Duration::from_millis(800))
        .connect()
        .await
        .expect_err("nothing listens there");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A network partition (bytes stop, nothing closes): the client notices
/// through its own timeouts (`Suspended`), and after the partition heals the
/// watch resyncs to the write made meanwhile, whether the session survived
/// or was replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connection_suspends_then_resyncs() {
    let f = factory().await;
    let proxy = Arc::new(TcpProxy::start(f.server.clone()).await.expect("proxy"));
    let watcher = ZooKeeperBackend::builder(proxy.endpoint())
        .session_timeout(SESSION_TIMEOUT)
        .connect()
        .await
        .expect("connect");
    let writer = f.client().await;
    let key = unique_key("zk_stall").child("k").expect("key");
    writer
        .backend
        .put(&key, "1".into(), PutMode::Create)
        .await
        .expect("create");
    let mut stream = watcher.watch(&key).await.expect("watch");
    assert!(matches!(
        within("Initial", stream.next()).await,
        Some(Ok(WatchEvent::Initial(Some(_))))
    ));
    let mut status = watcher.session();
    proxy.stall();
    within(
        "Suspended after a stall",
        status.wait_for(|s| s.state == SessionState::Suspended),
    )
    .await
    .expect("status");
    let v2 = writer
        .backend
        .put(&key, "2".into(), PutMode::Overwrite)
        .await
        .expect("write during the partition");
    proxy.resume();
    within(
        "Connected again",
        status.wait_for(|s| s.state == SessionState::Connected),
    )
    .await
    .expect("status");
    loop {
        match within("the write made during the partition", stream.next()).await {
            Some(Ok(WatchEvent::Resync(Some(found)) | WatchEvent::Changed(found)))
                if found.version == v2 =>
            {
                break
            }
            Some(Ok(_)) => {}
            other => panic!("watch failed: {other:?}"),
        }
    }
    watcher.close().await.expect("close");
}

/// Registering the same key twice from one client is `AlreadyExists` too
/// (the node belongs to this very session, but to another registration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_registration_on_one_client_already_exists() {
    let f = factory().await;
    let client = f.client().await;
    let key = unique_key("zk_double_register").child("me").expect("key");
    let first = client
        .backend
        .register(&key, "a".into())
        .await
        .expect("register");
    let err = client
        .backend
        .register(&key, "b".into())
        .await
        .expect_err("second registration");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    first.close().await.expect("close");
    assert_eq!(client.backend.get(&key).await.expect("get"), None);
}

/// A connect string with a dead host first still connects through the
/// live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_hosts_one_down() {
    let f = factory().await;
    let b = ZooKeeperBackend::builder(format!("127.0.0.1:1,{}", f.server))
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect through the live host");
    let key = unique_key("zk_hosts").child("k").expect("key");
    b.put(&key, "v".into(), PutMode::Create).await.expect("put");
    b.close().await.expect("close");
}

/// A watch takes this client's own conditional writes from their answers
/// instead of reading them back (one request per write instead of two):
/// interleaved with another client's writes, every state still arrives in
/// version order with the bytes written at that version, the last one is
/// the latest, and only the other client's writes cost the watch a read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_are_not_read_back_and_foreign_writes_still_arrive() {
    const ROUNDS: usize = 30;
    let f = factory().await;
    let ours = direct_client(&f.server).await;
    let theirs = direct_client(&f.server).await;
    let key = unique_key("zk_own_writes").child("payload").expect("key");
    let mut version = ours
        .put(&key, "start".into(), PutMode::Create)
        .await
        .expect("create");
    let mut stream = ours.watch(&key).await.expect("watch");
    match within("Initial", stream.next()).await {
        Some(Ok(WatchEvent::Initial(Some(found)))) => assert_eq!(found.version, version),
        other => panic!("expected Initial(Some), got {other:?}"),
    }
    let reads_before = ours.watch_reads();
    let mut written = std::collections::BTreeMap::new();
    for round in 0..ROUNDS {
        // Ours, twice (a chain the watch may see only after both landed),
        // then theirs on the version it reads.
        for step in 0..2 {
            let bytes = format!("ours-{round}-{step}");
            version = ours
                .put(&key, bytes.clone().into(), PutMode::Update(version))
                .await
                .expect("our update");
            written.insert(version, bytes);
        }
        let current = theirs.get(&key).await.expect("get").expect("present");
        assert_eq!(current.version, version);
        let bytes = format!("theirs-{round}");
        version = theirs
            .put(&key, bytes.clone().into(), PutMode::Update(version))
            .await
            .expect("their update");
        written.insert(version, bytes);
    }
    let mut last = None;
    while last != Some(version) {
        match within("the latest write", stream.next()).await {
            Some(Ok(WatchEvent::Changed(found))) => {
                assert!(
                    last.is_none_or(|l| found.version > l),
                    "{:?} after {last:?}",
                    found.version
                );
                let expected = written
                    .get(&found.version)
                    .unwrap_or_else(|| panic!("{:?} was never written", found.version));
                assert_eq!(&found.value[..], expected.as_bytes(), "{:?}", found.version);
                last = Some(found.version);
            }
            other => panic!("expected Changed, got {other:?}"),
        }
    }
    // Their writes each cost a read (ZooKeeper's notifications carry no
    // data); ours cost none, unless a notification of ours was folded
    // together with one of theirs, or the watch handled it after a later
    // write of ours had replaced the records (a handful at most).
    let reads = ours.watch_reads() - reads_before;
    assert!(
        reads <= (ROUNDS + ROUNDS / 2) as u64,
        "{reads} watch reads for {ROUNDS} foreign and {} own writes",
        2 * ROUNDS
    );
    ours.close().await.expect("close");
    theirs.close().await.expect("close");
}

/// The parent of `key` and a raw client's view of its fence hint.
async fn hint_of(raw: &zk::Client, key: &sharedstate_core::Key) -> Option<i32> {
    let parent = key.parent().expect("a parent");
    match raw
        .get_data(&format!("{parent}/sharedstate-fence-next"))
        .await
    {
        Ok((data, _)) => std::str::from_utf8(&data).ok()?.parse().ok(),
        Err(zk::Error::NoNode) => None,
        Err(e) => panic!("reading the hint: {e}"),
    }
}

/// The parent's sequence counter now, as a raw client learns it (its own
/// sequential node, created and deleted; this moves the counter by one).
async fn counter_now(raw: &zk::Client, key: &sharedstate_core::Key) -> i32 {
    let parent = key.parent().expect("a parent");
    let options = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let (_, sequence) = raw
        .create(&format!("{parent}/probe-"), &[], &options)
        .await
        .expect("probe create");
    raw.delete(&format!("{parent}/probe-{sequence}"), None)
        .await
        .expect("probe delete");
    sequence.to_string().parse().expect("a sequence number")
}

/// Creates `key` and updates it once (an exact conditional write, which
/// leaves the fence hint); the version it wrote.
async fn created_and_updated(
    a: &ZooKeeperBackend,
    key: &sharedstate_core::Key,
) -> sharedstate_core::Version {
    let v0 = a
        .put(key, "0".into(), PutMode::Create)
        .await
        .expect("create");
    a.put(key, "1".into(), PutMode::Update(v0))
        .await
        .expect("update")
}

/// Another client's first conditional write learns the parent's counter
/// from the hint the last writer left (a read), not from a node of its own
/// (a write that would move the counter under every other writer): the
/// counter moves by exactly the one fence node of each write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_learns_the_fence_from_the_hint() {
    let f = factory().await;
    let (a, b) = (
        direct_client(&f.server).await,
        direct_client(&f.server).await,
    );
    let raw = raw_client(&f.server).await;
    let key = unique_key("zk_fence_hint").child("payload").expect("key");
    let v1 = created_and_updated(&a, &key).await;
    let hint = hint_of(&raw, &key).await.expect("the hint after a's write");
    assert_eq!(
        counter_now(&raw, &key).await,
        hint,
        "the hint names the counter"
    );
    // The probe moved the counter: b's hint guess is stale by one, so b
    // learns exactly once; the next writer after b learns from the hint.
    let v2 = b
        .put(&key, "2".into(), PutMode::Update(v1))
        .await
        .expect("b's update");
    let hint = hint_of(&raw, &key).await.expect("the hint after b's write");
    let v3 = a
        .put(&key, "3".into(), PutMode::Update(v2))
        .await
        .expect("a's update on b's write");
    assert_eq!(
        counter_now(&raw, &key).await,
        hint + 1,
        "a's write after b's created only its fence node (no learning node)"
    );
    assert_eq!(
        a.get(&key)
            .await
            .expect("get")
            .map(|v| (v.version, v.value)),
        Some((v3, "3".into()))
    );
    a.close().await.expect("close");
    b.close().await.expect("close");
}

/// A counter guess from the hint, cached with a version, does not let a
/// write through onto a re-created key at the same data version (no ABA),
/// and neither does a node an older client made to learn the counter
/// under the name the stale fence expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_fence_never_lands_on_a_recreated_key() {
    let f = factory().await;
    let a = direct_client(&f.server).await;
    let raw = raw_client(&f.server).await;
    let key = unique_key("zk_fence_recreate")
        .child("payload")
        .expect("key");
    let parent = key.parent().expect("a parent").as_str().to_owned();
    let v1 = created_and_updated(&a, &key).await;
    // a now knows (v1, data version 1, the counter after its write).
    let expected_counter = hint_of(&raw, &key).await.expect("hint");
    // An older client learns the counter the way earlier builds did: an
    // ephemeral sequential node named like a fence node, which takes the
    // very name a's fence expects to delete.
    let options = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let (_, sequence) = raw
        .create(&format!("{parent}/sharedstate-fence-"), &[], &options)
        .await
        .expect("an old learner's node");
    assert_eq!(
        sequence.to_string().parse::<i32>().ok(),
        Some(expected_counter)
    );
    // The operator deletes and re-creates the key and brings it to the
    // data version a expects.
    recreated_key_refuses_the_update(&a, &raw, &key, v1, b"operator").await;
    // The same with a guess learned from the hint after a conflict.
    let now = a.get(&key).await.expect("get").expect("present").version;
    let stale = a
        .put(&key, "x".into(), PutMode::Update(v1))
        .await
        .expect_err("stale");
    assert_eq!(stale.current_version(), Some(now));
    recreated_key_refuses_the_update(&a, &raw, &key, now, b"again").await;
    a.close().await.expect("close");
}

/// An operator deletes `key`, re-creates it and writes `data` (data version
/// 1, the one `a` expects at `at`): `a`'s update at `at` must fail with
/// `Conflict` and leave `data` in place.
async fn recreated_key_refuses_the_update(
    a: &ZooKeeperBackend,
    raw: &zk::Client,
    key: &sharedstate_core::Key,
    at: sharedstate_core::Version,
    data: &[u8],
) {
    raw.delete(key.as_str(), None)
        .await
        .expect("operator delete");
    raw.create(
        key.as_str(),
        b"",
        &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
    )
    .await
    .expect("operator re-create");
    raw.set_data(key.as_str(), data, Some(0))
        .await
        .expect("operator write");
    let err = a
        .put(key, "lost?".into(), PutMode::Update(at))
        .await
        .expect_err("an update at a version of the deleted key must fail");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let (found, _) = raw.get_data(key.as_str()).await.expect("get");
    assert_eq!(found, data, "the re-created key was not overwritten");
}

/// The hint a conditional write leaves under a key's parent does not keep
/// the parent from being deleted once its listed children are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_with_only_a_hint_left_can_be_deleted() {
    let f = factory().await;
    let client = f.client().await;
    let b = &client.backend;
    let base = unique_key("zk_hint_parent");
    for conditional in [false, true] {
        let parent = base
            .child(if conditional { "conditional" } else { "plain" })
            .expect("key");
        let kid = parent.child("kid").expect("key");
        let p = b
            .put(&parent, "p".into(), PutMode::Create)
            .await
            .expect("parent");
        let v = b.put(&kid, "k".into(), PutMode::Create).await.expect("kid");
        b.put(&kid, "k2".into(), PutMode::Update(v))
            .await
            .expect("a conditional write, which leaves the hint");
        assert_eq!(b.list(&parent).await.expect("list"), ["kid"]);
        b.delete(&kid, None).await.expect("delete kid");
        assert!(b.list(&parent).await.expect("list").is_empty());
        b.delete(&parent, conditional.then_some(p))
            .await
            .expect("delete the parent with only the hint left");
        assert_eq!(b.get(&parent).await.expect("get"), None);
    }
}

/// Two identities that may not touch each other's nodes write keys under
/// one parent: the fence hint the first leaves (with its ACL) neither
/// blocks nor misleads the second's conditional writes, in either order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_of_strangers_under_one_parent() {
    use sharedstate_zookeeper::AclPolicy;
    let f = factory().await;
    let base = open_parent(&f, "zk_acl_hint").await;
    let connect = |user: &'static str| identity(&f.server, user, AclPolicy::CreatorAll);
    let (alice, bob) = (
        connect("alice").await.expect("alice"),
        connect("bob").await.expect("bob"),
    );
    let a = base.child("a").expect("key");
    let b = base.child("b").expect("key");
    let mut va = alice.put(&a, "0".into(), PutMode::Create).await.expect("a");
    let mut vb = bob.put(&b, "0".into(), PutMode::Create).await.expect("b");
    for round in 0..5 {
        va = alice
            .put(&a, format!("a{round}").into(), PutMode::Update(va))
            .await
            .unwrap_or_else(|e| panic!("alice's update {round}: {e}"));
        vb = bob
            .put(&b, format!("b{round}").into(), PutMode::Update(vb))
            .await
            .unwrap_or_else(|e| panic!("bob's update {round}: {e}"));
    }
    assert_eq!(
        alice.get(&a).await.expect("get").map(|v| v.value),
        Some("a4".into())
    );
    assert_eq!(
        bob.get(&b).await.expect("get").map(|v| v.value),
        Some("b4".into())
    );
    for client in [alice, bob] {
        client.close().await.expect("close");
    }
}
