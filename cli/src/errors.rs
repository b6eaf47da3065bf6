//! The CLI's one error type: an exit code and one line for stderr, and the
//! wording of library errors (each cause once, with what to do).

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use sharedstate::{Error, ErrorKind, Version};

/// Exit codes (see `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0 without a message: stdout was closed (`watch | head -1`).
    Quiet,
    /// 1: anything not covered below.
    Failure,
    /// 2: bad arguments, invalid path, invalid JSON input, value too large.
    Usage,
    /// 3: the path has no payload.
    NotFound,
    /// 4: version conflict, or the payload already exists.
    Conflict,
    /// 5: unreachable, timed out, lock not acquired.
    Unavailable,
    /// 6: `--wait`: an instance rejected the new version.
    Rejected,
    /// 7: `--wait`: an instance did not apply the new version in time.
    NotConverged,
    /// 128 + N: ended by signal N (130 for Ctrl-C).
    Signal(u8),
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> ExitCode {
        ExitCode::from(self.number())
    }

    /// The number the shell sees.
    pub fn number(self) -> u8 {
        match self {
            Exit::Quiet => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::NotFound => 3,
            Exit::Conflict => 4,
            Exit::Unavailable => 5,
            Exit::Rejected => 6,
            Exit::NotConverged => 7,
            Exit::Signal(n) => 128u8.saturating_add(n),
        }
    }
}

/// A failed command: what to print and how to exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// The exit code.
    pub exit: Exit,
    /// One line, without the program-name prefix; empty: print nothing.
    pub message: String,
}

impl CliError {
    /// An error with this exit code and message (newlines are flattened).
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        CliError {
            exit,
            message: one_line(&message.into()),
        }
    }

    /// Exit 2.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::new(Exit::Usage, message)
    }

    /// Exit 1.
    pub fn failure(message: impl Into<String>) -> Self {
        CliError::new(Exit::Failure, message)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// `Result` with [`CliError`].
pub type CliResult<T = ()> = Result<T, CliError>;

pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The causes of an error, each once: a sharedstate [`Error`] contributes
/// its detail message (not its `Display`, which carries internal words
/// such as "fenced put failed" and, in older versions, its source's text
/// too), any other error its `Display`; then the `source()` chain. A text
/// already contained in an earlier one is left out, and one that contains
/// an earlier one (a wrapper repeating its cause) as well.
pub fn causes(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let text = match current.downcast_ref::<Error>() {
            Some(ours) => ours.message().map(str::to_owned),
            None => Some(current.to_string()),
        };
        if let Some(text) = text.map(|t| one_line(&t)).filter(|t| !t.is_empty()) {
            let repeated = found
                .iter()
                .any(|seen| seen.contains(&text) || text.contains(seen.as_str()));
            if !repeated {
                found.push(text);
            }
        }
        next = current.source();
    }
    found
}

/// The causes joined, or the kind's description when there are none.
pub fn describe(error: &Error) -> String {
    let causes = causes(error);
    if causes.is_empty() {
        error.kind().to_string()
    } else {
        causes.join(": ")
    }
}

/// `sharedstate [--backend URL] ARGS...`, every word shell-quoted, for the
/// commands that messages suggest.
#[derive(Debug, Clone)]
pub struct Suggest {
    /// The `--backend` to repeat (when it was given as a flag, not through
    /// `SHAREDSTATE_BACKEND`).
    pub backend_flag: Option<String>,
}

impl Suggest {
    /// The command line in backquotes.
    pub fn command(&self, args: &[&str]) -> String {
        let mut words = vec!["sharedstate".to_owned()];
        if let Some(url) = &self.backend_flag {
            words.push("--backend".to_owned());
            words.push(quote(url));
        }
        words.extend(args.iter().map(|a| quote(a)));
        format!("`{}`", words.join(" "))
    }
}

/// One word as a POSIX shell reads it back.
pub fn quote(word: &str) -> String {
    match shlex::try_quote(word) {
        Ok(quoted) => quoted.into_owned(),
        // Only a NUL byte cannot be quoted; paths and URLs never hold one.
        Err(_) => word.to_owned(),
    }
}

/// The state segments under which no state lives (the engine's layout).
pub const RESERVED: [&str; 3] = ["payload", "listeners", "lock"];

/// For a path that goes into a state's own keys (`/app/payload`,
/// `/app/listeners/x`): the state's path (`/app`).
pub fn state_above(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let at = segments
        .iter()
        .position(|s| RESERVED.contains(s))
        .filter(|&i| i > 0)?;
    Some(format!("/{}", segments[..at].join("/")))
}

/// What the messages mention: the backend URL and the state path.
#[derive(Debug, Clone)]
pub struct Context {
    /// The backend URL as given, its password redacted: what messages show.
    pub url: String,
    /// The state path as given.
    pub path: String,
    /// How to write suggested commands.
    pub suggest: Suggest,
}

