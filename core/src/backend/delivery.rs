//! The one watch delivery of every backend: bounded, latest-value, and
//! never losing what an event means.
//!
//! A backend's watch task (or the memory cluster, under its lock) hands
//! events to a [`WatchSender`] without ever waiting; the consumer reads the
//! [`WatchStream`] at its own pace. Between the two, events fold into a
//! slot of at most four items, so a slow consumer costs memory bounded per
//! watch, however many changes it falls behind:
//!
//! - `Initial` is always delivered first, as sent (nothing folds into it);
//! - consecutive `Changed` fold into the latest one (the contract allows
//!   intermediate versions to fold away; the latest always arrives);
//! - `Changed` then `Deleted` fold into `Deleted` (the key is absent now);
//! - `Deleted` then `Changed` stay two events, `Deleted` first: a
//!   subscriber still sees that the key went;
//! - a `Resync` carries the current state, so it replaces whatever changes
//!   were pending before it, and later `Changed` / `Deleted` fold into its
//!   state: it is delivered as a `Resync` (continuity was lost) with the
//!   latest state, and never turns into a plain change;
//! - an `Err` ends the stream after the events pending before it; dropping
//!   the sender ends it after the pending events too.
//!
//! The order the engine relies on is kept: a full state (`Initial`,
//! `Resync`) is never reordered after a change that followed it, and the
//! last item delivered before the stream waits is always the latest state
//! sent.

use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::contract::{WatchEvent, WatchStream};
use crate::error::{Error, Result};
use crate::version::Versioned;

/// What is waiting for the consumer: at most `Initial`, then either a
/// `Resync` or an optional `Deleted` and a latest change.
#[derive(Debug, Default)]
struct Slot {
    /// `Initial` not taken yet.
    initial: Option<Option<Versioned>>,
    /// A `Resync` pending, with the latest state.
    resync: Option<Option<Versioned>>,
    /// A `Deleted` pending before `latest` (which is then a `Changed`).
    deleted_first: bool,
    /// The latest `Changed` or `Deleted` (never `Initial` or `Resync`).
    latest: Option<WatchEvent>,
    /// The failure that ends the stream, after the pending events.
    error: Option<Error>,
    /// The sender is gone: the stream ends once the slot is empty.
    ended: bool,
    /// Delivery held back (see [`WatchSender::hold`]).
    held: bool,
}

impl Slot {
    fn push(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Initial(state) => self.initial = Some(state),
            WatchEvent::Resync(state) => {
                self.deleted_first = false;
                self.latest = None;
                self.resync = Some(state);
            }
            WatchEvent::Changed(versioned) => {
                if let Some(state) = self.resync.as_mut() {
                    *state = Some(versioned);
                } else {
                    if matches!(self.latest, Some(WatchEvent::Deleted)) {
                        self.deleted_first = true;
                    }
                    self.latest = Some(WatchEvent::Changed(versioned));
                }
            }
            WatchEvent::Deleted => {
                if let Some(state) = self.resync.as_mut() {
                    *state = None;
                } else {
                    self.deleted_first = false;
                    self.latest = Some(WatchEvent::Deleted);
                }
            }
        }
    }

    /// The next item, `Some(None)` when the stream ends, `None` when
    /// nothing is ready.
    fn pop(&mut self) -> Option<Option<Result<WatchEvent>>> {
        if self.held {
            return None;
        }
        if let Some(state) = self.initial.take() {
            return Some(Some(Ok(WatchEvent::Initial(state))));
        }
        if let Some(state) = self.resync.take() {
            return Some(Some(Ok(WatchEvent::Resync(state))));
        }
        if self.deleted_first {
            self.deleted_first = false;
            return Some(Some(Ok(WatchEvent::Deleted)));
        }
        if let Some(event) = self.latest.take() {
            return Some(Some(Ok(event)));
        }
        if let Some(error) = self.error.take() {
            self.ended = true;
            return Some(Some(Err(error)));
        }
        if self.ended {
            return Some(None);
        }
        None
    }

    /// Items waiting (for tests and the bound).
    #[cfg(test)]
    fn len(&self) -> usize {
        usize::from(self.initial.is_some())
            + usize::from(self.resync.is_some())
            + usize::from(self.deleted_first)
            + usize::from(self.latest.is_some())
            + usize::from(self.error.is_some())
    }
}

#[derive(Debug, Default)]
struct Channel {
    slot: Mutex<Slot>,
    /// Wakes the consumer.
    ready: Notify,
    /// Cancelled when the consumer dropped the stream.
    gone: CancellationToken,
}

