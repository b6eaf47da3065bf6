//! Mapping etcd-client failures into [`sharedstate_core::Error`].

use std::future::Future;
use std::time::Duration;

use etcd_client::Client;
use sharedstate_core::backend::Backoff;
use sharedstate_core::{Error, ErrorKind, Key, Operation, Outcome};

use crate::members::Members;

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
    /// The request never left this client (no member could be reached):
    /// nothing was applied.
    #[error("{0}")]
    Unsent(Box<EtcdError>),
    /// The TLS handshake was refused, by the server or by this client
    /// (unknown CA, expired certificate, host name mismatch, a client
    /// certificate missing or refused): nothing was sent, and retrying
    /// does not help.
    #[cfg(feature = "tls")]
    #[error("{}", .0.message)]
    TlsRefused(
        sharedstate_core::tls::TlsRefusal,
        #[source] etcd_client::Error,
    ),
}

/// The core kind for an etcd-client error.
pub(crate) fn kind_of(error: &EtcdError) -> ErrorKind {
    match error {
        EtcdError::Timeout(_) => ErrorKind::Timeout,
        EtcdError::Protocol(_) => ErrorKind::Other,
        EtcdError::Client(e) => client_kind(e),
        EtcdError::Unsent(e) => kind_of(e),
        #[cfg(feature = "tls")]
        EtcdError::TlsRefused(refusal, _) => refusal.kind,
    }
}

/// Whether a failed request may have been applied.
pub(crate) fn outcome_of(error: &EtcdError) -> Outcome {
    match error {
        EtcdError::Unsent(_) => Outcome::NotApplied,
        #[cfg(feature = "tls")]
        EtcdError::TlsRefused(..) => Outcome::NotApplied,
        EtcdError::Timeout(_) => Outcome::Unknown,
        EtcdError::Protocol(_) => Outcome::Unknown,
        // An answer from etcd (a gRPC status other than a transport
        // failure) means it was refused.
        EtcdError::Client(e) => match client_kind(e) {
            ErrorKind::Unavailable | ErrorKind::Other | ErrorKind::Timeout => Outcome::Unknown,
            _ => Outcome::NotApplied,
        },
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
    let mut out = Error::new(kind_of(&error), operation).with_outcome(outcome_of(&error));
    if let Some(key) = key {
        out = out.with_key(key);
    }
    if let Some(message) = explanation(&error, operation) {
        out = out.with_message(message);
    }
    out.with_source(error)
}

/// What a refusal means, where the error alone would not say it.
fn explanation(error: &EtcdError, operation: Operation) -> Option<String> {
    match error {
        #[cfg(feature = "tls")]
        EtcdError::TlsRefused(refusal, _) => Some(refusal.message.clone()),
        EtcdError::Unsent(inner) => explanation(inner, operation),
        EtcdError::Client(etcd_client::Error::GRpcStatus(status))
            if grpc_kind(status.code() as i32, status.message()) == ErrorKind::Unauthorized =>
        {
            let access = if operation.is_write() {
                "write"
            } else {
                "read"
            };
            Some(if status.message().contains("permission denied") {
                format!(
                    "etcd denied the request ({}): this user's roles grant no {access} access \
                     to this key",
                    status.message()
                )
            } else {
                format!(
                    "etcd refused the credentials ({}): check the user and password",
                    status.message()
                )
            })
        }
        _ => None,
    }
}

/// Bound on the TLS probe after a transport failure.
#[cfg(feature = "tls")]
const TLS_PROBE_BOUND: Duration = Duration::from_secs(3);

/// A TLS refusal in `error`, from the member at `index`.
#[cfg(feature = "tls")]
fn tls_refusal(
    members: &Members,
    index: usize,
    error: &etcd_client::Error,
) -> Option<sharedstate_core::tls::TlsRefusal> {
    let identity = members.tls_identity()?;
    let host = members.endpoint_label(index);
    // etcd-client's error does not name its cause as `source()`: start
    // from the status or transport error it wraps.
    let cause: &(dyn std::error::Error + 'static) = match error {
        etcd_client::Error::GRpcStatus(status) => status,
        etcd_client::Error::TransportError(transport) => transport,
        etcd_client::Error::IoError(io) => io,
        other => other,
    };
    sharedstate_core::tls::explain_chain(cause, &host, identity)
}

/// Without TLS there is no handshake to refuse.
#[cfg(not(feature = "tls"))]
fn tls_refusal(_: &Members, _: usize, _: &etcd_client::Error) -> Option<std::convert::Infallible> {
    None
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
    /// outcome would be unknown otherwise). Unconditional overwrites too:
    /// a retry after an unknown outcome could write our value over a
    /// newer one written in between.
    Write,
}

/// Runs one etcd call (`attempt` makes the request on the client it is
/// given) within `timeout`, and maps its failure. Each attempt goes to the
/// member [`Members`] prefers and gets a share of the timeout; a member that
/// fails or does not answer in time is avoided, and a retry goes to another
/// one, as `retry` allows: a read after any transport failure or timeout, a
/// write only when it surely never left.
pub(crate) async fn call<T, F, Fut>(
    members: &Members,
    timeout: Duration,
    operation: Operation,
    key: Option<&Key>,
    retry: Retry,
    attempt: F,
) -> Result<T, Error>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    call_raw(members, timeout, retry, attempt)
        .await
        .map_err(|error| to_error(operation, key, error))
}

