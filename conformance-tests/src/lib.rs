//! The behaviour suite every sharedstate backend passes, and its fixtures.
//!
//! One async function per behaviour lives in [`behaviours`]; the
//! [`conformance_tests!`] macro expands them into one `#[test]` per
//! behaviour (each on a fresh multi-thread Tokio runtime) in a backend
//! crate's `tests/conformance.rs`. A backend outside this workspace needs
//! only this crate as a dev-dependency: the macro brings its own runtime,
//! and [`macro@async_trait`] and the backend contract ([`sharedstate_core`]) are
//! re-exported.
//!
//! ```text
//! use std::sync::Arc;
//! use sharedstate_conformance::{async_trait, BackendFactory, FaultInjector, TestClient};
//!
//! struct MyFactory { /* a server address, ... */ }
//!
//! #[async_trait]
//! impl BackendFactory for MyFactory {
//!     fn name(&self) -> &str { "mine" }
//!     async fn client(&self) -> TestClient { /* a new client, its own session */ }
//! }
//!
//! async fn factory() -> MyFactory { MyFactory { /* ... */ } }
//! sharedstate_conformance::conformance_tests!(factory);
//! ```
//!
//! `examples/outside-backend` in the sharedstate repository is a complete
//! crate doing exactly that. The fixtures ([`fixtures`], feature
//! `containers`) give it a real ZooKeeper or etcd to run against.
//!
//! Behaviours never skip: a behaviour whose capability a backend lacks
//! asserts that the call fails with `ErrorKind::Unsupported` instead.
#![deny(missing_docs)]
// docs.rs (nightly, `--cfg docsrs`): badges naming the Cargo feature of each gated item.
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::sync::Arc;

use sharedstate_core::{CoordinationBackend, Key, Result};

pub mod behaviours;
mod changes;
pub use changes::apply_changes;
#[cfg(feature = "containers")]
pub mod chaos;
#[cfg(feature = "containers")]
pub mod fixtures;

/// The attribute for implementing [`BackendFactory`] and [`FaultInjector`]
/// (re-exported so a backend's tests need no `async-trait` dependency).
pub use async_trait::async_trait;
/// The backend contract the suite checks (`CoordinationBackend`, `Result`,
/// `Error`, ...), re-exported from `sharedstate-core`.
pub use sharedstate_core;

/// Runs one behaviour on a fresh multi-thread runtime (two workers, like
/// the `#[tokio::test(flavor = "multi_thread")]` it replaces), so the
/// crate that expands [`conformance_tests!`] needs no Tokio of its own.
#[doc(hidden)]
pub fn __run_behaviour<F: std::future::Future<Output = ()>>(behaviour: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a Tokio runtime for the behaviour: {e}"));
    runtime.block_on(behaviour);
}

/// Fault injection on one test client.
#[async_trait]
pub trait FaultInjector: Send + Sync + 'static {
    /// Makes the service expire this client's session, and returns once the
    /// expiry is effective on the service (its locks and ephemerals gone).
    /// The client must then notice, report `Lost`, and open a new session.
    ///
    /// # Errors
    ///
    /// When the fault cannot be injected.
    async fn expire_session(&self) -> Result<()>;

    /// Cuts this client's connection without ending its session (the
    /// client reports `Suspended`) until [`resume`](Self::resume).
    ///
    /// # Errors
    ///
    /// When the fault cannot be injected.
    async fn suspend(&self) -> Result<()>;

    /// Restores a suspended or stalled connection.
    ///
    /// # Errors
    ///
    /// When the fault cannot be lifted.
    async fn resume(&self) -> Result<()>;

    /// Holds this client's traffic without closing anything (a frozen
    /// server, a network that drops packets): calls hang, watches deliver
    /// nothing, and the session still looks `Connected` until the client's
    /// own timeouts notice, until [`resume`](Self::resume). The default
    /// says `Unsupported`.
    ///
    /// # Errors
    ///
    /// `Unsupported` when the injector cannot do it.
    async fn stall(&self) -> Result<()> {
        Err(unsupported_fault("stall"))
    }

    /// Makes this client's existing watches silent for good while the
    /// session looks healthy (no event, no error, no end), as a dependency
    /// bug would. The default says `Unsupported` (only the in-memory
    /// backend can inject it; real servers get real cuts instead).
    ///
    /// # Errors
    ///
    /// `Unsupported` when the injector cannot do it.
    async fn silence_watches(&self) -> Result<()> {
        Err(unsupported_fault("silence_watches"))
    }
}

fn unsupported_fault(fault: &str) -> sharedstate_core::Error {
    sharedstate_core::Error::new(
        sharedstate_core::ErrorKind::Unsupported,
        sharedstate_core::Operation::FaultInjection,
    )
    .with_message(format!("this fault injector cannot {fault}"))
}

/// A fresh client with its own session, and the handle to inject faults
/// into it.
#[derive(Clone)]
pub struct TestClient {
    /// The client.
    pub backend: Arc<dyn CoordinationBackend>,
    /// Faults for this client only.
    pub faults: Arc<dyn FaultInjector>,
}

/// Makes fresh clients of one backend, each with its own session.
#[async_trait]
pub trait BackendFactory: Send + Sync + 'static {
    /// The backend's name, for messages.
    fn name(&self) -> &str;

    /// A new client with a new session. Panics (this is test code) with a
    /// message that says how to fix the environment when it cannot connect.
    async fn client(&self) -> TestClient;
}

