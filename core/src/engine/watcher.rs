//! The background task of one `SharedState`: follows the payload's watch
//! and the session, verifies the copy periodically, and feeds the freshness
//! state machine ([`Machine`]) with what it sees, carrying out its actions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::freshness::{Action, Input, Machine, Verdict};
use super::instances::InstanceInfo;
use super::report::{Report, Schedule};
use super::shared::StateCore;
use crate::backend::{Backoff, SessionState, WatchEvent, WatchStream};
use crate::error::{ErrorKind, Result};
use crate::registration::Registration;
use crate::version::Version;

const REWATCH_BACKOFF_MIN: Duration = Duration::from_millis(50);
const REWATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The shortest verification interval, whatever `max_staleness` says.
const MIN_VERIFY_INTERVAL: Duration = Duration::from_millis(100);

/// How often the copy is verified: a third of `max_staleness`, so that two
/// verifications may fail (or one may take long) before `read()` turns
/// `Stale`.
pub(crate) fn verify_interval(max_staleness: Duration) -> Duration {
    (max_staleness / 3).max(MIN_VERIFY_INTERVAL)
}

/// The interval with up to 10% taken off at random, so that a fleet opened
/// at once does not verify in lockstep.
fn jittered(interval: Duration) -> Duration {
    let tenth = u64::try_from(interval.as_micros() / 10).unwrap_or(u64::MAX);
    interval.saturating_sub(Duration::from_micros(fastrand::u64(0..=tenth)))
}

/// A verification read in flight: when it was sent and what it found.
type Verification = BoxFuture<'static, (Instant, Result<Option<Version>>)>;
/// A watch being (re-)opened: when the request was sent and the stream.
type Opening = BoxFuture<'static, (Instant, Result<WatchStream>)>;

/// What the instance registration says about this instance, and when it
/// says it next.
pub(crate) struct Reporter {
    /// The registration's fixed part (id, host, pid, since).
    pub base: InstanceInfo,
    pub schedule: Schedule,
}

/// A registration update in flight: what it reports and how it went.
type Reporting<'a> = BoxFuture<'a, (Report, Result<()>)>;

/// Runs until the state is closed; then removes the instance registration.
/// With a `reporter`, keeps the registration's applied version and problem
/// up to date (coalesced, see [`super::report`]).
pub(crate) async fn run<T>(
    shared: Arc<StateCore<T>>,
    stream: WatchStream,
    registration: Option<Registration>,
    mut reporter: Option<Reporter>,
    opened_epoch: u64,
) where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let mut session = shared.session.clone();
    let interval = verify_interval(shared.config.max_staleness);
    let (mut machine, mut pending) = start_machine(&mut session, interval, opened_epoch);
    let mut watch = Following::new(stream);
    let mut verification: Option<Verification> = None;
    let closed = shared.closed.clone();
    let mut reporting: Option<Reporting<'_>> = None;
    if registration.is_none() {
        reporter = None;
    }
    loop {
        for action in std::mem::take(&mut pending) {
            match action {
                Action::Prove(at) => shared.proof.prove(at),
                Action::Verify => verification = Some(verify(&shared)),
                Action::Rewatch => {
                    if watch.opening.is_none() {
                        watch.opening = Some(open_watch(&shared));
                    }
                }
            }
        }
        shared.proof.set_following(machine.is_following());
        let report_due = match (&mut reporter, &registration) {
            (Some(reporter), Some(registration)) => {
                report(&shared, reporter, registration, &mut reporting)
            }
            _ => None,
        };
        let next_verification = tokio::time::Instant::from_std(machine.next_verification);
        let input = tokio::select! {
            biased;
            _ = closed.cancelled() => break,
            changed = session.changed() => {
                if changed.is_err() {
                    // The backend is gone; nothing will verify us again.
                    closed.cancelled().await;
                    break;
                }
                session_input(&shared, *session.borrow_and_update())
            }
            item = next_item(&mut watch.stream) => watch.input(&shared, item).await,
            (sent_at, found) = poll_slot(&mut verification) => {
                verification = None;
                Input::Verified { sent_at, verdict: verdict_of(&shared, found) }
            }
            (opened_at, opened) = poll_slot(&mut watch.opening) => {
                watch.opening = None;
                if watch.opened(&shared, opened_at, opened, &mut machine) {
                    continue;
                }
                break;
            }
            _ = sleep_until(watch.retry_at) => {
                watch.retry_at = None;
                Input::WatchEnded
            }
            _ = tokio::time::sleep_until(next_verification) => Input::VerifyDue,
            (sent, result) = poll_slot(&mut reporting) => {
                reporting = None;
                reported(&shared, &mut reporter, sent, result);
                continue;
            }
            _ = sleep_until(report_due) => continue,
            _ = shared.changed.notified(), if reporter.is_some() => continue,
        };
        pending = machine.step(input, Instant::now());
        if let Input::VerifyDue = input {
            // step() scheduled the next one a full interval away.
            machine.next_verification = Instant::now() + jittered(interval);
        }
    }
    machine.step(Input::Closed, Instant::now());
    shared.proof.set_following(false);
    // A report in flight is dropped (cancellation-safe) before the close.
    drop(reporting);
    if let Some(registration) = registration {
        if let Err(error) = registration.close().await {
            tracing::warn!(%error, key = %shared.keys.root, "removing the instance registration failed");
        }
    }
}

