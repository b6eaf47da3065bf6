//! Engine behaviours of a fleet in a rolling upgrade: two versions of the
//! state's struct write the same payload (the fields one version does not
//! know survive its writes, in both write modes, under concurrent writers of
//! both versions), strict mode drops them, and every instance reports in its
//! listener registration the version it applied or the problem it has.

use std::time::Duration;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sharedstate_core::{InstanceInfo, Key, SharedState, UnknownFields, Version, WriteMode};

use super::{eventually, raw_put, Fixture};
use crate::behaviours::QUIET_PERIOD;
use crate::{unique_key, BackendFactory, TestClient};

/// A rule as version 1 of the application knows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleV1 {
    /// The rule's name.
    pub name: String,
}

/// Limits as version 1 knows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitsV1 {
    /// The maximum.
    pub max: u64,
}

/// Version 1 of the state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateV1 {
    /// Incremented by writers of both versions.
    pub counter: u64,
    /// An array of objects.
    pub rules: Vec<RuleV1>,
    /// A nested object.
    pub limits: LimitsV1,
}

/// Version 2 of a rule: one more field, with a default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleV2 {
    /// The rule's name.
    pub name: String,
    /// New in version 2.
    #[serde(default)]
    pub priority: u64,
}

/// Version 2 of the limits: one more field, with a default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitsV2 {
    /// The maximum.
    pub max: u64,
    /// New in version 2.
    #[serde(default)]
    pub burst: u64,
}

/// Version 2 of the state: fields added at every depth, all with defaults
/// (the rule for evolving a shared struct).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateV2 {
    /// Incremented by writers of both versions.
    pub counter: u64,
    /// Rules with priorities.
    pub rules: Vec<RuleV2>,
    /// Limits with a burst.
    pub limits: LimitsV2,
    /// New in version 2: incremented by version-2 writers only.
    #[serde(default)]
    pub v2_counter: u64,
    /// New in version 2.
    #[serde(default)]
    pub owner: String,
}

fn rule(name: &str, priority: u64) -> RuleV2 {
    RuleV2 {
        name: name.into(),
        priority,
    }
}

fn initial_v2() -> StateV2 {
    StateV2 {
        counter: 0,
        rules: vec![rule("a", 1), rule("b", 2)],
        limits: LimitsV2 { max: 5, burst: 9 },
        v2_counter: 0,
        owner: "team-x".into(),
    }
}

async fn open_as<T>(
    client: &TestClient,
    path: &Key,
    mode: WriteMode,
    unknown: UnknownFields,
) -> SharedState<T>
where
    T: Serialize + DeserializeOwned + Clone + Default + Send + Sync + 'static,
{
    SharedState::builder(client.backend.clone(), path.as_str())
        .initial(T::default())
        .write_mode(mode)
        .unknown_fields(unknown)
        .open()
        .await
        .unwrap_or_else(|e| panic!("opening {path} ({mode:?}, {unknown:?}) failed: {e}"))
}

/// The payload as stored, as JSON.
async fn stored(client: &TestClient, path: &Key) -> (Value, Version) {
    let payload = path.child("payload").expect("key");
    let found = client
        .backend
        .get(&payload)
        .await
        .expect("get")
        .expect("payload exists");
    let value = serde_json::from_slice(&found.value).expect("the payload is JSON");
    (value, found.version)
}

async fn until_version<T>(state: &SharedState<T>, version: Version, what: &str)
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    eventually(what, async || state.version() >= version).await;
}

