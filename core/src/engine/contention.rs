//! What an optimistic writer does after a `Conflict`: catch up with the
//! version that beat it, then retry after a jittered pause.
//!
//! Catching up: the write that beat ours is already committed, so the
//! watch is usually about to deliver it (etcd's events carry the value;
//! ZooKeeper's watcher reads it), sooner than a fresh read would. The
//! writer waits for the local copy to reach that version, at most a small
//! multiple of the measured write latency, and reads only when the watch
//! did not deliver in time (a slow or broken watch never stalls it).
//!
//! The pause: every loser of a round learns the new version at about the
//! same moment; retrying all at once would make all but one lose again.
//! Each waits a random part of a window that doubles with its attempts
//! from one measured write latency (a fixed window is too long on a fast
//! service and too short on a slow one), up to a cap: a writer that keeps
//! losing steps aside for longer, so the one that is winning finishes
//! sooner and fewer doomed writes load the service. (A window that grew by
//! one latency per attempt kept losers so close behind a chain of wins
//! that four writers in a tight loop ended updates with `Conflict` after
//! their 100 attempts.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::version::Version;

/// Assumed write latency until one was measured.
const DEFAULT_WRITE_LATENCY: Duration = Duration::from_millis(1);
/// How long to wait for the watch, in measured write latencies.
const WATCH_WAIT_LATENCIES: u32 = 4;
/// Bounds of that wait, whatever was measured.
const WATCH_WAIT_MIN: Duration = Duration::from_millis(2);
const WATCH_WAIT_MAX: Duration = Duration::from_millis(250);
/// The backoff window doubles per attempt up to this many write latencies
/// (2^6)...
const BACKOFF_MAX_DOUBLINGS: u32 = 6;
/// ...and never beyond this.
const BACKOFF_MAX: Duration = Duration::from_millis(50);

/// Per instance: the measured write latency and the wake-up of writers
/// waiting for a newer version.
#[derive(Debug, Default)]
pub(crate) struct Contention {
    /// Exponentially weighted mean of successful write latencies, in µs
    /// (0: nothing measured yet).
    write_latency_us: AtomicU64,
    /// Notified (all waiters) whenever the snapshot is replaced.
    replaced: tokio::sync::Notify,
}

impl Contention {
    /// Called by the snapshot's owner after every replacement.
    pub(crate) fn snapshot_replaced(&self) {
        self.replaced.notify_waiters();
    }

    /// A successful write took `elapsed`.
    pub(crate) fn observe_write(&self, elapsed: Duration) {
        let sample = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        // Races between writers of one instance only blur the mean.
        let old = self.write_latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            // 1/8 weight for the new sample.
            (old.saturating_mul(7).saturating_add(sample)) / 8
        };
        self.write_latency_us.store(new.max(1), Ordering::Relaxed);
    }

    /// The write latency to scale waits by.
    pub(crate) fn write_latency(&self) -> Duration {
        match self.write_latency_us.load(Ordering::Relaxed) {
            0 => DEFAULT_WRITE_LATENCY,
            us => Duration::from_micros(us),
        }
    }

    /// How long to wait for the watch after a conflict.
    fn watch_wait(&self) -> Duration {
        (self.write_latency() * WATCH_WAIT_LATENCIES).clamp(WATCH_WAIT_MIN, WATCH_WAIT_MAX)
    }

    /// The pause before retry `attempt` (1-based): uniform in a window of
    /// `2^(attempt - 1)` write latencies (at most 64), capped at 50 ms.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(BACKOFF_MAX_DOUBLINGS);
        let window = self
            .write_latency()
            .saturating_mul(1 << doublings)
            .min(BACKOFF_MAX);
        let window_us = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(fastrand::u64(0..=window_us))
    }
}

/// What a writer waiting after a conflict watches: the instance's
/// contention record, its copy's newest version, and its close signal. The
/// state's core lends these; contention needs nothing else of it.
pub(crate) struct Waiting<'a, F> {
    /// The instance's contention record (latency, wake-ups).
    pub contention: &'a Contention,
    /// The newest version the local copy has seen, read afresh each call.
    pub newest_seen: F,
    /// Cancelled when the state closes.
    pub closed: &'a CancellationToken,
    /// The payload key, for the trace line.
    pub key: &'a Key,
}

