//! Connection settings: the builder, `zk://` URLs and ACL policies.

use std::time::Duration;

use sharedstate_core::Result;
use zookeeper_client as zk;

use crate::error;
use crate::ZooKeeperBackend;

/// Default session timeout negotiated with the server.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on establishing a session (first connect and after expiry).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The ACL given to every node this backend creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AclPolicy {
    /// `world:anyone` has every permission (ZooKeeper's `OPEN_ACL_UNSAFE`).
    #[default]
    Open,
    /// Only identities authenticated like the creator have any permission
    /// (`CREATOR_ALL_ACL`); needs [`ZooKeeperBuilder::with_auth`].
    CreatorAll,
    /// The creator's identities have every permission and `world:anyone`
    /// may read; needs [`ZooKeeperBuilder::with_auth`].
    ReadOnlyWorld,
}

static CREATOR_ALL_WORLD_READ: [zk::Acl; 2] = [
    zk::Acl::new_const(zk::Permission::ALL, "auth", ""),
    zk::Acl::new_const(zk::Permission::READ, "world", "anyone"),
];

impl AclPolicy {
    pub(crate) fn acls(self) -> zk::Acls<'static> {
        match self {
            AclPolicy::Open => zk::Acls::anyone_all(),
            AclPolicy::CreatorAll => zk::Acls::creator_all(),
            AclPolicy::ReadOnlyWorld => zk::Acls::new(&CREATOR_ALL_WORLD_READ),
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "open" => Some(AclPolicy::Open),
            "creator-all" | "creator_all" => Some(AclPolicy::CreatorAll),
            "read-only-world" | "read_only_world" => Some(AclPolicy::ReadOnlyWorld),
            _ => None,
        }
    }
}

/// Everything needed to open a session, kept to open the next one after an
/// expiry with the same settings.
#[derive(Clone)]
pub(crate) struct Config {
    /// `h1:2181,h2:2181`, without the chroot.
    pub hosts: String,
    /// `/app`, or `None` for the server's root.
    pub chroot: Option<String>,
    pub session_timeout: Duration,
    pub connect_timeout: Duration,
    /// `user:password` for the `digest` scheme.
    pub auth: Option<Vec<u8>>,
    pub acl: AclPolicy,
    /// TLS settings and zookeeper-client's options made from them.
    #[cfg(feature = "tls")]
    pub tls: Option<(crate::ZooKeeperTls, zk::TlsOptions)>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("hosts", &self.hosts)
            .field("chroot", &self.chroot)
            .field("session_timeout", &self.session_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("acl", &self.acl)
            .field("tls", &self.tls_settings())
            .finish()
    }
}

/// How long a TLS connect runs before the backend probes the handshake
/// itself (a healthy server has answered by then).
#[cfg(feature = "tls")]
const TLS_PROBE_AFTER: Duration = Duration::from_millis(300);
/// Bound on the probe's handshake with one host.
#[cfg(feature = "tls")]
const TLS_PROBE_BOUND: Duration = Duration::from_secs(5);

impl Config {
    #[cfg(feature = "tls")]
    fn tls_settings(&self) -> Option<&crate::ZooKeeperTls> {
        self.tls.as_ref().map(|(tls, _)| tls)
    }

    #[cfg(not(feature = "tls"))]
    fn tls_settings(&self) -> Option<()> {
        None
    }

    /// Establishes the client's session, over TLS when configured. A TLS
    /// handshake the server or this client refuses fails at once with
    /// `Unauthorized` naming the cause (see the `tls` module).
    async fn establish(&self, connector: zk::Connector) -> Result<zk::Client> {
        #[cfg(feature = "tls")]
        if let Some((tls, options)) = &self.tls {
            crate::tls::ensure_crypto_provider();
            let connecting = connector
                .with_tls(options.clone())
                .secure_connect(&self.hosts);
            tokio::pin!(connecting);
            let probe = async {
                // Not a retry: how long a handshake may take before the
                // probe asks the server why it stalls.
                tokio::time::sleep(TLS_PROBE_AFTER).await;
                crate::tls::probe(&self.hosts, tls, TLS_PROBE_BOUND).await
            };
            let connected = tokio::select! {
                connected = &mut connecting => connected,
                refusal = probe => match refusal {
                    Some(refusal) => return Err(crate::tls::refused(refusal)),
                    None => connecting.await,
                },
            };
            return connected.map_err(error::connect);
        }
        connector.connect(&self.hosts).await.map_err(error::connect)
    }