/// The freshness machine of a watcher whose first state `open()` read on a
/// connected session of `opened_epoch`, told the session as it is now (it
/// may have changed between open() and the task's first poll); with the
/// actions that first step asks for.
fn start_machine(
    session: &mut tokio::sync::watch::Receiver<crate::backend::SessionStatus>,
    interval: Duration,
    opened_epoch: u64,
) -> (Machine, Vec<Action>) {
    let first = *session.borrow_and_update();
    let mut machine = Machine::new(
        Instant::now(),
        interval,
        SessionState::Connected,
        opened_epoch,
    );
    let pending = machine.step(
        Input::Session {
            state: first.state,
            epoch: first.epoch,
        },
        Instant::now(),
    );
    (machine, pending)
}

/// What a new session status tells the machine.
fn session_input<T>(shared: &StateCore<T>, status: crate::backend::SessionStatus) -> Input {
    if status.state == SessionState::Closed {
        tracing::debug!(key = %shared.keys.root, "the backend was closed");
    }
    Input::Session {
        state: status.state,
        epoch: status.epoch,
    }
}

/// The payload's watch as the watcher follows it: the stream, and the
/// re-watch that replaces it.
struct Following {
    stream: Option<WatchStream>,
    /// When the current stream was requested, until its first item (its
    /// initial state) arrived.
    opened_at: Option<Instant>,
    /// A new watch being opened.
    opening: Option<Opening>,
    backoff: Backoff,
    /// When a failed re-watch is tried again.
    retry_at: Option<tokio::time::Instant>,
}

impl Following {
    /// Following `stream`, whose initial state `open()` already applied.
    fn new(stream: WatchStream) -> Self {
        Following {
            stream: Some(stream),
            opened_at: None,
            opening: None,
            backoff: Backoff::new(REWATCH_BACKOFF_MIN, REWATCH_BACKOFF_MAX),
            retry_at: None,
        }
    }

    /// Applies one item of the watch (an event, or the stream's end, which
    /// drops it), and says what it tells the machine. The first full state
    /// of a newly opened stream is that stream's opening.
    async fn input<T>(&mut self, shared: &StateCore<T>, item: Option<Result<WatchEvent>>) -> Input
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        match item {
            Some(Ok(event)) => {
                let full = matches!(event, WatchEvent::Initial(_) | WatchEvent::Resync(_));
                apply_event(shared, event).await;
                match (full, self.opened_at.take()) {
                    (true, Some(opened_at)) => Input::WatchOpened { opened_at },
                    (true, None) => Input::WatchResynced,
                    (false, _) => Input::WatchChanged,
                }
            }
            Some(Err(error)) => {
                tracing::warn!(key = %shared.keys.payload, %error, "watch failed; re-watching");
                self.stream = None;
                Input::WatchEnded
            }
            None => {
                tracing::debug!(key = %shared.keys.payload, "watch ended; re-watching");
                self.stream = None;
                Input::WatchEnded
            }
        }
    }

    /// A re-watch requested at `opened_at` answered: its stream replaces
    /// the old one, or the re-watch is tried again after a backoff. False
    /// when the backend is closed.
    fn opened<T>(
        &mut self,
        shared: &StateCore<T>,
        opened_at: Instant,
        opened: Result<WatchStream>,
        machine: &mut Machine,
    ) -> bool {
        match opened {
            Ok(stream) => {
                self.backoff.reset();
                // The old stream (if any) goes only now that the new one is
                // registered: no gap between the two.
                self.stream = Some(stream);
                self.opened_at = Some(opened_at);
                true
            }
            Err(error) if error.kind() == ErrorKind::Closed => false,
            Err(error) => {
                let delay = self.backoff.next_delay();
                tracing::warn!(key = %shared.keys.payload, %error, ?delay, "re-watch failed");
                machine.rewatch_failed();
                self.retry_at = Some(tokio::time::Instant::now() + delay);
                true
            }
        }
    }
}

