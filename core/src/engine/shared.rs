//! The state every handle and the watcher task share: the snapshot, the
//! apply path that turns new versions into change sets, and freshness.

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::events::{ChangeSet, Origin, Published, StateEvent, Subscription, View};
use super::freshness::{ProofClock, Verdict};
use super::{Config, PayloadProblem};
use crate::backend::{CoordinationBackend, SessionStatus};
use crate::diff::diff;
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::key::Key;
use crate::version::{Version, Versioned};

pub(crate) use crate::state::StateKeys;

/// One immutable view of the state; replaced whole on every change.
#[derive(Debug)]
pub(crate) struct Snapshot<T> {
    pub value: Arc<T>,
    /// `value` as JSON (what change sets are computed on).
    pub json: Arc<Value>,
    /// The payload `value` was decoded from, as JSON, with the members `T`
    /// does not know (the same `Arc` as `json` when there are none): what
    /// an update merges its change into.
    pub raw: Arc<Value>,
    /// Version of the local copy: the last good payload (`value`).
    pub version: Version,
    /// The newest version observed on the service, good or not: above
    /// `version` when that payload was rejected. Only grows.
    pub newest_seen: Version,
    pub problem: Option<PayloadProblem>,
    /// The last publication this snapshot reflects.
    pub seq: u64,
}

impl<T> Snapshot<T> {
    /// What a lagging subscriber resyncs from.
    pub fn view(&self) -> View {
        View {
            seq: self.seq,
            version: self.version,
            json: self.json.clone(),
            notice: self.notice(),
        }
    }

    /// What a verification read that found `found` says about this copy.
    pub fn verdict(&self, found: Option<Version>) -> Verdict {
        let deleted = matches!(self.problem, Some(PayloadProblem::Deleted));
        match found {
            None if deleted => Verdict::Current,
            // Present here, gone there (or created after a read we had not
            // applied yet): not current.
            None => Verdict::Behind,
            Some(version) if version <= self.newest_seen => Verdict::Current,
            Some(_) => Verdict::Behind,
        }
    }

    /// The notice that announced this snapshot's problem.
    fn notice(&self) -> Option<StateEvent> {
        match &self.problem {
            None => None,
            Some(PayloadProblem::Deleted) => Some(StateEvent::PayloadDeleted),
            Some(PayloadProblem::Undecodable { version, error }) => Some(StateEvent::Rejected {
                version: *version,
                error: error.clone(),
            }),
        }
    }
}

/// One open state's core, which every handle of the instance and its
/// background tasks share: the backend and keys, the current snapshot and
/// the path that replaces it and publishes change sets, freshness, and the
/// instance's task tracker. (Named for what it is: "shared" says only that
/// it is behind an `Arc`.)
pub(crate) struct StateCore<T> {
    pub backend: Arc<dyn CoordinationBackend>,
    pub keys: StateKeys,
    pub config: Config,
    pub instance_id: String,
    /// The latest evidence that the copy is current.
    pub proof: ProofClock,
    pub session: watch::Receiver<SessionStatus>,
    /// Cancelled by `close()` or when the last handle drops.
    pub closed: CancellationToken,
    current: ArcSwap<Snapshot<T>>,
    /// Serialises snapshot replacement and publication, so every subscriber
    /// sees change sets in version order; holds the last publication's
    /// number. Never held across an await.
    apply: Mutex<u64>,
    /// Held by a local write from before it is sent until its result is
    /// applied, so the watcher cannot label our own write `Remote`.
    pub write_gate: tokio::sync::Mutex<()>,
    /// Serialises this instance's updates.
    pub update_lock: tokio::sync::Mutex<()>,
    /// Wakes the watcher task when the snapshot was replaced (by a local
    /// write too), so it can report what the instance applied.
    pub changed: tokio::sync::Notify,
    /// Optimistic writers' conflict handling (see the `contention` module).
    pub contention: super::contention::Contention,
    events: broadcast::Sender<Published>,
    /// Every background task of this instance (the watcher, change
    /// handlers), in one place: `close()` waits for them.
    tasks: tokio_util::task::TaskTracker,
    /// How many change sets `install` computed (tests prove none is
    /// computed while nobody subscribes).
    #[cfg(test)]
    diffs_computed: std::sync::atomic::AtomicU64,
}