    /// Opens one session with these settings, creating the chroot node when
    /// it is missing.
    pub(crate) async fn open_session(&self) -> Result<zk::Client> {
        let mut connector = zk::Client::connector().with_session_timeout(self.session_timeout);
        if let Some(auth) = &self.auth {
            connector = connector.with_auth("digest", auth);
        }
        let client =
            match tokio::time::timeout(self.connect_timeout, self.establish(connector)).await {
                Err(_) => return Err(error::connect_timeout(self.connect_timeout)),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(client)) => client,
            };
        let Some(chroot) = &self.chroot else {
            return Ok(client);
        };
        match client.check_stat(chroot).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let options = zk::CreateMode::Persistent.with_acls(self.acl.acls());
                if let Err(e) = client.mkdir(chroot, &options).await {
                    return Err(error::connect(e).with_message(format!("creating chroot {chroot}")));
                }
            }
            Err(e) => return Err(error::connect(e)),
        }
        client
            .chroot(chroot.as_str())
            .map_err(|_| error::invalid_url(format!("invalid chroot {chroot:?}")))
    }
}

/// Builds a [`ZooKeeperBackend`]: `ZooKeeperBackend::builder("h1:2181,h2:2181/app")`.
///
/// The connect string lists one or more `host:port` separated by commas,
/// optionally followed by a chroot path (`/app`) that is created when
/// missing; every key then lives under it.
///
/// `Debug` never shows the password.
#[derive(Clone)]
pub struct ZooKeeperBuilder {
    connect_string: String,
    session_timeout: Duration,
    connect_timeout: Duration,
    auth: Option<(String, String)>,
    acl: AclPolicy,
    #[cfg(feature = "tls")]
    tls: Option<crate::ZooKeeperTls>,
}

impl std::fmt::Debug for ZooKeeperBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperBuilder")
            .field("connect_string", &self.connect_string)
            .field("session_timeout", &self.session_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("user", &self.auth.as_ref().map(|(user, _)| user))
            .field("password", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("acl", &self.acl)
            .field("tls", &self.tls_settings())
            .finish()
    }
}

impl ZooKeeperBuilder {
    #[cfg(feature = "tls")]
    fn tls_settings(&self) -> Option<&crate::ZooKeeperTls> {
        self.tls.as_ref()
    }

    #[cfg(not(feature = "tls"))]
    fn tls_settings(&self) -> Option<()> {
        None
    }

    pub(crate) fn new(connect_string: impl Into<String>) -> Self {
        ZooKeeperBuilder {
            connect_string: connect_string.into(),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            auth: None,
            acl: AclPolicy::Open,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The session timeout to negotiate (default 10 s). The server bounds
    /// it to between 2 and 20 ticks.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// How long establishing a session may take, at the first connect and
    /// for each attempt after an expiry (default 15 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Authenticates with the `digest` scheme as `user:password`.
    pub fn with_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some((user.into(), password.into()));
        self
    }

    /// The ACL of the nodes this client creates (default [`AclPolicy::Open`]).
    pub fn acl(mut self, acl: AclPolicy) -> Self {
        self.acl = acl;
        self
    }

    /// Connects over TLS (ZooKeeper's `secureClientPort`): every host of
    /// the connect string, except one written `tcp://host:port`, and each
    /// certificate checked against the CA and the host's name as written.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: crate::ZooKeeperTls) -> Self {
        self.tls = Some(tls);
        self
    }

    pub(crate) fn into_config(self) -> Result<Config> {
        let (hosts, chroot) = split_connect_string(&self.connect_string)?;
        #[cfg(feature = "tls")]
        let tls = match self.tls {
            Some(tls) => {
                crate::tls::check_host_names(&hosts)?;
                let options = tls.client_options()?;
                Some((tls, options))
            }
            None => None,
        };
        if self.session_timeout.is_zero() {
            return Err(error::invalid_url("session timeout must not be zero"));
        }
        if matches!(self.acl, AclPolicy::CreatorAll | AclPolicy::ReadOnlyWorld)
            && self.auth.is_none()
        {
            return Err(error::invalid_url(
                "ACL policies creator-all and read-only-world need credentials (with_auth)",
            ));
        }
        Ok(Config {
            hosts,
            chroot,
            session_timeout: self.session_timeout,
            connect_timeout: self.connect_timeout,
            auth: self
                .auth
                .map(|(user, password)| format!("{user}:{password}").into_bytes()),
            acl: self.acl,
            #[cfg(feature = "tls")]
            tls,
        })
    }

    /// Opens the first session and starts watching it.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a malformed connect string or settings,
    /// `Unavailable` when no session is established within the connect
    /// timeout, `Unauthorized` when the credentials are refused or a TLS
    /// certificate is (the message names the cause).
    pub async fn connect(self) -> Result<ZooKeeperBackend> {
        let config = self.into_config()?;
        ZooKeeperBackend::start(config).await
    }

