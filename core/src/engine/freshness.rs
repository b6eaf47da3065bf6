//! Proven freshness: when the local copy was last shown to be current, and
//! the state machine that decides when to verify, resync or re-watch.
//!
//! The copy counts as current at instant `t` only with evidence from a
//! request sent at `t` or later that the service had no newer version: a
//! verification read ([`CoordinationBackend::get_version`]), a read or a
//! conditional write of this instance, or the first state of a watch opened
//! at `t`. A connected session and a watch that delivered once are not
//! evidence: the watch may have died silently (a dependency bug, a frozen
//! member). So the engine verifies periodically, independent of the watch,
//! and a verification that finds a newer version than the copy re-opens the
//! watch. `read()` fails with `Stale` once the latest evidence is older than
//! `max_staleness`.
//!
//! [`Machine::step`] is pure: it takes an [`Input`] and the current instant
//! and returns [`Action`]s for the watcher task to carry out, so every
//! transition is unit-tested without a backend.
//!
//! [`CoordinationBackend::get_version`]: crate::CoordinationBackend::get_version

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::backend::SessionState;

/// The instant of the latest evidence that the copy was current, readable
/// without locks so that `read()` stays cheap.
#[derive(Debug)]
pub(crate) struct ProofClock {
    base: Instant,
    /// Nanoseconds since `base` of the latest proof (only ever grows).
    proven_at: AtomicU64,
    /// Session connected and the watch following it (for `status()`).
    following: AtomicBool,
}

impl ProofClock {
    /// A clock whose first proof is `at`.
    pub fn new(at: Instant) -> Self {
        let base = at;
        ProofClock {
            base,
            proven_at: AtomicU64::new(0),
            following: AtomicBool::new(true),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records evidence from a request sent at `at` (older evidence than
    /// what is recorded changes nothing).
    pub fn prove(&self, at: Instant) {
        self.proven_at.fetch_max(self.nanos(at), Ordering::AcqRel);
    }

    /// How old the latest evidence is at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        let proven = self.proven_at.load(Ordering::Acquire);
        Duration::from_nanos(self.nanos(now).saturating_sub(proven))
    }

    pub fn set_following(&self, following: bool) {
        self.following.store(following, Ordering::Release);
    }

    pub fn is_following(&self) -> bool {
        self.following.load(Ordering::Acquire)
    }
}

/// What the watcher task is doing with the watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The session is connected and the watch in sync: changes arrive as
    /// they happen.
    Following,
    /// Continuity was lost (suspension, new session, a failed or silent
    /// watch) since `since`: waiting for the watch to deliver a full state,
    /// or for a re-opened watch.
    Resyncing { since: Instant },
    /// The state was closed.
    Closed,
}

/// What a verification read found, compared with the local copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The service has nothing newer than the local copy.
    Current,
    /// The service has a newer version (or another presence) than the copy:
    /// the watch missed it.
    Behind,
    /// The read failed (unreachable, timed out): no evidence.
    Failed,
}

/// Something the watcher task observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    /// The session status changed.
    Session { state: SessionState, epoch: u64 },
    /// The first state of a watch opened at `opened_at` was applied.
    WatchOpened { opened_at: Instant },
    /// A running watch delivered a full state after losing continuity.
    WatchResynced,
    /// A running watch delivered a change.
    WatchChanged,
    /// The watch stream failed or ended.
    WatchEnded,
    /// It is time to verify (the task's timer fired).
    VerifyDue,
    /// A verification read sent at `sent_at` came back.
    Verified { sent_at: Instant, verdict: Verdict },
    /// `close()`.
    Closed,
}

/// What the watcher task must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Record evidence that the copy was current at this instant.
    Prove(Instant),
    /// Send a verification read now.
    Verify,
    /// Drop the watch stream and open a new one.
    Rewatch,
}

/// The freshness state machine of one `SharedState`.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub phase: Phase,
    connected: bool,
    epoch: u64,
    /// How often to verify.
    interval: Duration,
    /// When the next verification is due.
    pub next_verification: Instant,
    /// A verification is in flight (the task holds its future).
    verifying: bool,
    /// A re-opened watch is being opened (the task holds its future).
    rewatching: bool,
}

