//! sharedstate: one typed struct shared by every instance of an application
//! through a coordination service (ZooKeeper, etcd, or in-memory).
//!
//! Each instance holds a local copy that watches keep fresh, reads it without
//! a network round trip, updates it without ever losing a write, and
//! subscribes to a stream of precise changes. The backend is chosen by URL
//! (and Cargo feature):
//!
//! | URL | feature |
//! |---|---|
//! | `memory://` or `memory://name` (one in-process cluster per name) | `memory` (default) |
//! | `zk://host1:2181,host2:2181/chroot` | `zookeeper` |
//! | `zks://host1:2281,host2:2281/chroot?ca_file=ca.pem[&cert_file=c.pem&key_file=c.key]` (TLS) | `zookeeper` + `tls` |
//! | `etcd://host1:2379,host2:2379` | `etcd` |
//! | `etcds://host1:2379?ca_file=ca.pem[&cert_file=c.pem&key_file=c.key][&domain=name]` (TLS) | `etcd` + `tls` |
//!
//! The crate root is what an application calls. [`state`] is one state
//! without its type (its keys, locked and optimistic updates over bytes,
//! for tools such as the `sharedstate` command); [`backend`] is for those
//! who implement a backend (the handles' constructors and the kit every
//! backend shares).
//!
//! Passwords in URLs (`etcd://user:password@host`, `password=`) never
//! appear in errors or logs: [`redact_url`] shows them as `<redacted>`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), sharedstate::Error> {
//! use serde::{Deserialize, Serialize};
//! use sharedstate::SharedState;
//!
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! struct Flags { dark_mode: bool }
//!
//! let backend = sharedstate::connect("memory://").await?;
//! let flags = SharedState::builder(backend, "/app/flags")
//!     .initial(Flags { dark_mode: false })
//!     .open()
//!     .await?;
//! flags.update(|f| f.dark_mode = true).await?;
//! assert!(flags.read()?.dark_mode);
//! # flags.close().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
// docs.rs (nightly, `--cfg docsrs`): badges naming the Cargo feature of each gated item.
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::sync::Arc;

pub use sharedstate_core::*;

#[cfg(feature = "etcd")]
#[doc(inline)]
pub use sharedstate_etcd as etcd;
#[cfg(feature = "memory")]
#[doc(inline)]
pub use sharedstate_memory as memory;
#[cfg(feature = "zookeeper")]
#[doc(inline)]
pub use sharedstate_zookeeper as zookeeper;

#[cfg(feature = "testing")]
pub mod testing;

/// Connects to the backend a URL names (see the crate docs for the forms).
///
/// # Errors
///
/// `InvalidArgument` for a malformed URL or an unknown scheme,
/// `Unsupported` when the scheme's Cargo feature is not enabled, and the
/// backend's own connection errors (`Unavailable`, `Unauthorized`, ...).
pub async fn connect(url: &str) -> Result<Arc<dyn CoordinationBackend>> {
    let invalid = |message: String| {
        Error::new(ErrorKind::InvalidArgument, Operation::Connect).with_message(message)
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        invalid(format!(
            "{:?} is not a backend URL; expected memory://, zk://host:port or etcd://host:port",
            redact_url(url)
        ))
    })?;
    match scheme {
        "memory" => connect_memory(rest),
        "zk" | "zookeeper" | "zks" => connect_zookeeper(url).await,
        "etcd" | "etcds" => connect_etcd(url).await,
        other => Err(invalid(format!(
            "unknown backend scheme {other:?} in {:?}; expected memory, zk, zks, etcd or etcds",
            redact_url(url)
        ))),
    }
}

#[cfg(not(all(feature = "memory", feature = "zookeeper", feature = "etcd")))]
fn not_built(feature: &str) -> Error {
    Error::new(ErrorKind::Unsupported, Operation::Connect).with_message(format!(
        "this build of sharedstate has no {feature} backend; enable the Cargo feature {feature:?}"
    ))
}