/// What a verification read that found `found` says about the copy.
fn verdict_of<T>(shared: &StateCore<T>, found: Result<Option<Version>>) -> Verdict
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    match found {
        Ok(found) => {
            let verdict = shared.current().verdict(found);
            if verdict == Verdict::Behind {
                tracing::info!(key = %shared.keys.payload, ?found,
                    "verification found a version the watch did not deliver; re-watching");
            }
            verdict
        }
        Err(error) => {
            tracing::debug!(key = %shared.keys.payload, %error, "verification failed");
            Verdict::Failed
        }
    }
}

/// A registration update sent at `sent` finished with `result`: schedules
/// the next, or stops reporting where the backend cannot take updates.
fn reported<T>(
    shared: &StateCore<T>,
    reporter: &mut Option<Reporter>,
    sent: Report,
    result: Result<()>,
) {
    let Some(active) = reporter else {
        return;
    };
    match result {
        Ok(()) => active.schedule.finished(Some(sent), Instant::now()),
        Err(error) if matches!(error.kind(), ErrorKind::Unsupported | ErrorKind::Closed) => {
            tracing::warn!(%error, key = %shared.keys.root,
                "cannot update the instance registration; it keeps what it said last");
            *reporter = None;
        }
        Err(error) => {
            tracing::debug!(%error, key = %shared.keys.root,
                "updating the instance registration failed; retrying");
            active.schedule.finished(None, Instant::now());
        }
    }
}

/// The next item of the stream, or never when there is none.
async fn next_item(stream: &mut Option<WatchStream>) -> Option<Result<WatchEvent>> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// Sends the report the schedule says is due (into `reporting`); returns
/// when the next one is due.
fn report<'a, T>(
    shared: &StateCore<T>,
    reporter: &mut Reporter,
    registration: &'a Registration,
    reporting: &mut Option<Reporting<'a>>,
) -> Option<tokio::time::Instant>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let current = Report::of(&shared.current());
    let now = Instant::now();
    reporter.schedule.observe(&current, now, fastrand::f64());
    if reporting.is_none() && reporter.schedule.is_due(now) {
        reporter.schedule.sending(now);
        let value = current.encode(&reporter.base);
        *reporting = Some(
            async move {
                let result = registration.update(value).await;
                (current, result)
            }
            .boxed(),
        );
    }
    reporter.schedule.next().map(tokio::time::Instant::from_std)
}

/// The output of the future in `slot`, or never when it is empty.
async fn poll_slot<O>(slot: &mut Option<BoxFuture<'_, O>>) -> O {
    match slot {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A version read of the payload, bounded by the verification interval (a
/// read that hangs proves nothing).
fn verify<T>(shared: &Arc<StateCore<T>>) -> Verification
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let backend = shared.backend.clone();
    let key = shared.keys.payload.clone();
    let limit = verify_interval(shared.config.max_staleness);
    async move {
        let sent_at = Instant::now();
        let found = match tokio::time::timeout(limit, backend.get_version(&key)).await {
            Ok(found) => found,
            Err(_) => Err(crate::Error::new(ErrorKind::Timeout, crate::Operation::Get)
                .with_key(&key)
                .with_message(format!(
                    "no answer to the verification read within {limit:?}"
                ))),
        };
        (sent_at, found)
    }
    .boxed()
}

/// Opens a new watch of the payload.
fn open_watch<T>(shared: &Arc<StateCore<T>>) -> Opening
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let backend = shared.backend.clone();
    let key = shared.keys.payload.clone();
    async move {
        let opened_at = Instant::now();
        (opened_at, backend.watch(&key).await)
    }
    .boxed()
}

/// Applies one watch event to the snapshot.
async fn apply_event<T>(shared: &StateCore<T>, event: WatchEvent)
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    // Wait for any local write in flight to be applied first.
    let _gate = shared.write_gate.lock().await;
    match event {
        WatchEvent::Initial(state) | WatchEvent::Resync(state) => {
            shared.apply_read(state.as_ref());
        }
        WatchEvent::Changed(versioned) => {
            shared.apply_remote(&versioned);
        }
        WatchEvent::Deleted => shared.apply_deleted(),
    }
}