async fn unknown_fields_survive(f: &dyn BackendFactory, mode: WriteMode, name: &str) {
    const WRITES: u64 = 20;
    let path = unique_key(name);
    let keep = UnknownFields::Keep;
    let checker = f.client().await;
    // Version 2 creates the payload; two instances of each version.
    let v2a: SharedState<StateV2> = SharedState::builder(f.client().await.backend, path.as_str())
        .initial(initial_v2())
        .write_mode(mode)
        .open()
        .await
        .expect("open v2");
    let v2b: SharedState<StateV2> = open_as(&f.client().await, &path, mode, keep).await;
    let v1a: SharedState<StateV1> = open_as(&f.client().await, &path, mode, keep).await;
    let v1b: SharedState<StateV1> = open_as(&f.client().await, &path, mode, keep).await;
    assert_eq!(v1a.read().expect("read").rules.len(), 2);

    // Version 1 edits the array (insert at the front, a change in place)
    // and the nested object: everything version 2 added stays.
    v1a.update(|s| {
        s.rules.insert(0, RuleV1 { name: "new".into() });
        s.rules[2].name = "b2".into();
        s.limits.max = 6;
    })
    .await
    .expect("v1 update");
    let (payload, version) = stored(&checker, &path).await;
    assert_eq!(
        payload,
        json!({
            "counter": 0,
            "rules": [{"name": "new"}, {"name": "a", "priority": 1}, {"name": "b2", "priority": 2}],
            "limits": {"max": 6, "burst": 9},
            "v2_counter": 0,
            "owner": "team-x",
        }),
        "a version-1 write keeps version 2's fields ({mode:?})"
    );
    until_version(&v2a, version, "v2 sees v1's write").await;
    let seen = v2a.read().expect("read");
    assert_eq!(seen.rules, [rule("new", 0), rule("a", 1), rule("b2", 2)]);
    assert_eq!((seen.limits.burst, seen.owner.as_str()), (9, "team-x"));

    // A change version 1 does not know is no change set there, yet its next
    // write keeps it. v1b first catches up with v1a's write, so that its
    // change set does not arrive on the subscription below.
    until_version(&v1b, version, "v1b sees v1a's write").await;
    let mut v1_events = v1b.subscribe();
    let owner_version = v2b
        .update(|s| s.owner = "team-y".into())
        .await
        .map(|()| v2b.version())
        .expect("v2 update");
    until_version(&v1b, owner_version, "v1 sees v2's write").await;
    let quiet = tokio::time::timeout(QUIET_PERIOD, v1_events.next()).await;
    assert!(
        quiet.is_err(),
        "v1 got an event for a field it does not know: {quiet:?}"
    );
    v1b.update(|s| s.counter += 1).await.expect("v1 update");
    assert_eq!(stored(&checker, &path).await.0["owner"], "team-y");

    // Concurrent writers of both versions lose no update and no field.
    let v1_writers = [&v1a, &v1b].map(|state| async move {
        for _ in 0..WRITES {
            state
                .update(|s| s.counter += 1)
                .await
                .unwrap_or_else(|e| panic!("v1 increment ({mode:?}): {e}"));
        }
    });
    let v2_writers = [&v2a, &v2b].map(|state| async move {
        for _ in 0..WRITES {
            state
                .update(|s| {
                    s.counter += 1;
                    s.v2_counter += 1;
                })
                .await
                .unwrap_or_else(|e| panic!("v2 increment ({mode:?}): {e}"));
        }
    });
    futures::future::join(
        futures::future::join_all(v1_writers),
        futures::future::join_all(v2_writers),
    )
    .await;
    let (payload, version) = stored(&checker, &path).await;
    assert_eq!(
        payload["counter"],
        1 + 4 * WRITES,
        "no lost update: {payload}"
    );
    assert_eq!(
        payload["v2_counter"],
        2 * WRITES,
        "no lost v2 update: {payload}"
    );
    assert_eq!(
        (&payload["owner"], &payload["limits"], &payload["rules"]),
        (
            &json!("team-y"),
            &json!({"max": 6, "burst": 9}),
            &json!([{"name": "new"}, {"name": "a", "priority": 1}, {"name": "b2", "priority": 2}])
        ),
        "no dropped v2 field ({mode:?}): {payload}"
    );
    for state in [&v2a, &v2b] {
        until_version(state, version, "v2 instances converge").await;
        assert_eq!(state.read().expect("read").v2_counter, 2 * WRITES);
    }
    for state in [&v1a, &v1b] {
        until_version(state, version, "v1 instances converge").await;
        assert_eq!(state.read().expect("read").counter, 1 + 4 * WRITES);
    }
    for state in [&v1a, &v1b] {
        state.close().await;
    }
    for state in [&v2a, &v2b] {
        state.close().await;
    }
}

/// Locked writers of two versions of the struct: version 1's writes keep
/// version 2's fields (at any depth, in array elements it edits), and
/// concurrent writers of both versions lose neither an update nor a field.
pub async fn engine_unknown_fields_survive_locked(f: &dyn BackendFactory) {
    unknown_fields_survive(f, WriteMode::Locked, "engine-unknown-locked").await;
}

/// The same with optimistic writers.
pub async fn engine_unknown_fields_survive_optimistic(f: &dyn BackendFactory) {
    unknown_fields_survive(f, WriteMode::Optimistic, "engine-unknown-optimistic").await;
}

/// Strict mode: a version-1 instance with `UnknownFields::Drop` writes its
/// own JSON only (version 2 sees its fields' defaults again), and writes
/// nothing while its own value is unchanged.
pub async fn engine_unknown_fields_dropped_in_strict_mode(f: &dyn BackendFactory) {
    let path = unique_key("engine-unknown-strict");
    let checker = f.client().await;
    let v2: SharedState<StateV2> = SharedState::builder(f.client().await.backend, path.as_str())
        .initial(initial_v2())
        .open()
        .await
        .expect("open v2");
    let strict: SharedState<StateV1> = open_as(
        &f.client().await,
        &path,
        WriteMode::Locked,
        UnknownFields::Drop,
    )
    .await;
    assert_eq!(strict.status().unknown_fields, UnknownFields::Drop);
    let before = stored(&checker, &path).await.1;
    strict.update(|_| ()).await.expect("a no-op update");
    assert_eq!(
        stored(&checker, &path).await.1,
        before,
        "a no-op writes nothing"
    );

    strict
        .update(|s| s.counter = 7)
        .await
        .expect("strict update");
    let (payload, version) = stored(&checker, &path).await;
    assert_eq!(
        payload,
        json!({"counter": 7, "rules": [{"name": "a"}, {"name": "b"}], "limits": {"max": 5}})
    );
    until_version(&v2, version, "v2 sees the strict write").await;
    let seen = v2.read().expect("read");
    assert_eq!((seen.owner.as_str(), seen.limits.burst), ("", 0));
    assert_eq!(seen.rules, [rule("a", 0), rule("b", 0)]);
    strict.close().await;
    v2.close().await;
}