impl Context {
    /// "no payload" for this path (exit 3), with the way to create one, or
    /// the state's own path when this one points into a state's keys.
    pub fn no_payload(&self) -> CliError {
        let path = &self.path;
        let hint = match state_above(path) {
            Some(state) => format!(
                "{path} is inside the state {state} (its keys are {state}/payload, /listeners, /lock); use the state's path, e.g. {}",
                self.suggest.command(&["get", &state])
            ),
            None => format!(
                "create one with {}",
                self.suggest.command(&["init", path, "JSON"])
            ),
        };
        CliError::new(
            Exit::NotFound,
            format!(
                "no payload at {path} (key {path}/payload on {}); {hint}",
                self.url
            ),
        )
    }

    /// A version conflict (exit 4), naming the version the write expected
    /// and the one now on the service.
    pub fn conflict(&self, expected: Option<Version>, current: Option<Version>) -> CliError {
        let expected = expected.map(|v| format!("expected version {v}, but "));
        match current {
            Some(current) => CliError::new(
                Exit::Conflict,
                format!(
                    "version conflict on {}: {}the current version is {current}",
                    self.path,
                    expected.unwrap_or_default()
                ),
            ),
            None => self.no_payload(),
        }
    }

    /// No answer within the command's time bound (exit 5).
    pub fn timed_out(&self, what: &str, bound: Duration) -> CliError {
        CliError::new(
            Exit::Unavailable,
            format!(
                "no answer from {} within {bound:?} while {what}; raise --timeout if the server is slow",
                self.url
            ),
        )
    }

    /// A value over the backend's limit (exit 2): nothing was sent.
    pub fn too_large(&self, size: usize, limit: usize) -> CliError {
        CliError::usage(format!(
            "the new payload of {} is {size} bytes, over the limit of {limit} bytes on {}; nothing was written (shared state is for configuration-sized values)",
            self.path, self.url
        ))
    }

    /// Turns a library error into one line and an exit code.
    pub fn backend(&self, error: Error) -> CliError {
        let url = &self.url;
        let path = &self.path;
        let why = describe(&error);
        match error.kind() {
            ErrorKind::NotFound => self.no_payload(),
            ErrorKind::Conflict => self.conflict(None, error.current_version()),
            ErrorKind::AlreadyExists => CliError::new(
                Exit::Conflict,
                format!(
                    "{path} already has a payload; change it with {}",
                    self.suggest.command(&["set", path, "JSON"])
                ),
            ),
            // The outermost cause only: the client's transport errors below
            // it are debug structs (tonic), not sentences.
            ErrorKind::Unavailable | ErrorKind::Timeout => CliError::new(
                Exit::Unavailable,
                format!(
                    "lost the connection to {url} ({}); retry, and check the server",
                    causes(&error)
                        .into_iter()
                        .next()
                        .unwrap_or_else(|| error.kind().to_string())
                ),
            ),
            ErrorKind::SessionLost => CliError::new(
                Exit::Unavailable,
                format!("the session with {url} expired during the command ({why}); retry"),
            ),
            ErrorKind::LockTimeout => CliError::new(
                Exit::Unavailable,
                format!("another writer holds the lock {path}/lock; gave up waiting; retry, or raise --lock-timeout"),
            ),
            ErrorKind::ValueTooLarge => CliError::usage(format!(
                "the new payload of {path} is too large for {url} ({why}); nothing was written"
            )),
            ErrorKind::InvalidKey => CliError::usage(format!("invalid path {path:?}: {why}")),
            ErrorKind::InvalidArgument => {
                CliError::usage(format!("invalid backend URL {url:?}: {why}"))
            }
            ErrorKind::Unauthorized => CliError::failure(format!(
                "{url} refused the credentials ({why}); check the user and password in the URL"
            )),
            ErrorKind::Unsupported => CliError::failure(format!("{url}: {why}")),
            kind => CliError::failure(format!("{path} on {url}: {kind}: {why}")),
        }
    }
}

/// Parses JSON the user gave, naming where it came from and the line and
/// column of the first error (exit 2).
pub fn parse_json(text: &str, source: &str) -> CliResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| CliError::usage(json_error(&e, source)))
}

