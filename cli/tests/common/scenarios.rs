//! The CLI scenarios every real backend runs (see `cli_scenarios!`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sharedstate::backend::Bytes;
use sharedstate::{Key, LockOptions, PutMode, SharedState};

use super::{closed_port, run, run_bounded, unique, Run, Watch, BIN, COMMAND_BOUND};

/// One `#[test]` per scenario, against the server `$url` names.
#[macro_export]
macro_rules! cli_scenarios {
    ($scheme:literal, $url:expr) => {
        $crate::cli_scenarios!(@tests $url;
            init_get_and_missing_payload,
            watch_sees_a_set_from_another_process,
            watch_json_sees_a_merge_patch,
            stale_version_conflicts,
            merge_and_json_patches_apply,
            bad_json_reports_line_and_column,
            edit_reopens_on_conflict,
            listeners_status_and_the_lock,
            cli_and_engine_writers_lose_nothing,
            undecodable_payloads_are_reported_and_ctrl_c_stops_watch,
        );

        $crate::cli_scenarios!(@first_hour $url;
            scalar_patches_need_merge,
            edit_changes_nothing_it_was_not_asked_to,
            too_large_is_a_usage_error_with_size_and_limit,
            url_mistakes_say_what_is_wrong_once,
            paths_point_at_the_state,
            ctrl_c_in_edit_removes_the_draft,
            one_output_rule_and_environment_variables,
            logs_on_a_pipe_have_no_colour,
        );

        #[test]
        fn wait_names_the_instance_that_rejected() {
            common::fleet::wait_names_the_instance_that_rejected(&$url);
        }

        #[test]
        fn unreachable_server_names_the_url() {
            common::scenarios::unreachable_server_names_the_url($scheme);
        }
    };
    (@tests $url:expr; $($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                common::scenarios::$name(&$url);
            }
        )*
    };
    (@first_hour $url:expr; $($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                common::first_hour::$name(&$url);
            }
        )*
    };
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// The payload as `get` prints it.
#[track_caller]
fn get_value(url: &str, path: &str) -> Value {
    let out = run(url, &["get", path], None);
    out.ok();
    parse(&out.stdout)
}

