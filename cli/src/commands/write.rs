//! Commands that write: `set`, `init`, `patch`.

use std::io::Write;
use std::path::Path;

use serde_json::Value;
use sharedstate::backend::Bytes;
use sharedstate::state::{self, locked_update, Step, UpdateError, UpdateOptions};
use sharedstate::{ErrorKind, PutMode, Version, Versioned};

use super::{encode, parse_json, read_json_arg, read_stdin, Env, Global, Written};
use crate::args::{InitArgs, PatchArgs, SetArgs};
use crate::errors::{state_above, CliError, CliResult, Exit, Suggest};

/// How often a locked write re-reads and retries when a writer that
/// ignores the lock (a conditional `set --version`, `edit`, zkCli) changes
/// the payload between our read and our fenced write.
const LOCKED_ATTEMPTS: u32 = 5;

/// `set PATH JSON|-`.
pub async fn set(global: &Global, args: SetArgs, out: &mut (dyn Write + Send)) -> CliResult {
    let value = read_json_arg(&args.value, "value")?;
    let env = global.open(&args.path).await?;
    let written = match args.version {
        Some(expected) => conditional_set(&env, &value, Version::new(expected)).await,
        None => {
            locked_write(&env, |current| {
                // A payload that is not JSON is simply replaced.
                let same = serde_json::from_slice::<Value>(&current.value)
                    .is_ok_and(|current| current == value);
                Ok((!same).then(|| value.clone()))
            })
            .await
        }
    };
    let result = match written {
        Ok(written) => env.report_and_wait(out, written, args.wait.timeout).await,
        Err(error) => Err(error),
    };
    env.close().await;
    result
}

/// One `put(Update(expected))`: no lock, fails with exit 4 naming the
/// current version when the payload moved on.
async fn conditional_set(env: &Env, value: &Value, expected: Version) -> CliResult<Written> {
    let bytes = encode(value);
    env.check_size(&bytes)?;
    let size = bytes.len();
    let put = env
        .backend
        .put(&env.paths.payload, bytes.into(), PutMode::Update(expected));
    match tokio::time::timeout(env.timeout, put).await {
        Err(_) => Err(env.cx.timed_out("writing the payload", env.timeout)),
        Ok(Ok(version)) => Ok(Written::Changed(version)),
        Ok(Err(error)) if error.kind() == ErrorKind::Conflict => {
            Err(env.cx.conflict(Some(expected), error.current_version()))
        }
        Ok(Err(error)) => Err(env.write_error(error, size)),
    }
}

/// Takes `<PATH>/lock`, reads the payload, lets `change` compute the new
/// value from it (`None`: nothing to write), and writes it with a fenced
/// conditional update that also releases the lock: the engine's locked
/// protocol, from [`sharedstate::state::locked_update`], so the two never
/// interleave.
pub(super) async fn locked_write(
    env: &Env,
    mut change: impl FnMut(&Versioned) -> CliResult<Option<Value>>,
) -> CliResult<Written> {
    let options = UpdateOptions::new(env.lock_timeout, env.timeout, LOCKED_ATTEMPTS);
    // The size of the last payload tried, for the message of a write error.
    let mut size = 0;
    let encoded = |current: &Versioned| -> CliResult<Option<Bytes>> {
        let Some(new) = change(current)? else {
            return Ok(None);
        };
        let bytes = encode(&new);
        env.check_size(&bytes)?;
        size = bytes.len();
        Ok(Some(bytes.into()))
    };
    let written = locked_update(env.backend.as_ref(), &env.paths, &options, encoded).await;
    match written {
        Ok(state::Written::Changed(version)) => Ok(Written::Changed(version)),
        Ok(state::Written::Unchanged(version)) => Ok(Written::Unchanged(version)),
        Err(UpdateError::Missing) => Err(env.cx.no_payload()),
        Err(UpdateError::Refused(error)) => Err(error),
        Err(UpdateError::TimedOut { step, after }) => {
            let what = match step {
                Step::Lock => "taking the lock",
                _ => "writing the payload",
            };
            Err(env.cx.timed_out(what, after))
        }
        Err(UpdateError::LockLost(_)) => Err(CliError::new(
            Exit::Unavailable,
            format!(
                "lost the lock {}/lock before writing (session expired?); nothing was written; retry",
                env.cx.path
            ),
        )),
        Err(UpdateError::Backend {
            step: Step::Write,
            error,
        }) => Err(env.write_error(error, size)),
        Err(UpdateError::Backend { error, .. }) => Err(env.cx.backend(error)),
        Err(UpdateError::GaveUp { attempts }) => Err(CliError::new(
            Exit::Conflict,
            format!(
                "version conflict on {}: other writers changed it {attempts} times while we held the lock; nothing was written",
                env.cx.path
            ),
        )),
        Err(_) => Err(CliError::new(
            Exit::Unavailable,
            format!("the locked write of {} failed", env.cx.path),
        )),
    }
}

