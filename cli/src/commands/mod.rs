//! The commands, and what they share: connecting with a time bound, the
//! keys under a state's path, reading JSON input, writing output.

mod edit;
mod info;
mod watch;
mod write;

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sharedstate::{CoordinationBackend, Key, Version, Versioned};

use crate::args::{Cli, Command};
use crate::errors::{json_error, parse_json, CliError, CliResult, Context, Exit};

/// Runs the parsed command line, writing results to `out` (stdout) and
/// progress notices to stderr.
///
/// # Errors
///
/// The command's failure, as one line and an exit code.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> CliResult {
    let global = Global {
        url: cli.backend,
        timeout: cli.timeout,
        lock_timeout: cli.lock_timeout,
    };
    match cli.command {
        Command::Get(args) => info::get(&global, args, out).await,
        Command::Status(args) => info::status(&global, args, out).await,
        Command::Listeners(args) => info::listeners(&global, args, out).await,
        Command::Set(args) => write::set(&global, args, out).await,
        Command::Init(args) => write::init(&global, args, out).await,
        Command::Patch(args) => write::patch(&global, args, out).await,
        Command::Edit(args) => edit::edit(&global, args, out).await,
        Command::Watch(args) => watch::watch(&global, args, out).await,
    }
}

/// Options every command shares.
#[derive(Debug, Clone)]
pub struct Global {
    url: String,
    timeout: Duration,
    lock_timeout: Duration,
}

/// The keys under a state's path (the engine's layout).
#[derive(Debug, Clone)]
pub struct Paths {
    root: Key,
    payload: Key,
    lock: Key,
    listeners: Key,
}

impl Paths {
    fn new(cx: &Context) -> CliResult<Self> {
        let invalid = |e: sharedstate::Error| cx.backend(e);
        let root = Key::new(cx.path.as_str()).map_err(invalid)?;
        Ok(Paths {
            payload: root.child("payload").map_err(invalid)?,
            lock: root.child("lock").map_err(invalid)?,
            listeners: root.child("listeners").map_err(invalid)?,
            root,
        })
    }
}

/// A connected backend and the state path a command works on.
#[derive(Debug)]
pub struct Env {
    backend: Arc<dyn CoordinationBackend>,
    cx: Context,
    paths: Paths,
    timeout: Duration,
    lock_timeout: Duration,
}

impl Global {
    fn context(&self, path: &str) -> Context {
        Context {
            url: self.url.clone(),
            path: path.to_owned(),
        }
    }

    /// Validates `path` and connects, within `--timeout`.
    async fn open(&self, path: &str) -> CliResult<Env> {
        let cx = self.context(path);
        let paths = Paths::new(&cx)?;
        let backend =
            match tokio::time::timeout(self.timeout, sharedstate::connect(&self.url)).await {
                Err(_) => return Err(cx.timed_out("connecting", self.timeout)),
                Ok(Err(error)) => return Err(cx.backend(error)),
                Ok(Ok(backend)) => backend,
            };
        Ok(Env {
            backend,
            cx,
            paths,
            timeout: self.timeout,
            lock_timeout: self.lock_timeout,
        })
    }
}

impl Env {
    /// Runs one backend call within `--timeout`.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = sharedstate::Result<T>>,
    ) -> CliResult<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(self.cx.timed_out(what, self.timeout)),
            Ok(result) => result.map_err(|e| self.cx.backend(e)),
        }
    }

    /// The payload, or "no payload" (exit 3).
    async fn payload(&self) -> CliResult<Versioned> {
        self.bounded("reading the payload", self.backend.get(&self.paths.payload))
            .await?
            .ok_or_else(|| self.cx.no_payload())
    }

    /// Decodes a payload read from the service (exit 1 when it is not JSON).
    fn decode(&self, found: &Versioned) -> CliResult<Value> {
        serde_json::from_slice(&found.value).map_err(|e| {
            CliError::failure(format!(
                "{}; fix it with `sharedstate set {} JSON`",
                json_error(
                    &e,
                    &format!(
                        "the payload of {} (version {})",
                        self.cx.path, found.version
                    )
                ),
                self.cx.path
            ))
        })
    }

    /// Ends the session (so locks and registrations go now, not at
    /// session expiry); failures only matter to logs.
    async fn close(&self) {
        match tokio::time::timeout(Duration::from_secs(5), self.backend.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "closing the backend failed"),
            Err(_) => tracing::debug!("closing the backend timed out"),
        }
    }

    /// `PATH: version N` or `PATH: unchanged at version N`.
    fn report(&self, out: &mut (dyn Write + Send), written: Written) -> CliResult {
        let line = match written {
            Written::Changed(version) => format!("{}: version {version}", self.cx.path),
            Written::Created(version) => format!("{}: created at version {version}", self.cx.path),
            Written::Unchanged(version) => {
                format!("{}: unchanged at version {version}", self.cx.path)
            }
        };
        emit(out, &line)
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Changed(Version),
    Created(Version),
    Unchanged(Version),
}

