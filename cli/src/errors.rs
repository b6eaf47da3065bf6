//! The CLI's one error type: an exit code and one line for stderr.

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use sharedstate::{Error, ErrorKind, Version};

/// Exit codes (see `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0 without a message: stdout was closed (`watch | head -1`).
    Quiet = 0,
    /// 1: anything not covered below.
    Failure = 1,
    /// 2: bad arguments, invalid path, invalid JSON input.
    Usage = 2,
    /// 3: the path has no payload.
    NotFound = 3,
    /// 4: version conflict, or the payload already exists.
    Conflict = 4,
    /// 5: unreachable, timed out, lock not acquired.
    Unavailable = 5,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> ExitCode {
        ExitCode::from(self as u8)
    }
}

/// A failed command: what to print and how to exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// The exit code.
    pub exit: Exit,
    /// One line, without the program-name prefix.
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

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What the messages mention: the backend URL and the state path.
#[derive(Debug, Clone)]
pub struct Context {
    /// The backend URL as given.
    pub url: String,
    /// The state path as given.
    pub path: String,
}

impl Context {
    /// "no payload" for this path (exit 3).
    pub fn no_payload(&self) -> CliError {
        CliError::new(
            Exit::NotFound,
            format!(
                "no payload at {path} (key {path}/payload on {url}); create one with `sharedstate init {path} JSON`",
                path = self.path,
                url = self.url
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
                "cannot reach {}: no answer within {bound:?} while {what} (raise --timeout if the server is slow)",
                self.url
            ),
        )
    }

    /// Turns a library error into one line and an exit code.
    pub fn backend(&self, error: Error) -> CliError {
        let url = &self.url;
        let path = &self.path;
        match error.kind() {
            ErrorKind::NotFound => self.no_payload(),
            ErrorKind::Conflict => self.conflict(None, error.current_version()),
            ErrorKind::AlreadyExists => CliError::new(
                Exit::Conflict,
                format!("{path} already has a payload ({error})"),
            ),
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::SessionLost => {
                CliError::new(Exit::Unavailable, format!("cannot reach {url}: {error}"))
            }
            ErrorKind::LockTimeout => CliError::new(
                Exit::Unavailable,
                format!("another writer holds the lock {path}/lock; gave up waiting ({error}); retry, or raise --lock-timeout"),
            ),
            ErrorKind::InvalidKey => CliError::usage(format!("invalid path {path:?}: {error}")),
            ErrorKind::InvalidArgument => {
                CliError::usage(format!("invalid backend URL {url:?}: {error}"))
            }
            ErrorKind::Unsupported => CliError::failure(format!("{url}: {error}")),
            _ => CliError::failure(format!("{path} on {url}: {error}")),
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

    #[test]
    fn kinds_map_to_exit_codes_and_name_the_url() {
        let ctx = ctx();
        let unavailable = ctx.backend(
            Error::new(ErrorKind::Unavailable, Operation::Connect).with_message("refused"),
        );
        assert_eq!(unavailable.exit, Exit::Unavailable);
        assert!(unavailable.message.contains("zk://127.0.0.1:2181"));
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
    fn messages_are_one_line() {
        let err = CliError::failure("first\nsecond\n  third");
        assert_eq!(err.message, "first second third");
    }
}
