//! Level-triggered watches.
//!
//! Each watch owns a `tokio::sync::watch` channel that holds the key's
//! latest state (a "latest value" channel): the cluster overwrites it under
//! its lock without ever waiting, and the stream turns the difference
//! between what it delivered last and what the channel holds into
//! `Changed`, `Deleted` or `Resync` events. Intermediate versions may fold
//! together; the latest is never lost.

use futures::StreamExt;
use sharedstate_core::backend::ConnectedNotice;
use sharedstate_core::{Versioned, WatchEvent, WatchStream};
use tokio::sync::watch;

use crate::cluster::{ClientId, State};

/// What the cluster publishes to one watch.
#[derive(Debug, Clone)]
pub(crate) struct WatchLevel {
    /// The key's latest state.
    state: Option<Versioned>,
    /// Bumped whenever continuity is broken (resume, new session): the
    /// stream then yields `Resync`.
    resync: u64,
    /// While the client is suspended the stream delivers nothing.
    suspended: bool,
}

/// One registered watch: which client it belongs to and its channel.
pub(crate) struct Watcher {
    client: ClientId,
    tx: watch::Sender<WatchLevel>,
    /// Silenced by fault injection: never delivers again, and no error.
    silent: bool,
}

impl State {
    /// Registers a watch of `key` for `client`; returns its first event.
    pub(crate) fn add_watch(&mut self, client: ClientId, key: &str) -> WatchStream {
        let initial = self.get(key);
        let (tx, rx) = watch::channel(WatchLevel {
            state: initial.clone(),
            resync: 0,
            suspended: false,
        });
        let watchers = self.watchers.entry(key.to_owned()).or_default();
        watchers.retain(|w| !w.tx.is_closed());
        watchers.push(Watcher {
            client,
            tx,
            silent: false,
        });
        stream(initial, rx)
    }

    /// Publishes the current state of `key` to its watchers whose client is
    /// connected; drops watchers whose stream is gone.
    pub(crate) fn notify(&mut self, key: &str) {
        let Some(watchers) = self.watchers.get_mut(key) else {
            return;
        };
        watchers.retain(|w| !w.tx.is_closed());
        let current = self.nodes.get(key).map(|n| n.versioned());
        for watcher in watchers.iter().filter(|w| !w.silent) {
            let live = self
                .clients
                .get(&watcher.client)
                .is_some_and(|c| c.is_connected());
            if live {
                watcher
                    .tx
                    .send_modify(|level| level.state = current.clone());
            }
        }
        if watchers.is_empty() {
            self.watchers.remove(key);
        }
    }

    /// Stops delivery to every watch of `client` (suspension).
    pub(crate) fn pause_watches(&mut self, client: ClientId) {
        for watcher in self.watchers.values().flatten() {
            if watcher.client == client {
                watcher.tx.send_modify(|level| level.suspended = true);
            }
        }
    }

    /// Delivery resumes after a stall: the latest state, no resync.
    pub(crate) fn unpause_watches(&mut self, client: ClientId) {
        for (key, watchers) in &self.watchers {
            let current = self.nodes.get(key).map(|n| n.versioned());
            for watcher in watchers.iter().filter(|w| w.client == client && !w.silent) {
                watcher.tx.send_modify(|level| {
                    level.state = current.clone();
                    level.suspended = false;
                });
            }
        }
    }

    /// Makes every existing watch of `client` silent for good, while the
    /// session looks healthy: the failure zookeeper-client 0.11.2 had after
    /// a reconnect. Watches opened later work.
    pub(crate) fn silence_watches(&mut self, client: ClientId) {
        for watcher in self.watchers.values_mut().flatten() {
            if watcher.client == client {
                watcher.silent = true;
            }
        }
    }

    /// Makes every watch of `client` yield `Resync` with the current state,
    /// once the session's `Connected` is published (the `notice`).
    pub(crate) fn resync_watches(&mut self, client: ClientId, notice: &ConnectedNotice) {
        tracing::trace!(client, epoch = notice.epoch(), "memory watches resync");
        for (key, watchers) in &self.watchers {
            let current = self.nodes.get(key).map(|n| n.versioned());
            for watcher in watchers.iter().filter(|w| w.client == client && !w.silent) {
                watcher.tx.send_modify(|level| {
                    level.state = current.clone();
                    level.resync += 1;
                    level.suspended = false;
                });
            }
        }
    }

    /// Ends every watch stream of `client` (close).
    pub(crate) fn drop_watches(&mut self, client: ClientId) {
        self.watchers.retain(|_, watchers| {
            watchers.retain(|w| w.client != client);
            !watchers.is_empty()
        });
    }
}

struct Cursor {
    rx: watch::Receiver<WatchLevel>,
    initial: Option<Option<Versioned>>,
    delivered: Option<Versioned>,
    resync: u64,
}

fn stream(initial: Option<Versioned>, rx: watch::Receiver<WatchLevel>) -> WatchStream {
    let cursor = Cursor {
        rx,
        initial: Some(initial.clone()),
        delivered: initial,
        resync: 0,
    };
    futures::stream::unfold(cursor, |mut cursor| async move {
        if let Some(initial) = cursor.initial.take() {
            // Anything published before the first poll is compared with
            // this state, so marking it seen here loses nothing.
            return Some((Ok(WatchEvent::Initial(initial)), cursor));
        }
        loop {
            // Err: the cluster dropped the sender (client closed).
            cursor.rx.changed().await.ok()?;
            let level = cursor.rx.borrow_and_update().clone();
            if level.suspended {
                continue;
            }
            if level.resync != cursor.resync {
                cursor.resync = level.resync;
                cursor.delivered = level.state.clone();
                return Some((Ok(WatchEvent::Resync(level.state)), cursor));
            }
            if level.state != cursor.delivered {
                cursor.delivered = level.state.clone();
                let event = match level.state {
                    Some(versioned) => WatchEvent::Changed(versioned),
                    None => WatchEvent::Deleted,
                };
                return Some((Ok(event), cursor));
            }
        }
    })
    .boxed()
}
