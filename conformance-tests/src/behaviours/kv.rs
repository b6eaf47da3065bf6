//! Key/value behaviours: get, put in its three modes, delete, list,
//! versions, values and keys.

use bytes::Bytes;
use sharedstate_core::{ErrorKind, Key, PutMode, Version, MAX_KEY_BYTES};

use super::{bytes, call, child, expect_kind, ok};
use crate::{unique_key, BackendFactory};

/// `get` of a key that was never written is `None`, also below a missing
/// parent.
pub async fn kv_get_missing_is_none(f: &dyn BackendFactory) {
    let client = f.client().await;
    let base = unique_key("kv_get_missing_is_none");
    let found = call("get", client.backend.get(&base)).await;
    assert_eq!(ok("get of a missing key", found), None);
    let nested = child(&child(&base, "a"), "b");
    let found = call("get", client.backend.get(&nested)).await;
    assert_eq!(ok("get below a missing parent", found), None);
}

/// `Create` writes a new key; `get` returns the value and the version the
/// write returned, on the writing client and on another one.
pub async fn kv_create_then_get(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let key = child(&unique_key("kv_create_then_get"), "k");
    let put = a.backend.put(&key, bytes("hello"), PutMode::Create);
    let version = ok("create", call("put", put).await);
    for (who, client) in [("writer", &a), ("other client", &b)] {
        let found = ok("get", call("get", client.backend.get(&key)).await);
        let found = found.unwrap_or_else(|| panic!("{who} does not see the created key"));
        assert_eq!(found.value, bytes("hello"), "{who}");
        assert_eq!(found.version, version, "{who}");
    }
}

/// `Create` of an existing key fails with `AlreadyExists` and changes
/// nothing.
pub async fn kv_create_existing_fails(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("kv_create_existing_fails"), "k");
    let b = &client.backend;
    let version = ok(
        "create",
        call("put", b.put(&key, bytes("one"), PutMode::Create)).await,
    );
    let again = call("put", b.put(&key, bytes("two"), PutMode::Create)).await;
    expect_kind("second create", again, ErrorKind::AlreadyExists);
    let found = ok("get", call("get", b.get(&key)).await).expect("key present");
    assert_eq!((found.value, found.version), (bytes("one"), version));
}

/// `Update` with the current version replaces the value and returns a
/// larger version, again and again.
pub async fn kv_update_with_current_version(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("kv_update_with_current_version"), "k");
    let b = &client.backend;
    let mut version = ok(
        "create",
        call("put", b.put(&key, bytes("0"), PutMode::Create)).await,
    );
    for value in ["1", "2", "3"] {
        let put = b.put(&key, bytes(value), PutMode::Update(version));
        let next = ok("update", call("put", put).await);
        assert!(
            next > version,
            "update returned {next}, not above {version}"
        );
        version = next;
        let found = ok("get", call("get", b.get(&key)).await).expect("key present");
        assert_eq!((found.value, found.version), (bytes(value), version));
    }
}

/// `Update` with a stale version fails with `Conflict` carrying the current
/// version, and changes nothing.
pub async fn kv_update_stale_version_conflicts(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("kv_update_stale_version_conflicts"), "k");
    let b = &client.backend;
    let v1 = ok(
        "create",
        call("put", b.put(&key, bytes("1"), PutMode::Create)).await,
    );
    let put = b.put(&key, bytes("2"), PutMode::Update(v1));
    let v2 = ok("update", call("put", put).await);
    let stale = call("put", b.put(&key, bytes("3"), PutMode::Update(v1))).await;
    let err = expect_kind("update with a stale version", stale, ErrorKind::Conflict);
    assert_eq!(
        err.current_version(),
        Some(v2),
        "Conflict must carry the current version"
    );
    let found = ok("get", call("get", b.get(&key)).await).expect("key present");
    assert_eq!((found.value, found.version), (bytes("2"), v2));
}

/// `Update` of a missing key fails with `Conflict` and no current version,
/// and does not create the key.
pub async fn kv_update_missing_conflicts(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("kv_update_missing_conflicts"), "k");
    let b = &client.backend;
    let put = b.put(&key, bytes("x"), PutMode::Update(Version::new(1)));
    let err = expect_kind(
        "update of a missing key",
        call("put", put).await,
        ErrorKind::Conflict,
    );
    assert_eq!(
        err.current_version(),
        None,
        "a missing key has no current version"
    );
    assert_eq!(ok("get", call("get", b.get(&key)).await), None);
}

