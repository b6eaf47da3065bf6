//! The commands, and what they share: connecting with a time bound, the
//! keys under a state's path, reading JSON input, writing output.

mod edit;
mod fleet;
mod info;
mod watch;
mod write;

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sharedstate::state::StateKeys;
use sharedstate::{CoordinationBackend, Key, Version, Versioned};

use crate::args::{Cli, Command, OutputFormat};
use crate::endpoint::{self, Endpoint};
use crate::errors::{self, json_error, parse_json, CliError, CliResult, Context, Exit, Suggest};
use crate::output;

/// Runs the parsed command line, writing results to `out` (stdout) and
/// progress notices to stderr.
///
/// # Errors
///
/// The command's failure, as one line and an exit code.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> CliResult {
    let format = cli.format();
    let url = match cli.backend.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() => url.to_owned(),
        _ if !cli.command.needs_backend() => String::new(),
        _ => return Err(no_backend()),
    };
    let global = Global {
        endpoint: endpoint::parse(&url)?,
        suggest: Suggest {
            // Suggested commands repeat the URL, never its password.
            backend_flag: cli.backend_from_flag.then(|| sharedstate::redact_url(&url)),
        },
        timeout: cli.timeout,
        lock_timeout: cli.lock_timeout,
        format,
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
        Command::Completions(args) => completions(args.shell, out),
        Command::Man => man(out),
    }
}

/// Exit 2: the command never guesses where to write.
fn no_backend() -> CliError {
    CliError::usage(
        "no backend given: pass --backend URL or set SHAREDSTATE_BACKEND, \
         e.g. --backend zk://127.0.0.1:2181 or --backend etcd://127.0.0.1:2379 \
         (memory:// only if you mean a store that ends with this command)",
    )
}

/// `completions SHELL`: the script on stdout.
pub fn completions(shell: clap_complete::Shell, out: &mut (dyn Write + Send)) -> CliResult {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut buffer = Vec::new();
    clap_complete::generate(shell, &mut command, "sharedstate", &mut buffer);
    out.write_all(&buffer)
        .and_then(|()| out.flush())
        .map_err(|e| output_error(&e))
}

/// `man`: the roff page on stdout.
pub fn man(out: &mut (dyn Write + Send)) -> CliResult {
    let command = <Cli as clap::CommandFactory>::command();
    let mut buffer = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut buffer)
        .map_err(|e| CliError::failure(format!("cannot render the manual page: {e}")))?;
    out.write_all(&buffer)
        .and_then(|()| out.flush())
        .map_err(|e| output_error(&e))
}

/// Options every command shares.
#[derive(Debug, Clone)]
pub struct Global {
    endpoint: Endpoint,
    suggest: Suggest,
    timeout: Duration,
    lock_timeout: Duration,
    format: OutputFormat,
}

/// The keys under a state's path: the engine's own layout.
pub type Paths = StateKeys;

/// The layout under the command's path.
fn paths(cx: &Context) -> CliResult<Paths> {
    let invalid = |e: sharedstate::Error| cx.backend(e);
    let root = Key::new(cx.path.as_str()).map_err(invalid)?;
    StateKeys::new(root).map_err(invalid)
}

/// A connected backend and the state path a command works on.
#[derive(Debug)]
pub struct Env {
    backend: Arc<dyn CoordinationBackend>,
    cx: Context,
    paths: Paths,
    timeout: Duration,
    lock_timeout: Duration,
    format: OutputFormat,
}

/// How long a connect may take before the hosts are probed for a plain
/// "connection refused" (a healthy server answers well within it).
const PROBE_AFTER: Duration = Duration::from_secs(1);

/// Bound on each probe's TCP connect.
const PROBE_BOUND: Duration = Duration::from_secs(1);

impl Global {
    fn context(&self, path: &str) -> Context {
        Context {
            url: self.endpoint.shown.clone(),
            path: path.to_owned(),
            suggest: self.suggest.clone(),
        }
    }

