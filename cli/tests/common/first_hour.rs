//! The rough edges of a new user's first hour (issue 14), each driven
//! through the binary against a real server. Item numbers are the issue's.

use std::time::Duration;

use serde_json::{json, Value};
use sharedstate::backend::Bytes;
use sharedstate::{Key, PutMode};

use super::{run, unique, version_in, Run, COMMAND_BOUND};

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

#[track_caller]
fn get_value(url: &str, path: &str) -> Value {
    let out = run(url, &["get", path], None);
    out.ok();
    parse(&out.stdout)
}

/// The version `get --json` reports.
#[track_caller]
fn current_version(url: &str, path: &str) -> u64 {
    let out = run(url, &["get", path, "--json"], None);
    parse(&out.ok().stdout)["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("no version: {out:?}"))
}

/// Runs `f` with a client of the same server (for outside writes).
fn with_backend<T>(
    url: &str,
    f: impl AsyncFnOnce(&dyn sharedstate::CoordinationBackend) -> T,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let backend = sharedstate::connect(url).await.expect("connect");
        let result = f(backend.as_ref()).await;
        let _ = backend.close().await;
        result
    })
}

/// Item 3: a scalar patch is refused unless --merge asks for it.
pub fn scalar_patches_need_merge(url: &str) {
    let path = unique("scalar-patch");
    run(url, &["init", &path, r#"{"n":1}"#], None).ok();
    for scalar in ["5", r#""text""#, "null", "true"] {
        let out = run(url, &["patch", &path, scalar], None);
        out.expect_code(2);
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
        assert!(
            out.stderr.contains("neither a merge patch (a JSON object) nor a JSON Patch (an array); nothing was written")
                && out.stderr.contains("or pass --merge"),
            "{out:?}"
        );
    }
    assert_eq!(get_value(url, &path), json!({"n": 1}));
    run(url, &["patch", &path, "--merge", "5"], None).ok();
    assert_eq!(get_value(url, &path), json!(5));
}

/// Item 4: an edit that changes nothing writes nothing; a payload that is
/// not UTF-8 is refused before anything is written, and --lossy keeps its
/// bytes unless the user changes something.
pub fn edit_changes_nothing_it_was_not_asked_to(url: &str) {
    let path = unique("edit-nothing");
    let created = run(url, &["init", &path, r#"{"n":1}"#], None)
        .ok()
        .version();
    let out = run(url, &["edit", &path, "--editor", "true"], None);
    assert!(
        out.ok()
            .stdout
            .starts_with(&format!("{path}: unchanged at version {created}")),
        "{out:?}"
    );
    assert_eq!(current_version(url, &path), created);

    let payload = Key::new(format!("{path}/payload")).expect("key");
    let raw = with_backend(url, async |b| {
        b.put(
            &payload,
            Bytes::from_static(b"\xff\xfe"),
            PutMode::Overwrite,
        )
        .await
        .expect("outside write")
    });
    let stored = || {
        with_backend(url, async |b| {
            b.get(&payload).await.expect("read").expect("a payload")
        })
    };
    let out = run(url, &["edit", &path, "--editor", "true"], None);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("is not UTF-8 text (byte 0xff at offset 0), so an editor cannot show it as it is; nothing was written")
            && out.stderr.contains("--lossy"),
        "{out:?}"
    );
    let lossy = run(url, &["edit", &path, "--lossy", "--editor", "true"], None);
    assert!(
        lossy
            .ok()
            .stdout
            .contains(&format!("unchanged at version {}", raw.as_u64())),
        "{lossy:?}"
    );
    assert!(lossy.stderr.contains("shown as U+FFFD"), "{lossy:?}");
    let kept = stored();
    assert_eq!(
        kept.value,
        Bytes::from_static(b"\xff\xfe"),
        "bytes untouched"
    );
    assert_eq!(kept.version, raw);

    let fix = "sh -c 'echo 7 > \"$0\"'";
    run(url, &["edit", &path, "--lossy", "--editor", fix], None).ok();
    assert_eq!(get_value(url, &path), json!(7));
}

/// Item 5: over the size limit is the usage code with the size and the
/// limit, and nothing is written.
pub fn too_large_is_a_usage_error_with_size_and_limit(url: &str) {
    let path = unique("too-large");
    run(url, &["init", &path, r#"{"n":1}"#], None).ok();
    let big = format!("\"{}\"", "x".repeat(1_100_000));
    let out = run(url, &["set", &path, "-"], Some(&big));
    out.expect_code(2);
    assert_eq!(
        out.stderr,
        format!(
            "sharedstate: the new payload of {path} is 1100002 bytes, over the limit of 1000000 bytes on {url}; nothing was written (shared state is for configuration-sized values)\n"
        )
    );
    let patch = format!(r#"{{"big": {big}}}"#);
    let out = run(url, &["patch", &path, "-"], Some(&patch));
    out.expect_code(2);
    assert!(
        out.stderr.contains("over the limit of 1000000 bytes"),
        "{out:?}"
    );
    assert_eq!(get_value(url, &path), json!({"n": 1}));
}

/// Item 5: URL mistakes are one line each, every cause once.
pub fn url_mistakes_say_what_is_wrong_once(url: &str) {
    let separator = if url.contains('?') { '&' } else { '?' };
    let bad_option = if url.starts_with("zk://") {
        format!("{url}{separator}session_timeout_ms=abc")
    } else {
        format!("{url}{separator}session_ttl_s=abc")
    };
    let out = run(&bad_option, &["get", "/x"], None);
    out.expect_code(2);
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert_eq!(
        out.stderr.matches("abc").count(),
        2,
        "URL + reason: {out:?}"
    );
    let scheme = url.split("://").next().unwrap_or_default();
    let out = run(
        &format!("{scheme}://127.0.0.1:notaport"),
        &["get", "/x"],
        None,
    );
    out.expect_code(2);
    assert!(
        out.stderr.contains(
            "port \"notaport\" of \"127.0.0.1:notaport\" is not a number from 1 to 65535"
        ),
        "{out:?}"
    );
}

/// Item 6: paths into a state's own keys point at the state, `init`
/// never nests a state inside another, and suggested commands are
/// shell-quoted.
pub fn paths_point_at_the_state(url: &str) {
    let path = unique("paths");
    run(url, &["init", &path, "{}"], None).ok();
    let quoted_url = shlex::try_quote(url).expect("quotable").into_owned();
    let payload_key = format!("{path}/payload");
    let out = run(url, &["get", &payload_key], None);
    out.expect_code(3);
    assert!(
        out.stderr.ends_with(&format!(
            "use the state's path, e.g. `sharedstate --backend {quoted_url} get {path}`\n"
        )),
        "{out:?}"
    );
    let out = run(url, &["init", &payload_key, "1"], None);
    out.expect_code(2);
    assert!(out.stderr.contains("a state cannot live there"), "{out:?}");
    let nested = format!("{path}/inner");
    let out = run(url, &["init", &nested, "1"], None);
    out.expect_code(2);
    assert!(
        out.stderr.contains(&format!(
            "{nested} is inside the state {path} (it has {path}/payload)"
        )),
        "{out:?}"
    );
    run(url, &["get", &nested], None).expect_code(3);
    assert_eq!(get_value(url, &path), json!({}));

    let spaced = format!("{} it's", unique("spaced"));
    let out = run(url, &["get", &spaced], None);
    out.expect_code(3);
    assert!(
        out.stderr.ends_with(&format!(
            "create one with `sharedstate --backend {quoted_url} init \"{spaced}\" JSON`\n"
        )),
        "{out:?}"
    );
    // Through SHAREDSTATE_BACKEND, suggestions need no --backend.
    let out = Run::new(&["get", &spaced])
        .env("SHAREDSTATE_BACKEND", url)
        .output();
    out.expect_code(3);
    assert!(out.stderr.contains("`sharedstate init \""), "{out:?}");
}

/// Item 7: Ctrl-C in `edit` (the terminal sends it to the editor too)
/// writes nothing, removes the draft, and exits 130.
pub fn ctrl_c_in_edit_removes_the_draft(url: &str) {
    let path = unique("edit-ctrl-c");
    let version = run(url, &["init", &path, r#"{"n":1}"#], None)
        .ok()
        .version();
    let dir = tempfile::tempdir().expect("tempdir");
    let drafts = dir.path().join("tmp");
    std::fs::create_dir(&drafts).expect("TMPDIR");
    let opened = dir.path().join("opened");
    let editor = format!(
        "sh -c 'echo \"$0\" > {opened}; sed -i s/1/2/ \"$0\"; exec sleep 60'",
        opened = opened.display()
    );
    let edit = Run::new(&["edit", &path, "--editor", &editor])
        .backend(url)
        .env("TMPDIR", &drafts.to_string_lossy())
        .spawn_in_own_group();
    let deadline = std::time::Instant::now() + COMMAND_BOUND;
    while !opened.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the editor never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, stderr) = edit.interrupt_group(COMMAND_BOUND);
    assert_eq!(status.code(), Some(130), "{status:?}: {stderr}");
    assert_eq!(stderr, "sharedstate: interrupted; nothing was written\n");
    let left: Vec<_> = std::fs::read_dir(&drafts).expect("read TMPDIR").collect();
    assert!(left.is_empty(), "drafts left behind: {left:?}");
    assert_eq!(current_version(url, &path), version);
}

/// Item 8: one output rule, environment variables for the common flags,
/// and the version as each service's tools show it.
pub fn one_output_rule_and_environment_variables(url: &str) {
    let path = unique("conventions");
    let out = Run::new(&["init", &path, r#"{"n":1}"#])
        .env("SHAREDSTATE_BACKEND", url)
        .env("SHAREDSTATE_OUTPUT", "json")
        .output();
    let created = parse(&out.ok().stdout);
    assert_eq!(created["result"], "created");
    assert_eq!(created["path"], path.as_str());
    let version = created["version"].as_u64().expect("a version");
    let set = run(url, &["set", &path, r#"{"n":2}"#, "--json"], None);
    let set = parse(&set.ok().stdout);
    assert_eq!(set["result"], "changed");
    let status = parse(
        &run(url, &["status", &path, "--output", "json"], None)
            .ok()
            .stdout,
    );
    assert_eq!(status["payload"]["version"], set["version"]);
    assert_eq!(status["cli_session"]["state"], "connected");
    let listeners = run(url, &["listeners", &path, "--json"], None);
    assert_eq!(parse(&listeners.ok().stdout), json!([]));
    if url.starts_with("zk://") {
        assert_eq!(created["mzxid"], format!("{version:#x}"));
        let text = run(url, &["set", &path, r#"{"n":3}"#], None);
        let v = version_in(&text.ok().stdout);
        assert_eq!(text.stdout, format!("{path}: version {v} (mZxid {v:#x})\n"));
    } else {
        assert!(created.get("mzxid").is_none(), "{created}");
    }
    let out = Run::new(&["get", &path])
        .backend(url)
        .env("SHAREDSTATE_TIMEOUT", "soon")
        .output();
    out.expect_code(2);
    assert!(out.stderr.contains("\"soon\" is not a duration"), "{out:?}");
}

/// Item 9: library logs on a piped stderr carry no colour codes.
pub fn logs_on_a_pipe_have_no_colour(url: &str) {
    let path = unique("logs");
    run(url, &["init", &path, "{}"], None).ok();
    let out = Run::new(&["get", &path])
        .backend(url)
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "debug")
        .output();
    out.ok();
    assert!(
        out.stderr.lines().count() > 1,
        "debug logs expected: {out:?}"
    );
    assert!(
        !out.stderr.contains('\u{1b}'),
        "ANSI codes on a pipe: {out:?}"
    );
}