impl Channel {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending half of a watch delivery: never waits, and folds what the
/// consumer has not taken yet (see the module docs). Dropping it ends the
/// stream after the pending events.
#[derive(Debug)]
pub struct WatchSender {
    channel: Arc<Channel>,
}

/// A new watch delivery: the sender for the backend's side and the
/// [`WatchStream`] the backend returns from `watch`.
pub fn watch_delivery() -> (WatchSender, WatchStream) {
    let channel = Arc::new(Channel::default());
    let receiver = Receiver {
        channel: Arc::clone(&channel),
    };
    let stream = futures::stream::unfold(receiver, |receiver| async move {
        let item = receiver.next().await?;
        Some((item, receiver))
    })
    // Polling again after the end answers `None` again.
    .fuse()
    .boxed();
    (WatchSender { channel }, stream)
}

impl WatchSender {
    /// Hands `event` to the consumer (folded with what is pending). False
    /// when the consumer dropped the stream: stop watching.
    pub fn send(&self, event: WatchEvent) -> bool {
        if self.is_closed() {
            return false;
        }
        let mut slot = self.channel.slot();
        if slot.ended || slot.error.is_some() {
            return false;
        }
        slot.push(event);
        drop(slot);
        self.channel.ready.notify_one();
        true
    }

    /// Ends the stream with `error`, after the events pending before it:
    /// a failure the watch cannot recover from on its own.
    pub fn fail(&self, error: Error) {
        let mut slot = self.channel.slot();
        if slot.ended || slot.error.is_some() {
            return;
        }
        slot.error = Some(error);
        drop(slot);
        self.channel.ready.notify_one();
    }

    /// Holds delivery back (a stalled connection): events keep folding in,
    /// and none reaches the consumer until [`release`](Self::release).
    pub fn hold(&self) {
        self.channel.slot().held = true;
    }

    /// Delivers again what [`hold`](Self::hold) held back.
    pub fn release(&self) {
        self.channel.slot().held = false;
        self.channel.ready.notify_one();
    }

    /// True once the consumer dropped the stream.
    pub fn is_closed(&self) -> bool {
        self.channel.gone.is_cancelled()
    }

