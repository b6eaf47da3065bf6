//! Rough latency comparison with the raw zookeeper-client, for the notes in
//! the README and the later benchmark. Ignored by default:
//!
//! ```sh
//! cargo test -p sharedstate-zookeeper --test timing -- --ignored --nocapture
//! ```

use std::time::{Duration, Instant};

use futures::StreamExt;
use sharedstate_conformance::{fixtures, unique_key};
use sharedstate_core::{CoordinationBackend, Key, LockOptions, PutMode};
use sharedstate_zookeeper::ZooKeeperBackend;
use zookeeper_client as zk;

const ROUNDS: u32 = 300;

fn report(what: &str, total: Duration) {
    let per = total / ROUNDS;
    eprintln!("{what:<44} {:>8.1} us/op", per.as_secs_f64() * 1e6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing report, run by hand"]
async fn latency_against_raw_client() {
    let server = fixtures::zookeeper();
    let raw = zk::Client::connect(&server).await.expect("raw connect");
    let backend = ZooKeeperBackend::builder(server.clone())
        .connect()
        .await
        .expect("connect");
    let base = unique_key("zk_timing");
    let key = base.child("k").expect("key");
    let value = bytes::Bytes::from(vec![b'x'; 256]);
    let version = backend
        .put(&key, value.clone(), PutMode::Create)
        .await
        .expect("create");
    let _ = version;

    let start = Instant::now();
    for _ in 0..ROUNDS {
        raw.get_data(key.as_str()).await.expect("raw get");
    }
    report("raw get_data", start.elapsed());

    let start = Instant::now();
    for _ in 0..ROUNDS {
        let sync = raw.sync(key.as_str());
        let get = raw.get_data(key.as_str());
        sync.await.expect("sync");
        get.await.expect("get");
    }
    report("raw sync + get_data (pipelined)", start.elapsed());

    let start = Instant::now();
    for _ in 0..ROUNDS {
        backend.get(&key).await.expect("get");
    }
    report("backend get (sync + get, pipelined)", start.elapsed());

    let start = Instant::now();
    for _ in 0..ROUNDS {
        raw.set_data(key.as_str(), &value, None)
            .await
            .expect("raw set");
    }
    report("raw set_data", start.elapsed());

    let start = Instant::now();
    for _ in 0..ROUNDS {
        backend
            .put(&key, value.clone(), PutMode::Overwrite)
            .await
            .expect("overwrite");
    }
    report("backend put Overwrite", start.elapsed());

    let mut current = backend
        .get(&key)
        .await
        .expect("get")
        .expect("present")
        .version;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        current = backend
            .put(&key, value.clone(), PutMode::Update(current))
            .await
            .expect("update");
    }
    report(
        "backend put Update (unwatched: stat + set)",
        start.elapsed(),
    );

    let mut stream = backend.watch(&key).await.expect("watch");
    let _ = stream.next().await;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        current = backend
            .put(&key, value.clone(), PutMode::Update(current))
            .await
            .expect("update");
    }
    report(
        "backend put Update (watched: cached, 1 set)",
        start.elapsed(),
    );
    drop(stream);

    let lock_key = base.child("lock").expect("key");
    backend
        .put(&lock_key, bytes::Bytes::new(), PutMode::Overwrite)
        .await
        .expect("lock dir");
    let prefix = format!("{lock_key}/raw-");
    let ephemeral = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let create = raw.create(&prefix, &[], &ephemeral);
        let list = raw.list_children(lock_key.as_str());
        let (_, sequence) = create.await.expect("raw create");
        list.await.expect("raw list");
        raw.delete(&format!("{prefix}{sequence}"), None)
            .await
            .expect("raw delete");
    }
    report("raw create eph-seq + list + delete", start.elapsed());
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let mut writer = raw.new_multi_writer();
        writer
            .add_check_version(lock_key.as_str(), -1)
            .expect("check");
        writer
            .add_set_data(key.as_str(), &value, None)
            .expect("set");
        writer.commit().await.expect("raw multi");
    }
    report("raw multi (check + set_data)", start.elapsed());

    let data_key: Key = base.child("data").expect("key");
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let guard = backend
            .lock(&lock_key, LockOptions::default())
            .await
            .expect("lock");
        guard.release().await.expect("release");
    }
    report("backend lock + release (uncontended)", start.elapsed());

    let guard = backend
        .lock(&lock_key, LockOptions::default())
        .await
        .expect("lock");
    let start = Instant::now();
    for _ in 0..ROUNDS {
        backend
            .fenced_put(&data_key, value.clone(), PutMode::Overwrite, &guard)
            .await
            .expect("fenced put");
    }
    report("backend fenced_put Overwrite (1 multi)", start.elapsed());
    guard.release().await.expect("release");
    backend.close().await.expect("close");
}
