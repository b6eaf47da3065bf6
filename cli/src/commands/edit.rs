//! `edit PATH`: the payload in an editor, written back with a conditional
//! update on the version that was opened; on a concurrent change the user
//! is told, and the editor re-opens on the new value.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sharedstate::{ErrorKind, PutMode, Version, Versioned};

use super::info::pretty;
use super::{encode, Env, Global, Written};
use crate::args::EditArgs;
use crate::errors::{json_error, CliError, CliResult, Exit};

/// `$VISUAL`, then `$EDITOR`, then `vi`.
fn default_editor() -> String {
    ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|value| !value.trim().is_empty())
        .unwrap_or_else(|| "vi".to_owned())
}

/// Runs `editor FILE` through the shell (so `EDITOR="code --wait"` works),
/// with the terminal attached, and waits for it.
async fn run_editor(editor: &str, file: &Path) -> CliResult {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sharedstate-edit")
        .arg(file)
        .status()
        .await
        .map_err(|e| CliError::failure(format!("cannot start the editor {editor:?}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(CliError::failure(format!(
            "the editor {editor:?} failed ({status}); nothing was written"
        )))
    }
}

/// The text to put in front of the user, kept in a temporary file.
struct Draft {
    file: tempfile::NamedTempFile,
}

impl Draft {
    fn new(path: &str, text: &str) -> CliResult<Self> {
        let name = path.trim_start_matches('/').replace('/', "-");
        let mut file = tempfile::Builder::new()
            .prefix(&format!("sharedstate-{name}-"))
            .suffix(".json")
            .tempfile()
            .map_err(|e| CliError::failure(format!("cannot create a temporary file: {e}")))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|e| CliError::failure(format!("cannot write a temporary file: {e}")))?;
        Ok(Draft { file })
    }

    fn read(&self) -> CliResult<String> {
        std::fs::read_to_string(self.file.path()).map_err(|e| {
            CliError::failure(format!(
                "cannot read back {}: {e}",
                self.file.path().display()
            ))
        })
    }

    /// Keeps the file after exit and returns its path.
    fn keep(self) -> Option<PathBuf> {
        self.file.keep().ok().map(|(_, path)| path)
    }
}

/// What the user's edit turned out to be.
enum Outcome {
    /// Valid JSON to write.
    Value(Value),
    /// Invalid JSON: reopen with this text.
    Invalid(String),
}

fn judge(text: &str) -> CliResult<Outcome> {
    if text.trim().is_empty() {
        return Err(CliError::failure(
            "the file was emptied; nothing was written",
        ));
    }
    match serde_json::from_str(text) {
        Ok(value) => Ok(Outcome::Value(value)),
        Err(e) => {
            eprintln!("{}; re-opening the editor", json_error(&e, "your edit"));
            Ok(Outcome::Invalid(text.to_owned()))
        }
    }
}

/// `edit PATH`.
pub async fn edit(global: &Global, args: EditArgs, out: &mut (dyn Write + Send)) -> CliResult {
    let editor = args.editor.clone().unwrap_or_else(default_editor);
    let env = global.open(&args.path).await?;
    let result = edit_loop(&env, &editor, args.max_attempts).await;
    env.close().await;
    env.report(out, result?)
}

async fn edit_loop(env: &Env, editor: &str, max_attempts: u32) -> CliResult<Written> {
    let mut base = env.payload().await?;
    let (mut base_value, mut text) = starting_point(env, &base);
    let mut last_was_invalid = false;
    for _ in 0..max_attempts {
        let draft = Draft::new(&env.cx.path, &text)?;
        run_editor(editor, draft.file.path()).await?;
        let edited = draft.read()?;
        let value = match judge(&edited)? {
            Outcome::Value(value) => value,
            Outcome::Invalid(edited) => {
                text = edited;
                last_was_invalid = true;
                continue;
            }
        };
        last_was_invalid = false;
        if base_value.as_ref() == Some(&value) {
            return Ok(Written::Unchanged(base.version));
        }
        match conditional_put(env, &value, base.version).await? {
            Ok(version) => return Ok(Written::Changed(version)),
            Err(Some(current)) => {
                let saved = draft
                    .keep()
                    .map(|path| format!("your edit is saved in {}; ", path.display()))
                    .unwrap_or_default();
                eprintln!(
                    "{} changed while you were editing (version {} -> {current}); {saved}re-opening the editor on the new value",
                    env.cx.path, base.version
                );
                base = env.payload().await?;
                (base_value, text) = starting_point(env, &base);
            }
            Err(None) => return Err(env.cx.no_payload()),
        }
    }
    let (exit, why) = if last_was_invalid {
        (Exit::Usage, "the edit is still not valid JSON")
    } else {
        (Exit::Conflict, "the payload kept changing while you edited")
    };
    Err(CliError::new(
        exit,
        format!(
            "gave up editing {} after {max_attempts} attempts: {why}; nothing was written",
            env.cx.path
        ),
    ))
}

