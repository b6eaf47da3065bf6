//! `watch PATH`: follows the state through the engine (without registering
//! as a listener) and prints every change set as one line.

use std::io::Write;

use futures::StreamExt;
use serde_json::Value;
use sharedstate::{SessionState, SharedState};

use super::{emit, Env, Global};
use crate::args::{OutputFormat, WatchArgs};
use crate::errors::{CliError, CliResult, Exit};
use crate::interrupt::Interrupts;
use crate::output;

/// `watch PATH [--json] [--count N] [--initial] [--wait DURATION]`.
/// Ctrl-C ends it with exit 130 (SIGTERM 143, SIGHUP 129), after closing
/// the session.
pub async fn watch(global: &Global, args: WatchArgs, out: &mut (dyn Write + Send)) -> CliResult {
    let mut interrupts = Interrupts::install()?;
    let env = tokio::select! {
        env = global.open(&args.path) => env?,
        signal = interrupts.next() => return Err(signal.exit()),
    };
    let result = follow(&env, &args, out, &mut interrupts).await;
    env.close().await;
    result
}

async fn open_state(env: &Env, args: &WatchArgs) -> CliResult<SharedState<Value>> {
    let mut builder = SharedState::<Value>::builder(env.backend.clone(), env.paths.root.as_str())
        .register_instance(false);
    let mut bound = env.timeout;
    if let Some(wait) = args.wait {
        builder = builder.expect_existing(wait);
        bound += wait;
    }
    match tokio::time::timeout(bound, builder.open()).await {
        Err(_) => Err(env.cx.timed_out("starting the watch", bound)),
        Ok(result) => result.map_err(|e| env.cx.backend(e)),
    }
}

async fn follow(
    env: &Env,
    args: &WatchArgs,
    out: &mut (dyn Write + Send),
    interrupts: &mut Interrupts,
) -> CliResult {
    let json = env.format == OutputFormat::Json;
    let state = tokio::select! {
        state = open_state(env, args) => state?,
        signal = interrupts.next() => return Err(signal.exit()),
    };
    let mut events = state.subscribe();
    let start = state.version();
    if args.initial {
        match state.read() {
            Ok(value) => {
                if json {
                    let line =
                        serde_json::json!({"event": "initial", "version": start, "value": *value});
                    emit(out, &line.to_string())?;
                } else {
                    emit(out, &output::initial_text(start.as_u64(), &value))?;
                }
            }
            Err(error) => return Err(env.cx.backend(error)),
        }
    }
    // Readiness goes to stderr, so stdout stays pure data.
    eprintln!(
        "watching {} from version {start} (Ctrl-C to stop)",
        env.cx.path
    );
    let mut session = env.backend.session();
    let mut seen = 0u64;
    let result = loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else {
                    break Err(CliError::new(
                        Exit::Unavailable,
                        format!("the watch on {} at {} ended", env.cx.path, env.cx.url),
                    ));
                };
                let line = if json {
                    output::event_json(&event).to_string()
                } else {
                    output::event_text(&event)
                };
                if let Err(error) = emit(out, &line) {
                    break Err(error);
                }
                if output::counts(&event) {
                    seen += 1;
                    if args.count.is_some_and(|count| seen >= count) {
                        break Ok(());
                    }
                }
            }
            changed = session.changed() => {
                if changed.is_err() {
                    break Err(CliError::new(
                        Exit::Unavailable,
                        format!("the client for {} closed", env.cx.url),
                    ));
                }
                let status = *session.borrow_and_update();
                let note = match status.state {
                    SessionState::Connected => format!("this watch's session connected again (epoch {})", status.epoch),
                    SessionState::Suspended => format!("connection to {} lost; retrying", env.cx.url),
                    SessionState::Lost => "session expired; resyncing when a new one starts".to_owned(),
                    SessionState::Closed => "session closed".to_owned(),
                    other => format!("session state {other:?}"),
                };
                eprintln!("{note}");
            }
            signal = interrupts.next() => break Err(signal.exit()),
        }
    };
    state.close().await;
    result
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{fails, ok, run_line};
    use crate::errors::Exit;

    #[tokio::test]
    async fn watch_prints_the_initial_value_then_change_sets_until_count() {
        let b = ["--backend", "memory://watch-count"];
        ok(&[
            b[0],
            b[1],
            "init",
            "/m",
            r#"{"globs":["systemd*","rsync*"]}"#,
        ])
        .await;
        let watcher = tokio::spawn(run_line(&[
            b[0],
            b[1],
            "watch",
            "/m",
            "--count",
            "1",
            "--initial",
        ]));
        // Nothing signals readiness in-process but stderr; wait for the
        // watcher to have opened (it prints "initial" first).
        tokio::time::sleep(Duration::from_millis(300)).await;
        ok(&[
            b[0],
            b[1],
            "patch",
            "/m",
            r#"[{"op":"add","path":"/globs/-","value":"firefox*"}]"#,
        ])
        .await;
        let (result, out) = tokio::time::timeout(Duration::from_secs(10), watcher)
            .await
            .expect("the watch exits after --count change sets")
            .expect("no panic");
        result.expect("watch succeeds");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[0].contains(" initial {\"globs\":[\"systemd*\",\"rsync*\"]}"),
            "{out}"
        );
        assert!(
            lines[1].ends_with(" remote Added /globs/2 \"firefox*\""),
            "{out}"
        );
    }

    #[tokio::test]
    async fn json_lines_and_deletion_notices() {
        let b = ["--backend", "memory://watch-json"];
        ok(&[b[0], b[1], "init", "/j", "{\"a\":1}"]).await;
        let watcher = tokio::spawn(run_line(&[
            b[0], b[1], "watch", "/j", "--json", "--count", "1",
        ]));
        tokio::time::sleep(Duration::from_millis(300)).await;
        ok(&[b[0], b[1], "set", "/j", "{\"a\":2}"]).await;
        let (result, out) = tokio::time::timeout(Duration::from_secs(10), watcher)
            .await
            .expect("bounded")
            .expect("no panic");
        result.expect("watch succeeds");
        let event: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
        assert_eq!(event["event"], "changed");
        assert_eq!(event["origin"], "remote");
        assert_eq!(
            event["changes"],
            serde_json::json!([{"op": "modified", "path": "/a", "old": 1, "new": 2}])
        );
    }

    #[tokio::test]
    async fn watching_nothing_says_no_payload_or_waits() {
        let b = ["--backend", "memory://watch-none"];
        let err = fails(&[b[0], b[1], "watch", "/none"]).await;
        assert_eq!(err.exit, Exit::NotFound);
        let err = fails(&[b[0], b[1], "watch", "/none", "--wait", "200ms"]).await;
        assert_eq!(err.exit, Exit::NotFound);
    }
}