/// This instance's listener entry, as `instances()` shows it.
async fn entry_of<T>(observer: &SharedState<Value>, state: &SharedState<T>) -> InstanceInfo
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let listeners = observer.instances().await.expect("instances");
    listeners
        .into_iter()
        .find(|l| l.id == state.instance_id())
        .unwrap_or_else(|| panic!("{} is not listed", state.instance_id()))
}

/// Every instance reports in its listener registration the version it
/// applied, the latest it saw and, when it rejected the payload, why (one
/// line, the reason once); the reports follow recovery, deletion and a new
/// session; an instance with reports off says nothing.
pub async fn engine_instances_report_what_they_applied(f: &dyn BackendFactory) {
    const REPORTS: Duration = Duration::from_millis(100);
    let path = unique_key("engine-reports");
    // `Value` accepts any JSON; `Fixture` wants `globs` to be a list.
    let tolerant: SharedState<Value> =
        SharedState::builder(f.client().await.backend, path.as_str())
            .initial(json!({"globs": ["systemd*"], "counter": 0, "flags": {}}))
            .report_interval(REPORTS)
            .open()
            .await
            .expect("open");
    let typed_client = f.client().await;
    let typed: SharedState<Fixture> =
        SharedState::builder(typed_client.backend.clone(), path.as_str())
            .initial(Fixture::default())
            .report_interval(REPORTS)
            .open()
            .await
            .expect("open");
    let silent: SharedState<Fixture> =
        SharedState::builder(f.client().await.backend, path.as_str())
            .initial(Fixture::default())
            .report_applied(false)
            .open()
            .await
            .expect("open");
    if !typed_client.backend.capabilities().registrations {
        return;
    }
    let opened = typed.version();
    let entry = entry_of(&tolerant, &typed).await;
    assert_eq!((entry.applied_version, entry.problem), (Some(opened), None));
    let entry = entry_of(&tolerant, &silent).await;
    assert_eq!((entry.applied_version, entry.seen_version), (None, None));

    let operator = f.client().await;
    raw_put(
        &operator.backend,
        &path,
        br#"{"globs": "firefox*", "counter": 0, "flags": {}}"#,
    )
    .await;
    let (_, bad) = stored(&operator, &path).await;
    eventually("the typed instance reports the rejection", async || {
        let entry = entry_of(&tolerant, &typed).await;
        entry.seen_version == Some(bad) && entry.problem.is_some()
    })
    .await;
    let entry = entry_of(&tolerant, &typed).await;
    assert_eq!(
        entry.applied_version,
        Some(opened),
        "kept the last good copy"
    );
    let problem = entry.problem.unwrap_or_default();
    let reason = r#"invalid type: string "firefox*", expected a sequence"#;
    assert_eq!(problem.matches(reason).count(), 1, "{problem}");
    assert!(
        !problem.contains('\n') && !problem.contains("decode failed"),
        "{problem}"
    );
    eventually("the tolerant instance reports it applied it", async || {
        entry_of(&tolerant, &tolerant).await.applied_version == Some(bad)
    })
    .await;

    raw_put(
        &operator.backend,
        &path,
        br#"{"globs": ["firefox*"], "counter": 0, "flags": {}}"#,
    )
    .await;
    let (_, good) = stored(&operator, &path).await;
    eventually("the typed instance applied the fix", async || {
        let entry = entry_of(&tolerant, &typed).await;
        entry.applied_version == Some(good) && entry.problem.is_none()
    })
    .await;
    eventually("the tolerant instance applied the fix", async || {
        entry_of(&tolerant, &tolerant).await.applied_version == Some(good)
    })
    .await;
    assert_eq!(entry_of(&tolerant, &silent).await.applied_version, None);

    // A new session re-creates the registration with the latest report, and
    // reports go on from there.
    let epoch = typed_client.backend.session().borrow().epoch;
    typed_client
        .faults
        .expire_session()
        .await
        .expect("expire the typed instance's session");
    crate::behaviours::wait_for_new_session(&*typed_client.backend, epoch).await;
    eventually(
        "the re-created registration says what was applied",
        async || {
            let listeners = tolerant.instances().await.expect("instances");
            listeners
                .iter()
                .any(|l| l.id == typed.instance_id() && l.applied_version == Some(good))
        },
    )
    .await;
    let payload = path.child("payload").expect("key");
    operator
        .backend
        .delete(&payload, None)
        .await
        .expect("delete the payload");
    eventually("the deletion is reported", async || {
        entry_of(&tolerant, &typed).await.problem.as_deref() == Some("the payload was deleted")
    })
    .await;
    for state in [silent, typed] {
        state.close().await;
    }
    tolerant.close().await;
}