/// `Overwrite` creates a missing key and replaces an existing one.
pub async fn kv_overwrite_creates_and_replaces(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("kv_overwrite_creates_and_replaces"), "k");
    let b = &client.backend;
    let v1 = ok(
        "overwrite (create)",
        call("put", b.put(&key, bytes("1"), PutMode::Overwrite)).await,
    );
    let v2 = ok(
        "overwrite (replace)",
        call("put", b.put(&key, bytes("2"), PutMode::Overwrite)).await,
    );
    assert!(v2 > v1, "overwrite returned {v2}, not above {v1}");
    let found = ok("get", call("get", b.get(&key)).await).expect("key present");
    assert_eq!((found.value, found.version), (bytes("2"), v2));
}

/// `delete` without and with the current version removes the key.
pub async fn kv_delete_removes(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("kv_delete_removes"), "k");
    let b = &client.backend;
    ok(
        "create",
        call("put", b.put(&key, bytes("1"), PutMode::Create)).await,
    );
    ok("delete", call("delete", b.delete(&key, None)).await);
    assert_eq!(ok("get", call("get", b.get(&key)).await), None);
    let v = ok(
        "re-create",
        call("put", b.put(&key, bytes("2"), PutMode::Create)).await,
    );
    ok(
        "delete at version",
        call("delete", b.delete(&key, Some(v))).await,
    );
    assert_eq!(ok("get", call("get", b.get(&key)).await), None);
}

/// `delete` of a missing key fails with `NotFound`, with or without a
/// version.
pub async fn kv_delete_missing_not_found(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("kv_delete_missing_not_found"), "k");
    let b = &client.backend;
    let plain = call("delete", b.delete(&key, None)).await;
    expect_kind("delete of a missing key", plain, ErrorKind::NotFound);
    let versioned = call("delete", b.delete(&key, Some(Version::new(1)))).await;
    expect_kind(
        "delete of a missing key at a version",
        versioned,
        ErrorKind::NotFound,
    );
}

/// `delete` with a stale version fails with `Conflict` carrying the current
/// version, and keeps the key.
pub async fn kv_delete_stale_version_conflicts(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("kv_delete_stale_version_conflicts"), "k");
    let b = &client.backend;
    let v1 = ok(
        "create",
        call("put", b.put(&key, bytes("1"), PutMode::Create)).await,
    );
    let v2 = ok(
        "update",
        call("put", b.put(&key, bytes("2"), PutMode::Update(v1))).await,
    );
    let stale = call("delete", b.delete(&key, Some(v1))).await;
    let err = expect_kind("delete at a stale version", stale, ErrorKind::Conflict);
    assert_eq!(err.current_version(), Some(v2));
    let found = ok("get", call("get", b.get(&key)).await).expect("key kept");
    assert_eq!(found.version, v2);
}

/// Versions strictly increase with every write and never repeat, not even
/// across delete and re-create: an `Update` at a version from before the
/// delete fails.
pub async fn kv_versions_increase_across_recreate(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("kv_versions_increase_across_recreate"), "k");
    let b = &client.backend;
    let mut seen = Vec::new();
    for round in 0..3 {
        let v1 = ok(
            "create",
            call("put", b.put(&key, bytes("a"), PutMode::Create)).await,
        );
        let v2 = ok(
            "update",
            call("put", b.put(&key, bytes("b"), PutMode::Update(v1))).await,
        );
        seen.extend([v1, v2]);
        ok("delete", call("delete", b.delete(&key, None)).await);
        if round > 0 {
            // Re-created at a new version: the old one must not match.
            let v = ok(
                "create",
                call("put", b.put(&key, bytes("c"), PutMode::Create)).await,
            );
            seen.push(v);
            let old = call("put", b.put(&key, bytes("d"), PutMode::Update(v1))).await;
            let err = expect_kind("update at a pre-delete version", old, ErrorKind::Conflict);
            assert_eq!(err.current_version(), Some(v));
            ok("delete", call("delete", b.delete(&key, None)).await);
        }
    }
    for pair in seen.windows(2) {
        assert!(
            pair[0] < pair[1],
            "versions must strictly increase: {seen:?}"
        );
    }
}

