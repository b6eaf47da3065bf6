//! In-process coordination cluster for sharedstate, with fault injection.
//!
//! A [`MemoryCluster`] behaves like a small ZooKeeper ensemble living in
//! the process: hierarchical keys (missing parents are created as empty
//! keys, a key with children cannot be deleted), versions from one
//! cluster-wide counter, linearizable reads, level-triggered watches,
//! exclusive FIFO locks with fencing tokens, fenced writes and ephemeral
//! registrations. Each [`MemoryBackend`] made by [`MemoryCluster::client`]
//! is a client with its own session, and its session faults can be
//! injected: [`MemoryBackend::expire_session`], [`MemoryBackend::suspend`],
//! [`MemoryBackend::resume`]. It serves unit tests, demos, and the
//! `memory://name` URL ([`MemoryCluster::named`]).
//!
//! ```
//! use std::time::Duration;
//! use sharedstate_core::backend::Bytes;
//! use sharedstate_core::{CoordinationBackend, Key, LockOptions, PutMode, WatchEvent};
//! use futures::StreamExt;
//! use sharedstate_memory::MemoryCluster;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> sharedstate_core::Result<()> {
//! let cluster = MemoryCluster::new();
//! let (alice, bob) = (cluster.client(), cluster.client());
//! let key = Key::new("/demo/counter")?;
//!
//! // Bob watches; the first event is the current state.
//! let mut events = bob.watch(&key).await?;
//! assert_eq!(events.next().await.transpose()?, Some(WatchEvent::Initial(None)));
//!
//! // Alice writes under a lock, fenced by its token.
//! let guard = alice.lock(&Key::new("/demo/lock")?, LockOptions::with_timeout(Duration::from_secs(1))).await?;
//! let v = alice.fenced_put_and_release(&key, Bytes::from_static(b"1"), PutMode::Create, guard).await?;
//! match events.next().await.transpose()? {
//!     Some(WatchEvent::Changed(seen)) => assert_eq!(seen.version, v),
//!     other => panic!("unexpected {other:?}"),
//! }
//!
//! // Alice's session expires: a new one follows, Bob's data is untouched.
//! alice.expire_session()?;
//! assert_eq!(alice.session().borrow().epoch, 1);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod client;
mod cluster;
mod lock;
mod session;
mod watch;

pub use client::MemoryBackend;
pub use cluster::{MemoryCluster, DEFAULT_MAX_VALUE_BYTES};
