//! This client's own conditional writes, so that a watch of this client
//! need not read back what this client has just written.
//!
//! ZooKeeper's notifications carry no data: a watch reads the znode after
//! each one. After our own write that read only finds what we wrote, yet it
//! costs a request, and the next write of this session queues behind it.
//! What makes skipping it safe is the order ZooKeeper keeps on a
//! connection: a server applies a transaction, sends its notifications to
//! every watcher, and only then the answer to the request that made it. So
//! when a watch whose last state was `E` holds exactly one data
//! notification, and our write conditioned on `E` landed at `M`, no other
//! change came between `E` and `M` (the write's condition says so), and
//! the notification is either ours or an older one that arrived after the
//! read that taught us `E`: in both cases `M`, with the bytes we wrote, is
//! a true state of the znode, and every change after it arrives as a
//! notification of its own, after our answer, which the watch then reads.
//!
//! A watch that holds such a notification while our write to that key is
//! still unanswered waits for the answer (briefly: it is on its way on the
//! same connection) rather than read; any doubt (more notifications, a
//! failed read before, no record) and it reads, as before.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use sharedstate_core::{Version, Versioned};

/// How many keys are remembered before the records start over.
const KEYS_CAPACITY: usize = 4096;
/// How many landed writes are kept per key: a chain of writes may land
/// before the watch has handled the first notification.
const LANDED_PER_KEY: usize = 4;
/// How long a watch waits for the answer to our write before reading.
pub(crate) const ANSWER_WAIT: Duration = Duration::from_millis(500);

/// A write of ours that landed: at `expected`, it wrote `written`.
#[derive(Debug, Clone)]
struct Landed {
    expected: Version,
    written: Versioned,
}

#[derive(Debug, Default)]
struct Slot {
    /// The versions our unanswered writes are conditioned on (one entry
    /// per write in flight).
    in_flight: Vec<Version>,
    /// The newest landed writes, oldest first.
    landed: VecDeque<Landed>,
}

/// What the records say about the state after `last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum After {
    /// Our write at `last` landed: this is the state it made.
    Landed(Versioned),
    /// A write of ours at `last` is still unanswered.
    Pending,
    /// No write of ours at `last` is known.
    Unknown,
}

/// The records of one client's conditional writes.
#[derive(Debug, Default)]
pub(crate) struct OwnWrites {
    keys: Mutex<HashMap<String, Slot>>,
    /// Woken whenever a write in flight is answered (or abandoned).
    answered: tokio::sync::Notify,
}

impl OwnWrites {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a write to `path` conditioned on `expected` as sent; the
    /// returned guard records how it ended (dropping it unanswered, as a
    /// cancelled or failed write does, removes the mark).
    pub(crate) fn begin<'a>(&'a self, path: &str, expected: Version) -> InFlight<'a> {
        let mut keys = self.slots();
        if keys.len() >= KEYS_CAPACITY && !keys.contains_key(path) {
            keys.retain(|_, slot| !slot.in_flight.is_empty());
        }
        keys.entry(path.to_owned())
            .or_default()
            .in_flight
            .push(expected);
        InFlight {
            writes: self,
            path: path.to_owned(),
            expected,
            done: false,
        }
    }

    /// What is known of our writes to `path` conditioned on `last`.
    pub(crate) fn after(&self, path: &str, last: Version) -> After {
        let keys = self.slots();
        let Some(slot) = keys.get(path) else {
            return After::Unknown;
        };
        if let Some(landed) = slot.landed.iter().find(|l| l.expected == last) {
            return After::Landed(landed.written.clone());
        }
        if slot.in_flight.contains(&last) {
            After::Pending
        } else {
            After::Unknown
        }
    }

    /// [`after`](Self::after), waiting up to `wait` while our write at
    /// `last` is unanswered; `None` unless it landed.
    pub(crate) async fn landed_after(
        &self,
        path: &str,
        last: Version,
        wait: Duration,
    ) -> Option<Versioned> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so an answer in between wakes us.
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            match self.after(path, last) {
                After::Landed(written) => return Some(written),
                After::Unknown => return None,
                After::Pending => {}
            }
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                return None;
            }
        }
    }

    fn end(&self, path: &str, expected: Version, written: Option<Versioned>) {
        {
            let mut keys = self.slots();
            if let Some(slot) = keys.get_mut(path) {
                if let Some(at) = slot.in_flight.iter().position(|v| *v == expected) {
                    slot.in_flight.swap_remove(at);
                }
                if let Some(written) = written {
                    if slot.landed.len() >= LANDED_PER_KEY {
                        slot.landed.pop_front();
                    }
                    slot.landed.push_back(Landed { expected, written });
                }
            }
        }
        self.answered.notify_waiters();
    }
}