    /// Completes when the consumer drops the stream.
    pub async fn closed(&self) {
        self.channel.gone.cancelled().await;
    }
}

impl Drop for WatchSender {
    fn drop(&mut self) {
        self.channel.slot().ended = true;
        self.channel.ready.notify_one();
    }
}

/// The consumer's half, inside the stream.
struct Receiver {
    channel: Arc<Channel>,
}

impl Receiver {
    async fn next(&self) -> Option<Result<WatchEvent>> {
        loop {
            // A notification between this check and the wait is kept as a
            // permit by `notify_one`: no wake-up is lost.
            if let Some(item) = self.channel.slot().pop() {
                return item;
            }
            self.channel.ready.notified().await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.channel.gone.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorKind, Operation};
    use crate::version::Version;
    use bytes::Bytes;
    use futures::FutureExt;

    fn v(n: u64) -> Versioned {
        Versioned {
            value: Bytes::from(n.to_string()),
            version: Version::new(n),
        }
    }

    /// Everything ready now, without waiting.
    fn drain(stream: &mut WatchStream) -> Vec<Result<WatchEvent>> {
        let mut items = Vec::new();
        while let Some(Some(item)) = stream.next().now_or_never() {
            items.push(item);
        }
        items
    }

    fn events(items: Vec<Result<WatchEvent>>) -> Vec<WatchEvent> {
        items
            .into_iter()
            .map(|item| item.expect("no error"))
            .collect()
    }

    #[test]
    fn initial_comes_first_and_changes_fold_into_the_latest() {
        let (tx, mut stream) = watch_delivery();
        assert!(tx.send(WatchEvent::Initial(Some(v(1)))));
        for n in 2..=1_000 {
            assert!(tx.send(WatchEvent::Changed(v(n))));
        }
        assert!(
            tx.channel.slot().len() <= 2,
            "grew: {:?}",
            tx.channel.slot()
        );
        assert_eq!(
            events(drain(&mut stream)),
            [
                WatchEvent::Initial(Some(v(1))),
                WatchEvent::Changed(v(1_000))
            ]
        );
    }

    #[test]
    fn a_deletion_is_never_folded_into_a_later_change() {
        let (tx, mut stream) = watch_delivery();
        tx.send(WatchEvent::Changed(v(1)));
        tx.send(WatchEvent::Deleted);
        tx.send(WatchEvent::Changed(v(3)));
        tx.send(WatchEvent::Changed(v(4)));
        assert_eq!(
            events(drain(&mut stream)),
            [WatchEvent::Deleted, WatchEvent::Changed(v(4))]
        );
        // A change then a deletion: the key is absent, and that is said.
        tx.send(WatchEvent::Changed(v(5)));
        tx.send(WatchEvent::Deleted);
        assert_eq!(events(drain(&mut stream)), [WatchEvent::Deleted]);
        // Deleted, Changed, Deleted: absent again, one deletion.
        tx.send(WatchEvent::Deleted);
        tx.send(WatchEvent::Changed(v(6)));
        tx.send(WatchEvent::Deleted);
        assert_eq!(events(drain(&mut stream)), [WatchEvent::Deleted]);
    }

    #[test]
    fn a_resync_stays_a_resync_and_carries_the_latest_state() {
        let (tx, mut stream) = watch_delivery();
        tx.send(WatchEvent::Initial(None));
        tx.send(WatchEvent::Changed(v(1)));
        tx.send(WatchEvent::Resync(Some(v(2))));
        tx.send(WatchEvent::Changed(v(3)));
        assert_eq!(
            events(drain(&mut stream)),
            [WatchEvent::Initial(None), WatchEvent::Resync(Some(v(3)))]
        );
        tx.send(WatchEvent::Resync(Some(v(4))));
        tx.send(WatchEvent::Deleted);
        assert_eq!(events(drain(&mut stream)), [WatchEvent::Resync(None)]);
        // A change after the consumer took the resync is a change.
        tx.send(WatchEvent::Resync(Some(v(5))));
        assert_eq!(events(drain(&mut stream)), [WatchEvent::Resync(Some(v(5)))]);
        tx.send(WatchEvent::Changed(v(6)));
        assert_eq!(events(drain(&mut stream)), [WatchEvent::Changed(v(6))]);
    }

    #[test]
    fn the_slot_never_holds_more_than_four_items() {
        let (tx, _stream) = watch_delivery();
        tx.send(WatchEvent::Initial(None));
        for n in 1..=10_000 {
            let event = match n % 3 {
                0 => WatchEvent::Deleted,
                1 => WatchEvent::Changed(v(n)),
                _ => WatchEvent::Resync(Some(v(n))),
            };
            tx.send(event);
            assert!(tx.channel.slot().len() <= 4);
        }
    }

    #[test]
    fn an_error_ends_the_stream_after_the_pending_events() {
        let (tx, mut stream) = watch_delivery();
        tx.send(WatchEvent::Changed(v(1)));
        tx.fail(Error::new(ErrorKind::Unauthorized, Operation::Watch));
        assert!(
            !tx.send(WatchEvent::Changed(v(2))),
            "accepted after the error"
        );
        let items = drain(&mut stream);
        assert_eq!(items.len(), 2, "{items:?}");
        assert!(matches!(items[0], Ok(WatchEvent::Changed(_))));
        assert!(matches!(&items[1], Err(e) if e.kind() == ErrorKind::Unauthorized));
        assert!(
            matches!(stream.next().now_or_never(), Some(None)),
            "did not end"
        );
    }

    #[test]
    fn dropping_the_sender_ends_the_stream_after_the_pending_events() {
        let (tx, mut stream) = watch_delivery();
        tx.send(WatchEvent::Changed(v(1)));
        drop(tx);
        assert!(matches!(
            stream.next().now_or_never(),
            Some(Some(Ok(WatchEvent::Changed(_))))
        ));
        assert!(matches!(stream.next().now_or_never(), Some(None)));
    }

    #[test]
    fn held_events_fold_and_flow_on_release() {
        let (tx, mut stream) = watch_delivery();
        tx.hold();
        tx.send(WatchEvent::Changed(v(1)));
        tx.send(WatchEvent::Changed(v(2)));
        assert!(drain(&mut stream).is_empty(), "delivered while held");
        tx.release();
        assert_eq!(events(drain(&mut stream)), [WatchEvent::Changed(v(2))]);
    }

    #[tokio::test]
    async fn the_consumer_is_woken_and_the_sender_sees_it_go() {
        let (tx, mut stream) = watch_delivery();
        let consumer = tokio::spawn(async move {
            let first = stream.next().await;
            (first, stream)
        });
        tokio::task::yield_now().await;
        assert!(tx.send(WatchEvent::Changed(v(1))));
        let (first, stream) = consumer.await.expect("consumer");
        assert!(matches!(first, Some(Ok(WatchEvent::Changed(_)))));
        assert!(!tx.is_closed());
        drop(stream);
        tx.closed().await;
        assert!(!tx.send(WatchEvent::Changed(v(2))), "sent to nobody");
    }
}
