//! `edit PATH`: the payload in an editor, written back with a conditional
//! update on the version that was opened; on a concurrent change the user
//! is told, and the editor re-opens on the new value.

use std::io::Write;
use std::path::Path;

use serde_json::Value;
use sharedstate::{ErrorKind, PutMode, Version, Versioned};

use super::info::pretty;
use super::{encode, Env, Global, Written};
use crate::args::EditArgs;
use crate::errors::{json_error, CliError, CliResult, Exit};
use crate::interrupt::{killed_by, Interrupted, Interrupts, SIGINT};

/// `$VISUAL`, then `$EDITOR`, then `vi`.
fn default_editor() -> String {
    ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|value| !value.trim().is_empty())
        .unwrap_or_else(|| "vi".to_owned())
}

/// Runs `editor FILE` through the shell (so `EDITOR="code --wait"` works),
/// with the terminal attached, and waits for it. Signals are not taken from
/// the editor meanwhile: Ctrl-C in a terminal reaches the editor too, and
/// editors such as vi use it themselves. An editor that a signal ended
/// (or whose shell reports 128 + N) ends the edit.
async fn run_editor(editor: &str, file: &Path) -> CliResult {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sharedstate-edit")
        .arg(file)
        .status()
        .await
        .map_err(|e| CliError::failure(format!("cannot start the editor {editor:?}: {e}")))?;
    if let Some(signal) = killed_by(status).or_else(|| {
        // sh reports a child killed by SIGINT, SIGTERM, SIGHUP as 128 + N.
        status.code().and_then(|code| {
            [130, 143, 129]
                .contains(&code)
                .then(|| Interrupted((code - 128) as u8))
        })
    }) {
        return Err(interrupted(signal));
    }
    if status.success() {
        Ok(())
    } else {
        Err(CliError::failure(format!(
            "the editor {editor:?} failed ({status}); nothing was written"
        )))
    }
}

fn interrupted(signal: Interrupted) -> CliError {
    signal.exit_with("interrupted; nothing was written")
}

/// The text put in front of the user, in a temporary file that is removed
/// when this value drops (on every way out, Ctrl-C included, since the
/// signals are handled rather than killing the process).
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
}

/// What the user's edit turned out to be.
enum Outcome {
    /// The text is the payload's, as it was opened: nothing to write.
    Untouched,
    /// Valid JSON to write.
    Value(Value),
    /// Invalid JSON: reopen with this text.
    Invalid(String),
}

/// `opened`: the payload's text as first put in front of the user (not
/// the user's own invalid text that a re-opened editor shows).
fn judge(opened: &str, text: &str) -> CliResult<Outcome> {
    if text == opened {
        return Ok(Outcome::Untouched);
    }
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
    let mut interrupts = Interrupts::install()?;
    let env = tokio::select! {
        env = global.open(&args.path) => env?,
        signal = interrupts.next() => return Err(interrupted(signal)),
    };
    let mut session = Editing {
        env: &env,
        editor,
        lossy: args.lossy,
        interrupts,
        saved: Vec::new(),
    };
    let result = session.run(args.max_attempts).await;
    // The drafts kept after conflicts go now (the last one stays only when
    // the command gave up on conflicts, and says where it is).
    drop(session);
    let result = match result {
        Ok(written) => env.report_and_wait(out, written, args.wait.timeout).await,
        Err(error) => Err(error),
    };
    env.close().await;
    result
}

/// One `edit` command's state.
struct Editing<'a> {
    env: &'a Env,
    editor: String,
    lossy: bool,
    interrupts: Interrupts,
    /// Edits that lost a conflict, kept for the user until the end.
    saved: Vec<tempfile::TempPath>,
}