/// A conditional write in flight (see [`OwnWrites::begin`]).
#[must_use = "record how the write ended with `landed`"]
pub(crate) struct InFlight<'a> {
    writes: &'a OwnWrites,
    path: String,
    expected: Version,
    done: bool,
}

impl InFlight<'_> {
    /// The write landed at `version` with `value`.
    pub(crate) fn landed(mut self, version: Version, value: Bytes) {
        self.done = true;
        self.writes.end(
            &self.path,
            self.expected,
            Some(Versioned { value, version }),
        );
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.writes.end(&self.path, self.expected, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u64) -> Version {
        Version::new(n)
    }

    #[test]
    fn a_landed_write_is_found_by_its_condition_only() {
        let writes = OwnWrites::default();
        assert_eq!(writes.after("/k", v(1)), After::Unknown);
        let write = writes.begin("/k", v(1));
        assert_eq!(writes.after("/k", v(1)), After::Pending);
        assert_eq!(writes.after("/k", v(2)), After::Unknown);
        write.landed(v(5), Bytes::from_static(b"x"));
        match writes.after("/k", v(1)) {
            After::Landed(found) => {
                assert_eq!(found.version, v(5));
                assert_eq!(&found.value[..], b"x");
            }
            other => panic!("expected Landed, got {other:?}"),
        }
        assert_eq!(writes.after("/k", v(5)), After::Unknown);
        assert_eq!(writes.after("/other", v(1)), After::Unknown);
    }

    #[test]
    fn an_abandoned_write_leaves_no_record() {
        let writes = OwnWrites::default();
        drop(writes.begin("/k", v(1)));
        assert_eq!(writes.after("/k", v(1)), After::Unknown);
    }

    #[test]
    fn only_the_newest_landed_writes_are_kept() {
        let writes = OwnWrites::default();
        for n in 1..=(LANDED_PER_KEY as u64 + 1) {
            writes
                .begin("/k", v(n))
                .landed(v(n + 1), Bytes::from_static(b"x"));
        }
        assert_eq!(writes.after("/k", v(1)), After::Unknown);
        assert!(matches!(writes.after("/k", v(2)), After::Landed(_)));
    }

    /// A watch waiting (in a task) for the answer to our write at `last`.
    fn waiting(
        writes: &std::sync::Arc<OwnWrites>,
        last: Version,
    ) -> tokio::task::JoinHandle<Option<Versioned>> {
        let writes = writes.clone();
        tokio::spawn(async move {
            writes
                .landed_after("/k", last, Duration::from_secs(10))
                .await
        })
    }

    #[tokio::test]
    async fn a_watch_waits_for_the_answer_then_gets_what_landed() {
        let writes = std::sync::Arc::new(OwnWrites::default());
        let write = writes.begin("/k", v(1));
        let waiter = waiting(&writes, v(1));
        tokio::task::yield_now().await;
        write.landed(v(7), Bytes::from_static(b"y"));
        let found = waiter.await.expect("task").expect("landed");
        assert_eq!(found.version, v(7));
        // Abandoned: the wait ends without a state.
        let write = writes.begin("/k", v(7));
        let waiter = waiting(&writes, v(7));
        tokio::task::yield_now().await;
        drop(write);
        assert_eq!(waiter.await.expect("task"), None);
    }

    #[tokio::test]
    async fn the_wait_is_bounded() {
        let writes = OwnWrites::default();
        let _write = writes.begin("/k", v(1));
        let started = std::time::Instant::now();
        assert_eq!(
            writes
                .landed_after("/k", v(1), Duration::from_millis(20))
                .await,
            None
        );
        assert!(started.elapsed() >= Duration::from_millis(20));
    }
}
