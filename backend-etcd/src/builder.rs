//! [`EtcdBuilder`] and `etcd://` URLs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use sharedstate_core::{Error, ErrorKind, Operation, Outcome, Result};
use tokio_util::sync::CancellationToken;

use crate::error::{call_raw, kind_of, to_error, Retry};
use crate::lease::LeaseKeeper;
use crate::members::Members;
use crate::registration::Registry;
use crate::{EtcdBackend, Inner};

/// Default lease TTL of a session.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(10);
/// Default time allowed to reach etcd when connecting.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time allowed for one request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection settings shared by the backend's tasks.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) endpoints: Vec<String>,
    pub(crate) options: ConnectOptions,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The options hold the password: never print them.
        f.debug_struct("Config")
            .field("endpoints", &self.endpoints)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds an [`EtcdBackend`]: `EtcdBackend::builder(["h1:2379", "h2:2379"])`,
/// options, then [`connect`](Self::connect).
///
/// Endpoints are `host:port` (plain HTTP, or HTTPS when TLS is configured)
/// or full `http://` / `https://` URLs.
#[derive(Clone)]
pub struct EtcdBuilder {
    endpoints: Vec<String>,
    user: Option<(String, String)>,
    connect_timeout: Duration,
    request_timeout: Duration,
    session_ttl: Duration,
    /// The TLS options and whether they hold a client certificate.
    #[cfg(feature = "tls")]
    tls: Option<(
        etcd_client::TlsOptions,
        sharedstate_core::tls::ClientIdentity,
    )>,
    /// The probe that names a refused handshake, when the PEM is known.
    #[cfg(feature = "tls")]
    tls_probe: Option<crate::members::TlsProbe>,
}

impl fmt::Debug for EtcdBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBuilder")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("session_ttl", &self.session_ttl)
            .finish_non_exhaustive()
    }
}

