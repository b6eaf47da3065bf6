//! Read-only commands: `get`, `status`, `listeners`.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Map, Value};
use sharedstate::{instances_of, ErrorKind, LockOptions, SessionState};

use super::fleet::{self, Standing};
use super::{emit, Env, Global};
use crate::args::{GetArgs, ListenersArgs, OutputFormat, StatusArgs};
use crate::errors::{json_error, CliError, CliResult};
use crate::output;

/// `get PATH`: pretty JSON on stdout, `version N` on stderr; with --json
/// one object `{"path", "version", "value"}` on stdout.
pub async fn get(global: &Global, args: GetArgs, out: &mut (dyn Write + Send)) -> CliResult {
    let env = global.open(&args.path).await?;
    let found = env.payload().await;
    env.close().await;
    let found = found?;
    let value = match env.decode(&found) {
        Ok(value) => value,
        Err(error) => {
            // Show the broken payload anyway (text output only: JSON output
            // stays JSON): the operator needs it to fix it.
            if env.format == OutputFormat::Text {
                emit(out, &String::from_utf8_lossy(&found.value))?;
            }
            return Err(error);
        }
    };
    match env.format {
        OutputFormat::Json => {
            let mut object = Map::new();
            object.insert("path".into(), Value::from(env.cx.path.as_str()));
            env.version_fields(&mut object, found.version);
            object.insert("value".into(), value);
            emit(out, &pretty(&Value::Object(object)))
        }
        OutputFormat::Text => {
            emit(out, &pretty(&value))?;
            eprintln!("{}", env.version_text(found.version));
            Ok(())
        }
    }
}

pub(super) fn pretty(value: &Value) -> String {
    // Pretty-printing a `Value` cannot fail.
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// `listeners PATH`.
pub async fn listeners(
    global: &Global,
    args: ListenersArgs,
    out: &mut (dyn Write + Send),
) -> CliResult {
    let env = global.open(&args.path).await?;
    let found = env
        .bounded(
            "listing the instances",
            instances_of(env.backend.as_ref(), &env.paths.listeners),
        )
        .await;
    env.close().await;
    let found = found?;
    if env.format == OutputFormat::Json {
        let value = serde_json::to_value(&found)
            .map_err(|e| CliError::failure(format!("cannot encode the listeners: {e}")))?;
        emit(out, &pretty(&value))
    } else {
        let table = output::instances_table(&found, output::now_ms());
        emit(out, table.trim_end())
    }
}

/// Who holds the write lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockState {
    Free,
    Held { waiting: Option<usize> },
}

/// ZooKeeper and etcd keep one child under `<PATH>/lock` per holder or
/// waiter. The memory backend keeps locks outside the key tree, so there a
/// lock attempt that does not wait tells (harmless: it is in-process).
async fn lock_state(env: &Env) -> CliResult<LockState> {
    let children = match env
        .backend
        .list(&env.paths.lock)
        .await
        .map_err(|e| (e.kind(), e))
    {
        Ok(children) => children,
        Err((ErrorKind::NotFound, _)) => Vec::new(),
        Err((_, error)) => return Err(env.cx.backend(error)),
    };
    if !children.is_empty() {
        return Ok(LockState::Held {
            waiting: Some(children.len() - 1),
        });
    }
    if env.backend.name() != "memory" {
        return Ok(LockState::Free);
    }
    let probe = LockOptions::with_timeout(Duration::from_millis(10));
    match env.backend.lock(&env.paths.lock, probe).await {
        Ok(guard) => {
            let _ = guard.release().await;
            Ok(LockState::Free)
        }
        Err(error) if error.kind() == ErrorKind::LockTimeout => {
            Ok(LockState::Held { waiting: None })
        }
        Err(error) => Err(env.cx.backend(error)),
    }
}

fn session_name(state: SessionState) -> &'static str {
    match state {
        SessionState::Connected => "connected",
        SessionState::Suspended => "suspended",
        SessionState::Lost => "lost",
        SessionState::Closed => "closed",
        _ => "unknown",
    }
}