/// The value and the text to edit. A payload that is not JSON (an outside
/// writer's mistake) is opened as it is, so `edit` can repair it.
fn starting_point(env: &Env, found: &Versioned) -> (Option<Value>, String) {
    match serde_json::from_slice::<Value>(&found.value) {
        Ok(value) => {
            let text = format!("{}\n", pretty(&value));
            (Some(value), text)
        }
        Err(error) => {
            let what = format!("the payload of {} (version {})", env.cx.path, found.version);
            eprintln!("{}; opening it as it is", json_error(&error, &what));
            (None, String::from_utf8_lossy(&found.value).into_owned())
        }
    }
}

/// `Ok(Ok(new))`, `Ok(Err(Some(current)))` on a conflict, `Ok(Err(None))`
/// when the payload is gone; other failures end the command.
async fn conditional_put(
    env: &Env,
    value: &Value,
    expected: Version,
) -> CliResult<Result<Version, Option<Version>>> {
    let put = env.backend.put(
        &env.paths.payload,
        encode(value).into(),
        PutMode::Update(expected),
    );
    match tokio::time::timeout(env.timeout, put).await {
        Ok(Ok(version)) => Ok(Ok(version)),
        Ok(Err(error)) if error.kind() == ErrorKind::Conflict => Ok(Err(error.current_version())),
        Ok(Err(error)) => Err(env.cx.backend(error)),
        Err(_) => Err(env.cx.timed_out("writing the payload", env.timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fails, ok};
    use crate::errors::Exit;

    #[tokio::test]
    async fn edits_are_written_and_no_ops_are_not() {
        let b = ["--backend", "memory://edit-basic"];
        ok(&[b[0], b[1], "init", "/e", r#"{"n":1}"#]).await;
        let out = ok(&[b[0], b[1], "edit", "/e", "--editor", "sed -i s/1/2/"]).await;
        assert!(out.starts_with("/e: version "), "{out}");
        assert_eq!(ok(&[b[0], b[1], "get", "/e"]).await, "{\n  \"n\": 2\n}\n");
        let out = ok(&[b[0], b[1], "edit", "/e", "--editor", "true"]).await;
        assert!(out.contains("unchanged"), "{out}");
    }

    #[tokio::test]
    async fn failing_editors_and_emptied_files_write_nothing() {
        let b = ["--backend", "memory://edit-fail"];
        ok(&[b[0], b[1], "init", "/e", "1"]).await;
        let err = fails(&[b[0], b[1], "edit", "/e", "--editor", "false"]).await;
        assert_eq!(err.exit, Exit::Failure);
        assert!(err.message.contains("nothing was written"), "{err}");
        let err = fails(&[b[0], b[1], "edit", "/e", "--editor", "truncate -s0"]).await;
        assert!(err.message.contains("emptied"), "{err}");
        let err = fails(&[b[0], b[1], "edit", "/missing", "--editor", "true"]).await;
        assert_eq!(err.exit, Exit::NotFound);
    }

    #[tokio::test]
    async fn invalid_json_reopens_the_editor_with_the_users_text() {
        let b = ["--backend", "memory://edit-invalid"];
        ok(&[b[0], b[1], "init", "/e", r#"{"n":1}"#]).await;
        // First round breaks the JSON, second round (seeing the broken
        // text again) fixes it.
        let editor = "sh -c 'if grep -q BROKEN \"$0\"; then echo 7 > \"$0\"; else echo BROKEN >> \"$0\"; fi'";
        ok(&[b[0], b[1], "edit", "/e", "--editor", editor]).await;
        assert_eq!(ok(&[b[0], b[1], "get", "/e"]).await, "7\n");
        // A payload that is not JSON opens as it is, so it can be repaired.
        let backend = sharedstate::connect(b[1]).await.expect("memory");
        let key = sharedstate::Key::new("/e/payload").expect("key");
        backend
            .put(
                &key,
                sharedstate::Bytes::from_static(b"{n: 1"),
                sharedstate::PutMode::Overwrite,
            )
            .await
            .expect("outside write");
        let fix = "sh -c 'grep -q \"{n: 1\" \"$0\" && echo 7 > \"$0\"'";
        ok(&[b[0], b[1], "edit", "/e", "--editor", fix]).await;
        assert_eq!(ok(&[b[0], b[1], "get", "/e"]).await, "7\n");
        let err = fails(&[
            b[0],
            b[1],
            "edit",
            "/e",
            "--editor",
            "sh -c 'echo nope > \"$0\"'",
            "--max-attempts",
            "2",
        ])
        .await;
        assert_eq!(err.exit, Exit::Usage);
        assert!(err.message.contains("after 2 attempts"), "{err}");
    }
}