    /// Validates `path` and connects, within `--timeout`.
    async fn open(&self, path: &str) -> CliResult<Env> {
        let cx = self.context(path);
        let paths = paths(&cx)?;
        let backend = self.connect(&cx).await?;
        Ok(Env {
            backend,
            cx,
            paths,
            timeout: self.timeout,
            lock_timeout: self.lock_timeout,
            format: self.format,
        })
    }

    /// Connects within `--timeout`. A connect still pending after
    /// [`PROBE_AFTER`] probes the hosts: when every one refuses the
    /// connection the answer is clear now, rather than after the client's
    /// own connect timeout. A failed connect says what the probe found
    /// instead of the client's internals.
    async fn connect(&self, cx: &Context) -> CliResult<Arc<dyn CoordinationBackend>> {
        let connecting =
            tokio::time::timeout(self.timeout, sharedstate::connect(&self.endpoint.url));
        tokio::pin!(connecting);
        let early_probe = async {
            tokio::time::sleep(PROBE_AFTER).await;
            endpoint::probe(&self.endpoint, PROBE_BOUND).await
        };
        let outcome = tokio::select! {
            outcome = &mut connecting => outcome,
            probe = early_probe => {
                if probe.hopeless() {
                    return Err(endpoint::unreachable(&self.endpoint, &probe.describe(PROBE_BOUND)));
                }
                connecting.await
            }
        };
        match outcome {
            Ok(Ok(backend)) => Ok(backend),
            Ok(Err(error))
                // `Other` at connect: something answered that is not the
                // service (a proxy, another protocol).
                if matches!(
                    error.kind(),
                    sharedstate::ErrorKind::Unavailable
                        | sharedstate::ErrorKind::Timeout
                        | sharedstate::ErrorKind::Other
                ) =>
            {
                let reason = format!(
                    "no {} session: {}",
                    self.endpoint.service.name(),
                    errors::describe(&error)
                );
                Err(self.diagnose(&reason).await)
            }
            Ok(Err(error)) => Err(cx.backend(error)),
            Err(_) => {
                let reason = format!(
                    "no {} session within {:?} (raise --timeout if the server is slow)",
                    self.endpoint.service.name(),
                    self.timeout
                );
                Err(self.diagnose(&reason).await)
            }
        }
    }