/// `list` returns the names of the direct children only, sorted, each
/// once; sibling keys that merely share the prefix are not children.
pub async fn kv_list_sorted_direct_children(f: &dyn BackendFactory) {
    let client = f.client().await;
    let base = unique_key("kv_list_sorted_direct_children");
    let b = &client.backend;
    let sibling = ok("key", Key::new(format!("{base}x/z")));
    let dashed = ok("key", Key::new(format!("{base}-y")));
    let a = child(&base, "a");
    let keys = [
        child(&base, "b"),
        child(&a, "x"),
        child(&base, "c"),
        a.clone(),
        sibling,
        dashed,
    ];
    for key in &keys {
        ok(
            "put",
            call("put", b.put(key, bytes("v"), PutMode::Overwrite)).await,
        );
    }
    assert_eq!(
        ok("list", call("list", b.list(&base)).await),
        ["a", "b", "c"]
    );
    assert_eq!(ok("list", call("list", b.list(&a)).await), ["x"]);
    let leaf = child(&base, "c");
    assert!(ok("list", call("list", b.list(&leaf)).await).is_empty());
}

/// `list` of a key that does not exist is empty (no children).
pub async fn kv_list_missing_is_empty(f: &dyn BackendFactory) {
    let client = f.client().await;
    let base = unique_key("kv_list_missing_is_empty");
    assert!(ok("list", call("list", client.backend.list(&base)).await).is_empty());
}

/// `put` creates missing parents: the new key shows up when listing each
/// ancestor (whether a parent reads as empty or missing is not specified).
pub async fn kv_put_creates_parents(f: &dyn BackendFactory) {
    let client = f.client().await;
    let base = unique_key("kv_put_creates_parents");
    let b = &client.backend;
    let (p, q) = (child(&base, "p"), child(&child(&base, "p"), "q"));
    let leaf = child(&q, "leaf");
    ok(
        "create deep key",
        call("put", b.put(&leaf, bytes("v"), PutMode::Create)).await,
    );
    assert_eq!(ok("list", call("list", b.list(&base)).await), ["p"]);
    assert_eq!(ok("list", call("list", b.list(&p)).await), ["q"]);
    assert_eq!(ok("list", call("list", b.list(&q)).await), ["leaf"]);
    let found = ok("get", call("get", b.get(&leaf)).await).expect("deep key present");
    assert_eq!(found.value, bytes("v"));
}

/// A key with children: `NotEmpty` where
/// `capabilities().delete_requires_no_children`, else deleted alone with
/// the children left in place.
pub async fn kv_delete_with_children(f: &dyn BackendFactory) {
    let client = f.client().await;
    let base = unique_key("kv_delete_with_children");
    let b = &client.backend;
    let parent = child(&base, "p");
    let kid = child(&parent, "kid");
    ok(
        "put parent",
        call("put", b.put(&parent, bytes("p"), PutMode::Create)).await,
    );
    ok(
        "put child",
        call("put", b.put(&kid, bytes("c"), PutMode::Create)).await,
    );
    let deleted = call("delete", b.delete(&parent, None)).await;
    if b.capabilities().delete_requires_no_children {
        expect_kind(
            "delete of a key with children",
            deleted,
            ErrorKind::NotEmpty,
        );
        let found = ok("get", call("get", b.get(&parent)).await).expect("parent kept");
        assert_eq!(found.value, bytes("p"));
        ok("delete child", call("delete", b.delete(&kid, None)).await);
        ok(
            "delete parent",
            call("delete", b.delete(&parent, None)).await,
        );
    } else {
        ok("delete of a key with children", deleted);
        let found = ok("get", call("get", b.get(&kid)).await).expect("child kept");
        assert_eq!(found.value, bytes("c"));
    }
}