/// `invalid JSON in <source> at line L, column C: <reason>`.
pub fn json_error(error: &serde_json::Error, source: &str) -> String {
    let full = error.to_string();
    let location = format!(" at line {} column {}", error.line(), error.column());
    let reason = full.strip_suffix(&location).unwrap_or(&full);
    if error.line() == 0 {
        format!("invalid JSON in {source}: {reason}")
    } else {
        format!(
            "invalid JSON in {source} at line {}, column {}: {reason}",
            error.line(),
            error.column()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharedstate::Operation;

    fn ctx() -> Context {
        Context {
            url: "zk://127.0.0.1:2181".into(),
            path: "/app/flags".into(),
            suggest: Suggest { backend_flag: None },
        }
    }

    #[test]
    fn invalid_json_names_line_and_column() {
        let err = parse_json("{\n  \"a\": 1,\n  \"b\" 2\n}", "the value argument").unwrap_err();
        assert_eq!(err.exit, Exit::Usage);
        assert_eq!(
            err.message,
            "invalid JSON in the value argument at line 3, column 7: expected `:`"
        );
        let err = parse_json("", "stdin").unwrap_err();
        assert!(err.message.contains("line 1, column 0"), "{}", err.message);
        let err = parse_json("{} x", "stdin").unwrap_err();
        assert!(
            err.message.contains("trailing characters"),
            "{}",
            err.message
        );
    }

    #[derive(Debug)]
    struct Wrapper(&'static str, Option<Box<Wrapper>>);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|w| w as _)
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        // The ZooKeeper backend's URL error: a message, and a source that
        // repeats it behind its own prefix.
        let error = Error::new(ErrorKind::InvalidArgument, Operation::Connect)
            .with_message("session_timeout_ms=abc is not a number")
            .with_source(Wrapper(
                "invalid ZooKeeper URL or connect string: session_timeout_ms=abc is not a number",
                None,
            ));
        assert_eq!(describe(&error), "session_timeout_ms=abc is not a number");
        let err = ctx().backend(error);
        assert_eq!(err.exit, Exit::Usage);
        assert_eq!(err.message.matches("is not a number").count(), 1, "{err}");
        // Distinct causes are all kept, in order; a nested sharedstate
        // error adds its message only.
        let inner = Error::new(ErrorKind::Other, Operation::Get).with_message("inner detail");
        let error = Error::new(ErrorKind::Other, Operation::Put)
            .with_message("outer")
            .with_source(inner);
        assert_eq!(describe(&error), "outer: inner detail");
        let chain = Wrapper("a", Some(Box::new(Wrapper("b", None))));
        assert_eq!(causes(&chain), vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(
            describe(&Error::new(ErrorKind::LockTimeout, Operation::Lock)),
            "lock timeout"
        );
    }

    #[test]
    fn kinds_map_to_exit_codes_without_internal_words() {
        let ctx = ctx();
        let missing = ctx.backend(Error::new(ErrorKind::NotFound, Operation::Get));
        assert_eq!(missing.exit, Exit::NotFound);
        assert!(missing.message.starts_with("no payload at /app/flags"));
        let conflict = ctx.backend(
            Error::new(ErrorKind::Conflict, Operation::Put)
                .with_current_version(Some(Version::new(42))),
        );
        assert_eq!(conflict.exit, Exit::Conflict);
        assert!(conflict.message.contains("current version is 42"));
        let key = ctx.backend(Error::new(ErrorKind::InvalidKey, Operation::ValidateKey));
        assert_eq!(key.exit, Exit::Usage);
        let lock = ctx.backend(Error::new(ErrorKind::LockTimeout, Operation::Lock));
        assert_eq!(lock.exit, Exit::Unavailable);
        let big = ctx.backend(
            Error::new(ErrorKind::ValueTooLarge, Operation::FencedPut)
                .with_message("the value has 5 bytes, this backend accepts at most 4"),
        );
        assert_eq!(big.exit, Exit::Usage);
        for err in [lock, big] {
            assert!(!err.message.contains("failed:"), "{err}");
        }
    }

    #[test]
    fn suggestions_are_shell_quoted() {
        let ctx = Context {
            path: "/my app/it's".into(),
            suggest: Suggest {
                backend_flag: Some("zk://h:2181/x?a=1&b=2".into()),
            },
            ..ctx()
        };
        let err = ctx.no_payload();
        assert!(
            err.message.ends_with(
                r#"create one with `sharedstate --backend 'zk://h:2181/x?a=1&b=2' init "/my app/it's" JSON`"#
            ),
            "{err}"
        );
    }

    #[test]
    fn paths_into_a_states_keys_point_at_the_state() {
        assert_eq!(
            state_above("/demo/monitor/payload").as_deref(),
            Some("/demo/monitor")
        );
        assert_eq!(state_above("/a/listeners/x1").as_deref(), Some("/a"));
        assert_eq!(state_above("/a/lock").as_deref(), Some("/a"));
        assert_eq!(state_above("/payload"), None);
        assert_eq!(state_above("/a/b"), None);
        let ctx = Context {
            path: "/demo/monitor/payload".into(),
            ..ctx()
        };
        let err = ctx.no_payload();
        assert_eq!(err.exit, Exit::NotFound);
        assert!(
            err.message
                .ends_with("e.g. `sharedstate get /demo/monitor`"),
            "{err}"
        );
    }

    #[test]
    fn conflicts_name_both_versions() {
        let err = ctx().conflict(Some(Version::new(3)), Some(Version::new(9)));
        assert_eq!(
            err.message,
            "version conflict on /app/flags: expected version 3, but the current version is 9"
        );
        assert_eq!(
            ctx().conflict(Some(Version::new(3)), None).exit,
            Exit::NotFound
        );
    }

    #[test]
    fn messages_are_one_line_and_signals_exit_128_plus_n() {
        let err = CliError::failure("first\nsecond\n  third");
        assert_eq!(err.message, "first second third");
        assert_eq!(Exit::Signal(2).number(), 130);
        assert_eq!(Exit::Usage.number(), 2);
    }
}