impl EtcdBuilder {
    pub(crate) fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            user: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            session_ttl: DEFAULT_SESSION_TTL,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            tls_probe: None,
        }
    }

    /// Authenticates as `name` with `password` (etcd's user/password auth).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// How long [`connect`](Self::connect) may take to reach etcd
    /// (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one request may take before it fails with `Unavailable`
    /// (default [`DEFAULT_REQUEST_TIMEOUT`]). Also bounds how long a
    /// keep-alive may stay unanswered before the session is `Suspended`.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The session lease's TTL, rounded up to whole seconds (default
    /// [`DEFAULT_SESSION_TTL`]). Locks and registrations outlive a lost
    /// connection by up to this long; etcd may raise very small values to
    /// its own minimum.
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    /// TLS settings (CA, client identity, domain name) for `https://`
    /// endpoints, or for `host:port` endpoints which then use HTTPS.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: etcd_client::TlsOptions) -> Self {
        self.tls = Some((tls, sharedstate_core::tls::ClientIdentity::Unknown));
        self
    }

    /// Parses an `etcd://` or `etcds://` URL into a builder, without
    /// connecting; see [`EtcdBackend::from_url`] for the forms and keys.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a malformed URL or an unknown key, TLS keys on
    /// an `etcd://` URL, or a TLS file that cannot be read.
    pub fn from_url(url: &str) -> Result<EtcdBuilder> {
        parse_url(url)
    }

    /// Connects, grants the session lease and starts its keep-alive task.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for no or malformed endpoints, `Unavailable` when
    /// etcd cannot be reached within the connect timeout, `Unauthorized`
    /// when the credentials are refused.
    pub async fn connect(self) -> Result<EtcdBackend> {
        let op = Operation::Connect;
        if self.endpoints.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, op)
                .with_message("at least one etcd endpoint is needed"));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            // HTTP/2 pings close a connection whose member stopped
            // answering (frozen, partitioned): its requests then fail fast.
            .with_keep_alive(
                Duration::from_secs(2),
                self.request_timeout.min(Duration::from_secs(5)),
            )
            .with_keep_alive_while_idle(true)
            // Watches and keep-alives on a member without a leader fail
            // instead of staying silent.
            .with_require_leader(true);
        if let Some((name, password)) = &self.user {
            // etcd's auth tokens expire (5 min for simple tokens): refresh
            // them, as sessions and watches live much longer.
            options = options
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        #[cfg(feature = "tls")]
        if let Some((tls, _)) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        let config = Config {
            endpoints: self.endpoints.clone(),
            options,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
        };
        let members = Members::new(
            &config.endpoints,
            config.options.clone(),
            config.connect_timeout,
        );
        #[cfg(feature = "tls")]
        let members = members
            .with_tls_identity(self.tls.as_ref().map(|(_, identity)| *identity))
            .with_tls_probe(self.tls_probe.clone());
        let members = Arc::new(members);
        let ttl = i64::try_from(self.session_ttl.as_secs_f64().ceil() as u64)
            .unwrap_or(i64::MAX)
            .max(1);
        let grant = |client: Client| {
            let mut leases = client.lease_client();
            async move { leases.grant(ttl, None).await }
        };
        let granted = match call_raw(&members, self.connect_timeout, Retry::Write, grant).await {
            Ok(granted) => granted,
            Err(error) if kind_of(&error) == ErrorKind::Timeout => {
                return Err(to_error(op, None, error)
                    .with_outcome(Outcome::NotApplied)
                    .with_message(format!("cannot reach etcd at {:?}", self.endpoints)))
            }
            Err(error) => {
                let error = to_error(op, None, error);
                let context = format!("granting the session lease on {:?}", self.endpoints);
                let message = match error.message() {
                    Some(cause) => format!("{context}: {cause}"),
                    None => context,
                };
                return Err(error.with_message(message));
            }
        };
        let inner = Arc::new(Inner {
            members,
            config,
            session: LeaseKeeper::new(granted.id(), granted.ttl()),
            registry: tokio::sync::Mutex::new(Registry::default()),
            closed: CancellationToken::new(),
            lock_queues: crate::lock::LocalQueues::default(),
        });
        tokio::spawn(crate::session::run(Arc::clone(&inner)));
        tracing::debug!(lease = granted.id(), ttl = granted.ttl(), endpoints = ?self.endpoints, "etcd session started");
        Ok(EtcdBackend { inner })
    }
}