/// Writes one line and flushes it.
///
/// # Errors
///
/// Exit 1 on a write error; a closed pipe (`| head`) is [`Exit::Quiet`].
pub fn emit(out: &mut (dyn Write + Send), line: &str) -> CliResult {
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| output_error(&e))
}

fn output_error(error: &std::io::Error) -> CliError {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::new(Exit::Quiet, "")
    } else {
        CliError::failure(format!("cannot write the output: {error}"))
    }
}

/// Reads JSON from an argument, or from stdin for `-`.
fn read_json_arg(arg: &str, what: &str) -> CliResult<Value> {
    if arg == "-" {
        let text = read_stdin(what)?;
        parse_json(&text, "stdin")
    } else {
        parse_json(arg, &format!("the {what} argument"))
    }
}

fn read_stdin(what: &str) -> CliResult<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("reading the {what} from stdin (end with Ctrl-D)");
    }
    std::io::read_to_string(stdin)
        .map_err(|e| CliError::usage(format!("cannot read the {what} from stdin: {e}")))
}

/// Compact JSON, as the engine writes it.
fn encode(value: &Value) -> Vec<u8> {
    // Serialising a `Value` to a Vec cannot fail (string keys only).
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Runs a command line in this process; `memory://NAME` clusters are
    /// shared by name, so consecutive runs see each other's writes. The
    /// line is parsed before the future is returned, so it can be spawned.
    pub(crate) fn run_line(
        args: &[&str],
    ) -> impl std::future::Future<Output = (CliResult, String)> + Send + 'static {
        let cli = Cli::try_parse_from(std::iter::once("sharedstate").chain(args.iter().copied()))
            .expect("the test's command line parses");
        async move {
            let mut out = anstream::StripStream::new(Vec::new());
            let result = run(cli, &mut out).await;
            let text = String::from_utf8(out.into_inner()).expect("utf-8 output");
            (result, text)
        }
    }

    pub(crate) async fn ok(args: &[&str]) -> String {
        let (result, out) = run_line(args).await;
        if let Err(error) = result {
            panic!("{args:?} failed: {error:?}");
        }
        out
    }

    pub(crate) async fn fails(args: &[&str]) -> CliError {
        let (result, out) = run_line(args).await;
        result.expect_err(&format!("{args:?} should fail, printed {out:?}"))
    }

    #[tokio::test]
    async fn invalid_paths_are_usage_errors() {
        let err = fails(&["--backend", "memory://cmd-paths", "get", "relative"]).await;
        assert_eq!(err.exit, Exit::Usage);
        assert!(err.message.contains("invalid path \"relative\""), "{err}");
    }

    #[tokio::test]
    async fn unknown_schemes_and_disabled_backends_say_so() {
        let err = fails(&["--backend", "redis://h:1", "get", "/a"]).await;
        assert_eq!(err.exit, Exit::Usage);
        assert!(err.message.contains("redis://h:1"), "{err}");
    }

    #[test]
    fn broken_pipes_are_quiet() {
        let err = output_error(&std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(err.exit, Exit::Quiet);
        let err = output_error(&std::io::Error::other("disk full"));
        assert_eq!(err.exit, Exit::Failure);
    }
}
