//! Registration behaviours: ephemeral keys that live with the session and
//! come back on a new one.

use bytes::Bytes;
use sharedstate_core::{ErrorKind, Key, PutMode, Registration};

use super::{
    bytes, call, child, expect_kind, ok, wait_for_new_session, wait_for_value, within,
    QUIET_PERIOD, SESSION_TIMEOUT,
};
use crate::{unique_key, BackendFactory, TestClient};

/// Registers, or asserts `Unsupported` and returns `None` when the backend
/// has no registrations.
async fn register(client: &TestClient, key: &Key, value: Bytes) -> Option<Registration> {
    let registered = call("register", client.backend.register(key, value)).await;
    if !client.backend.capabilities().registrations {
        expect_kind(
            "register without the capability",
            registered,
            ErrorKind::Unsupported,
        );
        return None;
    }
    Some(ok("register", registered))
}

/// Creates `parent` as an ordinary key, so behaviours other than
/// [`registration_creates_missing_parents`] do not depend on it.
async fn make_parent(client: &TestClient, parent: &Key) {
    let put = client.backend.put(parent, Bytes::new(), PutMode::Overwrite);
    ok("put parent", call("put", put).await);
}

/// Registrations of two clients are visible to a third one, in `list` of
/// the parent and with their values in `get`.
pub async fn registration_visible_in_list(f: &dyn BackendFactory) {
    let (a, b, c) = (f.client().await, f.client().await, f.client().await);
    let members = child(&unique_key("registration_visible_in_list"), "members");
    make_parent(&c, &members).await;
    let Some(_ra) = register(&a, &child(&members, "a"), bytes("alpha")).await else {
        return;
    };
    let Some(_rb) = register(&b, &child(&members, "b"), bytes("beta")).await else {
        return;
    };
    assert_eq!(
        ok("list", call("list", c.backend.list(&members)).await),
        ["a", "b"]
    );
    let found = ok(
        "get",
        call("get", c.backend.get(&child(&members, "a"))).await,
    );
    assert_eq!(found.expect("registration present").value, bytes("alpha"));
}

/// Registering below a parent that does not exist creates the parent, as
/// `put` does.
pub async fn registration_creates_missing_parents(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let members = child(
        &child(&unique_key("registration_creates_missing_parents"), "x"),
        "members",
    );
    let Some(_registration) = register(&a, &child(&members, "me"), bytes("v")).await else {
        return;
    };
    assert_eq!(
        ok("list", call("list", b.backend.list(&members)).await),
        ["me"]
    );
}

/// `close()` deletes the key at once.
pub async fn registration_removed_on_close(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let base = unique_key("registration_removed_on_close");
    make_parent(&a, &base).await;
    let key = child(&base, "me");
    let Some(registration) = register(&a, &key, bytes("v")).await else {
        return;
    };
    assert!(ok("get", call("get", b.backend.get(&key)).await).is_some());
    ok(
        "close",
        call("close registration", registration.close()).await,
    );
    assert_eq!(ok("get", call("get", b.backend.get(&key)).await), None);
    assert!(ok("list", call("list", b.backend.list(&base)).await).is_empty());
}

/// Dropping the registration deletes the key (in the background).
pub async fn registration_removed_on_drop(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let base = unique_key("registration_removed_on_drop");
    make_parent(&a, &base).await;
    let key = child(&base, "me");
    let Some(registration) = register(&a, &key, bytes("v")).await else {
        return;
    };
    drop(registration);
    wait_for_value(
        &*b.backend,
        &key,
        SESSION_TIMEOUT,
        "the dropped registration to go",
        |v| v.is_none(),
    )
    .await;
}

/// Closing the registering client deletes its registrations.
pub async fn registration_removed_when_client_closes(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let base = unique_key("registration_removed_when_client_closes");
    make_parent(&a, &base).await;
    let key = child(&base, "me");
    let Some(_registration) = register(&a, &key, bytes("v")).await else {
        return;
    };
    ok("close client", call("close", a.backend.close()).await);
    wait_for_value(
        &*b.backend,
        &key,
        SESSION_TIMEOUT,
        "the closed client's registration to go",
        |v| v.is_none(),
    )
    .await;
}

/// Registering a key that exists (a plain key, or another client's
/// registration) fails with `AlreadyExists` and leaves the key alone.
pub async fn registration_existing_key_already_exists(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let base = unique_key("registration_existing_key_already_exists");
    let plain = child(&base, "plain");
    let version = ok(
        "put",
        call("put", b.backend.put(&plain, bytes("b"), PutMode::Create)).await,
    );
    let registered = call("register", a.backend.register(&plain, bytes("a"))).await;
    if !a.backend.capabilities().registrations {
        expect_kind(
            "register without the capability",
            registered,
            ErrorKind::Unsupported,
        );
        return;
    }
    expect_kind(
        "register over a plain key",
        registered,
        ErrorKind::AlreadyExists,
    );
    let found = ok("get", call("get", b.backend.get(&plain)).await).expect("kept");
    assert_eq!((found.value, found.version), (bytes("b"), version));

    let taken = child(&base, "taken");
    let _held = register(&b, &taken, bytes("b")).await;
    let second = call("register", a.backend.register(&taken, bytes("a"))).await;
    expect_kind(
        "register over another registration",
        second,
        ErrorKind::AlreadyExists,
    );
    let found = ok("get", call("get", a.backend.get(&taken)).await).expect("kept");
    assert_eq!(found.value, bytes("b"));
}