/// Like [`call`], keeping the private error (for internal retry loops).
pub(crate) async fn call_raw<T, F, Fut>(
    members: &Members,
    timeout: Duration,
    retry: Retry,
    mut attempt: F,
) -> Result<T, EtcdError>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let share = members.attempt_timeout(timeout);
    // Between rounds: 5 ms doubling to 200 ms, jittered.
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(200));
    let mut pause = backoff.next_delay();
    // Whether any attempt may have reached a member.
    let mut sent = false;
    let mut round = 0;
    loop {
        let index = members.index_for(round);
        round += 1;
        let client = match members.client(index).await {
            Ok(client) => client,
            Err(error) => {
                #[cfg(feature = "tls")]
                if let Some(refusal) = tls_refusal(members, index, &error) {
                    return Err(EtcdError::TlsRefused(refusal, error));
                }
                members.failed(index);
                if tokio::time::Instant::now() + pause >= deadline {
                    let error = EtcdError::Client(error);
                    return Err(if sent {
                        error
                    } else {
                        EtcdError::Unsent(Box::new(error))
                    });
                }
                // `pause` is the kit backoff's next delay (checked against
                // the deadline first).
                tokio::time::sleep(pause).await;
                pause = backoff.next_delay();
                continue;
            }
        };
        let attempt_deadline = deadline.min(tokio::time::Instant::now() + share);
        let error = match tokio::time::timeout_at(attempt_deadline, attempt(client)).await {
            Ok(Ok(value)) => {
                members.answered(index);
                return Ok(value);
            }
            Ok(Err(error)) => error,
            Err(_) => {
                members.failed(index);
                sent = true;
                let time_left = tokio::time::Instant::now() + pause < deadline;
                if retry == Retry::Read && time_left {
                    tracing::debug!(
                        index,
                        "an etcd member did not answer in time; asking another"
                    );
                    continue;
                }
                return Err(EtcdError::Timeout(timeout));
            }
        };
        // A refused handshake is refused again on retry (every member has
        // the same CA and certificates): say why now.
        #[cfg(feature = "tls")]
        if let Some(refusal) = tls_refusal(members, index, &error) {
            return Err(EtcdError::TlsRefused(refusal, error));
        }
        // A server that refuses the client's certificate after a TLS 1.3
        // handshake often shows up here only as a broken pipe (the request
        // was written after the server's alert): ask with a probe.
        #[cfg(feature = "tls")]
        if client_kind(&error) == ErrorKind::Unavailable {
            if let Some(refusal) = members.probe_tls(index, TLS_PROBE_BOUND).await {
                return Err(EtcdError::TlsRefused(refusal, error));
            }
        }
        #[cfg(not(feature = "tls"))]
        let _ = tls_refusal(members, index, &error);
        let unsent = never_sent(&error);
        let transport = client_kind(&error) == ErrorKind::Unavailable;
        if transport {
            members.failed(index);
        }
        sent |= !unsent;
        let again = unsent || (retry == Retry::Read && transport);
        if !again || tokio::time::Instant::now() + pause >= deadline {
            let error = EtcdError::Client(error);
            return Err(if sent {
                error
            } else {
                EtcdError::Unsent(Box::new(error))
            });
        }
        tracing::debug!(%error, "etcd call failed; retrying on another member");
        // The kit backoff's delay, checked against the deadline above.
        tokio::time::sleep(pause).await;
        pause = backoff.next_delay();
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