    /// Parses `zk://h1:2181,h2:2181/chroot?key=value&...` (scheme `zk` or
    /// `zookeeper`), or `zks://h1:2281,h2:2281/chroot?ca_file=...` for TLS
    /// to the servers' `secureClientPort` (feature `tls`). Query keys:
    ///
    /// - `session_timeout_ms`: session timeout in milliseconds;
    /// - `connect_timeout_ms`: connect timeout in milliseconds;
    /// - `user` and `password`: digest credentials (percent-encoded);
    /// - `acl`: `open` (default), `creator-all` or `read-only-world`;
    /// - `zks://` only: `ca_file` (required: the PEM CA that signed the
    ///   servers' certificates), `cert_file` and `key_file` (PEM, together:
    ///   the client certificate, for servers with `ssl.clientAuth`).
    ///
    /// The servers' certificates must name the hosts as written in the URL.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for another scheme, no host, an unknown query key,
    /// a malformed value, TLS keys on a `zk://` URL, or `zks://` in a build
    /// without the `tls` feature.
    pub fn from_url(url: &str) -> Result<Self> {
        let (rest, secure) = if let Some(rest) = url.strip_prefix("zks://") {
            (rest, true)
        } else {
            let rest = url
                .strip_prefix("zk://")
                .or_else(|| url.strip_prefix("zookeeper://"))
                .ok_or_else(|| {
                    error::invalid_url(format!(
                        "{} is not a zk:// or zks:// URL",
                        sharedstate_core::redact_url(url)
                    ))
                })?;
            (rest, false)
        };
        let (target, query) = match rest.split_once('?') {
            Some((target, query)) => (target, Some(query)),
            None => (rest, None),
        };
        let mut builder = ZooKeeperBuilder::new(target);
        let mut user = None;
        let mut password = None;
        let mut tls_files = TlsFiles::default();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let millis = || {
                value
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| error::invalid_url(format!("{name}={value} is not a number")))
            };
            match name.as_ref() {
                "session_timeout_ms" => builder.session_timeout = millis()?,
                "connect_timeout_ms" => builder.connect_timeout = millis()?,
                "user" => user = Some(value.into_owned()),
                "password" => password = Some(value.into_owned()),
                "ca_file" => tls_files.ca = Some(value.into_owned()),
                "cert_file" => tls_files.cert = Some(value.into_owned()),
                "key_file" => tls_files.key = Some(value.into_owned()),
                "acl" => {
                    builder.acl = AclPolicy::parse(&value).ok_or_else(|| {
                        error::invalid_url(format!(
                            "acl={value}: expected open, creator-all or read-only-world"
                        ))
                    })?
                }
                other => {
                    return Err(error::invalid_url(format!("unknown query key {other:?}")));
                }
            }
        }
        match (user, password) {
            (Some(user), Some(password)) => builder = builder.with_auth(user, password),
            (None, None) => {}
            _ => return Err(error::invalid_url("user and password go together")),
        }
        split_connect_string(&builder.connect_string)?;
        tls_files.apply(secure, builder)
    }
}

/// The TLS files a URL names.
#[derive(Default)]
struct TlsFiles {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl TlsFiles {
    fn apply(self, secure: bool, builder: ZooKeeperBuilder) -> Result<ZooKeeperBuilder> {
        if !secure {
            return match (&self.ca, &self.cert, &self.key) {
                (None, None, None) => Ok(builder),
                _ => Err(error::invalid_url(
                    "ca_file, cert_file and key_file need a zks:// URL (TLS); zk:// is plain TCP",
                )),
            };
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(error::invalid_url("cert_file and key_file go together"));
        }
        let Some(ca) = self.ca.clone() else {
            return Err(error::invalid_url(
                "zks:// needs ca_file=<PEM file of the CA that signed the servers' certificates>",
            ));
        };
        self.load(ca, builder)
    }

    #[cfg(feature = "tls")]
    fn load(self, ca: String, builder: ZooKeeperBuilder) -> Result<ZooKeeperBuilder> {
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                Some((std::path::Path::new(cert), std::path::Path::new(key)))
            }
            _ => None,
        };
        let tls = crate::ZooKeeperTls::from_files(std::path::Path::new(&ca), identity)?;
        Ok(builder.tls(tls))
    }

    #[cfg(not(feature = "tls"))]
    fn load(self, _ca: String, _builder: ZooKeeperBuilder) -> Result<ZooKeeperBuilder> {
        Err(error::invalid_url(
            "zks:// needs sharedstate-zookeeper's \"tls\" feature",
        ))
    }
}