/// A key under a prefix unique to this call, so behaviours can share one
/// server: `/conformance/<behaviour>-<random>`.
pub fn unique_key(behaviour: &str) -> Key {
    let id = uuid::Uuid::new_v4().simple().to_string();
    Key::new(format!("/conformance/{behaviour}-{}", &id[..12]))
        .unwrap_or_else(|e| panic!("behaviour name {behaviour:?} makes an invalid key: {e}"))
}

/// Expands to one `#[test]` per behaviour, named after it. `$factory` is a
/// path to an `async fn() -> impl BackendFactory`, called once per test.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::for_each_behaviour!($crate::__conformance_test, $factory);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    ($factory:path; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::__run_behaviour(async {
                    let factory = $factory().await;
                    $crate::behaviours::$module::$name(&factory).await;
                });
            }
        )*
    };
}

/// Calls `$callback!($arg; module::behaviour, ...)` with every behaviour.
/// The one list of behaviours: add new ones here.
#[doc(hidden)]
#[macro_export]
macro_rules! for_each_behaviour {
    ($callback:path, $arg:path) => {
        $callback!($arg;
            // BEHAVIOURS: one `module::name,` per line, grouped by module.
            kv::kv_get_missing_is_none,
            kv::kv_create_then_get,
            kv::kv_create_existing_fails,
            kv::kv_update_with_current_version,
            kv::kv_update_stale_version_conflicts,
            kv::kv_update_missing_conflicts,
            kv::kv_overwrite_creates_and_replaces,
            kv::kv_delete_removes,
            kv::kv_delete_missing_not_found,
            kv::kv_delete_stale_version_conflicts,
            kv::kv_versions_increase_across_recreate,
            kv::kv_list_sorted_direct_children,
            kv::kv_list_missing_is_empty,
            kv::kv_put_creates_parents,
            kv::kv_delete_with_children,
            kv::kv_empty_and_binary_values_round_trip,
            kv::kv_value_too_large_rejected,
            kv::kv_value_at_limit_accepted,
            kv::kv_key_rules,
            kv::kv_concurrent_creates_one_wins,
            kv::kv_concurrent_updates_one_wins,
            kv::kv_stale_version_after_recreate_elsewhere,
            watch::watch_initial_present,
            watch::watch_initial_missing,
            watch::watch_burst_ends_with_latest,
            watch::watch_sees_delete_and_recreate,
            watch::watch_ignores_children,
            watch::watch_resync_after_session_expiry,
            watch::watch_resync_after_suspend_resume,
            watch::watch_ends_on_close,
            watch::watch_quiet_while_suspended,
            lock::lock_mutual_exclusion,
            lock::lock_timeout,
            lock::lock_released_by_release,
            lock::lock_released_by_drop,
            lock::lock_released_on_close,
            lock::lock_fencing_tokens_increase,
            lock::lock_waiters_served_in_order,
            lock::lock_lost_on_session_expiry,
            lock::lock_fenced_put_while_held,
            lock::lock_fenced_put_rejected_after_loss,
            lock::lock_fenced_put_and_release,
            lock::lock_and_get_sees_previous_holder_write,
            lock::lock_wait_fails_when_session_expires,
            registration::registration_visible_in_list,
            registration::registration_creates_missing_parents,
            registration::registration_removed_on_close,
            registration::registration_removed_on_drop,
            registration::registration_removed_when_client_closes,
            registration::registration_existing_key_already_exists,
            registration::registration_recreated_after_session_expiry,
            registration::registration_not_recreated_after_close,
            registration::registration_update_changes_the_value,
            registration::registration_update_is_kept_for_re_creation,
            session::session_connected_at_start,
            session::session_expiry_starts_new_epoch,
            session::session_suspend_resume_same_epoch,
            session::session_calls_fail_while_suspended,
            session::session_close_fails_calls_with_closed,
            engine::engine_open_creates_payload_from_initial,
            engine::engine_open_missing_payload,
            engine::engine_concurrent_open,
            engine::engine_two_instances_see_each_other,
            engine::engine_change_sets_are_exact,
            engine::engine_no_lost_updates_locked,
            engine::engine_no_lost_updates_optimistic,
            engine::engine_try_update_never_runs_on_stale_copy,
            engine::engine_external_put_is_remote_change,
            engine::engine_malformed_payload_then_recovery,
            engine::engine_read_stale_when_suspended,
            engine::engine_listeners_appear_and_disappear,
            engine::engine_session_loss_recovery,
            engine::engine_failed_update_changes_nothing,
            engine::engine_subscribers_ordered_and_lagged,
            engine::engine_close_and_read_consistent,
            engine::engine_fresh_after_reconnect,
            engine::engine_stale_while_unverifiable,
            engine::engine_silent_watch_is_caught,
            engine::engine_read_consistent_sees_acknowledged_writes,
            engine::engine_dropped_updates_leave_the_lock_free,
            engine::engine_lagged_subscriber_gets_each_notice_once,
            engine::engine_unknown_fields_survive_locked,
            engine::engine_unknown_fields_survive_optimistic,
            engine::engine_unknown_fields_dropped_in_strict_mode,
            engine::engine_instances_report_what_they_applied,
            contract::contract_update_never_lands_on_a_recreated_key,
            contract::contract_tricky_keys,
            contract::contract_refusals_are_not_applied,
            contract::contract_dropped_lock_waiter_does_not_block,
            contract::contract_lock_cancelled_at_any_point,
            contract::contract_watch_survives_reconnects,
            contract::contract_writes_while_cut_say_their_outcome,
        );
    };
}