/// `status PATH`: payload version, size and validity, the live instances
/// (each one's applied version, rejection or staleness, and a summary),
/// the lock, and this command's own session (not the instances': each of
/// them has its own, which `status` cannot see).
pub async fn status(global: &Global, args: StatusArgs, out: &mut (dyn Write + Send)) -> CliResult {
    let env = global.open(&args.path).await?;
    let gathered = gather_status(&env).await;
    env.close().await;
    let status = gathered?;
    if env.format == OutputFormat::Json {
        emit(out, &pretty(&status))
    } else {
        emit(out, &status_text(&status))
    }
}

async fn gather_status(env: &Env) -> CliResult<Value> {
    let payload = env
        .bounded("reading the payload", env.backend.get(&env.paths.payload))
        .await?;
    let target = payload.as_ref().map(|found| found.version);
    let instances = match fleet::standings(env, target).await {
        Ok(found) => Some(found),
        Err(_) if !env.backend.capabilities().registrations => None,
        Err(error) => return Err(error),
    };
    let lock = match tokio::time::timeout(env.timeout, lock_state(env)).await {
        Ok(lock) => lock?,
        Err(_) => return Err(env.cx.timed_out("looking at the lock", env.timeout)),
    };
    let session = *env.backend.session().borrow();
    let payload = payload.map(|found| {
        let problem = serde_json::from_slice::<Value>(&found.value)
            .err()
            .map(|e| json_error(&e, "the payload"));
        let mut object = Map::new();
        env.version_fields(&mut object, found.version);
        object.insert("bytes".into(), json!(found.value.len()));
        object.insert("valid_json".into(), json!(problem.is_none()));
        object.insert("problem".into(), json!(problem));
        Value::Object(object)
    });
    let (held, waiting) = match lock {
        LockState::Free => (false, Some(0)),
        LockState::Held { waiting } => (true, waiting),
    };
    let summary = instances.as_deref().map(fleet::summary);
    let listeners = instances.as_ref().map(Vec::len);
    let instances = instances.map(|found| {
        found
            .iter()
            .map(|(info, standing)| fleet::instance_json(info, standing))
            .collect::<Vec<_>>()
    });
    Ok(json!({
        "path": env.paths.root.as_str(),
        "backend": env.backend.name(),
        "url": env.cx.url,
        "payload": payload,
        "listeners": listeners,
        // Each live instance and where it stands against the payload's
        // version (`state`: applied, rejected, stale, not_reporting).
        "instances": instances,
        "summary": summary,
        "lock": {"held": held, "waiting": waiting},
        // This command's own connection: a fresh session (epoch 0 unless it
        // was replaced mid-command), nothing about the instances' sessions.
        "cli_session": {"state": session_name(session.state), "epoch": session.epoch},
    }))
}

fn status_text(status: &Value) -> String {
    let payload = match &status["payload"] {
        Value::Null => "none (create it with `sharedstate init PATH JSON`)".to_owned(),
        p => {
            let validity = match p["problem"].as_str() {
                None => "valid JSON".to_owned(),
                Some(problem) => problem.to_owned(),
            };
            let version = match p["mzxid"].as_str() {
                Some(hex) => format!("version {} (mZxid {hex})", p["version"]),
                None => format!("version {}", p["version"]),
            };
            format!("{version}, {} bytes, {validity}", p["bytes"])
        }
    };
    let listeners = match (&status["listeners"], status["summary"].as_str()) {
        (Value::Null, _) => "unsupported by this backend".to_owned(),
        (n, _) if n.as_u64() == Some(0) => "0".to_owned(),
        (_, Some(summary)) => summary.to_owned(),
        (n, None) => n.to_string(),
    };
    let lock = &status["lock"];
    let lock = match (lock["held"].as_bool(), lock["waiting"].as_u64()) {
        (Some(true), Some(0)) => "held".to_owned(),
        (Some(true), Some(n)) => format!("held ({n} waiting)"),
        (Some(true), None) => "held".to_owned(),
        _ => "free".to_owned(),
    };
    let session = &status["cli_session"];
    let rows = [
        (
            "path",
            status["path"].as_str().unwrap_or_default().to_owned(),
        ),
        (
            "backend",
            format!(
                "{} ({})",
                status["backend"].as_str().unwrap_or_default(),
                status["url"].as_str().unwrap_or_default()
            ),
        ),
        ("payload", payload),
        ("listeners", listeners),
        ("lock", lock),
        (
            "cli session",
            format!(
                "{} (this command's own connection, not the instances')",
                session["state"].as_str().unwrap_or_default(),
            ),
        ),
    ];
    let mut text = rows
        .iter()
        .map(|(name, value)| format!("{:<12} {value}", format!("{name}:")))
        .collect::<Vec<_>>()
        .join("\n");
    let instances = instances_in(status);
    if !instances.is_empty() {
        text.push_str("\n\n");
        text.push_str(&fleet::table(&instances));
    }
    text
}