impl Machine {
    /// A machine for a state opened at `now` on a session in `state` /
    /// `epoch`, with its first watch already delivering.
    pub fn new(now: Instant, interval: Duration, state: SessionState, epoch: u64) -> Self {
        let connected = state == SessionState::Connected;
        Machine {
            phase: if connected {
                Phase::Following
            } else {
                Phase::Resyncing { since: now }
            },
            connected,
            epoch,
            interval,
            next_verification: now + interval,
            verifying: false,
            rewatching: false,
        }
    }

    /// Following the watch on a connected session.
    pub fn is_following(&self) -> bool {
        self.connected && self.phase == Phase::Following
    }

    fn lose_continuity(&mut self, now: Instant) {
        if let Phase::Following = self.phase {
            self.phase = Phase::Resyncing { since: now };
        }
    }

    /// One transition. Pure: everything it needs is in `self`, `input` and
    /// `now`.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Action> {
        if self.phase == Phase::Closed {
            return Vec::new();
        }
        let mut actions = Vec::new();
        match input {
            Input::Closed => self.phase = Phase::Closed,
            Input::Session { state, epoch } => {
                let was_connected = self.connected;
                self.connected = state == SessionState::Connected;
                if epoch != self.epoch || !self.connected {
                    // A new session, or a lost connection: the watch must
                    // show continuity again before we follow it.
                    self.lose_continuity(now);
                }
                self.epoch = epoch;
                if self.connected && !was_connected {
                    // The backend's resync is due from now on.
                    if let Phase::Resyncing { since } = &mut self.phase {
                        *since = now;
                    }
                    // Back: verify at once rather than at the next tick.
                    if !self.verifying {
                        actions.push(Action::Verify);
                        self.verifying = true;
                    }
                }
            }
            Input::WatchOpened { opened_at } => {
                self.rewatching = false;
                // The first state was read after the watch was registered
                // at `opened_at`: evidence from then.
                actions.push(Action::Prove(opened_at));
                if self.connected {
                    self.phase = Phase::Following;
                }
            }
            Input::WatchResynced => {
                if self.connected {
                    self.phase = Phase::Following;
                }
                // When the resync read was sent is the backend's business:
                // prove it with a read of our own.
                if !self.verifying {
                    actions.push(Action::Verify);
                    self.verifying = true;
                }
            }
            Input::WatchChanged => {}
            Input::WatchEnded => {
                self.lose_continuity(now);
                if !self.rewatching {
                    actions.push(Action::Rewatch);
                    self.rewatching = true;
                }
            }
            Input::VerifyDue => {
                self.next_verification = now + self.interval;
                if let Phase::Resyncing { since } = self.phase {
                    // Reconnected, but the watch never resynced: it is dead.
                    if self.connected && !self.rewatching && now >= since + self.interval {
                        actions.push(Action::Rewatch);
                        self.rewatching = true;
                    }
                }
                if !self.verifying {
                    actions.push(Action::Verify);
                    self.verifying = true;
                }
            }
            Input::Verified { sent_at, verdict } => {
                self.verifying = false;
                match verdict {
                    Verdict::Current => actions.push(Action::Prove(sent_at)),
                    Verdict::Behind => {
                        // The watch did not deliver what the service has:
                        // re-open it (its first state brings the copy up to
                        // date, and is the evidence).
                        self.lose_continuity(now);
                        if !self.rewatching {
                            actions.push(Action::Rewatch);
                            self.rewatching = true;
                        }
                    }
                    Verdict::Failed => {}
                }
            }
        }
        actions
    }

    /// A re-watch attempt failed; the task retries it after a backoff.
    pub fn rewatch_failed(&mut self) {
        self.rewatching = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_secs(10);

    fn machine(now: Instant) -> Machine {
        Machine::new(now, TICK, SessionState::Connected, 0)
    }

    #[test]
    fn proof_clock_keeps_the_latest_evidence() {
        let t0 = Instant::now();
        let clock = ProofClock::new(t0);
        assert_eq!(clock.age(t0), Duration::ZERO);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(clock.age(later), Duration::from_secs(5));
        clock.prove(t0 + Duration::from_secs(3));
        assert_eq!(clock.age(later), Duration::from_secs(2));
        clock.prove(t0 + Duration::from_secs(1)); // older evidence: ignored
        assert_eq!(clock.age(later), Duration::from_secs(2));
    }

    #[test]
    fn verification_is_periodic_and_proves_only_when_current() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        assert_eq!(m.next_verification, t0 + TICK);
        let t1 = t0 + TICK;
        assert_eq!(m.step(Input::VerifyDue, t1), vec![Action::Verify]);
        assert_eq!(m.next_verification, t1 + TICK);
        // A second tick while one is in flight sends no second request.
        assert_eq!(m.step(Input::VerifyDue, t1 + TICK), vec![]);
        let done = Input::Verified {
            sent_at: t1,
            verdict: Verdict::Current,
        };
        assert_eq!(
            m.step(done, t1 + Duration::from_millis(5)),
            vec![Action::Prove(t1)]
        );
        let failed = Input::Verified {
            sent_at: t1,
            verdict: Verdict::Failed,
        };
        m.step(Input::VerifyDue, t1 + TICK);
        assert_eq!(
            m.step(failed, t1 + TICK),
            vec![],
            "a failed read proves nothing"
        );
        assert!(m.is_following());
    }

    #[test]
    fn a_watch_that_missed_a_version_is_reopened() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        m.step(Input::VerifyDue, t0 + TICK);
        let behind = Input::Verified {
            sent_at: t0 + TICK,
            verdict: Verdict::Behind,
        };
        assert_eq!(m.step(behind, t0 + TICK), vec![Action::Rewatch]);
        assert!(!m.is_following());
        // The re-opened watch's first state is the evidence.
        let opened = t0 + TICK + Duration::from_millis(1);
        let acts = m.step(Input::WatchOpened { opened_at: opened }, opened);
        assert_eq!(acts, vec![Action::Prove(opened)]);
        assert!(m.is_following());
    }

    #[test]
    fn suspension_stops_following_until_the_watch_resyncs() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        let suspended = Input::Session {
            state: SessionState::Suspended,
            epoch: 0,
        };
        assert_eq!(m.step(suspended, t0), vec![]);
        assert!(!m.is_following());
        let back = Input::Session {
            state: SessionState::Connected,
            epoch: 0,
        };
        // Reconnected: verify at once, but do not follow before a resync.
        assert_eq!(m.step(back, t0), vec![Action::Verify]);
        assert!(!m.is_following());
        assert_eq!(
            m.step(Input::WatchResynced, t0),
            vec![],
            "a verify is in flight"
        );
        assert!(m.is_following());
    }

    #[test]
    fn a_resync_is_proven_by_a_read_of_our_own() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        assert_eq!(m.step(Input::WatchResynced, t0), vec![Action::Verify]);
        assert_eq!(m.step(Input::WatchChanged, t0), vec![]);
    }

    #[test]
    fn a_new_session_needs_a_resync_and_a_dead_watch_is_reopened() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        let lost = Input::Session {
            state: SessionState::Lost,
            epoch: 0,
        };
        m.step(lost, t0);
        let new = Input::Session {
            state: SessionState::Connected,
            epoch: 1,
        };
        assert_eq!(m.step(new, t0), vec![Action::Verify]);
        m.step(
            Input::Verified {
                sent_at: t0,
                verdict: Verdict::Current,
            },
            t0,
        );
        assert!(!m.is_following());
        // No resync within one interval: the watch is dead, re-open it.
        let late = t0 + TICK;
        assert_eq!(
            m.step(Input::VerifyDue, late),
            vec![Action::Rewatch, Action::Verify]
        );
        // Only one re-watch at a time.
        assert_eq!(m.step(Input::WatchEnded, late), vec![]);
        m.rewatch_failed();
        assert_eq!(m.step(Input::WatchEnded, late), vec![Action::Rewatch]);
    }

    #[test]
    fn a_same_epoch_reconnect_within_the_interval_waits_for_the_resync() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        m.step(
            Input::Session {
                state: SessionState::Suspended,
                epoch: 0,
            },
            t0,
        );
        m.step(
            Input::Session {
                state: SessionState::Connected,
                epoch: 0,
            },
            t0,
        );
        let soon = t0 + TICK / 2;
        // Not overdue yet: no re-watch, and a verify is still in flight.
        assert_eq!(m.step(Input::VerifyDue, soon), vec![]);
    }

    #[test]
    fn closed_is_final() {
        let t0 = Instant::now();
        let mut m = machine(t0);
        m.step(Input::Closed, t0);
        assert_eq!(m.step(Input::VerifyDue, t0 + TICK), vec![]);
        assert_eq!(m.step(Input::WatchEnded, t0), vec![]);
        assert_eq!(m.phase, Phase::Closed);
    }
}
