//! The backend URL as the command sees it: which service, which hosts.
//!
//! The backends parse their URLs themselves; this reads only what the
//! command needs around them: the scheme (to say when this build lacks a
//! backend), the `host:port` list (to refuse a malformed port before the
//! client turns it into "bad arguments: invalid address", and to tell
//! "connection refused" from "no answer" when a connect fails).

use std::net::SocketAddr;
use std::time::Duration;

use crate::errors::{CliError, CliResult, Exit};

/// Which service a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `memory://[name]`: this process only.
    Memory,
    /// `zk://`, `zookeeper://`, or `zks://` (TLS).
    ZooKeeper,
    /// `etcd://` or `etcds://`.
    Etcd,
}

impl Service {
    /// The name used in messages and by the backend (`CoordinationBackend::name`).
    pub fn name(self) -> &'static str {
        match self {
            Service::Memory => "memory",
            Service::ZooKeeper => "zookeeper",
            Service::Etcd => "etcd",
        }
    }

    /// Whether this build of the command has the backend (Cargo features).
    fn built(self) -> bool {
        match self {
            Service::Memory => true,
            Service::ZooKeeper => cfg!(feature = "zookeeper"),
            Service::Etcd => cfg!(feature = "etcd"),
        }
    }
}

/// One `host:port` of the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// The host as written (a name, an IPv4 address, or `[v6]`).
    pub host: String,
    /// The port, when the URL gives one.
    pub port: Option<u16>,
}

impl HostPort {
    fn label(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }
}

/// A backend URL, checked. `Debug` shows it redacted.
#[derive(Clone)]
pub struct Endpoint {
    /// The URL as given (with its password: for connecting only).
    pub url: String,
    /// The URL with its password redacted: for every message.
    pub shown: String,
    /// The service it names.
    pub service: Service,
    /// Its hosts (empty for `memory://`).
    pub hosts: Vec<HostPort>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.shown)
            .field("service", &self.service)
            .field("hosts", &self.hosts)
            .finish()
    }
}

const FORMS: &str = "zk://host:2181[,host2:2181][/chroot] or etcd://host:2379[,host2:2379] \
                     (zks:// and etcds:// for TLS)";

fn invalid(url: &str, why: impl std::fmt::Display) -> CliError {
    CliError::usage(format!(
        "invalid backend URL {:?}: {why}; expected {FORMS}",
        sharedstate::redact_url(url)
    ))
}

/// Checks the scheme, that this build has the backend, and the hosts.
///
/// # Errors
///
/// Exit 2 naming what is wrong.
pub fn parse(url: &str) -> CliResult<Endpoint> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid(url, "no scheme"));
    };
    let service = match scheme {
        "memory" => Service::Memory,
        "zk" | "zookeeper" | "zks" => Service::ZooKeeper,
        "etcd" | "etcds" => Service::Etcd,
        // Redacted too: in `zk:/u:pw@host://` the "scheme" holds user info.
        other => {
            let shown = sharedstate::redact_url(other);
            return Err(invalid(url, format_args!("unknown scheme {shown:?}")));
        }
    };
    if !service.built() {
        return Err(CliError::usage(format!(
            "this sharedstate command was built without the {name} backend; rebuild it with `--features {name}`{protoc}",
            name = service.name(),
            protoc = if service == Service::Etcd { " (needs protoc)" } else { "" },
        )));
    }
    if matches!(scheme, "zks" | "etcds") && !cfg!(feature = "tls") {
        return Err(CliError::usage(format!(
            "this sharedstate command was built without TLS ({scheme}://); rebuild it with `--features tls`"
        )));
    }
    let shown = sharedstate::redact_url(url);
    if service == Service::Memory {
        return Ok(Endpoint {
            url: url.to_owned(),
            shown,
            service,
            hosts: Vec::new(),
        });
    }
    // ZooKeeper connect strings may prefix each host with tcp:// or
    // tcp+tls:// (zookeeper-client's forms).
    let rest = rest.replace("tcp+tls://", "").replace("tcp://", "");
    let head = rest.split(['?', '/']).next().unwrap_or_default();
    let authority = head.rsplit_once('@').map_or(head, |(_, hosts)| hosts);
    let mut hosts = Vec::new();
    for entry in authority.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(invalid(url, "an empty host"));
        }
        hosts.push(host_port(entry).map_err(|why| invalid(url, why))?);
    }
    Ok(Endpoint {
        url: url.to_owned(),
        shown,
        service,
        hosts,
    })
}

