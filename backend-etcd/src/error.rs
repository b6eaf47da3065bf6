//! Mapping etcd-client failures into [`sharedstate_core::Error`].

use std::future::Future;
use std::time::Duration;

use sharedstate_core::{Error, ErrorKind, Key, Operation};

/// The private error this crate wraps as the `source` of a core [`Error`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum EtcdError {
    /// A failure reported by etcd-client (transport, gRPC status, ...).
    #[error(transparent)]
    Client(#[from] etcd_client::Error),
    /// etcd did not answer within the request timeout.
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// etcd answered with something this backend cannot interpret.
    #[error("unexpected response from etcd: {0}")]
    Protocol(&'static str),
}

/// The core kind for an etcd-client error.
pub(crate) fn kind_of(error: &EtcdError) -> ErrorKind {
    match error {
        EtcdError::Timeout(_) => ErrorKind::Unavailable,
        EtcdError::Protocol(_) => ErrorKind::Other,
        EtcdError::Client(e) => client_kind(e),
    }
}

fn client_kind(error: &etcd_client::Error) -> ErrorKind {
    use etcd_client::Error as E;
    match error {
        E::InvalidArgs(_) | E::InvalidUri(_) | E::InvalidMetadataValue(_) => {
            ErrorKind::InvalidArgument
        }
        E::IoError(_) | E::TransportError(_) | E::WatchError(_) | E::EndpointError(_) => {
            ErrorKind::Unavailable
        }
        E::LeaseKeepAliveError(message) if message.contains("not found") => ErrorKind::SessionLost,
        E::LeaseKeepAliveError(_) => ErrorKind::Unavailable,
        E::GRpcStatus(status) => grpc_kind(status.code() as i32, status.message()),
        _ => ErrorKind::Other,
    }
}

/// etcd's server errors (`rpctypes`) only differ by message within a gRPC
/// code, so the message is matched where the code is not enough.
fn grpc_kind(code: i32, message: &str) -> ErrorKind {
    // Numeric gRPC codes (stable, from the gRPC spec).
    const CANCELLED: i32 = 1;
    const UNKNOWN: i32 = 2;
    const INVALID_ARGUMENT: i32 = 3;
    const DEADLINE_EXCEEDED: i32 = 4;
    const NOT_FOUND: i32 = 5;
    const PERMISSION_DENIED: i32 = 7;
    const RESOURCE_EXHAUSTED: i32 = 8;
    const UNAVAILABLE: i32 = 14;
    const UNAUTHENTICATED: i32 = 16;
    match code {
        NOT_FOUND if message.contains("lease not found") => ErrorKind::SessionLost,
        INVALID_ARGUMENT if message.contains("request is too large") => ErrorKind::ValueTooLarge,
        INVALID_ARGUMENT if message.contains("authentication failed") => ErrorKind::Unauthorized,
        INVALID_ARGUMENT if message.contains("user name is empty") => ErrorKind::Unauthorized,
        RESOURCE_EXHAUSTED if message.contains("larger than max") => ErrorKind::ValueTooLarge,
        PERMISSION_DENIED | UNAUTHENTICATED => ErrorKind::Unauthorized,
        CANCELLED | DEADLINE_EXCEEDED | UNAVAILABLE | RESOURCE_EXHAUSTED => ErrorKind::Unavailable,
        UNKNOWN if message.contains("transport") || message.contains("connection") => {
            ErrorKind::Unavailable
        }
        INVALID_ARGUMENT => ErrorKind::InvalidArgument,
        _ => ErrorKind::Other,
    }
}

/// Builds the core error for a failed etcd call.
pub(crate) fn to_error(operation: Operation, key: Option<&Key>, error: EtcdError) -> Error {
    let mut out = Error::new(kind_of(&error), operation);
    if let Some(key) = key {
        out = out.with_key(key);
    }
    out.with_source(error)
}

/// The error for a call made after [`close`](crate::EtcdBackend::close).
pub(crate) fn closed(operation: Operation, key: Option<&Key>) -> Error {
    let mut out =
        Error::new(ErrorKind::Closed, operation).with_message("the etcd client is closed");
    if let Some(key) = key {
        out = out.with_key(key);
    }
    out
}

/// Which failures of a call may be retried (on another endpoint, within
/// the same request timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// A read: retried after any transport failure.
    Read,
    /// A write: retried only when it surely never reached a server (its
    /// outcome would be unknown otherwise).
    Write,
}

/// Runs one etcd call (`attempt` makes the request) with the request
/// timeout, retrying as `retry` allows, and maps its failure. With several
/// endpoints, etcd-client's balancer may route a request to a member that
/// is down: such a request never left, and goes to another one.
pub(crate) async fn call<T, F, Fut>(
    timeout: Duration,
    operation: Operation,
    key: Option<&Key>,
    retry: Retry,
    attempt: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    call_raw(timeout, retry, attempt)
        .await
        .map_err(|error| to_error(operation, key, error))
}

/// Like [`call`], keeping the private error (for internal retry loops).
pub(crate) async fn call_raw<T, F, Fut>(
    timeout: Duration,
    retry: Retry,
    mut attempt: F,
) -> Result<T, EtcdError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        let error = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error,
            Err(_) => return Err(EtcdError::Timeout(timeout)),
        };
        let again = never_sent(&error)
            || (retry == Retry::Read && client_kind(&error) == ErrorKind::Unavailable);
        if !again || tokio::time::Instant::now() + pause >= deadline {
            return Err(EtcdError::Client(error));
        }
        tracing::debug!(%error, "etcd call failed before reaching a server; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// True when the failure proves the request never reached a server: the
/// connection could not be made, or hyper gave the request back unsent
/// because the connection closed first.
fn never_sent(error: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = error else {
        return false;
    };
    const CANCELLED: i32 = 1;
    const UNAVAILABLE: i32 = 14;
    let code = status.code() as i32;
    if code == UNAVAILABLE && status.message().contains("tcp connect error") {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        // hyper's "operation was canceled: connection closed": the request
        // was queued on a connection that closed before it was written.
        if code == CANCELLED && cause.to_string().contains("connection closed") {
            return true;
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_kinds() {
        assert_eq!(
            grpc_kind(5, "etcdserver: requested lease not found"),
            ErrorKind::SessionLost
        );
        assert_eq!(
            grpc_kind(3, "etcdserver: request is too large"),
            ErrorKind::ValueTooLarge
        );
        assert_eq!(
            grpc_kind(
                3,
                "etcdserver: authentication failed, invalid user ID or password"
            ),
            ErrorKind::Unauthorized
        );
        assert_eq!(
            grpc_kind(14, "etcdserver: no leader"),
            ErrorKind::Unavailable
        );
        assert_eq!(
            grpc_kind(7, "etcdserver: permission denied"),
            ErrorKind::Unauthorized
        );
        assert_eq!(grpc_kind(9, "whatever"), ErrorKind::Other);
    }
}
