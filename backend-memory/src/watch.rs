//! Level-triggered watches.
//!
//! Each watch owns the kit's bounded delivery (`watch_delivery`): the
//! cluster hands it the key's new state under its lock without ever
//! waiting, and changes the consumer has not taken yet fold into the latest
//! (a deletion and a resync keep their meaning). A stalled client's watches
//! are held: nothing flows until the stall ends, then the latest state.

use sharedstate_core::backend::{watch_delivery, ConnectedNotice, WatchSender};
use sharedstate_core::{Versioned, WatchEvent, WatchStream};

use crate::cluster::{ClientId, State};

/// One registered watch: which client it belongs to and its delivery.
pub(crate) struct Watcher {
    client: ClientId,
    tx: WatchSender,
    /// The state last handed to the delivery (to send only real changes).
    sent: Option<Versioned>,
    /// Silenced by fault injection: never delivers again, and no error.
    silent: bool,
}

impl Watcher {
    /// Hands `current` over as a change, if it is one.
    fn send_change(&mut self, current: &Option<Versioned>) {
        if *current == self.sent {
            return;
        }
        self.sent = current.clone();
        self.tx.send(match current {
            Some(versioned) => WatchEvent::Changed(versioned.clone()),
            None => WatchEvent::Deleted,
        });
    }
}

impl State {
    /// Registers a watch of `key` for `client`; returns its first event.
    pub(crate) fn add_watch(&mut self, client: ClientId, key: &str) -> WatchStream {
        let initial = self.get(key);
        let (tx, stream) = watch_delivery();
        tx.send(WatchEvent::Initial(initial.clone()));
        let watchers = self.watchers.entry(key.to_owned()).or_default();
        watchers.retain(|w| !w.tx.is_closed());
        watchers.push(Watcher {
            client,
            tx,
            sent: initial,
            silent: false,
        });
        stream
    }

    /// Publishes the current state of `key` to its watchers whose client is
    /// connected; drops watchers whose stream is gone.
    pub(crate) fn notify(&mut self, key: &str) {
        let Some(watchers) = self.watchers.get_mut(key) else {
            return;
        };
        watchers.retain(|w| !w.tx.is_closed());
        let current = self.nodes.get(key).map(|n| n.versioned());
        for watcher in watchers.iter_mut().filter(|w| !w.silent) {
            let live = self
                .clients
                .get(&watcher.client)
                .is_some_and(|c| c.is_connected());
            if live {
                watcher.send_change(&current);
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
                watcher.tx.hold();
            }
        }
    }

    /// Delivery resumes after a stall: the latest state, no resync.
    pub(crate) fn unpause_watches(&mut self, client: ClientId) {
        for (key, watchers) in &mut self.watchers {
            let current = self.nodes.get(key).map(|n| n.versioned());
            for watcher in watchers
                .iter_mut()
                .filter(|w| w.client == client && !w.silent)
            {
                watcher.send_change(&current);
                watcher.tx.release();
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
        for (key, watchers) in &mut self.watchers {
            let current = self.nodes.get(key).map(|n| n.versioned());
            for watcher in watchers
                .iter_mut()
                .filter(|w| w.client == client && !w.silent)
            {
                watcher.sent = current.clone();
                watcher.tx.send(WatchEvent::Resync(current.clone()));
                watcher.tx.release();
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