fn host_port(entry: &str) -> Result<HostPort, String> {
    let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, "")) => (format!("[{addr}]"), None),
            Some((addr, tail)) => match tail.strip_prefix(':') {
                Some(port) => (format!("[{addr}]"), Some(port)),
                None => return Err(format!("{entry:?} is not host:port")),
            },
            None => return Err(format!("{entry:?} has no closing ]")),
        }
    } else {
        match entry.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (entry.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("{entry:?} has no host"));
    }
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => {
                return Err(format!(
                    "port {port:?} of {entry:?} is not a number from 1 to 65535"
                ))
            }
            Ok(port) => Some(port),
        },
    };
    Ok(HostPort { host, port })
}

/// What a plain TCP connect to one host found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// It accepted the connection.
    Open,
    /// It actively refused (nothing listens there).
    Refused,
    /// The name did not resolve.
    Unresolved,
    /// No answer within the bound (down, or a firewall drops packets).
    Silent,
    /// Another error, as the OS says it.
    Failed(String),
}

/// Each host and what a TCP connect to it found (hosts without a port are
/// left out: their default port is the client's business).
#[derive(Debug, Clone)]
pub struct Probe(pub Vec<(String, Reach)>);

impl Probe {
    /// Whether every probed host refused or does not exist: the server is
    /// certainly not there now, so waiting for the client's own connect
    /// timeout would only delay the same answer.
    pub fn hopeless(&self) -> bool {
        !self.0.is_empty()
            && self
                .0
                .iter()
                .all(|(_, reach)| matches!(reach, Reach::Refused | Reach::Unresolved))
    }

    /// Whether some host accepts TCP connections.
    pub fn any_open(&self) -> bool {
        self.0.iter().any(|(_, reach)| *reach == Reach::Open)
    }

