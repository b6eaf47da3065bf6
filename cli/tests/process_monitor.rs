//! The motivating scenario end to end on a real ZooKeeper: the
//! process-monitor example runs as an agent (a child process), an operator
//! adds a glob with the `sharedstate` command, and the agent reports exactly
//! that change; Ctrl-C closes it and its listener disappears.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{run, unique, Watch};

/// Builds the example (a no-op when `cargo test` already built it) and
/// returns its path next to this test's own target directory.
fn process_monitor_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let built = Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "sharedstate-examples",
            "--example",
            "process_monitor",
            "--all-features",
        ])
        .status()
        .unwrap_or_else(|e| panic!("running {cargo} build for the example failed: {e}"));
    assert!(
        built.success(),
        "building the process_monitor example failed"
    );
    // This test runs from <target>/<profile>/deps/.
    let profile_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(PathBuf::from))
        .expect("test binary lives in <target>/<profile>/deps");
    let binary = profile_dir.join("examples").join("process_monitor");
    assert!(binary.exists(), "no example binary at {}", binary.display());
    binary
}

#[test]
fn agent_reports_a_glob_added_by_the_cli() {
    let url = format!("zk://{}", sharedstate_conformance::fixtures::zookeeper());
    let path = unique("process-monitor");
    let binary = process_monitor_binary();
    // Colour decisions must come from the stream, not from the caller's
    // NO_COLOR: stderr is a pipe here.
    let mut command = Command::new(&binary);
    command
        .args(["--backend", &url, "--path", &path])
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG");
    let mut agent = Watch::spawn(command);
    agent.wait_for_stdout("listening as", Duration::from_secs(60));
    agent.wait_for_stdout(
        r#"globs ["systemd*", "rsync*"] match"#,
        Duration::from_secs(30),
    );

    let listeners = run(&url, &["listeners", &path, "--json"], None);
    listeners.ok();
    assert!(
        listeners.stdout.matches("\"id\"").count() == 1,
        "one live agent: {}",
        listeners.stdout
    );

    run(
        &url,
        &[
            "patch",
            &path,
            "--json-patch",
            r#"[{"op": "add", "path": "/globs/-", "value": "firefox*"}]"#,
        ],
        None,
    )
    .ok();
    agent.wait_for_stdout(
        r#"remote: Added /globs/2 "firefox*""#,
        Duration::from_secs(30),
    );
    agent.wait_for_stdout(
        r#"globs ["systemd*", "rsync*", "firefox*"] match"#,
        Duration::from_secs(30),
    );

    // An outside writer breaks the payload, then deletes it: the agent
    // keeps its globs and says so readably (no Debug format), and the
    // engine's WARN on stderr carries no colour codes on a pipe.
    let payload = sharedstate::Key::new(format!("{path}/payload")).expect("key");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let backend = rt.block_on(sharedstate::connect(&url)).expect("connect");
    rt.block_on(backend.put(
        &payload,
        sharedstate::backend::Bytes::from_static(b"{globs"),
        sharedstate::PutMode::Overwrite,
    ))
    .expect("outside write");
    agent.wait_for_stdout(
        "rejected, keeping the last good globs",
        Duration::from_secs(30),
    );
    rt.block_on(backend.delete(&payload, None))
        .expect("outside delete");
    agent.wait_for_stdout(
        "[agent] payload deleted, keeping the last good globs until it is written again",
        Duration::from_secs(30),
    );
    let _ = rt.block_on(backend.close());

    let (status, stdout, stderr) = agent.interrupt_all(Duration::from_secs(30));
    assert!(
        stderr.contains("WARN"),
        "the rejection is logged: {stderr:?}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI codes on a pipe: {stderr:?}"
    );
    assert!(!stdout.contains("PayloadDeleted"), "{stdout}");
    assert!(
        status.success(),
        "the agent exits 0 on Ctrl-C: {status:?}\n{stdout}"
    );
    assert!(stdout.contains("closing (listener removed)"), "{stdout}");
    assert_eq!(
        stdout.matches("Added /globs/2").count(),
        1,
        "exactly one change reported: {stdout}"
    );
    let after = run(&url, &["listeners", &path, "--json"], None);
    after.ok();
    assert!(
        !after.stdout.contains("\"id\""),
        "listener removed: {}",
        after.stdout
    );
}

/// The agent rides out a 60 s outage of its ZooKeeper (longer than its
/// session, which expires): it says once that it cannot verify its
/// settings and keeps using the last known globs, then recovers by itself,
/// reports the change an operator made during the outage and the one made
/// after, and says its settings are verified again.
#[test]
fn agent_rides_out_a_60s_outage() {
    const OUTAGE: Duration = Duration::from_secs(60);
    let server = sharedstate_conformance::fixtures::zookeeper();
    let direct = format!("zk://{server}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let proxy = rt
        .block_on(sharedstate_conformance::fixtures::TcpProxy::start(server))
        .expect("proxy");
    let through_proxy = format!("zk://{}?session_timeout_ms=6000", proxy.endpoint());
    let path = unique("process-monitor-outage");
    let mut command = Command::new(process_monitor_binary());
    command
        .args(["--backend", &through_proxy, "--path", &path])
        .env_remove("RUST_LOG");
    let mut agent = Watch::spawn(command);
    agent.wait_for_stdout("listening as", Duration::from_secs(60));

    proxy.suspend();
    let started = std::time::Instant::now();
    agent.wait_for_stdout("cannot verify the settings with the service", OUTAGE);
    run(
        &direct,
        &[
            "patch",
            &path,
            "--merge",
            r#"{"globs": ["during-outage*"]}"#,
        ],
        None,
    )
    .ok();
    if let Some(rest) = OUTAGE.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    proxy.resume();
    agent.wait_for_stdout(r#""during-outage*""#, Duration::from_secs(60));
    agent.wait_for_stdout(
        "settings verified again with the service",
        Duration::from_secs(60),
    );
    run(
        &direct,
        &["patch", &path, "--merge", r#"{"globs": ["after-outage*"]}"#],
        None,
    )
    .ok();
    agent.wait_for_stdout(r#""after-outage*""#, Duration::from_secs(30));
    let (status, stdout, _) = agent.interrupt_all(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{stdout}");
    assert_eq!(
        stdout.matches("cannot verify the settings").count(),
        1,
        "the outage is reported once: {stdout}"
    );
    drop(proxy);
}
