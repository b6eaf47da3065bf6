//! What an instance tells the fleet about itself: the version it applied
//! and its problem with the payload, written into its instance registration
//! ([`InstanceInfo`]) so that operators (`sharedstate status`, `--wait`)
//! see whether a change reached every instance.
//!
//! Reports are coalesced: an instance rewrites its registration at most once
//! per interval, and the first report after a quiet period waits a random
//! share (up to half) of the interval, so that a fleet that sees a change at
//! the same moment spreads its writes instead of sending them all at once.
//! One change costs each instance one write; a burst of changes within an
//! interval costs it at most two. [`Schedule`] is pure, unit-tested without
//! a backend; the watcher task carries out its decisions.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::instances::InstanceInfo;
use super::shared::Snapshot;
use super::PayloadProblem;
use crate::version::Version;

/// Longest problem text a report carries (a serde message can quote a whole
/// string from the payload).
const MAX_PROBLEM_CHARS: usize = 300;

/// What the registration says about the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    pub applied: Version,
    pub newest_seen: Version,
    pub problem: Option<String>,
}

impl Report {
    pub fn of<T>(snapshot: &Snapshot<T>) -> Report {
        let problem = snapshot.problem.as_ref().map(|problem| match problem {
            PayloadProblem::Undecodable { error, .. } => shorten(error),
            PayloadProblem::Deleted => "the payload was deleted".to_owned(),
        });
        Report {
            applied: snapshot.version,
            newest_seen: snapshot.newest_seen,
            problem,
        }
    }