/// Empty values and arbitrary binary values (every byte, invalid UTF-8)
/// round-trip unchanged.
pub async fn kv_empty_and_binary_values_round_trip(f: &dyn BackendFactory) {
    let client = f.client().await;
    let base = unique_key("kv_empty_and_binary_values_round_trip");
    let b = &client.backend;
    let binary: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0x00, 0xc3]).collect();
    for (name, value) in [("empty", Bytes::new()), ("binary", Bytes::from(binary))] {
        let key = child(&base, name);
        let version = ok(
            "put",
            call("put", b.put(&key, value.clone(), PutMode::Create)).await,
        );
        let found = ok("get", call("get", b.get(&key)).await).expect("key present");
        assert_eq!(
            (found.value, found.version),
            (value, version),
            "{name} value"
        );
    }
}

/// A value over `capabilities().max_value_bytes` fails with
/// `ValueTooLarge` and writes nothing (neither a new key nor over an
/// existing one).
pub async fn kv_value_too_large_rejected(f: &dyn BackendFactory) {
    let client = f.client().await;
    let base = unique_key("kv_value_too_large_rejected");
    let b = &client.backend;
    let too_large = Bytes::from(vec![b'x'; b.capabilities().max_value_bytes + 1]);
    let fresh = child(&base, "fresh");
    let put = call("put", b.put(&fresh, too_large.clone(), PutMode::Create)).await;
    expect_kind("create of a too large value", put, ErrorKind::ValueTooLarge);
    assert_eq!(ok("get", call("get", b.get(&fresh)).await), None);
    let existing = child(&base, "existing");
    let v = ok(
        "put",
        call("put", b.put(&existing, bytes("small"), PutMode::Create)).await,
    );
    let put = call("put", b.put(&existing, too_large, PutMode::Overwrite)).await;
    expect_kind(
        "overwrite with a too large value",
        put,
        ErrorKind::ValueTooLarge,
    );
    let found = ok("get", call("get", b.get(&existing)).await).expect("key kept");
    assert_eq!((found.value, found.version), (bytes("small"), v));
}

/// A value of exactly `capabilities().max_value_bytes` is accepted: the
/// limit a backend states is one it can really store.
pub async fn kv_value_at_limit_accepted(f: &dyn BackendFactory) {
    let client = f.client().await;
    let key = child(&unique_key("kv_value_at_limit_accepted"), "k");
    let b = &client.backend;
    let value = Bytes::from(vec![b'y'; b.capabilities().max_value_bytes]);
    let version = ok(
        "put at the limit",
        call("put", b.put(&key, value.clone(), PutMode::Create)).await,
    );
    let found = ok("get", call("get", b.get(&key)).await).expect("key present");
    assert_eq!(found.version, version);
    assert!(
        found.value == value,
        "the value at the limit did not round-trip"
    );
}

/// Invalid keys are rejected with `InvalidKey` before reaching a backend,
/// and the longest valid key and non-ASCII keys work on the backend.
pub async fn kv_key_rules(f: &dyn BackendFactory) {
    for bad in [
        "",
        "/",
        "relative",
        "/a//b",
        "/a/",
        "/a/../b",
        "/a/./b",
        "/a\nb",
        "/zookeeper/x",
    ] {
        expect_kind(
            &format!("Key::new({bad:?})"),
            Key::new(bad),
            ErrorKind::InvalidKey,
        );
    }
    let base = unique_key("kv_key_rules");
    expect_kind("child with '/'", base.child("a/b"), ErrorKind::InvalidKey);
    let too_long = format!("{base}/{}", "k".repeat(MAX_KEY_BYTES));
    expect_kind(
        "an over-long key",
        Key::new(too_long),
        ErrorKind::InvalidKey,
    );

    let client = f.client().await;
    let b = &client.backend;
    let filler = MAX_KEY_BYTES - base.as_str().len() - 1;
    let longest = ok(
        "longest key",
        Key::new(format!("{base}/{}", "k".repeat(filler))),
    );
    assert_eq!(longest.as_str().len(), MAX_KEY_BYTES);
    let unicode = child(&base, "ünïcode-ключ-键 with space:colon");
    for key in [&longest, &unicode] {
        let version = ok(
            "put",
            call("put", b.put(key, bytes("v"), PutMode::Create)).await,
        );
        let found = ok("get", call("get", b.get(key)).await).expect("key present");
        assert_eq!(found.version, version, "{key}");
    }
    let mut names = ok("list", call("list", b.list(&base)).await);
    names.sort();
    let mut expected = vec![longest.name().to_owned(), unicode.name().to_owned()];
    expected.sort();
    assert_eq!(names, expected);
}