/// Parses `etcd://[user:password@]h1:2379,h2:2379[/][?key=value&...]` into a
/// builder. See [`EtcdBackend::from_url`] for the query keys.
pub(crate) fn parse_url(url: &str) -> Result<EtcdBuilder> {
    let invalid = |message: String| {
        Error::new(ErrorKind::InvalidArgument, Operation::Connect).with_message(message)
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        invalid(format!(
            "{:?} is not a URL (expected etcd://host:port)",
            sharedstate_core::redact_url(url)
        ))
    })?;
    let tls_scheme = match scheme {
        "etcd" => false,
        "etcds" => true,
        other => {
            return Err(invalid(format!(
                "unsupported scheme {other:?} (expected etcd:// or etcds://)"
            )))
        }
    };
    let (authority_and_path, query) = match rest.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (rest, None),
    };
    let authority = match authority_and_path.split_once('/') {
        Some((authority, "")) => authority,
        Some((_, path)) => {
            return Err(invalid(format!(
                "a path ({path:?}) is not supported in etcd URLs"
            )))
        }
        None => authority_and_path,
    };
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let endpoints: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            if tls_scheme {
                format!("https://{h}")
            } else {
                format!("http://{h}")
            }
        })
        .collect();
    if endpoints.is_empty() {
        return Err(invalid(format!(
            "{:?} names no etcd host",
            sharedstate_core::redact_url(url)
        )));
    }
    let mut builder = EtcdBuilder::new(endpoints);
    if let Some(userinfo) = userinfo {
        let (name, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        builder = builder.user(decode(name), decode(password));
    }
    #[cfg(feature = "tls")]
    let mut tls = TlsFiles::default();
    // TLS keys seen (refused on etcd://); without the feature they are
    // refused as they come.
    #[cfg(feature = "tls")]
    let mut tls_keys: Vec<String> = Vec::new();
    #[cfg(not(feature = "tls"))]
    let tls_keys: Vec<String> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let millis = |value: &str| {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| {
                    invalid(format!(
                        "{name} must be a whole number of milliseconds, got {value:?}"
                    ))
                })
        };
        match name.as_ref() {
            "session_ttl_s" => {
                let secs = value.parse::<u64>().map_err(|_| {
                    invalid(format!(
                        "session_ttl_s must be a whole number of seconds, got {value:?}"
                    ))
                })?;
                builder = builder.session_ttl(Duration::from_secs(secs));
            }
            "connect_timeout_ms" => builder = builder.connect_timeout(millis(&value)?),
            "request_timeout_ms" => builder = builder.request_timeout(millis(&value)?),
            "user" => {
                let password = builder.user.take().map(|(_, p)| p).unwrap_or_default();
                builder = builder.user(value.into_owned(), password);
            }
            "password" => {
                let user = builder.user.take().map(|(u, _)| u).unwrap_or_default();
                builder = builder.user(user, value.into_owned());
            }
            #[cfg(feature = "tls")]
            "ca_file" => {
                tls_keys.push(name.to_string());
                tls.ca = Some(value.into_owned());
            }
            #[cfg(feature = "tls")]
            "cert_file" => {
                tls_keys.push(name.to_string());
                tls.cert = Some(value.into_owned());
            }
            #[cfg(feature = "tls")]
            "key_file" => {
                tls_keys.push(name.to_string());
                tls.key = Some(value.into_owned());
            }
            #[cfg(feature = "tls")]
            "domain" => {
                tls_keys.push(name.to_string());
                tls.domain = Some(value.into_owned());
            }
            #[cfg(not(feature = "tls"))]
            "ca_file" | "cert_file" | "key_file" | "domain" => {
                return Err(invalid(format!(
                    "{name} needs sharedstate-etcd's \"tls\" feature"
                )))
            }
            other => return Err(invalid(format!("unknown etcd URL option {other:?}"))),
        }
    }
    if !tls_scheme && !tls_keys.is_empty() {
        return Err(invalid(format!(
            "{} need an etcds:// URL (TLS); etcd:// is plain HTTP",
            tls_keys.join(", ")
        )));
    }
    if tls_scheme {
        #[cfg(feature = "tls")]
        {
            let identity = if tls.cert.is_some() {
                sharedstate_core::tls::ClientIdentity::Presented
            } else {
                sharedstate_core::tls::ClientIdentity::None
            };
            let (options, probe) = tls.load()?;
            builder.tls = Some((options, identity));
            builder.tls_probe = probe;
        }
        #[cfg(not(feature = "tls"))]
        return Err(invalid(
            "etcds:// needs sharedstate-etcd's \"tls\" feature".to_owned(),
        ));
    }
    Ok(builder)
}

/// Minimal `%XX` decoding for the user info part.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(feature = "tls")]
#[derive(Default)]
struct TlsFiles {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    domain: Option<String>,
}

