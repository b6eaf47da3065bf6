//! When the local copy was last known to match the service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Marks "live" (session connected and watch in sync) or the instant the
/// copy stopped being verified. Lock-free so `read()` stays cheap.
#[derive(Debug)]
pub(crate) struct Freshness {
    base: Instant,
    /// Nanoseconds since `base` at which verification stopped, or `LIVE`.
    unverified_since: AtomicU64,
}

const LIVE: u64 = u64::MAX;

impl Freshness {
    pub fn new_live() -> Self {
        Freshness {
            base: Instant::now(),
            unverified_since: AtomicU64::new(LIVE),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(LIVE - 1)
    }

    pub fn mark_live(&self) {
        self.unverified_since.store(LIVE, Ordering::Release);
    }

    /// Starts the staleness clock unless it is already running.
    pub fn mark_unverified(&self) {
        let now = self.now();
        let _ =
            self.unverified_since
                .compare_exchange(LIVE, now, Ordering::AcqRel, Ordering::Acquire);
    }

    /// An explicit check against the service succeeded just now.
    pub fn mark_checked(&self) {
        let now = self.now();
        let _ = self
            .unverified_since
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |since| {
                (since != LIVE).then_some(now)
            });
    }

    pub fn is_live(&self) -> bool {
        self.unverified_since.load(Ordering::Acquire) == LIVE
    }

    /// How long the copy has gone unverified; zero while live.
    pub fn unverified_for(&self) -> Duration {
        match self.unverified_since.load(Ordering::Acquire) {
            LIVE => Duration::ZERO,
            since => Duration::from_nanos(self.now().saturating_sub(since)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_runs_only_while_unverified() {
        let f = Freshness::new_live();
        assert!(f.is_live());
        assert_eq!(f.unverified_for(), Duration::ZERO);
        f.mark_unverified();
        assert!(!f.is_live());
        std::thread::sleep(Duration::from_millis(5));
        let first = f.unverified_for();
        assert!(first >= Duration::from_millis(5));
        f.mark_unverified(); // does not restart the clock
        assert!(f.unverified_for() >= first);
        f.mark_checked();
        assert!(f.unverified_for() < first);
        f.mark_live();
        assert!(f.is_live());
        f.mark_checked(); // a check does not end liveness
        assert!(f.is_live());
    }
}
