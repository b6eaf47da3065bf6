//! The one public error type, with a kind that tests and callers match on.

use std::fmt;

use crate::version::Version;

/// What went wrong, independent of the backend. Match on this, never on the
/// message.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The key (or the state's payload) does not exist.
    NotFound,
    /// A create found the key already there.
    AlreadyExists,
    /// A conditional write or delete lost against another writer; see
    /// [`Error::current_version`].
    Conflict,
    /// The local copy is not known to be current (staleness bound passed, or
    /// `try_update` on a copy that was not the latest).
    Stale,
    /// A lock was not acquired within its timeout.
    LockTimeout,
    /// The lock this operation relied on is no longer held.
    LockLost,
    /// The session expired during the operation: its locks and ephemeral
    /// registrations are gone.
    SessionLost,
    /// The service could not be reached, or the connection broke mid-call.
    /// [`Error::outcome`] says whether a write may have happened.
    Unavailable,
    /// A request was sent and no answer came within its deadline; a write's
    /// outcome is [`Outcome::Unknown`].
    Timeout,
    /// A value is larger than the backend's `max_value_bytes`.
    ValueTooLarge,
    /// A key broke the key rules.
    InvalidKey,
    /// A value could not be decoded (malformed JSON, wrong shape).
    Decode,
    /// A value could not be encoded.
    Encode,
    /// The backend cannot do this at all (see its `Capabilities`).
    Unsupported,
    /// Credentials were refused or are missing.
    Unauthorized,
    /// The key has children and cannot be deleted.
    NotEmpty,
    /// A URL or option is malformed.
    InvalidArgument,
    /// The client or state was closed.
    Closed,
    /// Anything else the backend reported.
    Other,
}

impl ErrorKind {
    /// A short, lower-case description used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::Conflict => "version conflict",
            ErrorKind::Stale => "local copy is stale",
            ErrorKind::LockTimeout => "lock timeout",
            ErrorKind::LockLost => "lock lost",
            ErrorKind::SessionLost => "session lost",
            ErrorKind::Unavailable => "service unavailable",
            ErrorKind::Timeout => "timed out",
            ErrorKind::ValueTooLarge => "value too large",
            ErrorKind::InvalidKey => "invalid key",
            ErrorKind::Decode => "cannot decode value",
            ErrorKind::Encode => "cannot encode value",
            ErrorKind::Unsupported => "unsupported by this backend",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotEmpty => "key has children",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Closed => "closed",
            ErrorKind::Other => "backend error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operation an error comes from, for context in messages and logs.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Connecting or reconnecting.
    Connect,
    /// Key validation.
    ValidateKey,
    /// `get`.
    Get,
    /// `put`.
    Put,
    /// `delete`.
    Delete,
    /// `list`.
    List,
    /// `watch`.
    Watch,
    /// `lock`.
    Lock,
    /// Releasing a lock.
    Unlock,
    /// A fenced conditional write.
    FencedPut,
    /// `register` or re-registering.
    Register,
    /// Closing a registration.
    Deregister,
    /// Changing a registration's value.
    UpdateRegistration,
    /// Opening a `SharedState`.
    Open,
    /// `SharedState::read`.
    Read,
    /// `SharedState::read_consistent`.
    ReadConsistent,
    /// `SharedState::update` / `try_update`.
    Update,
    /// Decoding a payload.
    Decode,
    /// Encoding a payload.
    Encode,
    /// Closing a client or state.
    Close,
    /// Test-only fault injection.
    FaultInjection,
}

impl Operation {
    /// The operation's name as used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Connect => "connect",
            Operation::ValidateKey => "validate key",
            Operation::Get => "get",
            Operation::Put => "put",
            Operation::Delete => "delete",
            Operation::List => "list",
            Operation::Watch => "watch",
            Operation::Lock => "lock",
            Operation::Unlock => "unlock",
            Operation::FencedPut => "fenced put",
            Operation::Register => "register",
            Operation::Deregister => "deregister",
            Operation::UpdateRegistration => "update registration",
            Operation::Open => "open",
            Operation::Read => "read",
            Operation::ReadConsistent => "read_consistent",
            Operation::Update => "update",
            Operation::Decode => "decode",
            Operation::Encode => "encode",
            Operation::Close => "close",
            Operation::FaultInjection => "fault injection",
        }
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `text` on one line: every run of whitespace (newlines included) becomes
/// one space.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether a failed call may have changed anything on the service.
///
/// Every [`Error`] says it: [`Error::outcome`]. A write that failed with
/// [`Outcome::NotApplied`] changed nothing and can be retried as it is. A
/// write that failed with [`Outcome::Unknown`] was sent and no answer came
/// back: it may have been applied, now or later. Retry it blindly only when
/// it is idempotent (a conditional write is: a second attempt fails with
/// `Conflict` if the first one landed); otherwise read back first. No backend
/// retries a non-idempotent write whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Nothing was applied: the request was refused, or never sent.
    NotApplied,
    /// The request was sent and no answer came: it may have been applied.
    Unknown,
}

impl Outcome {
    /// The default for an error of `kind`: connection-level failures and
    /// timeouts are `Unknown` (the request may have reached the service),
    /// every refusal is `NotApplied`.
    pub fn default_for(kind: ErrorKind) -> Outcome {
        match kind {
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Other => Outcome::Unknown,
            _ => Outcome::NotApplied,
        }
    }
}

