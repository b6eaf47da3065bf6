//! The session status channel every backend publishes on.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::contract::{SessionState, SessionStatus};

/// Proof that `Connected` was published for a session: what a backend
/// holds before it resyncs watches on that session. Functions that resync
/// take one, so the order the engine relies on (the epoch is `Connected`
/// before a `Resync` read on it arrives) is checked by the compiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectedNotice {
    epoch: u64,
}

impl ConnectedNotice {
    /// The epoch that was published as `Connected`.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// The session status a backend returns from
/// [`CoordinationBackend::session`](crate::CoordinationBackend::session),
/// with the transitions it allows:
///
/// - `Connected(e)` ⇄ `Suspended(e)`: the connection broke and came back
///   to the same session ([`suspended`](Self::suspended),
///   [`reconnected`](Self::reconnected));
/// - `Connected(e)` or `Suspended(e)` → `Lost(e)`
///   ([`lost`](Self::lost)); a lost session never reconnects;
/// - `Lost(e)` → `Connected(e + 1)` ([`new_session`](Self::new_session),
///   which publishes `Lost(e)` first when the caller did not): the epoch
///   grows by one per session and never otherwise;
/// - anything → `Closed` ([`close`](Self::close)); nothing after it.
///
/// A transition that is not allowed (a `reconnected` after `Lost`, any
/// call after `Closed`) changes nothing and returns `None` or `false`.
#[derive(Debug)]
pub struct SessionPublisher {
    status: watch::Sender<SessionStatus>,
    breaks: AtomicU64,
}

impl Default for SessionPublisher {
    fn default() -> Self {
        SessionPublisher::new()
    }
}

impl SessionPublisher {
    /// A publisher whose first session (epoch 0) is `Connected`.
    pub fn new() -> Self {
        let (status, _) = watch::channel(SessionStatus {
            state: SessionState::Connected,
            epoch: 0,
        });
        SessionPublisher {
            status,
            breaks: AtomicU64::new(0),
        }
    }

    /// A receiver that always holds the latest status.
    pub fn subscribe(&self) -> watch::Receiver<SessionStatus> {
        self.status.subscribe()
    }

    /// The status right now.
    pub fn status(&self) -> SessionStatus {
        *self.status.borrow()
    }

    /// How many times the session left `Connected` (to `Suspended` or
    /// `Lost`) so far. The channel keeps only the latest value, so a quick
    /// `Suspended`-then-`Connected` may look unchanged to a slow reader;
    /// this counter does not.
    pub fn breaks(&self) -> u64 {
        self.breaks.load(Ordering::Acquire)
    }

    /// `Connected(e)` → `Suspended(e)`. True when it changed the status.
    pub fn suspended(&self) -> bool {
        self.transition(|status| match status.state {
            SessionState::Connected => Some(SessionState::Suspended),
            _ => None,
        })
    }

    /// `Suspended(e)` → `Connected(e)`: the same session is back. `None`
    /// when the session was not suspended (connected already, lost or
    /// closed).
    pub fn reconnected(&self) -> Option<ConnectedNotice> {
        let changed = self.transition(|status| match status.state {
            SessionState::Suspended => Some(SessionState::Connected),
            _ => None,
        });
        changed.then(|| ConnectedNotice {
            epoch: self.status().epoch,
        })
    }

    /// `Connected(e)` or `Suspended(e)` → `Lost(e)`. True when it changed
    /// the status.
    pub fn lost(&self) -> bool {
        self.transition(|status| match status.state {
            SessionState::Connected | SessionState::Suspended => Some(SessionState::Lost),
            _ => None,
        })
    }

    /// A new session replaces the lost one: `Lost(e)` (published now if it
    /// was not yet) then `Connected(e + 1)`. Call it once the new session
    /// is usable (its registrations re-created), before its watches
    /// resync. `None` after [`close`](Self::close).
    pub fn new_session(&self) -> Option<ConnectedNotice> {
        self.lost();
        let mut notice = None;
        self.status.send_if_modified(|status| {
            if status.state != SessionState::Lost {
                return false;
            }
            *status = SessionStatus {
                state: SessionState::Connected,
                epoch: status.epoch + 1,
            };
            notice = Some(ConnectedNotice {
                epoch: status.epoch,
            });
            true
        });
        notice
    }

    /// `Closed`, for good. True when it changed the status.
    pub fn close(&self) -> bool {
        self.status.send_if_modified(|status| {
            if status.state == SessionState::Closed {
                return false;
            }
            status.state = SessionState::Closed;
            true
        })
    }

    fn transition(&self, next: impl FnOnce(&SessionStatus) -> Option<SessionState>) -> bool {
        self.status.send_if_modified(|status| match next(status) {
            Some(state) => {
                if state != SessionState::Connected {
                    self.breaks.fetch_add(1, Ordering::AcqRel);
                }
                status.state = state;
                true
            }
            None => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: SessionState, epoch: u64) -> SessionStatus {
        SessionStatus { state, epoch }
    }

    #[test]
    fn suspension_keeps_the_epoch_and_counts_a_break() {
        let publisher = SessionPublisher::new();
        assert!(publisher.suspended());
        assert!(!publisher.suspended(), "already suspended");
        assert_eq!(publisher.status(), status(SessionState::Suspended, 0));
        assert_eq!(publisher.reconnected().map(|n| n.epoch()), Some(0));
        assert_eq!(publisher.status(), status(SessionState::Connected, 0));
        assert_eq!(publisher.breaks(), 1);
        assert_eq!(publisher.reconnected(), None, "not suspended");
    }

    #[test]
    fn a_lost_session_never_reconnects_and_the_next_epoch_follows_lost() {
        let publisher = SessionPublisher::new();
        let mut seen = publisher.subscribe();
        assert!(publisher.lost());
        assert_eq!(*seen.borrow_and_update(), status(SessionState::Lost, 0));
        assert_eq!(publisher.reconnected(), None);
        assert!(!publisher.suspended());
        let notice = publisher.new_session().expect("not closed");
        assert_eq!(notice.epoch(), 1);
        assert_eq!(publisher.status(), status(SessionState::Connected, 1));
        assert_eq!(publisher.breaks(), 1);
    }

    #[test]
    fn new_session_publishes_lost_first_when_the_caller_did_not() {
        let publisher = SessionPublisher::new();
        publisher.suspended();
        assert_eq!(publisher.new_session().map(|n| n.epoch()), Some(1));
        assert_eq!(publisher.breaks(), 2, "suspended, then lost");
    }

    #[test]
    fn nothing_follows_closed() {
        let publisher = SessionPublisher::new();
        assert!(publisher.close());
        assert!(!publisher.close());
        assert!(!publisher.suspended() && !publisher.lost());
        assert_eq!(publisher.reconnected(), None);
        assert_eq!(publisher.new_session(), None);
        assert_eq!(publisher.status(), status(SessionState::Closed, 0));
    }
}
