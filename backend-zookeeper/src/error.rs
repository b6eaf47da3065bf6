//! Mapping zookeeper-client errors into [`sharedstate_core::Error`].

use sharedstate_core::{Error, ErrorKind, Key, Operation, Outcome, Version};
use zookeeper_client as zk;

/// Errors of this crate that do not come from the ZooKeeper client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ZkBackendError {
    /// A `zk://` URL or a connect string is malformed.
    #[error("invalid ZooKeeper URL or connect string: {0}")]
    InvalidUrl(String),
    /// No session could be established in time.
    #[error("no ZooKeeper session established within {0:?}")]
    ConnectTimeout(std::time::Duration),
}

/// The [`ErrorKind`] for a zookeeper-client error. Every connection-level
/// failure is `Unavailable` (the client's own I/O errors, such as "no
/// response from connection in 1600ms" or a reset connection, arrive as
/// `Custom`), a request that got no answer in time is `Timeout`.
pub(crate) fn kind_of(error: &zk::Error) -> ErrorKind {
    match error {
        zk::Error::NoNode => ErrorKind::NotFound,
        zk::Error::NodeExists => ErrorKind::AlreadyExists,
        zk::Error::BadVersion => ErrorKind::Conflict,
        zk::Error::NotEmpty => ErrorKind::NotEmpty,
        zk::Error::Timeout => ErrorKind::Timeout,
        zk::Error::ConnectionLoss
        | zk::Error::NoHosts
        | zk::Error::Throttled
        | zk::Error::NotReadOnly
        | zk::Error::Custom(_) => ErrorKind::Unavailable,
        zk::Error::SessionExpired | zk::Error::SessionMoved => ErrorKind::SessionLost,
        zk::Error::NoAuth | zk::Error::AuthFailed => ErrorKind::Unauthorized,
        zk::Error::ClientClosed => ErrorKind::Closed,
        zk::Error::BadArguments(_) | zk::Error::InvalidAcl | zk::Error::NoChildrenForEphemerals => {
            ErrorKind::InvalidArgument
        }
        zk::Error::Unimplemented => ErrorKind::Unsupported,
        _ => ErrorKind::Other,
    }
}

/// Whether a request that failed this way may have been applied: only a
/// lost connection or a missing answer leave the outcome open; every answer
/// from the server (an error code) means nothing was applied.
pub(crate) fn outcome_of(error: &zk::Error) -> Outcome {
    match error {
        zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::Custom(_) => Outcome::Unknown,
        // The client gave up on the session: a request in flight may or
        // may not have been applied before the end.
        zk::Error::ClientClosed => Outcome::Unknown,
        _ => Outcome::NotApplied,
    }
}

/// Converts a zookeeper-client error, keeping it as the source.
pub(crate) fn map(error: zk::Error, operation: Operation, key: &Key) -> Error {
    let mut mapped = Error::new(kind_of(&error), operation)
        .with_key(key)
        .with_outcome(outcome_of(&error));
    match &error {
        zk::Error::NoChildrenForEphemerals => {
            mapped = mapped.with_message("an ephemeral key (a registration) cannot have children")
        }
        zk::Error::BadArguments(why) => mapped = mapped.with_message(**why),
        zk::Error::NoAuth => {
            mapped = mapped.with_message("the node's ACL does not allow this client's identity")
        }
        _ => {}
    }
    mapped.with_source(error)
}

/// A `Conflict` carrying the version now on the service.
pub(crate) fn conflict(operation: Operation, key: &Key, current: Option<Version>) -> Error {
    Error::new(ErrorKind::Conflict, operation)
        .with_key(key)
        .with_current_version(current)
}

/// `Closed`: the backend was closed.
pub(crate) fn closed(operation: Operation) -> Error {
    Error::new(ErrorKind::Closed, operation).with_message("the ZooKeeper backend was closed")
}

/// `InvalidArgument` for a malformed URL or connect string.
pub(crate) fn invalid_url(message: impl Into<String>) -> Error {
    let cause = ZkBackendError::InvalidUrl(message.into());
    Error::new(ErrorKind::InvalidArgument, Operation::Connect).with_message(cause.to_string())
}

/// `Unavailable` when connecting takes longer than the connect timeout.
pub(crate) fn connect_timeout(timeout: std::time::Duration) -> Error {
    let cause = ZkBackendError::ConnectTimeout(timeout);
    Error::new(ErrorKind::Unavailable, Operation::Connect)
        .with_outcome(Outcome::NotApplied)
        .with_message(format!(
            "{cause}: is a ZooKeeper server listening there, and is a quorum up?"
        ))
}

/// A connect failure from the client.
pub(crate) fn connect(error: zk::Error) -> Error {
    let message = match &error {
        zk::Error::NoHosts => "none of the hosts could be reached".to_owned(),
        zk::Error::BadArguments(why) => format!("bad connect string: {why}"),
        other => other.to_string(),
    };
    Error::new(kind_of(&error), Operation::Connect)
        .with_outcome(Outcome::NotApplied)
        .with_message(message)
        .with_source(error)
}

/// `Unavailable` for a call made while the connection is lost: it was
/// refused here and never sent.
pub(crate) fn suspended(operation: Operation) -> Error {
    Error::new(ErrorKind::Unavailable, operation)
        .with_outcome(Outcome::NotApplied)
        .with_message("the ZooKeeper connection is lost (session suspended); nothing was sent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let cases = [
            (zk::Error::NoNode, ErrorKind::NotFound),
            (zk::Error::NodeExists, ErrorKind::AlreadyExists),
            (zk::Error::BadVersion, ErrorKind::Conflict),
            (zk::Error::NotEmpty, ErrorKind::NotEmpty),
            (zk::Error::ConnectionLoss, ErrorKind::Unavailable),
            (zk::Error::Timeout, ErrorKind::Timeout),
            (zk::Error::NoHosts, ErrorKind::Unavailable),
            (zk::Error::SessionExpired, ErrorKind::SessionLost),
            (zk::Error::NoAuth, ErrorKind::Unauthorized),
            (zk::Error::AuthFailed, ErrorKind::Unauthorized),
            (zk::Error::ClientClosed, ErrorKind::Closed),
            (zk::Error::Unimplemented, ErrorKind::Unsupported),
        ];
        for (error, kind) in cases {
            assert_eq!(kind_of(&error), kind, "{error:?}");
        }
        let key = Key::new("/a").unwrap();
        let e = map(zk::Error::NoNode, Operation::Get, &key);
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.key(), Some("/a"));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.outcome(), Outcome::NotApplied);
        let lost = map(zk::Error::ConnectionLoss, Operation::Put, &key);
        assert_eq!(lost.outcome(), Outcome::Unknown);
    }
}