/// A payload decoded as `T`.
pub(crate) struct Decoded<T> {
    pub value: T,
    /// `T`'s canonical JSON of it.
    pub json: Arc<Value>,
    /// The payload as JSON (shares `json` when `T` knows all of it).
    pub raw: Arc<Value>,
}

impl<T> Decoded<T> {
    /// `value` with its JSON, and the payload it came from.
    pub fn new(value: T, json: Value, raw: Value) -> Self {
        let json = Arc::new(json);
        let raw = if raw == *json {
            json.clone()
        } else {
            Arc::new(raw)
        };
        Decoded { value, json, raw }
    }
}

/// Decodes a payload into `T`, its canonical JSON, and the payload's JSON.
/// A payload larger than the backend's `max_value_bytes` (an outside writer
/// can store one: etcdctl up to etcd's 1.5 MiB request limit) is refused
/// like an undecodable one: no instance could write it back, so accepting it
/// would block every update.
pub(crate) fn decode<T: DeserializeOwned + Serialize>(
    key: &Key,
    bytes: &[u8],
    max_bytes: usize,
) -> Result<Decoded<T>> {
    if bytes.len() > max_bytes {
        return Err(Error::new(ErrorKind::ValueTooLarge, Operation::Decode)
            .with_key(key)
            .with_message(format!(
                "payload of {} bytes exceeds the limit of {max_bytes} bytes (max_value_bytes); \
                 an outside writer stored it, and no instance could write it back",
                bytes.len()
            )));
    }
    let parsed: Value = serde_json::from_slice(bytes).map_err(|e| {
        Error::new(ErrorKind::Decode, Operation::Decode)
            .with_key(key)
            .with_message(format!("payload is not valid JSON {}", located(&e)))
    })?;
    let value: T = T::deserialize(&parsed).map_err(|e| {
        Error::new(ErrorKind::Decode, Operation::Decode)
            .with_key(key)
            .with_message(format!("payload does not match the state's type: {e}"))
    })?;
    let json = encode_value(key, &value)?;
    Ok(Decoded::new(value, json, parsed))
}

/// `(line L, column C): reason`: serde's reason with its location said
/// once, in front (serde appends ` at line L column C` to its message).
fn located(error: &serde_json::Error) -> String {
    let full = error.to_string();
    if error.line() == 0 {
        return format!("({full})");
    }
    let location = format!(" at line {} column {}", error.line(), error.column());
    let reason = full.strip_suffix(&location).unwrap_or(&full);
    format!(
        "(line {}, column {}): {reason}",
        error.line(),
        error.column()
    )
}

pub(crate) fn encode_value<T: Serialize>(key: &Key, value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| {
        Error::new(ErrorKind::Encode, Operation::Encode)
            .with_key(key)
            .with_source(e)
    })
}

