//! Our ZooKeeper lock recipe and kazoo's `Lock` (Python) exclude each other
//! at the same path: ours orders itself with kazoo's `__lock__` contenders,
//! and kazoo sees ours (Curator's node names) with
//! `extra_lock_patterns=("-lock-",)`. Needs Python with kazoo:
//! `SHAREDSTATE_KAZOO_PYTHON`, or `target/kazoo-venv/bin/python`, which
//! `scripts/test.sh` creates.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sharedstate_conformance::fixtures;
use sharedstate_conformance::unique_key;
use sharedstate_core::{CoordinationBackend, ErrorKind, LockOptions, SharedState};
use sharedstate_zookeeper::ZooKeeperBackend;

/// A Python interpreter that has kazoo, or a panic that says how to get one.
fn kazoo_python() -> PathBuf {
    let candidate = std::env::var_os("SHAREDSTATE_KAZOO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/kazoo-venv/bin/python")
        });
    let works = Command::new(&candidate)
        .args(["-c", "import kazoo"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        works,
        "\n\n*** The kazoo interop tests need Python with kazoo at {} (or \
         SHAREDSTATE_KAZOO_PYTHON).\n*** `bash scripts/test.sh` creates it; by hand: \
         python3 -m venv target/kazoo-venv && target/kazoo-venv/bin/pip install kazoo\n",
        candidate.display()
    );
    candidate
}

/// The Python side: reads commands on stdin (`acquire <timeout_s>`,
/// `release`, `quit`) and answers one line each on stdout.
const KAZOO_SCRIPT: &str = r#"
import sys
from kazoo.client import KazooClient
from kazoo.exceptions import LockTimeout
hosts, path = sys.argv[1], sys.argv[2]
zk = KazooClient(hosts=hosts, timeout=10)
zk.start(timeout=15)
lock = zk.Lock(path, "kazoo", extra_lock_patterns=("-lock-",))
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "acquire":
        try:
            got = lock.acquire(timeout=float(cmd[1]))
            print("acquired" if got else "timeout", flush=True)
        except LockTimeout:
            print("timeout", flush=True)
    elif cmd[0] == "release":
        lock.release()
        print("released", flush=True)
    elif cmd[0] == "quit":
        break
zk.stop()
zk.close()
"#;

struct Kazoo {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Kazoo {
    fn start(hosts: &str, path: &str) -> Kazoo {
        let mut child = Command::new(kazoo_python())
            .args(["-c", KAZOO_SCRIPT, hosts, path])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the kazoo script");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut kazoo = Kazoo {
            child,
            stdin,
            lines,
        };
        assert_eq!(kazoo.answer(Duration::from_secs(30)), "ready");
        kazoo
    }

    fn answer(&mut self, bound: Duration) -> String {
        self.lines
            .recv_timeout(bound)
            .unwrap_or_else(|_| panic!("the kazoo script gave no answer within {bound:?}"))
    }

    fn ask(&mut self, command: &str, bound: Duration) -> String {
        writeln!(self.stdin, "{command}").expect("write to the kazoo script");
        self.stdin.flush().expect("flush");
        self.answer(bound)
    }
}

impl Drop for Kazoo {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn backend(server: &str) -> ZooKeeperBackend {
    ZooKeeperBackend::builder(server)
        .session_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

/// While kazoo holds the lock, ours waits (and times out); once kazoo
/// releases, ours is granted. While ours is held, kazoo times out; once
/// ours is released, kazoo gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_lock_and_kazoos_exclude_each_other() {
    let server = fixtures::zookeeper();
    let path = unique_key("kazoo_interop").child("lock").expect("key");
    let ours = backend(&server).await;
    let mut kazoo = tokio::task::block_in_place(|| Kazoo::start(&server, path.as_str()));

    let answer = tokio::task::block_in_place(|| kazoo.ask("acquire 10", Duration::from_secs(20)));
    assert_eq!(answer, "acquired");
    let refused = ours
        .lock(&path, LockOptions::with_timeout(Duration::from_secs(1)))
        .await
        .expect_err("kazoo holds the lock");
    assert_eq!(refused.kind(), ErrorKind::LockTimeout);
    let answer = tokio::task::block_in_place(|| kazoo.ask("release", Duration::from_secs(20)));
    assert_eq!(answer, "released");
    let guard = ours
        .lock(&path, LockOptions::with_timeout(Duration::from_secs(10)))
        .await
        .expect("free once kazoo released");

    let answer = tokio::task::block_in_place(|| kazoo.ask("acquire 1", Duration::from_secs(20)));
    assert_eq!(answer, "timeout", "kazoo must not take a lock we hold");
    guard.release().await.expect("release");
    let answer = tokio::task::block_in_place(|| kazoo.ask("acquire 10", Duration::from_secs(20)));
    assert_eq!(answer, "acquired");
    let answer = tokio::task::block_in_place(|| kazoo.ask("release", Duration::from_secs(20)));
    assert_eq!(answer, "released");
    ours.close().await.expect("close");
}

/// A locked `update` waits while kazoo holds the state's lock: it must not
/// write past an outside lock holder (the issue seen with `sharedstate
/// patch`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_update_waits_for_a_kazoo_holder() {
    let server = fixtures::zookeeper();
    let root = unique_key("kazoo_interop_state");
    let backend: std::sync::Arc<dyn CoordinationBackend> =
        std::sync::Arc::new(backend(&server).await);
    let state = SharedState::builder(backend, root.as_str())
        .initial(0u64)
        .lock_timeout(Duration::from_secs(1))
        .open()
        .await
        .expect("open");
    let lock = root.child("lock").expect("key");
    let mut kazoo = tokio::task::block_in_place(|| Kazoo::start(&server, lock.as_str()));
    let answer = tokio::task::block_in_place(|| kazoo.ask("acquire 10", Duration::from_secs(20)));
    assert_eq!(answer, "acquired");
    let refused = state
        .update(|n| *n += 1)
        .await
        .expect_err("kazoo holds the state's lock");
    assert_eq!(refused.kind(), ErrorKind::LockTimeout);
    assert_eq!(*state.read_consistent().await.expect("read"), 0);
    let answer = tokio::task::block_in_place(|| kazoo.ask("release", Duration::from_secs(20)));
    assert_eq!(answer, "released");
    state.update(|n| *n += 1).await.expect("update once free");
    assert_eq!(*state.read_consistent().await.expect("read"), 1);
    state.close().await;
}
