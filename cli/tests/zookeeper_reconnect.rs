//! The failure the freshness issue started from, reproduced as it was seen:
//! `ss -K` resets every client connection to a ZooKeeper server that stays
//! up (the session survives), then an operator writes with zkCli. Every
//! instance and `sharedstate watch` must see that write, through their
//! watches (zookeeper-client 0.11.2 alone leaves them silent).

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{run, unique, Watch};
use sharedstate::{CoordinationBackend, SharedState};
use sharedstate_conformance::fixtures::{start_server, ServiceKind};

/// Resets every TCP connection to `port` on loopback, as an operator with
/// `ss -K` (or a flaky network) would; panics with the fix when `ss` cannot.
fn reset_connections_to(port: &str) {
    let output = Command::new("ss")
        .args(["-K", "dst", "127.0.0.1", "dport", "=", port])
        .output()
        .unwrap_or_else(|e| panic!("running `ss -K` failed: {e} (apt-get install iproute2)"));
    assert!(
        output.status.success(),
        "`ss -K dst 127.0.0.1 dport = {port}` failed ({}): {} -- it needs root and a kernel \
         with CONFIG_INET_DIAG_DESTROY",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let killed = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("ESTAB"))
        .count();
    assert!(killed > 0, "ss -K found no connection to port {port}");
}

#[test]
fn a_zkcli_write_after_ss_k_reaches_every_instance_and_watch() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The server handle is dropped in this runtime's context, also when an
    // assertion unwinds.
    let _context = rt.enter();
    // A server of this test's own: `ss -K` resets every connection to it.
    let server = rt
        .block_on(start_server(ServiceKind::ZooKeeper))
        .unwrap_or_else(|e| panic!("{e}"));
    let endpoint = server.endpoint().to_owned();
    let port = endpoint.rsplit(':').next().expect("port").to_owned();
    let url = format!("zk://{endpoint}?session_timeout_ms=20000");
    let path = unique("zk-ss-k");
    run(
        &url,
        &[
            "init",
            &path,
            r#"{"globs": ["systemd*"], "interval_secs": 5}"#,
        ],
        None,
    )
    .ok();

    // Two instances, with a staleness bound far above the test's deadline:
    // the change must come through the watch, not the periodic check.
    let instances: Vec<SharedState<serde_json::Value>> = (0..2)
        .map(|_| {
            rt.block_on(async {
                let backend: Arc<dyn CoordinationBackend> =
                    sharedstate::connect(&url).await.expect("connect");
                SharedState::builder(backend, path.as_str())
                    .expect_existing(Duration::from_secs(10))
                    .max_staleness(Duration::from_secs(120))
                    .open()
                    .await
                    .expect("open")
            })
        })
        .collect();
    let mut watch = Watch::start(&url, &[&path]);

    reset_connections_to(&port);
    // Let every client notice and reconnect on the same session.
    std::thread::sleep(Duration::from_secs(2));

    let payload = format!("{path}/payload");
    server
        .cli(&[
            "set",
            &payload,
            r#"{"globs":["systemd*","firefox*"],"interval_secs":5}"#,
        ])
        .expect("zkCli set");
    let written = Instant::now();
    watch.wait_for_stdout(r#"Added /globs/1 "firefox*""#, Duration::from_secs(10));
    for (i, state) in instances.iter().enumerate() {
        loop {
            let globs = state.read().expect("read")["globs"].clone();
            if globs.as_array().is_some_and(|g| g.len() == 2) {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(10),
                "instance {i} did not see the zkCli write within 10 s after ss -K: {globs}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (status, _) = watch.interrupt(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "watch exits 130 on Ctrl-C");
    for state in instances {
        rt.block_on(state.close());
    }
    drop(server);
}