    /// Exit 5 for a failed connect: the probe's findings, or (when a host
    /// accepts TCP connections, so the service itself did not answer) the
    /// client's reason.
    async fn diagnose(&self, reason: &str) -> CliError {
        let probe = endpoint::probe(&self.endpoint, PROBE_BOUND).await;
        let detail = if probe.any_open() {
            format!(
                "{}, but {reason}",
                endpoint::Probe(
                    probe
                        .0
                        .into_iter()
                        .filter(|(_, r)| *r == endpoint::Reach::Open)
                        .collect()
                )
                .describe(PROBE_BOUND)
            )
        } else if probe.0.is_empty() {
            reason.to_owned()
        } else {
            probe.describe(PROBE_BOUND)
        };
        endpoint::unreachable(&self.endpoint, &detail)
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
                "{}; fix it with {} or {}",
                json_error(
                    &e,
                    &format!(
                        "the payload of {} (version {})",
                        self.cx.path, found.version
                    )
                ),
                self.cx.suggest.command(&["set", &self.cx.path, "JSON"]),
                self.cx.suggest.command(&["edit", &self.cx.path]),
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

    /// `version 12`, or `version 4294967310 (mZxid 0x10000000e)` on
    /// ZooKeeper, where zkCli shows the same number in hex.
    fn version_text(&self, version: Version) -> String {
        output::version_text(self.backend.name(), version)
    }

    /// Adds `version` (and `mzxid` on ZooKeeper) to a JSON object.
    fn version_fields(&self, object: &mut serde_json::Map<String, Value>, version: Version) {
        output::version_fields(self.backend.name(), version, object);
    }

    /// `PATH: version N`, `PATH: created at version N` or
    /// `PATH: unchanged at version N`; with --json one object
    /// `{"path", "result", "version"}` (and `"wait"` after `--wait`).
    fn report(
        &self,
        out: &mut (dyn Write + Send),
        written: Written,
        wait: Option<Value>,
    ) -> CliResult {
        let (result, version) = match written {
            Written::Changed(version) => ("changed", version),
            Written::Created(version) => ("created", version),
            Written::Unchanged(version) => ("unchanged", version),
        };
        match self.format {
            OutputFormat::Json => {
                let mut object = serde_json::Map::new();
                object.insert("path".into(), Value::from(self.cx.path.as_str()));
                object.insert("result".into(), Value::from(result));
                self.version_fields(&mut object, version);
                if let Some(wait) = wait {
                    object.insert("wait".into(), wait);
                }
                emit(out, &info::pretty(&Value::Object(object)))
            }
            OutputFormat::Text => {
                let version = self.version_text(version);
                let line = match written {
                    Written::Changed(_) => format!("{}: {version}", self.cx.path),
                    Written::Created(_) => format!("{}: created at {version}", self.cx.path),
                    Written::Unchanged(_) => format!("{}: unchanged at {version}", self.cx.path),
                };
                emit(out, &line)
            }
        }
    }

    /// Reports a write and, with `--wait`, waits until every live instance
    /// applied or rejected its version (or the payload's current version
    /// when nothing was written): text prints the write's line at once and
    /// the fleet's summary when the wait ends; JSON prints one object with
    /// both. Exit 6 or 7 when the fleet did not converge.
    async fn report_and_wait(
        &self,
        out: &mut (dyn Write + Send),
        written: Written,
        wait: Option<Duration>,
    ) -> CliResult {
        let Some(timeout) = wait else {
            return self.report(out, written, None);
        };
        let version = written.version();
        if self.format == OutputFormat::Text {
            self.report(out, written, None)?;
            eprintln!(
                "waiting up to {timeout:?} for every live instance to apply version {version}"
            );
        }
        let convergence = fleet::wait(self, version, timeout).await?;
        match self.format {
            OutputFormat::Json => self.report(out, written, Some(convergence.json()))?,
            OutputFormat::Text => emit(out, &fleet::summary(&convergence.instances))?,
        }
        let silent = convergence.silent();
        if !silent.is_empty() {
            let ids: Vec<&str> = silent.iter().map(|info| info.id.as_str()).collect();
            eprintln!(
                "not waited for: {} (they do not report what they applied: an older sharedstate, or reports switched off)",
                ids.join(", ")
            );
        }
        match convergence.error() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// A failed write of `size` bytes: a size refusal names the size (the
    /// backend's own limit was checked before sending, so it is the
    /// server's smaller one).
    fn write_error(&self, error: sharedstate::Error, size: usize) -> CliError {
        if error.kind() == sharedstate::ErrorKind::ValueTooLarge {
            return CliError::usage(format!(
                "the new payload of {} ({size} bytes) is too large for {}: {}; nothing was written",
                self.cx.path,
                self.cx.url,
                errors::describe(&error)
            ));
        }
        self.cx.backend(error)
    }

    /// Exit 2 before anything is sent when `bytes` exceed the backend's
    /// limit (the backend would refuse them with internal words).
    fn check_size(&self, bytes: &[u8]) -> CliResult {
        let limit = self.backend.capabilities().max_value_bytes;
        if bytes.len() > limit {
            return Err(self.cx.too_large(bytes.len(), limit));
        }
        Ok(())
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Changed(Version),
    Created(Version),
    Unchanged(Version),
}

impl Written {
    /// The payload's version after the command.
    fn version(self) -> Version {
        match self {
            Written::Changed(version) | Written::Created(version) | Written::Unchanged(version) => {
                version
            }
        }
    }
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