/// After an optimistic write at `expected` failed with `conflict`: brings
/// the local copy to (at least) the version that won, from the watch if it
/// delivers in time, else with a read; then pauses before the retry.
pub(crate) async fn after_conflict<F>(
    waiting: Waiting<'_, F>,
    expected: Version,
    conflict: &Error,
    attempt: u32,
    read_latest: impl std::future::Future<Output = Result<()>>,
) -> Result<()>
where
    F: Fn() -> Version,
{
    // The version that beat ours, when the backend said; else anything
    // newer than ours.
    let winner = conflict.current_version().filter(|v| *v > expected);
    let caught_up = |newest: Version| match winner {
        Some(winner) => newest >= winner,
        None => newest > expected,
    };
    let deadline = Instant::now() + waiting.contention.watch_wait();
    let delivered = wait_for(&waiting, deadline, caught_up).await;
    if !delivered {
        tracing::trace!(key = %waiting.key, %expected, "the watch did not deliver the winning version in time; reading");
        read_latest.await?;
    }
    tokio::time::sleep(waiting.contention.backoff(attempt)).await;
    Ok(())
}

/// Waits until `done(newest_seen)` holds for the local copy, or `deadline`;
/// returns whether it held.
async fn wait_for<F>(
    waiting: &Waiting<'_, F>,
    deadline: Instant,
    done: impl Fn(Version) -> bool,
) -> bool
where
    F: Fn() -> Version,
{
    loop {
        // Registered before the check, so a replacement between the check
        // and the wait still wakes us.
        let replaced = waiting.contention.replaced.notified();
        tokio::pin!(replaced);
        replaced.as_mut().enable();
        if done((waiting.newest_seen)()) {
            return true;
        }
        if waiting.closed.is_cancelled() {
            return false;
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        if tokio::time::timeout_at(deadline, replaced).await.is_err() {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_scale_with_the_measured_write_latency() {
        let contention = Contention::default();
        assert_eq!(contention.write_latency(), DEFAULT_WRITE_LATENCY);
        contention.observe_write(Duration::from_millis(10));
        assert_eq!(contention.write_latency(), Duration::from_millis(10));
        assert_eq!(contention.watch_wait(), Duration::from_millis(40));
        for attempt in 1..10 {
            let pause = contention.backoff(attempt);
            let window = Duration::from_millis(10 << (attempt - 1).min(6));
            assert!(pause <= window.min(BACKOFF_MAX), "{pause:?} at {attempt}");
        }
        // The window doubles: over many draws, later attempts pause longer.
        let fast = Contention::default();
        fast.observe_write(Duration::from_micros(500));
        let mean = |attempt| {
            (0..2000)
                .map(|_| fast.backoff(attempt).as_micros())
                .sum::<u128>()
                / 2000
        };
        let (first, third, last) = (mean(1), mean(3), mean(u32::MAX));
        assert!(
            first <= 500 && third > 2 * first && third <= 2000,
            "{first} {third}"
        );
        assert!(last > 10_000 && last <= 25_000, "{last}");
        // The mean moves an eighth of the way to a new sample.
        contention.observe_write(Duration::from_millis(2));
        assert_eq!(contention.write_latency(), Duration::from_millis(9));
    }

    #[test]
    fn the_watch_wait_is_bounded_both_ways() {
        let fast = Contention::default();
        fast.observe_write(Duration::from_micros(50));
        assert_eq!(fast.watch_wait(), WATCH_WAIT_MIN);
        let slow = Contention::default();
        slow.observe_write(Duration::from_secs(1));
        assert_eq!(slow.watch_wait(), WATCH_WAIT_MAX);
        assert_eq!(slow.backoff(1).max(BACKOFF_MAX), BACKOFF_MAX);
    }
}