/// The error every sharedstate call returns: a [`ErrorKind`], the operation
/// and key as context, an optional message, the version found by a failed
/// conditional write, whether the call may have changed anything
/// ([`Outcome`]), and the backend's own error as `source`.
///
/// `Display` prints this error's own context only; the backend's error is
/// available through [`std::error::Error::source`] (so a report that walks
/// the chain prints each cause once).
pub struct Error {
    kind: ErrorKind,
    operation: Operation,
    key: Option<String>,
    message: Option<String>,
    current_version: Option<Version>,
    outcome: Option<Outcome>,
    source: Option<Source>,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` raised by `operation`.
    pub fn new(kind: ErrorKind, operation: Operation) -> Self {
        Error {
            kind,
            operation,
            key: None,
            message: None,
            current_version: None,
            outcome: None,
            source: None,
        }
    }

    /// States whether the call may have changed anything (default:
    /// [`Outcome::default_for`] the kind).
    pub fn with_outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = Some(outcome);
        self
    }

    /// Attaches the key the operation was about.
    pub fn with_key(mut self, key: &crate::Key) -> Self {
        self.key = Some(key.as_str().to_owned());
        self
    }

    /// Attaches a key that may not have passed validation.
    pub fn with_raw_key(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }

    /// Attaches a human-readable detail.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Attaches the version found on the service (for `Conflict`).
    pub fn with_current_version(mut self, version: Option<Version>) -> Self {
        self.current_version = version;
        self
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Which operation failed.
    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// The key involved, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The detail message, if any.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// For [`ErrorKind::Conflict`]: the version now on the service, or
    /// `None` when the key no longer exists or the backend could not tell.
    pub fn current_version(&self) -> Option<Version> {
        self.current_version
    }

    /// Whether the failed call may have changed anything on the service:
    /// [`Outcome::NotApplied`] or [`Outcome::Unknown`]. Reads, and writes
    /// refused by the service or never sent, are `NotApplied`.
    pub fn outcome(&self) -> Outcome {
        self.outcome
            .unwrap_or_else(|| Outcome::default_for(self.kind))
    }

    /// Whether the failure is transient: the same call, retried later, may
    /// succeed (`Unavailable`, `Timeout`, `LockTimeout`, `SessionLost`,
    /// `Stale`). Before retrying a write, check [`outcome`](Self::outcome):
    /// an `Unknown` outcome may mean the first attempt landed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Unavailable
                | ErrorKind::Timeout
                | ErrorKind::LockTimeout
                | ErrorKind::SessionLost
                | ErrorKind::Stale
        )
    }
}

impl Operation {
    /// Whether the operation changes the service (its outcome matters).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Operation::Put
                | Operation::Delete
                | Operation::Lock
                | Operation::Unlock
                | Operation::FencedPut
                | Operation::Register
                | Operation::Deregister
                | Operation::UpdateRegistration
                | Operation::Open
                | Operation::Update
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.operation.as_str(), self.kind)?;
        if let Some(key) = &self.key {
            write!(f, " (key {key})")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        if self.kind == ErrorKind::Conflict {
            match self.current_version {
                Some(v) => write!(f, "; current version is {v}")?,
                None => write!(f, "; the key does not exist now")?,
            }
        }
        if self.operation.is_write() && self.outcome() == Outcome::Unknown {
            write!(f, "; it may or may not have been applied")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("operation", &self.operation)
            .field("key", &self.key)
            .field("message", &self.message)
            .field("current_version", &self.current_version)
            .field("outcome", &self.outcome())
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Cause;
    impl fmt::Display for Cause {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("connection reset by peer")
        }
    }
    impl std::error::Error for Cause {}

    #[test]
    fn outcome_defaults_follow_the_kind() {
        let unknown = Error::new(ErrorKind::Unavailable, Operation::Put);
        assert_eq!(unknown.outcome(), Outcome::Unknown);
        assert_eq!(
            Error::new(ErrorKind::Timeout, Operation::Put).outcome(),
            Outcome::Unknown
        );
        for kind in [
            ErrorKind::Conflict,
            ErrorKind::ValueTooLarge,
            ErrorKind::Stale,
        ] {
            assert_eq!(
                Error::new(kind, Operation::Put).outcome(),
                Outcome::NotApplied
            );
        }
        let never_sent = unknown.with_outcome(Outcome::NotApplied);
        assert_eq!(never_sent.outcome(), Outcome::NotApplied);
        assert!(never_sent.is_retryable());
        assert!(!Error::new(ErrorKind::Conflict, Operation::Put).is_retryable());
    }

    #[test]
    fn display_prints_the_source_once_through_the_chain() {
        let e = Error::new(ErrorKind::Unavailable, Operation::Put)
            .with_message("no answer")
            .with_source(Cause);
        let shown = e.to_string();
        assert!(!shown.contains("connection reset"), "{shown}");
        assert!(
            shown.contains("may or may not have been applied"),
            "{shown}"
        );
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("connection reset by peer"));
        let read = Error::new(ErrorKind::Unavailable, Operation::Get);
        assert!(!read.to_string().contains("applied"));
    }
}
