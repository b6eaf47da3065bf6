//! The `sharedstate` binary where no server is needed: choosing a backend,
//! completion scripts and the manual page, the environment variables.
//! Item numbers are issue 14's.

mod common;

use common::{closed_port, Run};

/// Item 2: no backend, no write: the error names both ways to give one.
#[test]
fn a_backend_is_required_and_the_error_says_how() {
    for run in [
        Run::new(&["init", "/demo/x", "{}"]),
        Run::new(&["init", "/demo/x", "{}"]).env("SHAREDSTATE_BACKEND", "  "),
    ] {
        let out = run.output();
        out.expect_code(2);
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
        assert!(
            out.stderr.starts_with(
                "sharedstate: no backend given: pass --backend URL or set SHAREDSTATE_BACKEND"
            ),
            "{out:?}"
        );
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    // memory:// when asked for explicitly, by flag or environment.
    Run::new(&["init", "/demo/x", "{}"])
        .backend("memory://")
        .output()
        .ok();
    Run::new(&["status", "/demo/x"])
        .env("SHAREDSTATE_BACKEND", "memory://")
        .output()
        .ok();
}

/// Item 3: a scalar patch is refused before anything is even sent.
#[test]
fn scalar_patches_are_refused_before_connecting() {
    let url = format!("zk://127.0.0.1:{}", closed_port());
    let out = Run::new(&["patch", "/a", "5"]).backend(&url).output();
    out.expect_code(2);
    assert!(
        out.stderr.contains(&format!(
            "To replace the whole payload, use `sharedstate --backend {url} set /a 5`, or pass --merge"
        )),
        "{out:?}"
    );
}

/// Item 8: completion scripts and the manual page need no backend.
#[test]
fn completions_and_the_manual_page() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Run::new(&["completions", shell]).output();
        out.ok();
        for word in ["sharedstate", "watch", "listeners", "backend", "lossy"] {
            assert!(out.stdout.contains(word), "{shell}: no {word:?}");
        }
    }
    let man = Run::new(&["man"]).output();
    man.ok();
    assert!(man.stdout.contains(".TH sharedstate 1"), "{}", man.stdout);
    assert!(man.stdout.contains("SHAREDSTATE"), "{}", man.stdout);
    assert!(man.stdout.contains("Exit codes"), "{}", man.stdout);
    let out = Run::new(&["completions", "tcsh"]).output();
    out.expect_code(2);
}

/// Item 8: the common flags have `SHAREDSTATE_*` variables, and one
/// output rule holds for every command.
#[test]
fn environment_variables_and_output_format() {
    let out = Run::new(&["status", "/e"])
        .env("SHAREDSTATE_BACKEND", "memory://")
        .env("SHAREDSTATE_OUTPUT", "json")
        .env("SHAREDSTATE_TIMEOUT", "3s")
        .env("SHAREDSTATE_LOCK_TIMEOUT", "1s")
        .env("SHAREDSTATE_COLOR", "never")
        .output();
    let status: serde_json::Value = serde_json::from_str(&out.ok().stdout).expect("JSON");
    assert_eq!(status["backend"], "memory");
    let out = Run::new(&["status", "/e"])
        .env("SHAREDSTATE_BACKEND", "memory://")
        .env("SHAREDSTATE_LOCK_TIMEOUT", "later")
        .output();
    out.expect_code(2);
    for command in [
        "get",
        "status",
        "listeners",
        "watch",
        "set",
        "init",
        "patch",
        "edit",
    ] {
        let help = Run::new(&[command, "--help"]).output();
        assert!(
            help.ok().stdout.contains("--json"),
            "{command} --help lists --json"
        );
    }
}

/// Item 9: a build without a backend says how to get it (here: an unknown
/// scheme, which every build refuses the same way).
#[test]
fn unknown_schemes_are_usage_errors() {
    let out = Run::new(&["get", "/a"]).backend("redis://h:1").output();
    out.expect_code(2);
    assert!(out.stderr.contains("unknown scheme \"redis\""), "{out:?}");
}