/// Splits `h1:2181,h2:2181/app` into hosts and chroot (`None` for `/` or
/// no chroot).
pub(crate) fn split_connect_string(s: &str) -> Result<(String, Option<String>)> {
    let last_start = s.rfind(',').map_or(0, |i| i + 1);
    let last = &s[last_start..];
    let scheme_len = ["tcp://", "tcp+tls://"]
        .iter()
        .find(|p| last.starts_with(**p))
        .map_or(0, |p| p.len());
    let (hosts, chroot) = match last[scheme_len..].find('/') {
        Some(i) => {
            let at = last_start + scheme_len + i;
            (&s[..at], Some(&s[at..]))
        }
        None => (s, None),
    };
    if hosts.is_empty() || hosts.split(',').any(|h| h.trim().is_empty()) {
        return Err(error::invalid_url(format!("{s:?} has no or an empty host")));
    }
    let chroot = match chroot {
        None | Some("/") => None,
        Some(path) => {
            if path.ends_with('/')
                || path.contains("//")
                || path.split('/').any(|seg| seg == "." || seg == "..")
            {
                return Err(error::invalid_url(format!("invalid chroot {path:?}")));
            }
            Some(path.to_owned())
        }
    };
    Ok((hosts.to_owned(), chroot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sharedstate_core::ErrorKind;

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// Any text: a builder or `InvalidArgument`, never a panic, and no
        /// password in the message.
        #[test]
        fn prop_urls_parse_or_refuse_cleanly(
            url in "(zk|zks|zookeeper|etcd)://[a-z0-9.,:/\\[\\]@_+-]{0,30}(\\?[a-z_=&%0-9./-]{0,40})?|.{0,40}",
        ) {
            if let Err(error) = ZooKeeperBuilder::from_url(&url) {
                prop_assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{}", error);
            }
        }

        #[test]
        fn prop_connect_strings_split_or_refuse(s in "[a-z0-9.,:/+]{0,30}") {
            if let Ok((hosts, chroot)) = split_connect_string(&s) {
                prop_assert!(!hosts.is_empty());
                if let Some(chroot) = chroot {
                    prop_assert!(chroot.starts_with('/') && !chroot.ends_with('/'));
                }
            }
        }

        #[test]
        fn prop_refusals_never_show_the_password(secret in "S3cr[a-z0-9]{6}", junk in "[a-z?=&]{0,10}") {
            let url = format!("zk://h:1?user=u&password={secret}&{junk}=x&session_timeout_ms={junk}");
            if let Err(error) = ZooKeeperBuilder::from_url(&url) {
                let shown = format!("{} {:?}", error, error);
                prop_assert!(!shown.contains(&secret), "{}", shown);
            }
        }
    }

    #[test]
    fn connect_strings() {
        let (h, c) = split_connect_string("h1:2181,h2:2181/app/x").unwrap();
        assert_eq!(
            (h.as_str(), c.as_deref()),
            ("h1:2181,h2:2181", Some("/app/x"))
        );
        let (h, c) = split_connect_string("h1:2181").unwrap();
        assert_eq!((h.as_str(), c), ("h1:2181", None));
        let (h, c) = split_connect_string("h1:2181/").unwrap();
        assert_eq!((h.as_str(), c), ("h1:2181", None));
        for bad in ["", "/app", "h1,,h2", "h1/app/", "h1/a//b", "h1/a/../b"] {
            let e = split_connect_string(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn urls() {
        let b = ZooKeeperBuilder::from_url(
            "zk://h1:2181,h2:2181/chroot?session_timeout_ms=4000&connect_timeout_ms=2500&user=u&password=p%40ss&acl=creator-all",
        )
        .unwrap();
        assert_eq!(b.session_timeout, Duration::from_millis(4000));
        assert_eq!(b.connect_timeout, Duration::from_millis(2500));
        assert_eq!(b.auth, Some(("u".into(), "p@ss".into())));
        assert_eq!(b.acl, AclPolicy::CreatorAll);
        let c = b.into_config().unwrap();
        assert_eq!(c.hosts, "h1:2181,h2:2181");
        assert_eq!(c.chroot.as_deref(), Some("/chroot"));
        assert_eq!(c.auth.as_deref(), Some(&b"u:p@ss"[..]));

        let plain = ZooKeeperBuilder::from_url("zookeeper://localhost:2181").unwrap();
        assert_eq!(plain.session_timeout, DEFAULT_SESSION_TIMEOUT);
        for bad in [
            "etcd://h:2379",
            "zk://",
            "zk://h?nope=1",
            "zk://h?session_timeout_ms=x",
            "zk://h?user=u",
            "zk://h?acl=closed",
        ] {
            let e = ZooKeeperBuilder::from_url(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
        let e = ZooKeeperBuilder::new("h")
            .acl(AclPolicy::CreatorAll)
            .into_config()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn debug_never_shows_the_password() {
        let b = ZooKeeperBuilder::new("h:2181").with_auth("alice", "s3cr3t-pw");
        let shown = format!("{b:?} {:?}", b.clone().into_config().unwrap());
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
    }
}