impl Editing<'_> {
    /// Runs `step` unless a signal comes first.
    async fn unless_interrupted<T>(
        &mut self,
        step: impl std::future::Future<Output = CliResult<T>>,
    ) -> CliResult<T> {
        tokio::select! {
            result = step => result,
            signal = self.interrupts.next() => Err(interrupted(signal)),
        }
    }

    /// A SIGTERM or SIGHUP that came while the editor ran ends the edit;
    /// a Ctrl-C that the editor survived was the editor's.
    fn after_editor(&mut self) -> CliResult {
        while let Some(signal) = self.interrupts.pending() {
            if signal.0 != SIGINT {
                return Err(interrupted(signal));
            }
        }
        Ok(())
    }

    async fn run(&mut self, max_attempts: u32) -> CliResult<Written> {
        let env = self.env;
        let mut base = self.unless_interrupted(env.payload()).await?;
        let (mut base_value, mut opened) = starting_point(env, &base, self.lossy)?;
        let mut text = opened.clone();
        let mut last_was_invalid = false;
        for _ in 0..max_attempts {
            let draft = Draft::new(&env.cx.path, &text)?;
            run_editor(&self.editor, draft.file.path()).await?;
            self.after_editor()?;
            let edited = draft.read()?;
            let value = match judge(&opened, &edited)? {
                Outcome::Untouched => return Ok(Written::Unchanged(base.version)),
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
            // Not cut short by a signal: a write in flight may land anyway,
            // and the user is told what happened to it either way.
            match conditional_put(env, &value, base.version).await? {
                Ok(version) => return Ok(Written::Changed(version)),
                Err(Some(current)) => {
                    let kept = draft.file.into_temp_path();
                    eprintln!(
                        "{} changed while you were editing (version {} -> {current}); your edit is saved in {} until this command ends; re-opening the editor on the new value",
                        env.cx.path,
                        base.version,
                        kept.display()
                    );
                    self.saved.push(kept);
                    base = self.unless_interrupted(env.payload()).await?;
                    (base_value, opened) = starting_point(env, &base, self.lossy)?;
                    text = opened.clone();
                }
                Err(None) => return Err(env.cx.no_payload()),
            }
        }
        if last_was_invalid {
            return Err(self.gave_up(
                max_attempts,
                Exit::Usage,
                "the edit is still not valid JSON",
            ));
        }
        let mut error = self.gave_up(
            max_attempts,
            Exit::Conflict,
            "the payload kept changing while you edited",
        );
        if let Some(last) = self.saved.pop() {
            if let Ok(path) = last.keep() {
                error
                    .message
                    .push_str(&format!("; your last edit is in {}", path.display()));
            }
        }
        Err(error)
    }

    fn gave_up(&self, attempts: u32, exit: Exit, why: &str) -> CliError {
        CliError::new(
            exit,
            format!(
                "gave up editing {} after {attempts} attempts: {why}; nothing was written",
                self.env.cx.path
            ),
        )
    }
}

/// The value and the text to edit. A payload that is not JSON (an outside
/// writer's mistake) is opened as it is, so `edit` can repair it; one that
/// is not even UTF-8 only with --lossy, since the editor cannot show its
/// bytes and saving would replace them.
fn starting_point(env: &Env, found: &Versioned, lossy: bool) -> CliResult<(Option<Value>, String)> {
    let what = format!("the payload of {} (version {})", env.cx.path, found.version);
    if let Err(e) = std::str::from_utf8(&found.value) {
        let at = e.valid_up_to();
        let byte = found.value.get(at).copied().unwrap_or_default();
        let problem = format!("{what} is not UTF-8 text (byte {byte:#04x} at offset {at})");
        if !lossy {
            return Err(CliError::failure(format!(
                "{problem}, so an editor cannot show it as it is; nothing was written. Replace it with {}, or pass --lossy to edit it with every invalid byte shown, and saved, as U+FFFD",
                env.cx.suggest.command(&["set", &env.cx.path, "JSON"])
            )));
        }
        eprintln!(
            "{problem}; --lossy: invalid bytes are shown as U+FFFD, and saved as U+FFFD if you change anything"
        );
        return Ok((None, String::from_utf8_lossy(&found.value).into_owned()));
    }
    match serde_json::from_slice::<Value>(&found.value) {
        Ok(value) => {
            let text = format!("{}\n", pretty(&value));
            Ok((Some(value), text))
        }
        Err(error) => {
            eprintln!("{}; opening it as it is", json_error(&error, &what));
            Ok((None, String::from_utf8_lossy(&found.value).into_owned()))
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
    let bytes = encode(value);
    env.check_size(&bytes)?;
    let size = bytes.len();
    let put = env
        .backend
        .put(&env.paths.payload, bytes.into(), PutMode::Update(expected));
    match tokio::time::timeout(env.timeout, put).await {
        Ok(Ok(version)) => Ok(Ok(version)),
        Ok(Err(error)) if error.kind() == ErrorKind::Conflict => Ok(Err(error.current_version())),
        Ok(Err(error)) => Err(env.write_error(error, size)),
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
                sharedstate::backend::Bytes::from_static(b"{n: 1"),
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