/// After the session expires the key is re-created on the new session:
/// another client sees it come back, with the same value and a larger
/// version, and the registering client's epoch grew.
pub async fn registration_recreated_after_session_expiry(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let base = unique_key("registration_recreated_after_session_expiry");
    make_parent(&b, &base).await;
    let key = child(&base, "me");
    let Some(_registration) = register(&a, &key, bytes("mine")).await else {
        return;
    };
    let before = ok("get", call("get", b.backend.get(&key)).await).expect("registered");
    let epoch = a.backend.session().borrow().epoch;
    ok(
        "expire_session",
        call("expire_session", a.faults.expire_session()).await,
    );
    let status = wait_for_new_session(&*a.backend, epoch).await;
    assert!(status.epoch > epoch);
    let what = "the registration to come back on the new session";
    let after = wait_for_value(&*b.backend, &key, SESSION_TIMEOUT, what, |v| {
        v.is_some_and(|v| v.version > before.version)
    })
    .await
    .expect("re-created");
    assert_eq!(after.value, bytes("mine"));
}

/// A closed registration is not re-created after a later session expiry.
pub async fn registration_not_recreated_after_close(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let base = unique_key("registration_not_recreated_after_close");
    make_parent(&b, &base).await;
    let key = child(&base, "me");
    let Some(registration) = register(&a, &key, bytes("v")).await else {
        return;
    };
    ok(
        "close",
        call("close registration", registration.close()).await,
    );
    let epoch = a.backend.session().borrow().epoch;
    ok(
        "expire_session",
        call("expire_session", a.faults.expire_session()).await,
    );
    wait_for_new_session(&*a.backend, epoch).await;
    within(
        SESSION_TIMEOUT,
        "a quiet period",
        tokio::time::sleep(QUIET_PERIOD),
    )
    .await;
    assert_eq!(ok("get", call("get", b.backend.get(&key)).await), None);
}

/// `update` changes the live key's value (another client sees it, at a
/// larger version), is idempotent, and refuses an oversized value before
/// changing anything.
pub async fn registration_update_changes_the_value(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let base = unique_key("registration_update_changes_the_value");
    make_parent(&b, &base).await;
    let key = child(&base, "me");
    let Some(registration) = register(&a, &key, bytes("v1")).await else {
        return;
    };
    let before = ok("get", call("get", b.backend.get(&key)).await).expect("registered");
    ok(
        "update",
        call("update", registration.update(bytes("v2"))).await,
    );
    let after = ok("get", call("get", b.backend.get(&key)).await).expect("still registered");
    assert_eq!(after.value, bytes("v2"));
    assert!(after.version > before.version, "a new version");
    ok(
        "the same update again",
        call("update", registration.update(bytes("v2"))).await,
    );
    let again = ok("get", call("get", b.backend.get(&key)).await).expect("still registered");
    assert_eq!(again.value, bytes("v2"));

    let limit = a.backend.capabilities().max_value_bytes;
    let too_large = Bytes::from(vec![b'x'; limit + 1]);
    expect_kind(
        "an update over the size limit",
        call("update", registration.update(too_large)).await,
        ErrorKind::ValueTooLarge,
    );
    let kept = ok("get", call("get", b.backend.get(&key)).await).expect("still registered");
    assert_eq!(kept.value, bytes("v2"), "a refused update changes nothing");
    assert_eq!(
        ok("list", call("list", b.backend.list(&base)).await),
        ["me"]
    );
    ok("close", call("close", registration.close()).await);
}

/// `update` never creates the key: after someone deleted it, the update
/// only records the value, and the re-creation on the next session carries
/// the latest value.
pub async fn registration_update_is_kept_for_re_creation(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let base = unique_key("registration_update_is_kept_for_re_creation");
    make_parent(&b, &base).await;
    let key = child(&base, "me");
    let Some(registration) = register(&a, &key, bytes("v1")).await else {
        return;
    };
    ok(
        "update",
        call("update", registration.update(bytes("v2"))).await,
    );
    ok(
        "delete the registration's key from outside",
        call("delete", b.backend.delete(&key, None)).await,
    );
    ok(
        "update without a key",
        call("update", registration.update(bytes("v3"))).await,
    );
    within(
        SESSION_TIMEOUT,
        "a quiet period",
        tokio::time::sleep(QUIET_PERIOD),
    )
    .await;
    assert_eq!(
        ok("get", call("get", b.backend.get(&key)).await),
        None,
        "an update never creates the key"
    );
    let epoch = a.backend.session().borrow().epoch;
    ok(
        "expire_session",
        call("expire_session", a.faults.expire_session()).await,
    );
    wait_for_new_session(&*a.backend, epoch).await;
    let what = "the registration to come back with its latest value";
    let back = wait_for_value(&*b.backend, &key, SESSION_TIMEOUT, what, |v| v.is_some())
        .await
        .expect("re-created");
    assert_eq!(back.value, bytes("v3"));
    ok("close", call("close", registration.close()).await);
}