    /// `127.0.0.1:1 refused the connection, h2:2181 did not answer within 1s`.
    pub fn describe(&self, bound: Duration) -> String {
        self.0
            .iter()
            .map(|(host, reach)| match reach {
                Reach::Open => format!("{host} accepts connections"),
                Reach::Refused => format!("{host} refused the connection"),
                Reach::Unresolved => format!("{host} does not resolve"),
                Reach::Silent => format!("{host} did not answer within {bound:?}"),
                Reach::Failed(why) => format!("{host}: {why}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Opens (and drops) one TCP connection to every host with a port, in
/// parallel, each within `bound`.
pub async fn probe(endpoint: &Endpoint, bound: Duration) -> Probe {
    let checks = endpoint
        .hosts
        .iter()
        .filter(|h| h.port.is_some())
        .map(|h| async move {
            let label = h.label();
            let reach = match tokio::time::timeout(bound, reach(&h.label())).await {
                Err(_) => Reach::Silent,
                Ok(reach) => reach,
            };
            (label, reach)
        });
    Probe(futures::future::join_all(checks).await)
}

async fn reach(host_port: &str) -> Reach {
    let plain = host_port.replace(['[', ']'], "");
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(host_port).await {
        Ok(addrs) => addrs.collect(),
        Err(_) => match plain.parse::<SocketAddr>() {
            Ok(addr) => vec![addr],
            Err(_) => return Reach::Unresolved,
        },
    };
    let mut last = Reach::Unresolved;
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => return Reach::Open,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => last = Reach::Refused,
            Err(e) => last = Reach::Failed(e.to_string()),
        }
    }
    last
}

/// Exit 5 for a server that cannot be reached, with what the probe found
/// and what to do.
pub fn unreachable(endpoint: &Endpoint, detail: &str) -> CliError {
    CliError::new(
        Exit::Unavailable,
        format!(
            "cannot reach {}: {detail}; is the server running, and is the URL right? (--backend or SHAREDSTATE_BACKEND)",
            endpoint.shown
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// Any text: an endpoint or a usage error, never a panic; neither
        /// shows a password written in the URL.
        #[test]
        fn prop_urls_parse_or_refuse_cleanly(
            scheme in "(zk|zks|etcd|etcds|memory|redis|)",
            sep in "(://|:/|)",
            rest in "[a-z0-9.,:/\\[\\]_-]{0,24}",
            secret in "S3cr[a-z0-9]{6}",
        ) {
            let url = format!("{scheme}{sep}u:{secret}@{rest}?password={secret}");
            match parse(&url) {
                Ok(endpoint) => {
                    prop_assert!(!endpoint.shown.contains(&secret), "{}", endpoint.shown);
                    let shown = format!("{:?}", endpoint);
                    prop_assert!(!shown.contains(&secret), "{}", shown);
                }
                Err(error) => {
                    prop_assert_eq!(error.exit, Exit::Usage);
                    prop_assert!(!error.message.contains(&secret), "{}", error.message);
                }
            }
        }
    }

    fn hosts(url: &str) -> Vec<HostPort> {
        parse(url).expect("valid").hosts
    }

    #[test]
    fn urls_name_their_hosts() {
        assert_eq!(
            hosts("zk://h1:2181,h2:2182/app?session_timeout_ms=5"),
            vec![
                HostPort {
                    host: "h1".into(),
                    port: Some(2181)
                },
                HostPort {
                    host: "h2".into(),
                    port: Some(2182)
                }
            ]
        );
        if cfg!(feature = "etcd") {
            assert_eq!(
                hosts("etcd://u:p@[::1]:2379"),
                vec![HostPort {
                    host: "[::1]".into(),
                    port: Some(2379)
                }]
            );
        } else {
            let err = parse("etcd://h:2379").unwrap_err();
            assert!(
                err.message.contains("built without the etcd backend"),
                "{err}"
            );
        }
        assert_eq!(hosts("zk://h")[0].port, None);
        assert!(hosts("memory://").is_empty());
    }

    #[test]
    fn malformed_urls_are_usage_errors_that_say_why() {
        let err = parse("zk://127.0.0.1:notaport").unwrap_err();
        assert_eq!(err.exit, Exit::Usage);
        assert!(
            err.message
                .contains("port \"notaport\" of \"127.0.0.1:notaport\" is not a number"),
            "{err}"
        );
        assert!(parse("zk://h:0").is_err());
        assert!(parse("zk://h1,,h2").is_err());
        assert!(parse("localhost:2181")
            .unwrap_err()
            .message
            .contains("no scheme"));
        assert!(parse("redis://h:1")
            .unwrap_err()
            .message
            .contains("unknown scheme \"redis\""));
    }

    #[test]
    fn passwords_never_reach_messages() {
        let url = "etcd://alice:pa55word@127.0.0.1:notaport?password=pa55word";
        let err = parse(url).unwrap_err();
        assert!(!err.message.contains("pa55word"), "{err}");
        if cfg!(feature = "etcd") {
            let endpoint = parse("etcd://alice:pa55word@h:2379?password=pa55word").expect("valid");
            assert!(!endpoint.shown.contains("pa55word"), "{}", endpoint.shown);
            assert!(!format!("{endpoint:?}").contains("pa55word"));
            let unreachable = unreachable(&endpoint, "h:2379 refused the connection");
            assert!(!unreachable.message.contains("pa55word"), "{unreachable}");
            assert!(unreachable.message.contains("alice"), "{unreachable}");
        }
    }

    #[test]
    fn a_probe_is_hopeless_only_when_every_host_refused() {
        let refused = Probe(vec![("a:1".into(), Reach::Refused)]);
        assert!(refused.hopeless());
        let mixed = Probe(vec![
            ("a:1".into(), Reach::Refused),
            ("b:1".into(), Reach::Silent),
        ]);
        assert!(!mixed.hopeless());
        assert!(!Probe(Vec::new()).hopeless());
        assert_eq!(
            mixed.describe(Duration::from_secs(1)),
            "a:1 refused the connection, b:1 did not answer within 1s"
        );
    }
}