pub fn init_get_and_missing_payload(url: &str) {
    let path = unique("init");
    let created = run(
        url,
        &["init", &path, r#"{"globs":["systemd*","rsync*"]}"#],
        None,
    );
    created.ok();
    assert!(
        created
            .stdout
            .starts_with(&format!("{path}: created at version ")),
        "{created:?}"
    );
    let version = created.version();
    let got = run(url, &["get", &path], None);
    got.ok();
    assert_eq!(
        got.stdout,
        "{\n  \"globs\": [\n    \"systemd*\",\n    \"rsync*\"\n  ]\n}\n"
    );
    // ZooKeeper's version is the mzxid, which zkCli shows in hex.
    let expected = if url.starts_with("zk://") {
        format!("version {version} (mZxid {version:#x})")
    } else {
        format!("version {version}")
    };
    assert_eq!(got.stderr.trim(), expected);
    let wrapped = run(url, &["get", &path, "--json"], None);
    let wrapped = parse(&wrapped.ok().stdout);
    assert_eq!(wrapped["version"], version);
    assert_eq!(wrapped["path"], path.as_str());
    assert_eq!(wrapped["value"], json!({"globs": ["systemd*", "rsync*"]}));
    if url.starts_with("zk://") {
        assert_eq!(wrapped["mzxid"], format!("{version:#x}"));
    } else {
        assert!(wrapped.get("mzxid").is_none(), "{wrapped}");
    }

    let again = run(url, &["init", &path, "{}"], None);
    again.expect_code(4);
    assert!(again.stderr.contains("already has a payload"), "{again:?}");
    let kept = run(url, &["init", &path, "{}", "--if-missing"], None);
    assert_eq!(
        kept.ok().stdout,
        format!("{path}: unchanged at {expected}\n")
    );

    let missing = unique("missing");
    for args in [
        vec!["get", missing.as_str()],
        vec!["set", missing.as_str(), "1"],
        vec!["watch", missing.as_str()],
    ] {
        let out = run(url, &args, None);
        out.expect_code(3);
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
        assert!(
            out.stderr
                .starts_with(&format!("sharedstate: no payload at {missing}")),
            "{out:?}"
        );
    }
}

pub fn watch_sees_a_set_from_another_process(url: &str) {
    let path = unique("watch");
    run(
        url,
        &["init", &path, r#"{"globs":["systemd*","rsync*"]}"#],
        None,
    )
    .ok();
    let watch = Watch::start(url, &[&path, "--count", "1"]);
    let set = run(
        url,
        &[
            "set",
            &path,
            r#"{"globs":["systemd*","rsync*","firefox*"]}"#,
        ],
        None,
    );
    let version = set.ok().version();
    let (status, stdout) = watch.finish(COMMAND_BOUND);
    assert!(status.success(), "{status:?}: {stdout:?}");
    assert_eq!(
        stdout,
        format!("v{version} remote Added /globs/2 \"firefox*\"\n")
    );
}

pub fn watch_json_sees_a_merge_patch(url: &str) {
    let path = unique("watch-json");
    run(url, &["init", &path, r#"{"interval_secs":5}"#], None).ok();
    let watch = Watch::start(url, &[&path, "--json", "--count", "1"]);
    let patched = run(
        url,
        &["patch", &path, "--merge", "-"],
        Some(r#"{"interval_secs": 10}"#),
    );
    let version = patched.ok().version();
    let (status, stdout) = watch.finish(COMMAND_BOUND);
    assert!(status.success(), "{status:?}: {stdout:?}");
    assert_eq!(
        parse(&stdout),
        json!({"event": "changed", "version": version, "origin": "remote",
               "changes": [{"op": "modified", "path": "/interval_secs", "old": 5, "new": 10}]})
    );
}

pub fn stale_version_conflicts(url: &str) {
    let path = unique("conflict");
    let v1 = run(url, &["init", &path, r#"{"n":1}"#], None)
        .ok()
        .version();
    let first = v1.to_string();
    let v2 = run(
        url,
        &["set", &path, r#"{"n":2}"#, "--version", &first],
        None,
    )
    .ok()
    .version();
    assert!(v2 > v1);
    let stale = run(
        url,
        &["set", &path, r#"{"n":3}"#, "--version", &first],
        None,
    );
    stale.expect_code(4);
    assert_eq!(
        stale.stderr,
        format!(
            "sharedstate: version conflict on {path}: expected version {v1}, but the current version is {v2}\n"
        )
    );
    assert_eq!(get_value(url, &path), json!({"n": 2}));
}

pub fn merge_and_json_patches_apply(url: &str) {
    let path = unique("patch");
    run(
        url,
        &["init", &path, r#"{"globs":["a"],"n":1,"old":true}"#],
        None,
    )
    .ok();
    run(
        url,
        &["patch", &path, "--merge", "-"],
        Some(r#"{"n": 2, "old": null}"#),
    )
    .ok();
    assert_eq!(get_value(url, &path), json!({"globs": ["a"], "n": 2}));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ops.json");
    std::fs::write(
        &file,
        r#"[{"op": "add", "path": "/globs/-", "value": "b"}, {"op": "test", "path": "/n", "value": 2}]"#,
    )
    .expect("write the patch");
    let file = file.to_string_lossy().into_owned();
    run(
        url,
        &["patch", &path, "--json-patch", "--file", &file],
        None,
    )
    .ok();
    assert_eq!(get_value(url, &path), json!({"globs": ["a", "b"], "n": 2}));

    let failing = r#"[{"op": "add", "path": "/globs/-", "value": "c"}, {"op": "test", "path": "/n", "value": 9}]"#;
    let out = run(url, &["patch", &path, failing], None);
    out.expect_code(1);
    assert!(out.stderr.contains("the patch does not apply"), "{out:?}");
    assert_eq!(get_value(url, &path), json!({"globs": ["a", "b"], "n": 2}));
}

pub fn bad_json_reports_line_and_column(url: &str) {
    let path = unique("bad-json");
    run(url, &["init", &path, "{}"], None).ok();
    let out = run(
        url,
        &["set", &path, "-"],
        Some("{\n  \"a\": 1,\n  \"b\" 2\n}\n"),
    );
    out.expect_code(2);
    assert_eq!(
        out.stderr,
        "sharedstate: invalid JSON in stdin at line 3, column 7: expected `:`\n"
    );
    let out = run(url, &["patch", &path, "{\"a\": [1,]}"], None);
    out.expect_code(2);
    assert_eq!(
        out.stderr,
        "sharedstate: invalid JSON in the patch argument at line 1, column 10: trailing comma\n"
    );
    assert_eq!(get_value(url, &path), json!({}));
}

/// Item 5: a refused server is one short line naming the URL and what to
/// check, well before the client's own connect timeout, with none of the
/// client's internals (tonic's debug structs, a bare `timeout`).
pub fn unreachable_server_names_the_url(scheme: &str) {
    let url = format!("{scheme}://127.0.0.1:{}", closed_port());
    let started = Instant::now();
    let out = run_bounded(&url, &["get", "/x"], None, Duration::from_secs(30));
    let took = started.elapsed();
    out.expect_code(5);
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    let port = url.rsplit(':').next().unwrap_or_default();
    assert_eq!(
        out.stderr,
        format!(
            "sharedstate: cannot reach {url}: 127.0.0.1:{port} refused the connection; is the server running, and is the URL right? (--backend or SHAREDSTATE_BACKEND)\n"
        )
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

pub fn edit_reopens_on_conflict(url: &str) {
    let path = unique("edit");
    run(url, &["init", &path, r#"{"n":1}"#], None).ok();
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = dir.path().join("opened-once");
    let script = dir.path().join("editor.sh");
    // First opening: another writer changes the payload meanwhile, and the
    // user's edit (n: 2) then conflicts. Second opening shows n: 100.
    std::fs::write(
        &script,
        format!(
            r#"set -e
if [ ! -e '{mark}' ]; then
  touch '{mark}'
  '{BIN}' --backend '{url}' set '{path}' '{{"n":100}}' >/dev/null
  sed -i 's/1/2/' "$1"
else
  grep -q 100 "$1"
  sed -i 's/100/101/' "$1"
fi
"#,
            mark = mark.display(),
        ),
    )
    .expect("write the editor script");
    let editor = format!("sh '{}'", script.display());
    let drafts = tempfile::tempdir().expect("a TMPDIR for the drafts");
    let out = Run::new(&["edit", &path, "--editor", &editor])
        .backend(url)
        .env("TMPDIR", &drafts.path().to_string_lossy())
        .output();
    out.ok();
    // Item 7: the edit saved after the conflict is gone with the command.
    let left: Vec<_> = std::fs::read_dir(drafts.path())
        .expect("read TMPDIR")
        .collect();
    assert!(left.is_empty(), "drafts left behind: {left:?}; {out:?}");
    assert!(out.stderr.contains("until this command ends"), "{out:?}");
    assert!(
        out.stderr.contains("changed while you were editing")
            && out
                .stderr
                .contains("re-opening the editor on the new value"),
        "{out:?}"
    );
    assert!(
        out.stdout.starts_with(&format!("{path}: version ")),
        "{out:?}"
    );
    assert_eq!(get_value(url, &path), json!({"n": 101}));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

pub fn listeners_status_and_the_lock(url: &str) {
    let path = unique("listeners");
    let rt = runtime();
    let (backend, state) = rt.block_on(async {
        let backend = sharedstate::connect(url).await.expect("connect");
        let state = SharedState::<Value>::builder(backend.clone(), &path)
            .initial(json!({"n": 0}))
            .open()
            .await
            .expect("open the state");
        (backend, state)
    });
    let out = run(url, &["listeners", &path, "--json"], None);
    let listeners = parse(&out.ok().stdout);
    assert_eq!(listeners.as_array().map(Vec::len), Some(1), "{listeners}");
    assert_eq!(listeners[0]["pid"], std::process::id());
    assert_eq!(listeners[0]["id"], state.instance_id());
    let table = run(url, &["listeners", &path], None);
    assert!(table.ok().stdout.contains(state.instance_id()), "{table:?}");

    let status = run(url, &["status", &path], None);
    let text = &status.ok().stdout;
    assert!(text.contains("listeners:   1"), "{text}");
    assert!(text.contains("lock:        free"), "{text}");
    assert!(
        text.contains("cli session: connected (this command's own connection, not the instances')"),
        "{text}"
    );
    assert!(text.contains("valid JSON"), "{text}");

    let lock = Key::new(format!("{path}/lock")).expect("key");
    let guard = rt
        .block_on(backend.lock(&lock, LockOptions::with_timeout(COMMAND_BOUND)))
        .expect("take the state's lock");
    let status = run(url, &["status", &path, "--json"], None);
    assert_eq!(parse(&status.ok().stdout)["lock"]["held"], true);
    let blocked = run(
        url,
        &["--lock-timeout", "1s", "set", &path, r#"{"n":5}"#],
        None,
    );
    blocked.expect_code(5);
    assert!(blocked.stderr.contains("holds the lock"), "{blocked:?}");
    rt.block_on(guard.release()).expect("release");

    let set = run(url, &["set", &path, r#"{"n":5}"#], None);
    let version = set.ok().version();
    let seen = rt.block_on(async {
        let deadline = Instant::now() + COMMAND_BOUND;
        while state.version().as_u64() < version && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        state.read().expect("read").as_ref().clone()
    });
    assert_eq!(seen, json!({"n": 5}), "the engine sees the CLI's write");
    rt.block_on(state.close());
    let out = run(url, &["listeners", &path], None);
    assert_eq!(out.ok().stdout, "no live instances\n");
    rt.block_on(async {
        let _ = backend.close().await;
    });
}

pub fn cli_and_engine_writers_lose_nothing(url: &str) {
    const ENGINE_UPDATES: u64 = 15;
    const CLI_PATCHES: usize = 4;
    let path = unique("no-lost-update");
    let rt = runtime();
    let state = rt.block_on(async {
        let backend = sharedstate::connect(url).await.expect("connect");
        SharedState::<Value>::builder(backend, &path)
            .initial(json!({"n": 0, "globs": []}))
            .open()
            .await
            .expect("open the state")
    });
    let writer = state.clone();
    let engine = rt.spawn(async move {
        for _ in 0..ENGINE_UPDATES {
            writer
                .update(|v| {
                    let n = v["n"].as_u64().unwrap_or(0);
                    v["n"] = json!(n + 1);
                })
                .await
                .expect("engine update");
        }
    });
    for i in 0..CLI_PATCHES {
        let op = format!(r#"[{{"op": "add", "path": "/globs/-", "value": "g{i}"}}]"#);
        run(url, &["patch", &path, &op], None).ok();
    }
    rt.block_on(async {
        tokio::time::timeout(COMMAND_BOUND, engine)
            .await
            .expect("the engine's updates finish in time")
            .expect("no panic");
    });
    let value = get_value(url, &path);
    assert_eq!(value["n"], ENGINE_UPDATES, "{value}");
    assert_eq!(
        value["globs"].as_array().map(Vec::len),
        Some(CLI_PATCHES),
        "{value}"
    );
    rt.block_on(state.close());
}

pub fn undecodable_payloads_are_reported_and_ctrl_c_stops_watch(url: &str) {
    let path = unique("undecodable");
    run(url, &["init", &path, r#"{"n":1}"#], None).ok();
    let mut watch = Watch::start(url, &[&path]);
    // An outside writer (zkCli, etcdctl) stores something that is not JSON.
    let rt = runtime();
    let payload = Key::new(format!("{path}/payload")).expect("key");
    let bad = rt.block_on(async {
        let backend = sharedstate::connect(url).await.expect("connect");
        let version = backend
            .put(&payload, Bytes::from_static(b"{n: 2"), PutMode::Overwrite)
            .await
            .expect("outside write");
        let _ = backend.close().await;
        version
    });
    // Item 5: the engine's reason, each part once (serde's reason and its
    // position, no "decode failed").
    watch.wait_for_stdout(
        &format!(
            "v{bad} rejected: payload is not valid JSON (line 1, column 2): key must be a string"
        ),
        COMMAND_BOUND,
    );

    let got = run(url, &["get", &path], None);
    got.expect_code(1);
    assert_eq!(got.stdout, "{n: 2\n", "the broken payload is shown");
    assert_eq!(
        got.stderr,
        format!(
            "sharedstate: invalid JSON in the payload of {path} (version {bad}) at line 1, column 2: key must be a string; fix it with `sharedstate --backend {url} set {path} JSON` or `sharedstate --backend {url} edit {path}`\n"
        )
    );
    let status = run(url, &["status", &path], None);
    assert!(
        status
            .ok()
            .stdout
            .contains("5 bytes, invalid JSON in the payload at line 1, column 2"),
        "{status:?}"
    );
    let patch = run(url, &["patch", &path, r#"{"n": 3}"#], None);
    patch.expect_code(1);
    // A locked `set` replaces it.
    let fixed = run(url, &["set", &path, r#"{"n":3}"#], None).ok().version();
    watch.wait_for_stdout(
        &format!("v{fixed} remote Modified /n 1 -> 3"),
        COMMAND_BOUND,
    );

    // Item 7: Ctrl-C is exit 130, as shells expect.
    let (status, stdout) = watch.interrupt(COMMAND_BOUND);
    assert_eq!(status.code(), Some(130), "Ctrl-C exits 130: {status:?}");
    assert_eq!(stdout.lines().count(), 2, "{stdout:?}");
    assert_eq!(
        stdout.matches("line 1").count(),
        1,
        "the position once: {stdout:?}"
    );
}