/// `init PATH JSON|-`.
pub async fn init(global: &Global, args: InitArgs, out: &mut (dyn Write + Send)) -> CliResult {
    let value = read_json_arg(&args.value, "value")?;
    refuse_reserved_segment(&args.path, &global.suggest)?;
    let env = global.open(&args.path).await?;
    let result = create(&env, &value, args.if_missing).await;
    env.close().await;
    env.report(out, result?, None)
}

/// A `payload` segment would put this state's keys among another state's
/// (`/app/payload/payload`): refused before connecting.
fn refuse_reserved_segment(path: &str, suggest: &Suggest) -> CliResult {
    if !path.split('/').any(|segment| segment == "payload") {
        return Ok(());
    }
    let hint = match state_above(path) {
        Some(state) => format!(
            "; the state itself is {state}, e.g. {}",
            suggest.command(&["get", &state])
        ),
        None => String::new(),
    };
    Err(CliError::usage(format!(
        "{path} has a `payload` segment, the key where a state keeps its JSON: a state cannot live there{hint}"
    )))
}

async fn create(env: &Env, value: &Value, if_missing: bool) -> CliResult<Written> {
    refuse_state_above(env).await?;
    let bytes = encode(value);
    env.check_size(&bytes)?;
    let size = bytes.len();
    let created = env
        .backend
        .put(&env.paths.payload, bytes.into(), PutMode::Create);
    match tokio::time::timeout(env.timeout, created).await {
        Err(_) => Err(env.cx.timed_out("creating the payload", env.timeout)),
        Ok(Ok(version)) => Ok(Written::Created(version)),
        Ok(Err(error)) if error.kind() == ErrorKind::AlreadyExists => {
            let existing = env.payload().await?;
            if if_missing {
                Ok(Written::Unchanged(existing.version))
            } else {
                Err(CliError::new(
                    Exit::Conflict,
                    format!(
                        "{} already has a payload at {}; change it with {}, or pass --if-missing",
                        env.cx.path,
                        env.version_text(existing.version),
                        env.cx.suggest.command(&["set", &env.cx.path, "JSON"]),
                    ),
                ))
            }
        }
        Ok(Err(error)) => Err(env.write_error(error, size)),
    }
}

/// Exit 2 when a state exists above the path (`/app` for `/app/x`): its
/// directory holds only its own keys, and a state nested inside would be
/// listed among them (and, under `lock`, among the lock's contenders).
async fn refuse_state_above(env: &Env) -> CliResult {
    let root = &env.paths.root;
    let mut ancestors = Vec::new();
    let mut at = root.parent();
    while let Some(ancestor) = at {
        if ancestor.as_str() != "/" {
            ancestors.push(ancestor.clone());
        }
        at = ancestor.parent();
    }
    let reads = ancestors.iter().map(|ancestor| async move {
        let payload = ancestor.child("payload").map_err(|e| env.cx.backend(e))?;
        let found = env
            .bounded("looking for a state above", env.backend.get(&payload))
            .await?;
        Ok::<_, CliError>(found.map(|_| ancestor.as_str().to_owned()))
    });
    let found = futures::future::try_join_all(reads).await?;
    // The nearest state above is the one to name.
    match found.into_iter().flatten().next() {
        None => Ok(()),
        Some(state) => Err(CliError::usage(format!(
            "{} is inside the state {state} (it has {state}/payload): a state cannot hold another; choose a path outside it",
            env.cx.path
        ))),
    }
}

/// Which RFC a patch follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchKind {
    /// RFC 7396.
    Merge,
    /// RFC 6902.
    JsonPatch,
}

