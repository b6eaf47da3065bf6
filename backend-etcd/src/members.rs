//! One etcd client per endpoint, and the choice of which member a request
//! goes to.
//!
//! etcd-client's balanced channel spreads requests over every endpoint and
//! keeps sending to a member that accepts connections but never answers (a
//! frozen or partitioned process: the kernel still completes the TCP
//! handshake). So the backend keeps one client per endpoint and picks the
//! member itself: requests go to the *preferred* member; one that fails or
//! does not answer within its share of the request timeout is marked
//! suspect for a while, the preference moves to the next member, and a
//! retry (reads, and writes known never sent) goes there. The session's
//! keep-alive and the watches follow the same preference, so they leave a
//! stuck member too instead of hanging on it together.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::time::Instant;

/// How long a member that failed is avoided (unless every member is).
const SUSPECT_FOR: Duration = Duration::from_secs(10);

struct Member {
    endpoint: String,
    /// Connected lazily: `Client::connect` sends a request when credentials
    /// are set, and an endpoint may be down when the backend starts.
    client: tokio::sync::Mutex<Option<Client>>,
    suspect_until: Mutex<Option<Instant>>,
}

/// The members of the cluster this backend talks to.
pub(crate) struct Members {
    members: Vec<Member>,
    options: ConnectOptions,
    connect_timeout: Duration,
    preferred: AtomicUsize,
    /// Set when TLS is configured: whether this client presents a
    /// certificate (for the message when a handshake is refused).
    #[cfg(feature = "tls")]
    tls_identity: Option<sharedstate_core::tls::ClientIdentity>,
    /// The same TLS trust and identity as a rustls config, when the
    /// backend has the PEM (URLs with ca_file ...): for the probe that
    /// finds a refusal the client reported only as a broken connection.
    #[cfg(feature = "tls")]
    tls_probe: Option<TlsProbe>,
}

/// What the TLS probe needs.
#[cfg(feature = "tls")]
#[derive(Clone)]
pub(crate) struct TlsProbe {
    pub config: std::sync::Arc<rustls::ClientConfig>,
    /// The name to verify instead of the endpoint's host (`domain=`).
    pub domain: Option<String>,
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members")
            .field(
                "endpoints",
                &self.members.iter().map(|m| &m.endpoint).collect::<Vec<_>>(),
            )
            .field("preferred", &self.preferred.load(Ordering::Relaxed))
            .finish()
    }
}

impl Members {
    pub(crate) fn new(
        endpoints: &[String],
        options: ConnectOptions,
        connect_timeout: Duration,
    ) -> Self {
        Members {
            members: endpoints
                .iter()
                .map(|endpoint| Member {
                    endpoint: endpoint.clone(),
                    client: tokio::sync::Mutex::new(None),
                    suspect_until: Mutex::new(None),
                })
                .collect(),
            options,
            connect_timeout,
            preferred: AtomicUsize::new(0),
            #[cfg(feature = "tls")]
            tls_identity: None,
            #[cfg(feature = "tls")]
            tls_probe: None,
        }
    }

    /// Sets the TLS probe (see the field).
    #[cfg(feature = "tls")]
    pub(crate) fn with_tls_probe(mut self, probe: Option<TlsProbe>) -> Self {
        self.tls_probe = probe;
        self
    }

    /// Runs the TLS probe against member `index`, within `bound`: a
    /// refusal the failed request did not show.
    #[cfg(feature = "tls")]
    pub(crate) async fn probe_tls(
        &self,
        index: usize,
        bound: Duration,
    ) -> Option<sharedstate_core::tls::TlsRefusal> {
        let probe = self.tls_probe.clone()?;
        let identity = self.tls_identity?;
        let label = self.endpoint_label(index);
        let (host, port) = match label.rsplit_once(':') {
            Some((host, port)) => (host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?),
            None => (label.clone(), 2379),
        };
        let name = probe.domain.clone().unwrap_or_else(|| host.clone());
        let probe = sharedstate_core::tls::probe(probe.config, &host, port, &name, identity);
        tokio::time::timeout(bound, probe).await.ok().flatten()
    }

