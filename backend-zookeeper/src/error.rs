//! Mapping zookeeper-client errors into [`sharedstate_core::Error`].

use sharedstate_core::{Error, ErrorKind, Key, Operation, Version};
use zookeeper_client as zk;

/// Errors of this crate that do not come from the ZooKeeper client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ZkBackendError {
    /// A `zk://` URL or a connect string is malformed.
    #[error("invalid ZooKeeper URL or connect string: {0}")]
    InvalidUrl(String),
    /// A value is larger than the backend accepts.
    #[error("value of {size} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge { size: usize, limit: usize },
    /// No session could be established in time.
    #[error("no ZooKeeper session established within {0:?}")]
    ConnectTimeout(std::time::Duration),
}

/// The [`ErrorKind`] for a zookeeper-client error.
pub(crate) fn kind_of(error: &zk::Error) -> ErrorKind {
    match error {
        zk::Error::NoNode => ErrorKind::NotFound,
        zk::Error::NodeExists => ErrorKind::AlreadyExists,
        zk::Error::BadVersion => ErrorKind::Conflict,
        zk::Error::NotEmpty => ErrorKind::NotEmpty,
        zk::Error::ConnectionLoss
        | zk::Error::Timeout
        | zk::Error::NoHosts
        | zk::Error::Throttled
        | zk::Error::NotReadOnly => ErrorKind::Unavailable,
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

/// Converts a zookeeper-client error, keeping it as the source.
pub(crate) fn map(error: zk::Error, operation: Operation, key: &Key) -> Error {
    let mut mapped = Error::new(kind_of(&error), operation).with_key(key);
    if let zk::Error::NoChildrenForEphemerals = error {
        mapped = mapped.with_message("an ephemeral key (a registration) cannot have children");
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

/// `ValueTooLarge`, raised before anything is sent.
pub(crate) fn too_large(operation: Operation, key: &Key, size: usize, limit: usize) -> Error {
    Error::new(ErrorKind::ValueTooLarge, operation)
        .with_key(key)
        .with_source(ZkBackendError::ValueTooLarge { size, limit })
}

/// `InvalidArgument` for a malformed URL or connect string.
pub(crate) fn invalid_url(message: impl Into<String>) -> Error {
    let message = message.into();
    Error::new(ErrorKind::InvalidArgument, Operation::Connect)
        .with_message(message.clone())
        .with_source(ZkBackendError::InvalidUrl(message))
}

/// `Unavailable` when connecting takes longer than the connect timeout.
pub(crate) fn connect_timeout(timeout: std::time::Duration) -> Error {
    Error::new(ErrorKind::Unavailable, Operation::Connect)
        .with_source(ZkBackendError::ConnectTimeout(timeout))
}

/// A connect failure from the client.
pub(crate) fn connect(error: zk::Error) -> Error {
    Error::new(kind_of(&error), Operation::Connect).with_source(error)
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
    }
}