/// A parsed patch, ready to apply.
#[derive(Debug, Clone)]
enum Patch {
    Merge(Value),
    JsonPatch(json_patch::Patch),
}

impl Patch {
    fn parse(value: Value, kind: PatchKind) -> CliResult<Self> {
        match kind {
            PatchKind::Merge => Ok(Patch::Merge(value)),
            PatchKind::JsonPatch => serde_json::from_value(value)
                .map(Patch::JsonPatch)
                .map_err(|e| CliError::usage(format!("not a JSON Patch (RFC 6902): {e}"))),
        }
    }

    /// The patched document; exit 1 when a JSON Patch does not apply
    /// (missing path, failed `test`): nothing is changed then.
    fn apply(&self, mut doc: Value) -> Result<Value, String> {
        match self {
            Patch::Merge(patch) => {
                json_patch::merge(&mut doc, patch);
                Ok(doc)
            }
            // Not `json_patch::patch`: on a failed patch it undoes the
            // operations already applied, and json-patch 5.0.0 panics
            // (`unreachable!`) when that undo fails (a move of the root into
            // a child, then a failing op: the test below). `doc` is ours, so
            // a failed patch is dropped whole and nothing needs undoing.
            Patch::JsonPatch(patch) => json_patch::patch_unsafe(&mut doc, patch)
                .map(|()| doc)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Object: merge patch; array: JSON Patch; anything else only with an
/// explicit --merge (RFC 7396 then replaces the whole payload with it).
fn patch_kind(args: &PatchArgs, value: &Value, suggest: &Suggest) -> CliResult<PatchKind> {
    if args.json_patch {
        return Ok(PatchKind::JsonPatch);
    }
    if args.merge || value.is_object() {
        return Ok(PatchKind::Merge);
    }
    if value.is_array() {
        return Ok(PatchKind::JsonPatch);
    }
    let what = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        _ => "a string",
    };
    let text = value.to_string();
    Err(CliError::usage(format!(
        "the patch is {what}, neither a merge patch (a JSON object) nor a JSON Patch (an array); nothing was written. To replace the whole payload, use {}, or pass --merge",
        suggest.command(&["set", &args.path, &text]),
    )))
}

fn read_patch(args: &PatchArgs) -> CliResult<Value> {
    match (&args.patch, &args.file) {
        (_, Some(file)) => {
            let text = std::fs::read_to_string(file).map_err(|e| {
                CliError::usage(format!(
                    "cannot read the patch file {}: {e}",
                    file.display()
                ))
            })?;
            parse_json(&text, &Path::new(file).display().to_string())
        }
        (Some(inline), None) if inline != "-" => read_json_arg(inline, "patch"),
        _ => parse_json(&read_stdin("patch")?, "stdin"),
    }
}

/// `patch PATH [PATCH|-] [--file FILE] [--merge|--json-patch]`.
pub async fn patch(global: &Global, args: PatchArgs, out: &mut (dyn Write + Send)) -> CliResult {
    let value = read_patch(&args)?;
    let patch = Patch::parse(value.clone(), patch_kind(&args, &value, &global.suggest)?)?;
    let env = global.open(&args.path).await?;
    let written = locked_write(&env, |current| {
        let doc = env.decode(current)?;
        let patched = patch.apply(doc.clone()).map_err(|e| {
            CliError::failure(format!(
                "the patch does not apply to {} at version {}: {e}; nothing was written",
                env.cx.path, current.version
            ))
        })?;
        Ok((patched != doc).then_some(patched))
    })
    .await;
    let result = match written {
        Ok(written) => env.report_and_wait(out, written, args.wait.timeout).await,
        Err(error) => Err(error),
    };
    env.close().await;
    result
}

#[cfg(test)]
mod json_patch_undo_bug {
    use super::Patch;
    use serde_json::json;

    /// The input the property test found (4,096 cases): a move of "/" to
    /// the root, then an add from the root.
    fn found() -> (serde_json::Value, json_patch::Patch) {
        let doc = json!({"": null});
        let ops = json!([
            {"op": "move", "from": "/", "path": ""},
            {"op": "add", "path": "/", "value": null}
        ]);
        (doc, serde_json::from_value(ops).expect("a JSON Patch"))
    }

    /// The dependency's bug: `json_patch::patch` panics undoing the patch.
    /// When this starts failing, json-patch fixed it.
    #[test]
    fn json_patch_5_panics_undoing_a_failed_patch() {
        let (mut doc, patch) = found();
        let outcome = std::panic::catch_unwind(move || json_patch::patch(&mut doc, &patch));
        assert!(outcome.is_err(), "json_patch::patch no longer panics here");
    }

    /// Ours refuses it (exit 1, nothing written), without a panic.
    #[test]
    fn the_command_refuses_it_cleanly() {
        let (doc, patch) = found();
        let message = Patch::JsonPatch(patch)
            .apply(doc)
            .expect_err("the add cannot apply once the root was replaced by null");
        assert!(
            message.contains("/1"),
            "names the failing operation: {message}"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::{Patch, PatchKind};

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z/~-]{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-c/~0-9-]{0,2}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// JSON Patch operations, well-formed or not, on paths that may or may
    /// not exist.
    fn operations() -> impl Strategy<Value = Value> {
        let op = (
            "(add|remove|replace|move|copy|test|bogus)",
            "(/[a-c0-9~/-]{0,2}){0,3}",
            "(/[a-c0-9-]{0,2}){0,2}",
            json(),
        )
            .prop_map(|(op, path, from, value)| {
                json!({"op": op, "path": path, "from": from, "value": value})
            });
        prop::collection::vec(op, 0..5).prop_map(Value::Array)
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// RFC 7396: applying a merge patch twice changes nothing more.
        #[test]
        fn prop_merge_patches_apply_and_are_idempotent(doc in json(), patch in json()) {
            let patch = Patch::parse(patch, PatchKind::Merge).expect("any JSON is a merge patch");
            let once = patch.apply(doc).expect("merge patches always apply");
            let twice = patch.apply(once.clone()).expect("and again");
            prop_assert_eq!(once, twice);
        }

        /// A JSON Patch parses or is refused, applies or fails as a whole;
        /// never a panic.
        #[test]
        fn prop_json_patches_apply_or_fail_cleanly(doc in json(), ops in operations()) {
            if let Ok(patch) = Patch::parse(ops, PatchKind::JsonPatch) {
                match patch.apply(doc.clone()) {
                    Ok(patched) => {
                        // The result is a document the engine can store.
                        serde_json::to_vec(&patched).expect("serialises");
                    }
                    Err(message) => prop_assert!(!message.is_empty()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fails, ok};
    use crate::errors::Exit;

    fn version_of(line: &str) -> u64 {
        line.trim()
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no version in {line:?}"))
    }

    #[tokio::test]
    async fn init_set_and_stale_versions() {
        let b = ["--backend", "memory://write-set"];
        let created = ok(&[b[0], b[1], "init", "/w", r#"{"n":1}"#]).await;
        assert!(created.starts_with("/w: created at version "), "{created}");
        let v1 = version_of(&created);
        let err = fails(&[b[0], b[1], "init", "/w", "{}"]).await;
        assert_eq!(err.exit, Exit::Conflict);
        assert!(err.message.contains("already has a payload"), "{err}");
        let same = ok(&[b[0], b[1], "init", "/w", "{}", "--if-missing"]).await;
        assert_eq!(same, format!("/w: unchanged at version {v1}\n"));

        let set = ok(&[b[0], b[1], "set", "/w", r#"{"n":2}"#]).await;
        let v2 = version_of(&set);
        assert!(v2 > v1);
        let unchanged = ok(&[b[0], b[1], "set", "/w", r#"{"n":2}"#]).await;
        assert_eq!(unchanged, format!("/w: unchanged at version {v2}\n"));

        let stale = v1.to_string();
        let err = fails(&[b[0], b[1], "set", "/w", "{}", "--version", &stale]).await;
        assert_eq!(err.exit, Exit::Conflict);
        assert_eq!(
            err.message,
            format!(
                "version conflict on /w: expected version {v1}, but the current version is {v2}"
            )
        );
        let current = v2.to_string();
        let set = ok(&[b[0], b[1], "set", "/w", r#"{"n":3}"#, "--version", &current]).await;
        assert!(version_of(&set) > v2);
        let out = ok(&[b[0], b[1], "get", "/w"]).await;
        assert_eq!(out, "{\n  \"n\": 3\n}\n");
    }

    #[tokio::test]
    async fn writes_to_a_missing_payload_say_no_payload() {
        let b = ["--backend", "memory://write-missing"];
        let err = fails(&[b[0], b[1], "set", "/none", "1"]).await;
        assert_eq!(err.exit, Exit::NotFound);
        let err = fails(&[b[0], b[1], "set", "/none", "1", "--version", "3"]).await;
        assert_eq!(err.exit, Exit::NotFound);
        let err = fails(&[b[0], b[1], "patch", "/none", "{}"]).await;
        assert_eq!(err.exit, Exit::NotFound);
    }

    #[tokio::test]
    async fn bad_json_is_a_usage_error_with_position() {
        let b = ["--backend", "memory://write-bad"];
        let err = fails(&[b[0], b[1], "set", "/w", "{\"a\": tru}"]).await;
        assert_eq!(err.exit, Exit::Usage);
        assert_eq!(
            err.message,
            "invalid JSON in the value argument at line 1, column 10: expected ident"
        );
    }

    #[tokio::test]
    async fn merge_and_json_patches() {
        let b = ["--backend", "memory://write-patch"];
        ok(&[
            b[0],
            b[1],
            "init",
            "/p",
            r#"{"globs":["a"],"n":1,"x":true}"#,
        ])
        .await;
        ok(&[b[0], b[1], "patch", "/p", r#"{"n":2,"x":null}"#]).await;
        let out = ok(&[b[0], b[1], "get", "/p"]).await;
        let doc: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(doc, serde_json::json!({"globs": ["a"], "n": 2}));

        let ops =
            r#"[{"op":"add","path":"/globs/-","value":"b"},{"op":"test","path":"/n","value":2}]"#;
        ok(&[b[0], b[1], "patch", "/p", ops]).await;
        let out = ok(&[b[0], b[1], "get", "/p"]).await;
        let doc: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(doc, serde_json::json!({"globs": ["a", "b"], "n": 2}));

        let failing =
            r#"[{"op":"add","path":"/globs/-","value":"c"},{"op":"test","path":"/n","value":9}]"#;
        let err = fails(&[b[0], b[1], "patch", "/p", failing]).await;
        assert_eq!(err.exit, Exit::Failure);
        assert!(err.message.contains("the patch does not apply"), "{err}");
        let out = ok(&[b[0], b[1], "get", "/p"]).await;
        assert!(
            !out.contains("\"c\""),
            "a failed patch changed nothing: {out}"
        );

        let err = fails(&[b[0], b[1], "patch", "/p", "--json-patch", r#"{"op":"x"}"#]).await;
        assert_eq!(err.exit, Exit::Usage);
        assert!(err.message.starts_with("not a JSON Patch"), "{err}");

        // --merge with an array replaces the document (RFC 7396).
        ok(&[b[0], b[1], "patch", "/p", "--merge", "[1]"]).await;
        assert_eq!(ok(&[b[0], b[1], "get", "/p"]).await, "[\n  1\n]\n");
        let noop = ok(&[b[0], b[1], "patch", "/p", "--merge", "[1]"]).await;
        assert!(noop.contains("unchanged"), "{noop}");
    }

    #[tokio::test]
    async fn patch_from_a_file() {
        let b = ["--backend", "memory://write-patch-file"];
        ok(&[b[0], b[1], "init", "/f", r#"{"a":1}"#]).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("p.json");
        std::fs::write(&file, "{\"b\": 2}").expect("write");
        let file = file.to_string_lossy().into_owned();
        ok(&[b[0], b[1], "patch", "/f", "--file", &file]).await;
        assert_eq!(
            ok(&[b[0], b[1], "get", "/f"]).await,
            "{\n  \"a\": 1,\n  \"b\": 2\n}\n"
        );
        std::fs::write(dir.path().join("p.json"), "{\"b\": }").expect("write");
        let err = fails(&[b[0], b[1], "patch", "/f", "--file", &file]).await;
        assert_eq!(err.exit, Exit::Usage);
        assert!(
            err.message.contains("p.json at line 1, column 7"),
            "{}",
            err.message
        );
    }
}