#[cfg(feature = "tls")]
impl TlsFiles {
    /// etcd-client's options, and the probe's config (none when the PEM
    /// does not make one: etcd-client then reports the problem itself).
    fn load(self) -> Result<(etcd_client::TlsOptions, Option<crate::members::TlsProbe>)> {
        let read = |path: &str| {
            std::fs::read(path).map_err(|e| {
                Error::new(ErrorKind::InvalidArgument, Operation::Connect)
                    .with_message(format!("cannot read {path}"))
                    .with_source(e)
            })
        };
        let mut tls = etcd_client::TlsOptions::new();
        let mut ca_pem = None;
        let mut identity_pem = None;
        if let Some(ca) = &self.ca {
            let pem = read(ca)?;
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem.clone()));
            ca_pem = Some(pem);
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = (read(cert)?, read(key)?);
                tls = tls.identity(etcd_client::Identity::from_pem(cert.clone(), key.clone()));
                identity_pem = Some((cert, key));
            }
            (None, None) => {}
            _ => {
                return Err(Error::new(ErrorKind::InvalidArgument, Operation::Connect)
                    .with_message("cert_file and key_file go together"))
            }
        }
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.clone());
        }
        // Without ca_file the probe has no roots to check against.
        let probe = ca_pem.and_then(|ca| {
            let provider = rustls::crypto::CryptoProvider::get_default()
                .cloned()
                .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()));
            let identity = identity_pem
                .as_ref()
                .map(|(cert, key)| (cert.as_slice(), key.as_slice()));
            sharedstate_core::tls::client_config(provider, &ca, identity)
                .ok()
                .map(|config| crate::members::TlsProbe {
                    config: std::sync::Arc::new(config),
                    domain: self.domain.clone(),
                })
        });
        Ok((tls, probe))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// Any text: a builder or `InvalidArgument`, never a panic; a
        /// password never reaches the message or the builder's `Debug`.
        #[test]
        fn prop_urls_parse_or_refuse_cleanly(
            url in "(etcd|etcds|zk)://[a-z0-9.,:/\\[\\]@%_-]{0,30}(\\?[a-z_=&%0-9./-]{0,40})?|.{0,40}",
        ) {
            match parse_url(&url) {
                Ok(builder) => {
                    prop_assert!(!builder.endpoints.is_empty());
                    if let Some((_, password)) = &builder.user {
                        if password.len() > 3 {
                            let shown = format!("{:?}", builder);
                            prop_assert!(!shown.contains(password.as_str()), "{}", shown);
                        }
                    }
                }
                Err(error) => prop_assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{}", error),
            }
        }

        #[test]
        fn prop_refusals_never_show_the_password(secret in "S3cr[a-z0-9]{6}", junk in "[a-z/?=&]{0,10}") {
            for url in [
                format!("etcd://u:{secret}@{junk}"),
                format!("etcd://u:{secret}@h:1/{junk}"),
                format!("etcd://h:1?password={secret}&{junk}=1"),
                format!("etcd:/u:{secret}@h"),
            ] {
                if let Err(error) = parse_url(&url) {
                    let shown = format!("{} {:?}", error, error);
                    prop_assert!(!shown.contains(&secret), "{}", shown);
                }
            }
        }
    }

    #[test]
    fn parses_hosts_and_options() {
        let b = parse_url(
            "etcd://h1:2379,h2:2379?session_ttl_s=7&connect_timeout_ms=1500&request_timeout_ms=250",
        )
        .unwrap();
        assert_eq!(b.endpoints, vec!["http://h1:2379", "http://h2:2379"]);
        assert_eq!(b.session_ttl, Duration::from_secs(7));
        assert_eq!(b.connect_timeout, Duration::from_millis(1500));
        assert_eq!(b.request_timeout, Duration::from_millis(250));
        assert!(b.user.is_none());
    }

    #[test]
    fn parses_credentials() {
        let b = parse_url("etcd://al%40ice:p%3Ass@h1:2379/").unwrap();
        assert_eq!(b.user, Some(("al@ice".to_owned(), "p:ss".to_owned())));
        let b = parse_url("etcd://h1:2379?user=bob&password=secret").unwrap();
        assert_eq!(b.user, Some(("bob".to_owned(), "secret".to_owned())));
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "h1:2379",
            "zk://h1:2181",
            "etcd://",
            "etcd://h1:2379/chroot",
            "etcd://h1:2379?bogus=1",
            "etcd://h1:2379?session_ttl_s=ten",
        ] {
            let err = parse_url(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
    }
}