    /// The registration's value: `base` (id, host, pid, since) with this
    /// report.
    pub fn encode(&self, base: &InstanceInfo) -> Bytes {
        let info = InstanceInfo {
            applied_version: Some(self.applied),
            seen_version: Some(self.newest_seen),
            problem: self.problem.clone(),
            ..base.clone()
        };
        // Strings and numbers only: encoding cannot fail.
        serde_json::to_vec(&info).unwrap_or_default().into()
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_PROBLEM_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// When the next report goes out.
#[derive(Debug)]
pub(crate) struct Schedule {
    interval: Duration,
    /// What the registration holds (the last report acknowledged).
    held: Report,
    /// When the last report was sent (acknowledged or not).
    last_sent: Option<Instant>,
    /// When the pending report is due; `None` when nothing is pending.
    due: Option<Instant>,
    /// A report is in flight.
    sending: bool,
}

impl Schedule {
    /// `held`: what the registration was created with.
    pub fn new(interval: Duration, held: Report) -> Self {
        Schedule {
            interval,
            held,
            last_sent: None,
            due: None,
            sending: false,
        }
    }

    /// The copy now says `current`; `jitter` (0 to 1) picks the delay of a
    /// first report after a quiet period. Returns when the next report is
    /// due, if one is.
    pub fn observe(&mut self, current: &Report, now: Instant, jitter: f64) -> Option<Instant> {
        if *current == self.held {
            // Back to what the registration holds (or nothing changed).
            self.due = None;
        } else if self.due.is_none() {
            let spread = self.interval.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
            let earliest = self.last_sent.map_or(now, |sent| sent + self.interval);
            self.due = Some((now + spread).max(earliest));
        }
        self.next()
    }

    /// When the next report is due, unless one is in flight.
    pub fn next(&self) -> Option<Instant> {
        if self.sending {
            None
        } else {
            self.due
        }
    }

    /// Whether a report should go out now.
    pub fn is_due(&self, now: Instant) -> bool {
        self.next().is_some_and(|due| due <= now)
    }

    /// A report was sent at `now`.
    pub fn sending(&mut self, now: Instant) {
        self.sending = true;
        self.due = None;
        self.last_sent = Some(now);
    }

    /// The report sent came back: `Some(report)` when the registration
    /// holds it now, `None` when it failed (retried an interval later).
    pub fn finished(&mut self, held: Option<Report>, now: Instant) {
        self.sending = false;
        match held {
            Some(report) => self.held = report,
            None => self.due = Some(now + self.interval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(version: u64) -> Report {
        Report {
            applied: Version::new(version),
            newest_seen: Version::new(version),
            problem: None,
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn nothing_is_sent_while_the_registration_says_it_already() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(SECOND, at(5));
        assert_eq!(schedule.observe(&at(5), t0, 0.7), None);
        assert!(!schedule.is_due(t0 + SECOND * 10));
    }

    #[test]
    fn a_first_change_is_sent_after_a_random_share_of_half_the_interval() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(SECOND, at(5));
        assert_eq!(schedule.observe(&at(6), t0, 0.0), Some(t0));
        let mut schedule = Schedule::new(SECOND, at(5));
        assert_eq!(
            schedule.observe(&at(6), t0, 1.0),
            Some(t0 + Duration::from_millis(500))
        );
        // Later changes do not push a pending report back.
        assert_eq!(
            schedule.observe(&at(7), t0 + Duration::from_millis(100), 0.0),
            Some(t0 + Duration::from_millis(500))
        );
    }

    #[test]
    fn a_burst_costs_at_most_one_report_per_interval() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(SECOND, at(1));
        let mut now = t0;
        let mut sent = Vec::new();
        // A change every 10 ms for 3 s, each report acknowledged at once.
        for version in 2..=301u64 {
            schedule.observe(&at(version), now, 0.5);
            if schedule.is_due(now) {
                schedule.sending(now);
                schedule.finished(Some(at(version)), now);
                sent.push(now);
            }
            now += Duration::from_millis(10);
        }
        assert!(sent.len() <= 4, "{} reports in 3 s", sent.len());
        for pair in sent.windows(2) {
            assert!(pair[1] - pair[0] >= SECOND, "{pair:?}");
        }
        // The last state goes out once the interval allows.
        schedule.observe(&at(301), now, 0.5);
        let due = schedule
            .next()
            .expect("the latest version is still to report");
        assert!(due <= *sent.last().expect("sent") + SECOND);
    }

    #[test]
    fn nothing_is_scheduled_while_a_report_is_in_flight_and_failures_retry() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(SECOND, at(1));
        schedule.observe(&at(2), t0, 0.0);
        schedule.sending(t0);
        assert_eq!(schedule.observe(&at(3), t0, 0.0), None);
        schedule.finished(None, t0 + Duration::from_millis(10));
        assert_eq!(schedule.next(), Some(t0 + Duration::from_millis(1010)));
        schedule.sending(t0 + Duration::from_millis(1010));
        schedule.finished(Some(at(3)), t0 + Duration::from_millis(1020));
        assert_eq!(schedule.observe(&at(3), t0 + SECOND * 2, 0.0), None);
    }

    #[test]
    fn a_change_back_to_what_is_held_cancels_the_pending_report() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(SECOND, at(1));
        schedule.observe(&at(2), t0, 1.0);
        assert_eq!(schedule.observe(&at(1), t0, 1.0), None);
    }

    #[test]
    fn problems_are_one_bounded_line() {
        let long = "x".repeat(1000);
        let text = shorten(&long);
        assert_eq!(text.chars().count(), MAX_PROBLEM_CHARS + 3);
        assert_eq!(shorten("short"), "short");
        let info = InstanceInfo::for_this_process("a".into());
        let report = Report {
            applied: Version::new(1),
            newest_seen: Version::new(2),
            problem: Some("bad".into()),
        };
        let decoded: InstanceInfo = serde_json::from_slice(&report.encode(&info)).expect("decodes");
        assert_eq!(decoded.applied_version, Some(Version::new(1)));
        assert_eq!(decoded.seen_version, Some(Version::new(2)));
        assert_eq!(decoded.problem.as_deref(), Some("bad"));
        assert_eq!(decoded.id, "a");
    }
}
