//! Why a TLS connection was refused, in words an operator can act on
//! (feature `tls`).
//!
//! Client crates report a failed handshake deep in their error chains
//! (etcd-client: tonic, hyper, an `io::Error` holding the `rustls::Error`)
//! or not at all (zookeeper-client logs it and retries until its session
//! timeout). Backends pass the failure here, or run a handshake of their
//! own, and get back the [`ErrorKind`] and a message that names the cause:
//! an unknown CA, an expired certificate, a host name the certificate does
//! not name, a client certificate the server requires or refused.

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError};

use crate::error::ErrorKind;

/// A refused TLS connection: what kind of failure it is and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRefusal {
    /// [`ErrorKind::Unauthorized`] when a certificate was refused (by
    /// either side; retrying will not help), [`ErrorKind::Unavailable`]
    /// when the peer does not speak TLS there.
    pub kind: ErrorKind,
    /// The cause, naming the host: `the certificate of 127.0.0.1:2281 is
    /// not signed by a CA in ca_file (unknown issuer)`.
    pub message: String,
}

/// What this client presented, for the message about a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIdentity {
    /// A client certificate was configured.
    Presented,
    /// No client certificate was configured.
    None,
    /// The backend cannot tell (TLS options built by the application).
    Unknown,
}

/// Finds a `rustls::Error` in `error`'s chain (also inside `io::Error`s,
/// whose `source()` skips the error they wrap) and explains it.
/// `None` when the chain holds no TLS failure.
pub fn explain_chain(
    error: &(dyn std::error::Error + 'static),
    host: &str,
    identity: ClientIdentity,
) -> Option<TlsRefusal> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    // Bounded: a chain is short, but a cyclic one must not hang us.
    for _ in 0..32 {
        let current = next?;
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(explain(tls, host, identity));
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                    return Some(explain(tls, host, identity));
                }
                if let Some(refusal) = explain_text(io.kind(), &inner.to_string(), host, identity) {
                    return Some(refusal);
                }
                next = Some(inner);
                continue;
            }
        }
        next = current.source();
    }
    None
}

/// tokio-rustls hands a failure after the handshake (the server's alert
/// refusing the client's certificate, which TLS 1.3 sends once the client
/// has finished) and a peer that hung up mid-handshake back as text
/// inside an `io::Error` (`received fatal alert: BadCertificate`, `tls
/// handshake eof`), not as a `rustls::Error`: those two shapes are read
/// from the text.
fn explain_text(
    kind: std::io::ErrorKind,
    text: &str,
    host: &str,
    identity: ClientIdentity,
) -> Option<TlsRefusal> {
    if let Some(name) = text.strip_prefix("received fatal alert: ") {
        let alert = alert_named(name.trim())?;
        return Some(explain(
            &rustls::Error::AlertReceived(alert),
            host,
            identity,
        ));
    }
    if kind == std::io::ErrorKind::UnexpectedEof && text.contains("handshake") {
        return Some(TlsRefusal {
            kind: ErrorKind::Unavailable,
            message: format!(
                "{host} closed the connection during the TLS handshake: is it the server's TLS \
                 port (ZooKeeper's secureClientPort, etcd's https client URL)?"
            ),
        });
    }
    None
}

/// The alerts a refused certificate comes with, by their rustls names.
fn alert_named(name: &str) -> Option<AlertDescription> {
    Some(match name {
        "BadCertificate" => AlertDescription::BadCertificate,
        "CertificateRequired" => AlertDescription::CertificateRequired,
        "CertificateUnknown" => AlertDescription::CertificateUnknown,
        "CertificateExpired" => AlertDescription::CertificateExpired,
        "CertificateRevoked" => AlertDescription::CertificateRevoked,
        "UnsupportedCertificate" => AlertDescription::UnsupportedCertificate,
        "UnknownCA" => AlertDescription::UnknownCA,
        "AccessDenied" => AlertDescription::AccessDenied,
        "HandshakeFailure" => AlertDescription::HandshakeFailure,
        _ => return None,
    })
}