/// The instances of a gathered status, back from its JSON.
fn instances_in(status: &Value) -> Vec<(sharedstate::InstanceInfo, Standing)> {
    let target = status["payload"]["version"]
        .as_u64()
        .map(sharedstate::Version::new);
    status["instances"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|entry| serde_json::from_value(entry.clone()).ok())
                .map(|info: sharedstate::InstanceInfo| {
                    let standing = Standing::of(&info, target);
                    (info, standing)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fails, ok};
    use crate::errors::Exit;

    #[tokio::test]
    async fn get_prints_pretty_json_or_says_no_payload() {
        let b = ["--backend", "memory://info-get"];
        let err = fails(&[b[0], b[1], "get", "/app"]).await;
        assert_eq!(err.exit, Exit::NotFound);
        assert!(err.message.starts_with("no payload at /app"), "{err}");
        ok(&[b[0], b[1], "init", "/app", r#"{"globs":["a"],"n":1}"#]).await;
        let out = ok(&[b[0], b[1], "get", "/app"]).await;
        assert_eq!(out, "{\n  \"globs\": [\n    \"a\"\n  ],\n  \"n\": 1\n}\n");
        let out = ok(&[b[0], b[1], "get", "/app", "--json"]).await;
        let wrapped: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert!(wrapped["version"].as_u64().is_some(), "{out}");
        assert_eq!(wrapped["path"], "/app");
        assert_eq!(wrapped["value"]["n"], 1);
        assert!(wrapped.get("mzxid").is_none(), "memory has no zxid: {out}");
    }

    #[tokio::test]
    async fn status_and_listeners_on_a_fresh_state() {
        let b = ["--backend", "memory://info-status"];
        let out = ok(&[b[0], b[1], "status", "/s"]).await;
        assert!(out.contains("payload:     none"), "{out}");
        ok(&[b[0], b[1], "init", "/s", "[1,2]"]).await;
        let out = ok(&[b[0], b[1], "status", "/s"]).await;
        assert!(out.contains("bytes, valid JSON"), "{out}");
        assert!(out.contains("listeners:   0"), "{out}");
        assert!(out.contains("lock:        free"), "{out}");
        assert!(
            out.contains(
                "cli session: connected (this command's own connection, not the instances')"
            ),
            "{out}"
        );
        let out = ok(&[b[0], b[1], "status", "/s", "--json"]).await;
        let status: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(status["payload"]["bytes"], 5);
        assert_eq!(status["lock"]["held"], false);
        assert_eq!(status["backend"], "memory");
        assert_eq!(status["cli_session"]["state"], "connected");
        assert!(status.get("session").is_none(), "{out}");
        let out = ok(&[b[0], b[1], "listeners", "/s"]).await;
        assert_eq!(out, "no live instances\n");
        let out = ok(&[b[0], b[1], "listeners", "/s", "--json"]).await;
        assert_eq!(out.trim(), "[]");
    }
}