impl<T> StateCore<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backend: Arc<dyn CoordinationBackend>,
        keys: StateKeys,
        config: Config,
        instance_id: String,
        decoded: Decoded<T>,
        version: Version,
        proven_at: std::time::Instant,
    ) -> Self {
        let (events, _) = broadcast::channel(config.change_buffer.max(1));
        let session = backend.session();
        StateCore {
            backend,
            keys,
            config,
            instance_id,
            proof: ProofClock::new(proven_at),
            session,
            closed: CancellationToken::new(),
            current: ArcSwap::from_pointee(Snapshot {
                value: Arc::new(decoded.value),
                json: decoded.json,
                raw: decoded.raw,
                version,
                newest_seen: version,
                problem: None,
                seq: 0,
            }),
            apply: Mutex::new(0),
            write_gate: tokio::sync::Mutex::new(()),
            update_lock: tokio::sync::Mutex::new(()),
            changed: tokio::sync::Notify::new(),
            contention: Default::default(),
            events,
            tasks: tokio_util::task::TaskTracker::new(),
            #[cfg(test)]
            diffs_computed: Default::default(),
        }
    }

    /// Spawns a background task of this instance: `close()` waits for it.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Waits, at most `bound`, for every background task of this instance
    /// (they end once `closed` is cancelled); false when some still run.
    pub async fn wait_for_tasks(&self, bound: std::time::Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(bound, self.tasks.wait()).await.is_ok()
    }

    pub fn current(&self) -> Arc<Snapshot<T>> {
        self.current.load_full()
    }

    /// The current value alone: what `read()` returns, without taking a
    /// reference to the whole snapshot.
    pub fn current_value(&self) -> Arc<T> {
        self.current.load().value.clone()
    }

    fn replace(&self, snapshot: Snapshot<T>) {
        self.current.store(Arc::new(snapshot));
        // A permit is kept when the watcher is busy: no wake-up is lost.
        self.changed.notify_one();
        self.contention.snapshot_replaced();
    }

    /// Broadcasts `event` as the next publication; returns its number.
    /// Called with the apply lock held (`last` is its content).
    fn publish(&self, last: &mut u64, event: StateEvent, json: Option<Arc<Value>>) -> u64 {
        *last += 1;
        // No receivers is fine: nobody subscribed.
        let _ = self.events.send(Published {
            seq: *last,
            event,
            json,
        });
        *last
    }

    fn lock_apply(&self) -> std::sync::MutexGuard<'_, u64> {
        self.apply.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a payload seen on the service (watch, read, refresh).
    /// Returns false when it was not newer than what we have.
    pub fn apply_remote(&self, versioned: &Versioned) -> bool {
        let mut last = self.lock_apply();
        let current = self.current();
        if versioned.version <= current.newest_seen {
            return false;
        }
        let max_bytes = self.backend.capabilities().max_value_bytes;
        match decode::<T>(&self.keys.payload, &versioned.value, max_bytes) {
            Ok(decoded) => {
                self.install(
                    &mut last,
                    &current,
                    versioned.version,
                    decoded,
                    Origin::Remote,
                );
            }
            Err(error) => {
                // The reason only, one line: the key and operation are
                // known from context (and logged below).
                let message = error
                    .message()
                    .map_or_else(|| error.kind().to_string(), crate::error::one_line);
                tracing::warn!(key = %self.keys.payload, version = %versioned.version, %message,
                    "payload rejected; keeping the last good copy");
                let problem = PayloadProblem::Undecodable {
                    version: versioned.version,
                    error: message.clone(),
                };
                // The snapshot first (carrying the number of the notice that
                // follows), as for change sets: a subscriber that got the
                // notice finds the problem in `status()`.
                self.replace(Snapshot {
                    value: current.value.clone(),
                    json: current.json.clone(),
                    raw: current.raw.clone(),
                    version: current.version,
                    newest_seen: versioned.version,
                    problem: Some(problem),
                    seq: *last + 1,
                });
                self.publish(
                    &mut last,
                    StateEvent::Rejected {
                        version: versioned.version,
                        error: message,
                    },
                    None,
                );
            }
        }
        true
    }

    /// Applies this instance's own successful write (`decoded.raw` is the
    /// payload it wrote).
    pub fn apply_local(&self, version: Version, decoded: Decoded<T>) {
        let mut last = self.lock_apply();
        let current = self.current();
        if version <= current.newest_seen {
            return;
        }
        self.install(&mut last, &current, version, decoded, Origin::Local);
    }

    fn install(
        &self,
        last: &mut u64,
        current: &Snapshot<T>,
        version: Version,
        decoded: Decoded<T>,
        origin: Origin,
    ) {
        // Change sets are T's view: members T does not know change the
        // stored payload (`raw`) but are no change to this instance.
        let Decoded { value, json, raw } = decoded;
        // Nobody subscribed (no subscription, no change handler): no change
        // set is computed. Safe because subscribing takes the apply lock we
        // hold: a subscriber created later starts at the snapshot installed
        // here, and a lagging one rebuilds from snapshots, never from the
        // change sets it missed.
        let changes = if self.events.receiver_count() == 0 {
            Vec::new()
        } else {
            #[cfg(test)]
            self.diffs_computed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            diff(&current.json, &json)
        };
        // A snapshot is replaced before its change set is published, so a
        // subscriber that lags and resyncs never misses it: the number it
        // carries is the publication that follows.
        let seq = if changes.is_empty() { *last } else { *last + 1 };
        self.replace(Snapshot {
            value: Arc::new(value),
            json: json.clone(),
            raw,
            version,
            newest_seen: version,
            problem: None,
            seq,
        });
        if !changes.is_empty() {
            self.publish(
                last,
                StateEvent::Changed(ChangeSet {
                    version,
                    origin,
                    changes,
                }),
                Some(json),
            );
        }
    }

    /// The payload is gone from the service.
    pub fn apply_deleted(&self) {
        let mut last = self.lock_apply();
        let current = self.current();
        if matches!(current.problem, Some(PayloadProblem::Deleted)) {
            return;
        }
        tracing::warn!(key = %self.keys.payload, "payload deleted; keeping the last good copy");
        // Replaced first, as in `apply_remote`.
        self.replace(Snapshot {
            value: current.value.clone(),
            json: current.json.clone(),
            raw: current.raw.clone(),
            version: current.version,
            newest_seen: current.newest_seen,
            problem: Some(PayloadProblem::Deleted),
            seq: *last + 1,
        });
        self.publish(&mut last, StateEvent::PayloadDeleted, None);
    }

    /// Applies a fresh read of the payload, whatever it holds.
    pub fn apply_read(&self, read: Option<&Versioned>) {
        match read {
            Some(versioned) => {
                self.apply_remote(versioned);
            }
            None => self.apply_deleted(),
        }
    }

    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let _apply = self.lock_apply();
        let rx = self.events.subscribe();
        let start = self.current().view();
        let weak = Arc::downgrade(self);
        let fallback = start.clone();
        let view = Arc::new(move || match weak.upgrade() {
            Some(shared) => shared.current().view(),
            None => fallback.clone(),
        });
        Subscription::new(rx, start, view, self.closed.clone())
    }

    /// Fails unless the local copy can be the base of a write.
    pub fn ensure_writable(&self, snapshot: &Snapshot<T>) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(Error::new(ErrorKind::Closed, Operation::Update).with_key(&self.keys.root));
        }
        match &snapshot.problem {
            None => Ok(()),
            Some(PayloadProblem::Undecodable { version, error }) => {
                Err(Error::new(ErrorKind::Decode, Operation::Update)
                    .with_key(&self.keys.payload)
                    .with_message(format!(
                        "the payload at version {version} does not decode ({error}); \
                         updates resume once a valid payload is written"
                    )))
            }
            Some(PayloadProblem::Deleted) => {
                Err(Error::new(ErrorKind::NotFound, Operation::Update)
                    .with_key(&self.keys.payload)
                    .with_message("the payload was deleted on the service"))
            }
        }
    }

    pub fn encode_bytes(&self, json: &Value) -> Result<Bytes> {
        serde_json::to_vec(json).map(Bytes::from).map_err(|e| {
            Error::new(ErrorKind::Encode, Operation::Encode)
                .with_key(&self.keys.payload)
                .with_source(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::async_trait;
    use crate::contract::{Capabilities, LockOptions, PutMode, WatchStream};
    use crate::engine::{UnknownFields, WriteMode};
    use crate::{LockGuard, Registration};
    use futures::StreamExt;
    use serde_json::json;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    /// A backend the apply path never calls (it only reads the size limit).
    #[derive(Debug)]
    struct Unused(watch::Sender<SessionStatus>);

    fn unused<T>() -> Result<T> {
        Err(Error::new(ErrorKind::Unsupported, Operation::Read))
    }

    #[async_trait]
    impl CoordinationBackend for Unused {
        fn name(&self) -> &'static str {
            "unused"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::new(usize::MAX)
        }
        fn session(&self) -> watch::Receiver<SessionStatus> {
            self.0.subscribe()
        }
        async fn get(&self, _: &Key) -> Result<Option<Versioned>> {
            unused()
        }
        async fn put(&self, _: &Key, _: Bytes, _: PutMode) -> Result<Version> {
            unused()
        }
        async fn delete(&self, _: &Key, _: Option<Version>) -> Result<()> {
            unused()
        }
        async fn list(&self, _: &Key) -> Result<Vec<String>> {
            unused()
        }
        async fn watch(&self, _: &Key) -> Result<WatchStream> {
            unused()
        }
        async fn lock(&self, _: &Key, _: LockOptions) -> Result<LockGuard> {
            unused()
        }
        async fn fenced_put(
            &self,
            _: &Key,
            _: Bytes,
            _: PutMode,
            _: &LockGuard,
        ) -> Result<Version> {
            unused()
        }
        async fn register(&self, _: &Key, _: Bytes) -> Result<Registration> {
            unused()
        }
        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    /// A state of `{"n": 0}` at version 1, with a change buffer of 2.
    fn counter() -> Arc<StateCore<Value>> {
        let (session, _) = watch::channel(SessionStatus {
            state: crate::backend::SessionState::Connected,
            epoch: 0,
        });
        let keys = StateKeys::new(Key::new("/t/counter").expect("key")).expect("layout");
        let config = Config {
            max_staleness: Duration::from_secs(60),
            write_mode: WriteMode::Optimistic,
            lock_timeout: Duration::from_secs(1),
            max_attempts: 3,
            change_buffer: 2,
            unknown_fields: UnknownFields::Keep,
            report_interval: None,
        };
        let initial = json!({"n": 0});
        Arc::new(StateCore::new(
            Arc::new(Unused(session)),
            keys,
            config,
            "i1".into(),
            Decoded::new(initial.clone(), initial.clone(), initial),
            Version::new(1),
            std::time::Instant::now(),
        ))
    }

    /// Version `v` of the payload, holding `n`.
    fn remote(v: u64, n: u64) -> Versioned {
        Versioned {
            version: Version::new(v),
            value: Bytes::from(json!({ "n": n }).to_string()),
        }
    }

    fn changed(event: StateEvent) -> ChangeSet {
        match event {
            StateEvent::Changed(set) => set,
            other => panic!("expected a change set, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn no_change_set_is_computed_while_nobody_subscribes() {
        let shared = counter();
        for v in 2..=6 {
            assert!(shared.apply_remote(&remote(v, v)));
        }
        let n = json!({"n": 0});
        let decoded = Decoded::new(n.clone(), n.clone(), n);
        shared.apply_local(Version::new(7), decoded);
        assert_eq!(shared.diffs_computed.load(Ordering::Relaxed), 0);
        assert_eq!(shared.current().version, Version::new(7));

        // A subscriber from now on costs one change set per version, and a
        // dropped one stops the cost again.
        let subscription = shared.subscribe();
        assert!(shared.apply_remote(&remote(8, 8)));
        assert_eq!(shared.diffs_computed.load(Ordering::Relaxed), 1);
        drop(subscription);
        assert!(shared.apply_remote(&remote(9, 9)));
        assert_eq!(shared.diffs_computed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_subscriber_after_unobserved_changes_gets_exact_change_sets() {
        let shared = counter();
        for v in 2..=5 {
            shared.apply_remote(&remote(v, v * 10));
        }
        let mut subscription = shared.subscribe();
        shared.apply_remote(&remote(6, 60));
        // Against the snapshot of version 5 (n = 50), not the initial one.
        let set = changed(subscription.next().await.expect("event"));
        assert_eq!(set.version, Version::new(6));
        assert_eq!(set.origin, Origin::Remote);
        assert_eq!(set.changes, diff(&json!({"n": 50}), &json!({"n": 60})));
        // An unchanged payload is still no change set.
        shared.apply_remote(&remote(7, 60));
        shared.apply_remote(&remote(8, 80));
        let set = changed(subscription.next().await.expect("event"));
        assert_eq!(set.version, Version::new(8));
        assert_eq!(set.changes, diff(&json!({"n": 60}), &json!({"n": 80})));

        // Lagging past the buffer of 2: one resync with the net difference
        // from what this subscriber last saw.
        for v in 9..=12 {
            shared.apply_remote(&remote(v, v * 10));
        }
        assert!(matches!(
            subscription.next().await,
            Some(StateEvent::Lagged { .. })
        ));
        let set = changed(subscription.next().await.expect("event"));
        assert_eq!(set.origin, Origin::Rebuilt);
        assert_eq!(set.version, Version::new(12));
        assert_eq!(set.changes, diff(&json!({"n": 80}), &json!({"n": 120})));
    }

    #[test]
    fn rejections_say_the_reason_and_the_location_once() {
        let key = Key::new("/p/payload").expect("key");
        let error = decode::<serde_json::Value>(&key, b"{n: 2", usize::MAX)
            .err()
            .expect("not JSON");
        assert_eq!(
            error.message(),
            Some("payload is not valid JSON (line 1, column 2): key must be a string")
        );
        let error = decode::<Vec<String>>(&key, br#""firefox*""#, usize::MAX)
            .err()
            .expect("wrong type");
        assert_eq!(
            error.message(),
            Some(
                r#"payload does not match the state's type: invalid type: string "firefox*", expected a sequence"#
            )
        );
    }
}