    /// Marks the connections as TLS, with or without a client certificate.
    #[cfg(feature = "tls")]
    pub(crate) fn with_tls_identity(
        mut self,
        identity: Option<sharedstate_core::tls::ClientIdentity>,
    ) -> Self {
        self.tls_identity = identity;
        self
    }

    /// Whether TLS is configured, and with a client certificate.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_identity(&self) -> Option<sharedstate_core::tls::ClientIdentity> {
        self.tls_identity
    }

    /// `host:port` of member `index`, for messages.
    #[cfg(feature = "tls")]
    pub(crate) fn endpoint_label(&self, index: usize) -> String {
        let endpoint = self.members.get(index).map_or("", |m| m.endpoint.as_str());
        let without_scheme = endpoint
            .split_once("://")
            .map_or(endpoint, |(_, rest)| rest);
        without_scheme.trim_end_matches('/').to_owned()
    }

    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// The member for the `attempt`-th try of a request (0 = first): the
    /// preferred one, then the others in turn, members that are not
    /// suspect first.
    pub(crate) fn index_for(&self, attempt: usize) -> usize {
        let n = self.members.len().max(1);
        let start = self.preferred.load(Ordering::Acquire) % n;
        let now = Instant::now();
        let order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        let (healthy, suspect): (Vec<usize>, Vec<usize>) =
            order.into_iter().partition(|&i| !self.is_suspect(i, now));
        let ranked: Vec<usize> = healthy.into_iter().chain(suspect).collect();
        ranked[attempt % n]
    }

    fn is_suspect(&self, index: usize, now: Instant) -> bool {
        self.members
            .get(index)
            .and_then(|m| *m.suspect_until.lock().unwrap_or_else(|p| p.into_inner()))
            .is_some_and(|until| until > now)
    }

    /// The client of member `index`, connecting it on first use.
    ///
    /// # Errors
    ///
    /// The connect failure (the request was never sent).
    pub(crate) async fn client(&self, index: usize) -> Result<Client, etcd_client::Error> {
        let Some(member) = self.members.get(index) else {
            return Err(etcd_client::Error::InvalidArgs(
                "no such etcd member".into(),
            ));
        };
        let mut slot = member.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let endpoint = [member.endpoint.as_str()];
        let connect = Client::connect(endpoint, Some(self.options.clone()));
        let client = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(connected) => connected?,
            Err(_) => {
                return Err(etcd_client::Error::InvalidArgs(format!(
                    "{} did not answer within {:?}",
                    member.endpoint, self.connect_timeout
                )))
            }
        };
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Member `index` failed or did not answer: avoid it for a while, and
    /// prefer the next one.
    pub(crate) fn failed(&self, index: usize) {
        let Some(member) = self.members.get(index) else {
            return;
        };
        *member
            .suspect_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + SUSPECT_FOR);
        let n = self.members.len();
        if n > 1 {
            let _ = self.preferred.compare_exchange(
                index,
                (index + 1) % n,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            tracing::debug!(
                endpoint = member.endpoint,
                "etcd member suspect; preferring another"
            );
        }
    }

    /// Member `index` answered.
    pub(crate) fn answered(&self, index: usize) {
        if let Some(member) = self.members.get(index) {
            *member
                .suspect_until
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// How long one attempt may take out of a request's `timeout`: with
    /// several members, a share, so that a stuck member leaves time to ask
    /// another.
    pub(crate) fn attempt_timeout(&self, timeout: Duration) -> Duration {
        let shares = u32::try_from(self.members.len().clamp(1, 3)).unwrap_or(1);
        (timeout / shares)
            .max(Duration::from_millis(500))
            .min(timeout)
    }
}
