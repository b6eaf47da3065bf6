//! TLS to ZooKeeper's `secureClientPort` (feature `tls`): the settings,
//! and the handshake probe that names why a TLS connection is refused.
//!
//! zookeeper-client does the TLS itself (rustls), but a refused handshake
//! only reaches its debug log: it retries until the session timeout and
//! then reports a plain timeout. So while the client connects, the backend
//! runs one handshake of its own with the same certificates; a refusal
//! (unknown CA, expired certificate, host name mismatch, a client
//! certificate required or refused) ends the connect at once with
//! `Unauthorized` and the cause.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use sharedstate_core::tls::{ClientIdentity, TlsRefusal};
use sharedstate_core::{Error, ErrorKind, Operation, Outcome, Result};
use zookeeper_client as zk;

/// TLS settings for ZooKeeper: the CA that signed the servers'
/// certificates and, where the server asks for one (`ssl.clientAuth`),
/// this client's certificate and private key, all PEM.
///
/// `Debug` shows neither the private key nor the certificates.
///
/// ```
/// use sharedstate_zookeeper::ZooKeeperTls;
/// # let (ca_pem, cert_pem, key_pem) = (String::new(), String::new(), String::new());
/// let tls = ZooKeeperTls::new(ca_pem).with_identity(cert_pem, key_pem);
/// // ZooKeeperBackend::builder("zk1:2281,zk2:2281/app").tls(tls).connect().await?
/// ```
#[derive(Clone)]
pub struct ZooKeeperTls {
    ca_pem: String,
    identity: Option<(String, String)>,
}

impl fmt::Debug for ZooKeeperTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZooKeeperTls")
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field(
                "client_certificate",
                &self.identity.as_ref().map(|_| "<present>"),
            )
            .field("client_key", &self.identity.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ZooKeeperTls {
    /// Trusts the CA certificates in `ca_pem` (and only those).
    pub fn new(ca_pem: impl Into<String>) -> Self {
        ZooKeeperTls {
            ca_pem: ca_pem.into(),
            identity: None,
        }
    }

    /// Presents `cert_pem` (with its chain) and proves it with `key_pem`
    /// when the server asks for a client certificate.
    pub fn with_identity(
        mut self,
        cert_pem: impl Into<String>,
        key_pem: impl Into<String>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Reads the PEM files: the CA, and optionally the client's certificate
    /// and key.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` naming the file that cannot be read.
    pub fn from_files(ca_file: &Path, identity: Option<(&Path, &Path)>) -> Result<Self> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| {
                Error::new(ErrorKind::InvalidArgument, Operation::Connect)
                    .with_message(format!("cannot read {}: {e}", path.display()))
            })
        };
        let mut tls = ZooKeeperTls::new(read(ca_file)?);
        if let Some((cert, key)) = identity {
            tls = tls.with_identity(read(cert)?, read(key)?);
        }
        Ok(tls)
    }

    pub(crate) fn identity(&self) -> ClientIdentity {
        match self.identity {
            Some(_) => ClientIdentity::Presented,
            None => ClientIdentity::None,
        }
    }

    /// zookeeper-client's options; checks the PEM on the way.
    pub(crate) fn client_options(&self) -> Result<zk::TlsOptions> {
        let invalid = |what: &str, e: zk::Error| {
            Error::new(ErrorKind::InvalidArgument, Operation::Connect)
                .with_message(format!("{what}: {e}"))
        };
        let mut options = zk::TlsOptions::new()
            .with_pem_ca(&self.ca_pem)
            .map_err(|e| invalid("the CA (ca_file) holds no usable PEM certificate", e))?;
        if let Some((cert, key)) = &self.identity {
            options = options.with_pem_identity(cert, key).map_err(|e| {
                invalid(
                    "the client certificate (cert_file) or key (key_file) is not usable PEM",
                    e,
                )
            })?;
        }
        Ok(options)
    }

    /// The same trust and identity as a rustls config, for the probe.
    fn rustls_config(&self) -> std::result::Result<rustls::ClientConfig, String> {
        let identity = self
            .identity
            .as_ref()
            .map(|(cert, key)| (cert.as_bytes(), key.as_bytes()));
        sharedstate_core::tls::client_config(provider(), self.ca_pem.as_bytes(), identity)
    }
}

