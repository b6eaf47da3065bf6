//! The one retry backoff of every backend.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential backoff with jitter, for a backend's retry loops (reconnect,
/// re-watch, re-create a registration, call another member).
///
/// Each [`next_delay`](Self::next_delay) is drawn from the upper half of
/// the current step (`step/2 ..= step`, "equal jitter"), and the step
/// doubles up to `max`: clients that failed together do not retry in
/// lockstep, and no delay is shorter than half a step.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// A backoff whose steps run from `min` to `max` (`max` is raised to
    /// `min` when lower).
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            step: min,
        }
    }

    /// A short backoff for retrying one request inside an operation (a
    /// connection lost mid-request, a conflicting version): steps from
    /// `first` doubling to `4 × first`, so that a bounded number of
    /// attempts stays within a few times `first` in total.
    pub fn short(first: Duration) -> Self {
        Backoff::new(first, first * 4)
    }

    /// The delay before the next attempt; the step after it doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let spread = u64::try_from((step - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(fastrand::u64(0..=spread))
    }

    /// Back to the first step (after a success).
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// Sleeps [`next_delay`](Self::next_delay).
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Sleeps [`next_delay`](Self::next_delay), or less when `cancelled`
    /// fires first. Returns false when it was cancelled: stop retrying.
    pub async fn wait(&mut self, cancelled: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = cancelled.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(800));
        let mut backoff = Backoff::new(min, max);
        for step in [100, 200, 400, 800, 800, 800] {
            let step = Duration::from_millis(step);
            let delay = backoff.next_delay();
            assert!(delay >= step / 2 && delay <= step, "{delay:?} for {step:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= min);
    }

    #[test]
    fn delays_are_not_all_equal() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            seen.insert(backoff.next_delay());
        }
        assert!(seen.len() > 1, "no jitter: {seen:?}");
    }

    #[test]
    fn short_backoff_is_capped_at_four_times_the_first_step() {
        let first = Duration::from_millis(40);
        let mut backoff = Backoff::short(first);
        for step in [40, 80, 160, 160, 160, 160, 160, 160] {
            let step = Duration::from_millis(step);
            let delay = backoff.next_delay();
            assert!(delay >= step / 2 && delay <= step, "{delay:?} for {step:?}");
        }
    }

    #[tokio::test]
    async fn sleep_waits_at_least_half_of_each_growing_step() {
        // Only lower bounds: a loaded machine may oversleep.
        let first = Duration::from_millis(20);
        let mut backoff = Backoff::short(first);
        let started = tokio::time::Instant::now();
        backoff.sleep().await;
        assert!(started.elapsed() >= first / 2, "{:?}", started.elapsed());
        let started = tokio::time::Instant::now();
        backoff.sleep().await;
        assert!(started.elapsed() >= first, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn wait_stops_when_cancelled() {
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!backoff.wait(&cancelled).await);
    }
}