/// Explains one handshake failure with `host` (`host:port` as the user
/// wrote it).
pub fn explain(error: &rustls::Error, host: &str, identity: ClientIdentity) -> TlsRefusal {
    let unauthorized = |message: String| TlsRefusal {
        kind: ErrorKind::Unauthorized,
        message,
    };
    match error {
        rustls::Error::InvalidCertificate(cause) => unauthorized(server_certificate(cause, host)),
        rustls::Error::AlertReceived(alert) => unauthorized(alert_message(*alert, host, identity)),
        rustls::Error::NoCertificatesPresented => {
            unauthorized(format!("{host} presented no TLS certificate"))
        }
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => TlsRefusal {
            kind: ErrorKind::Unavailable,
            message: format!(
                "{host} does not speak TLS there ({error}): is it the server's TLS port \
                 (ZooKeeper's secureClientPort, etcd's https client URL)?"
            ),
        },
        other => unauthorized(format!("the TLS handshake with {host} failed: {other}")),
    }
}

fn server_certificate(cause: &CertificateError, host: &str) -> String {
    let subject = format!("the TLS certificate of {host}");
    match cause {
        CertificateError::UnknownIssuer => format!(
            "{subject} is not signed by a CA this client trusts (unknown issuer): \
             is ca_file the CA that signed the server's certificate?"
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("{subject} has expired ({cause}): the server needs a renewed certificate")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("{subject} is not valid yet ({cause}): check the clocks")
        }
        CertificateError::NotValidForName => format!(
            "{subject} does not name the host this client connected to (host name mismatch)"
        ),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "{subject} does not name {} (host name mismatch); it names {}: connect by one of \
             those names",
            server_name(expected),
            if presented.is_empty() {
                "nothing".to_owned()
            } else {
                presented
                    .iter()
                    .map(|name| plain_name(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        CertificateError::Revoked => format!("{subject} has been revoked"),
        CertificateError::BadSignature => format!("{subject} has a bad signature"),
        other => format!("{subject} was refused: {other}"),
    }
}

/// `localhost` out of rustls's `DnsName("localhost")`.
fn plain_name(presented: &str) -> &str {
    presented
        .split_once('(')
        .map_or(presented, |(_, rest)| rest.trim_end_matches(')'))
        .trim_matches('"')
}

fn server_name(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

fn alert_message(alert: AlertDescription, host: &str, identity: ClientIdentity) -> String {
    match (alert, identity) {
        (AlertDescription::CertificateRequired, _)
        | (
            AlertDescription::BadCertificate
            | AlertDescription::HandshakeFailure
            | AlertDescription::CertificateUnknown,
            ClientIdentity::None,
        ) => format!(
            "{host} requires a client certificate (TLS alert {alert:?}) and this client has \
             none: set cert_file and key_file"
        ),
        (AlertDescription::CertificateExpired, _) => format!(
            "{host} refused this client's certificate as expired (TLS alert {alert:?}): renew \
             the certificate in cert_file"
        ),
        (_, ClientIdentity::Presented) => format!(
            "{host} refused this client's certificate (TLS alert {alert:?}): is cert_file signed \
             by a CA the server trusts, meant for client authentication, and not expired?"
        ),
        (
            AlertDescription::BadCertificate
            | AlertDescription::HandshakeFailure
            | AlertDescription::CertificateUnknown,
            ClientIdentity::Unknown,
        ) => format!(
            "{host} refused the TLS connection (TLS alert {alert:?}): it requires a client \
             certificate signed by a CA it trusts, and this client presented none or another"
        ),
        (_, _) => format!("{host} refused the TLS connection (TLS alert {alert:?})"),
    }
}

/// How long [`probe`] waits, after a handshake, for the server to refuse
/// the client's certificate (TLS 1.3 servers say so after the handshake).
const REFUSAL_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);

/// A rustls client config from PEM: trust only `ca_pem`, present
/// `identity` (certificate chain, private key) when given.
///
/// # Errors
///
/// A message naming which PEM is unusable.
pub fn client_config(
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("the CA file: {e}"))?;
        roots.add(cert).map_err(|e| format!("the CA file: {e}"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|_| "the client key file holds no private key".to_owned())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())
        }
    }
}