#[cfg(feature = "memory")]
fn connect_memory(name: &str) -> Result<Arc<dyn CoordinationBackend>> {
    let name = name.trim_end_matches('/');
    Ok(Arc::new(memory::MemoryCluster::named(name).client()))
}

#[cfg(not(feature = "memory"))]
fn connect_memory(_name: &str) -> Result<Arc<dyn CoordinationBackend>> {
    Err(not_built("memory"))
}

#[cfg(feature = "zookeeper")]
async fn connect_zookeeper(url: &str) -> Result<Arc<dyn CoordinationBackend>> {
    Ok(Arc::new(zookeeper::ZooKeeperBackend::from_url(url).await?))
}

#[cfg(not(feature = "zookeeper"))]
async fn connect_zookeeper(_url: &str) -> Result<Arc<dyn CoordinationBackend>> {
    Err(not_built("zookeeper"))
}

#[cfg(feature = "etcd")]
async fn connect_etcd(url: &str) -> Result<Arc<dyn CoordinationBackend>> {
    Ok(Arc::new(etcd::EtcdBackend::from_url(url).await?))
}

#[cfg(not(feature = "etcd"))]
async fn connect_etcd(_url: &str) -> Result<Arc<dyn CoordinationBackend>> {
    Err(not_built("etcd"))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "memory")]
    use crate::backend::Bytes;

    /// Any text that names no network backend: a backend or a clear error,
    /// never a panic, and never a password in the message. (zk:// and
    /// etcd:// URLs would connect: their parsers have properties of their
    /// own in their crates.)
    #[tokio::test]
    async fn arbitrary_urls_connect_or_refuse_cleanly() {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let alphabet: Vec<char> = "memory:/@?=&%.-_ab12xyzZ\u{e9}\u{2603}".chars().collect();
        for _ in 0..2_000 {
            let len = (next() % 24) as usize;
            let tail: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let url = match next() % 3 {
                0 => format!("memory://{tail}"),
                1 => format!("x-{tail}:S3cretpw@h"),
                _ => tail,
            };
            let scheme = url.split_once("://").map(|(s, _)| s);
            if matches!(scheme, Some("zk" | "zks" | "zookeeper" | "etcd" | "etcds")) {
                continue;
            }
            match connect(&url).await {
                Ok(backend) => assert_eq!(backend.name(), "memory", "{url}"),
                Err(error) => {
                    assert!(!error.to_string().contains("S3cretpw"), "{url}: {error}");
                    assert!(
                        matches!(
                            error.kind(),
                            ErrorKind::InvalidArgument | ErrorKind::Unsupported
                        ),
                        "{url}: {error}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn urls_pick_backends_or_explain() {
        let err = connect("localhost:2181").await.expect_err("no scheme");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let err = connect("redis://x").await.expect_err("unknown scheme");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        #[cfg(feature = "memory")]
        {
            let a = connect("memory://facade-test").await.expect("memory");
            let b = connect("memory://facade-test/").await.expect("memory");
            let key = Key::new("/facade/k").expect("key");
            a.put(&key, Bytes::from_static(b"1"), PutMode::Create)
                .await
                .expect("put");
            let seen = b.get(&key).await.expect("get").expect("same named cluster");
            assert_eq!(seen.value, Bytes::from_static(b"1"));
        }
        let err = connect("redis://u:s3cret@x")
            .await
            .expect_err("unknown scheme");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        // zks:// reaches the ZooKeeper backend (which wants a CA file).
        let err = connect("zks://localhost:1").await.expect_err("no ca_file");
        #[cfg(feature = "zookeeper")]
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        #[cfg(not(feature = "zookeeper"))]
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        #[cfg(not(feature = "zookeeper"))]
        assert_eq!(
            connect("zk://h:2181").await.expect_err("off").kind(),
            ErrorKind::Unsupported
        );
        #[cfg(not(feature = "etcd"))]
        assert_eq!(
            connect("etcd://h:2379").await.expect_err("off").kind(),
            ErrorKind::Unsupported
        );
    }
}