/// Clients racing to `Create` one key: exactly one wins, every other one
/// gets `AlreadyExists`, and the stored value is the winner's.
pub async fn kv_concurrent_creates_one_wins(f: &dyn BackendFactory) {
    let key = child(&unique_key("kv_concurrent_creates_one_wins"), "k");
    let mut tasks = Vec::new();
    for i in 0..5 {
        let backend = f.client().await.backend;
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let value = Bytes::from(format!("client-{i}"));
            (
                value.clone(),
                backend.put(&key, value, PutMode::Create).await,
            )
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (value, result) = ok("create task", call("concurrent create", task).await);
        match result {
            Ok(version) => winners.push((version, value)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => panic!("a racing create failed with {:?}: {e}", e.kind()),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins: {winners:?}");
    let checker = f.client().await;
    let found = ok("get", call("get", checker.backend.get(&key)).await).expect("created");
    assert_eq!((found.version, found.value), winners.remove(0));
}

/// Clients racing to `Update` from the same version: exactly one wins, the
/// others get `Conflict` carrying the winner's version.
pub async fn kv_concurrent_updates_one_wins(f: &dyn BackendFactory) {
    let key = child(&unique_key("kv_concurrent_updates_one_wins"), "k");
    let creator = f.client().await;
    let put = creator.backend.put(&key, bytes("0"), PutMode::Create);
    let base = ok("create", call("put", put).await);
    // Every client reads first, as a real optimistic writer does (and as a
    // backend that caches versions per key would see it), then all race.
    let mut writers = Vec::new();
    for _ in 0..5 {
        let backend = f.client().await.backend;
        let seen = ok("get", call("get", backend.get(&key)).await).expect("created");
        assert_eq!(seen.version, base);
        writers.push(backend);
    }
    let mut tasks = Vec::new();
    for (i, backend) in writers.into_iter().enumerate() {
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let value = Bytes::from(format!("client-{i}"));
            backend.put(&key, value, PutMode::Update(base)).await
        }));
    }
    let mut wins = Vec::new();
    let mut conflicts = Vec::new();
    for task in tasks {
        match ok("update task", call("concurrent update", task).await) {
            Ok(version) => wins.push(version),
            Err(e) if e.kind() == ErrorKind::Conflict => conflicts.push(e.current_version()),
            Err(e) => panic!("a racing update failed with {:?}: {e}", e.kind()),
        }
    }
    assert_eq!(wins.len(), 1, "exactly one update wins: {wins:?}");
    for current in conflicts {
        assert!(
            current.is_some_and(|v| v >= wins[0]),
            "Conflict carried {current:?}"
        );
    }
}

/// A version read before another client deleted and re-created the key
/// does not match the new key (no ABA): `Update` and `delete` at it fail
/// with `Conflict`.
pub async fn kv_stale_version_after_recreate_elsewhere(f: &dyn BackendFactory) {
    let (a, b) = (f.client().await, f.client().await);
    let key = child(
        &unique_key("kv_stale_version_after_recreate_elsewhere"),
        "k",
    );
    let v1 = ok(
        "create",
        call("put", a.backend.put(&key, bytes("a"), PutMode::Create)).await,
    );
    let seen = ok("get", call("get", a.backend.get(&key)).await).expect("created");
    assert_eq!(seen.version, v1);
    ok("delete", call("delete", b.backend.delete(&key, None)).await);
    let put = b.backend.put(&key, bytes("b"), PutMode::Create);
    let v2 = ok("re-create", call("put", put).await);
    assert!(v2 > v1);
    let put = a.backend.put(&key, bytes("stale"), PutMode::Update(v1));
    let err = expect_kind(
        "update at a pre-recreate version",
        call("put", put).await,
        ErrorKind::Conflict,
    );
    assert_eq!(err.current_version(), Some(v2));
    let deleted = call("delete", a.backend.delete(&key, Some(v1))).await;
    expect_kind(
        "delete at a pre-recreate version",
        deleted,
        ErrorKind::Conflict,
    );
    let found = ok("get", call("get", b.backend.get(&key)).await).expect("kept");
    assert_eq!((found.value, found.version), (bytes("b"), v2));
}