/// One TLS handshake with `host:port` (verifying the certificate for
/// `name`), then a short read for a refusal the server sends after the
/// handshake. The refusal, if there is a clear one; `None` when the
/// handshake went through or failed without a TLS cause (nothing
/// listening, no answer: the client's own error says that). Bound it with
/// a timeout.
pub async fn probe(
    config: std::sync::Arc<rustls::ClientConfig>,
    host: &str,
    port: u16,
    name: &str,
    identity: ClientIdentity,
) -> Option<TlsRefusal> {
    use tokio::io::AsyncReadExt;
    let label = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).ok()?;
    let tcp = match tokio::net::TcpStream::connect((host, port)).await {
        Ok(tcp) => tcp,
        Err(e) => {
            tracing::debug!(host = %label, error = %e, "TLS probe: no TCP connection");
            return None;
        }
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut stream = match connector.connect(server_name, tcp).await {
        Ok(stream) => stream,
        Err(e) => return explain_probe(&e, &label, identity),
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(REFUSAL_WAIT, stream.read(&mut byte)).await {
        // The server waits for a request: TLS is fine.
        Err(_) | Ok(Ok(_)) => None,
        Ok(Err(e)) => explain_probe(&e, &label, identity),
    }
}

fn explain_probe(
    error: &std::io::Error,
    label: &str,
    identity: ClientIdentity,
) -> Option<TlsRefusal> {
    // A plain port reads the ClientHello as garbage and hangs up.
    if matches!(
        error.kind(),
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
    ) && error
        .get_ref()
        .is_none_or(|inner| inner.downcast_ref::<rustls::Error>().is_none())
    {
        return explain_text(
            std::io::ErrorKind::UnexpectedEof,
            "tls handshake eof",
            label,
            identity,
        );
    }
    let refusal = explain_chain(error, label, identity);
    if refusal.is_none() {
        tracing::debug!(host = %label, %error, "TLS probe: failed without a TLS cause");
    }
    refusal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_named() {
        let host = "127.0.0.1:2281";
        let unknown = explain(
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            host,
            ClientIdentity::None,
        );
        assert_eq!(unknown.kind, ErrorKind::Unauthorized);
        assert!(unknown.message.contains("unknown issuer"), "{unknown:?}");
        assert!(unknown.message.contains(host), "{unknown:?}");
        let required = explain(
            &rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            host,
            ClientIdentity::None,
        );
        assert!(required.message.contains("requires a client certificate"));
        let refused = explain(
            &rustls::Error::AlertReceived(AlertDescription::BadCertificate),
            host,
            ClientIdentity::Presented,
        );
        assert!(refused
            .message
            .contains("refused this client's certificate"));
        let plain = explain(
            &rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            host,
            ClientIdentity::None,
        );
        assert_eq!(plain.kind, ErrorKind::Unavailable);
    }

    #[test]
    fn the_cause_is_found_inside_io_errors() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        );
        let found = explain_chain(&Outer(io), "h:1", ClientIdentity::None).expect("found");
        assert!(found.message.contains("has expired"), "{found:?}");
        let none = explain_chain(
            &Outer(std::io::Error::other("reset")),
            "h:1",
            ClientIdentity::None,
        );
        assert_eq!(none, None);
        // As etcd-client reports a server's refusal after the handshake.
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: BadCertificate",
        );
        let found = explain_chain(&Outer(alert), "h:1", ClientIdentity::None).expect("found");
        assert!(
            found.message.contains("requires a client certificate"),
            "{found:?}"
        );
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "tls handshake eof");
        let found = explain_chain(&Outer(eof), "h:1", ClientIdentity::None).expect("found");
        assert_eq!(found.kind, ErrorKind::Unavailable);
    }
}