/// The process's rustls provider, or aws-lc-rs (which zookeeper-client
/// always enables).
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// zookeeper-client builds its TLS config with `ClientConfig::builder()`,
/// which needs a process-wide rustls provider when more than one is
/// compiled in (etcd's TLS brings ring, zookeeper-client aws-lc-rs): it
/// panics otherwise (`tests/tls_provider.rs` shows it). Installs aws-lc-rs
/// unless the application installed one.
pub(crate) fn ensure_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Err: another thread installed one first, which is as good.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// The hosts of a connect string (without chroot) that use TLS, as
/// `(host, port)`: every host of a `zks://` URL except those written
/// `tcp://host:port`.
pub(crate) fn tls_hosts(hosts: &str) -> Vec<(String, u16)> {
    hosts
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.starts_with("tcp://"))
        .filter_map(|entry| split_host_port(entry.trim_start_matches("tcp+tls://")))
        .collect()
}

/// `host:port` (`[v6]:port`, port default 2181) into its parts.
pub(crate) fn split_host_port(entry: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
        let (host, rest) = v6.split_once(']')?;
        (host, rest.strip_prefix(':'))
    } else {
        match entry.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    let port = match port {
        None => 2181,
        Some(port) => port.parse().ok()?,
    };
    Some((host.to_owned(), port))
}

/// Checks that every TLS host is a name or address TLS can verify
/// (zookeeper-client would panic on one that is not).
pub(crate) fn check_host_names(hosts: &str) -> Result<()> {
    for (host, _) in tls_hosts(hosts) {
        if ServerName::try_from(host.as_str()).is_err() {
            return Err(
                Error::new(ErrorKind::InvalidArgument, Operation::Connect).with_message(format!(
                    "{host:?} is neither a DNS name nor an IP address, so TLS cannot verify it"
                )),
            );
        }
    }
    Ok(())
}

/// One handshake with each TLS host in turn, each within `bound`; the first
/// definite refusal. `None` when every handshake went through or none gave
/// a clear answer (nothing listening, no answer: the connect's own error
/// says that).
pub(crate) async fn probe(hosts: &str, tls: &ZooKeeperTls, bound: Duration) -> Option<TlsRefusal> {
    let config = match tls.rustls_config() {
        Ok(config) => Arc::new(config),
        Err(why) => {
            tracing::debug!(%why, "cannot build the TLS probe's config");
            return None;
        }
    };
    for (host, port) in tls_hosts(hosts) {
        // zookeeper-client checks the certificate against the host as written.
        let probe =
            sharedstate_core::tls::probe(Arc::clone(&config), &host, port, &host, tls.identity());
        match tokio::time::timeout(bound, probe).await {
            Ok(Some(refusal)) => return Some(refusal),
            Ok(None) => {}
            Err(_) => tracing::debug!(%host, port, "TLS probe: no answer in time"),
        }
    }
    None
}

/// The connect error for a refused TLS connection: nothing was sent.
pub(crate) fn refused(refusal: TlsRefusal) -> Error {
    Error::new(refusal.kind, Operation::Connect)
        .with_outcome(Outcome::NotApplied)
        .with_message(refusal.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_hosts_skip_plain_ones_and_default_the_port() {
        assert_eq!(
            tls_hosts("a:2281,tcp://b:2181,tcp+tls://c,[::1]:7"),
            vec![
                ("a".to_owned(), 2281),
                ("c".to_owned(), 2181),
                ("::1".to_owned(), 7)
            ]
        );
        assert!(check_host_names("a_b!:1").is_err());
        assert!(check_host_names("localhost:2281,127.0.0.1:2281").is_ok());
    }

    #[test]
    fn debug_hides_the_key() {
        let tls = ZooKeeperTls::new("CA-PEM").with_identity("CERT-PEM", "PRIVATE-KEY-PEM");
        let shown = format!("{tls:?}");
        assert!(!shown.contains("PRIVATE-KEY-PEM"), "{shown}");
        assert!(!shown.contains("CERT-PEM"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}
