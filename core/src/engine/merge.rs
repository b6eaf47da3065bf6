//! Keeping what `T` does not know: the payload an update writes is `T`'s
//! new JSON merged into the payload the instance read, so that fields added
//! by a newer version of the application survive an older instance's write
//! (a fleet in a rolling upgrade runs both at once).
//!
//! Three documents take part: `raw`, the payload as read from the service;
//! `old`, `T`'s JSON of it (what `T` knows of `raw`); `new`, `T`'s JSON after
//! the update. The rules, applied at every depth:
//!
//! - **Objects**: a member of `raw` that `old` lacks is one `T` does not
//!   know: it is kept as it was. A member that `old` has and `new` lacks was
//!   removed by the update: it goes. Members of `new` are written, merged
//!   with their counterpart in `raw` when both are objects or arrays.
//! - **Arrays**: an array the update did not change is written as read,
//!   unknown members of its elements included. A changed array is aligned
//!   with `T`'s old view of it, the same alignment change sets use: an
//!   element left equal is written as read; an element changed in place
//!   (paired with an old one, as a change set's `Modified` at that index)
//!   keeps the unknown members of the element it replaces; an inserted
//!   element is written as `T` made it, and a removed one goes with its
//!   unknown members. When `raw` and `old` do not line up (a custom
//!   deserializer that drops or adds elements), the array is `T`'s.
//! - **Anything else** (scalars, a change of type): `new` wins.
//!
//! `T` with `#[serde(deny_unknown_fields)]` never sees unknown members (the
//! payload is rejected instead); `#[serde(flatten)]` into a map makes every
//! member known. A renamed field is an unknown field under its old name:
//! its old value is kept there, next to the new name.

use serde_json::{Map, Value};
use similar::DiffOp;

use crate::diff::align;

/// What an update writes: `new` with the members of `raw` that `T` (whose
/// view of `raw` is `old`) does not know.
pub(crate) fn keep_unknown(raw: &Value, old: &Value, new: Value) -> Value {
    merge(raw, Some(old), new)
}

fn merge(raw: &Value, old: Option<&Value>, new: Value) -> Value {
    // Nothing unknown below here: T's JSON is the whole truth.
    if old == Some(raw) {
        return new;
    }
    match (raw, new) {
        (Value::Object(raw), Value::Object(new)) => {
            merge_objects(raw, old.and_then(Value::as_object), new)
        }
        (Value::Array(raw), Value::Array(new)) => {
            merge_arrays(raw, old.and_then(Value::as_array), new)
        }
        (_, new) => new,
    }
}

fn merge_objects(
    raw: &Map<String, Value>,
    old: Option<&Map<String, Value>>,
    mut new: Map<String, Value>,
) -> Value {
    for (key, value) in new.iter_mut() {
        if let Some(raw_value) = raw.get(key) {
            let old_value = old.and_then(|old| old.get(key));
            *value = merge(raw_value, old_value, std::mem::take(value));
        }
    }
    for (key, raw_value) in raw {
        let known = old.is_some_and(|old| old.contains_key(key));
        if !known && !new.contains_key(key) {
            new.insert(key.clone(), raw_value.clone());
        }
    }
    Value::Object(new)
}

fn merge_arrays(raw: &[Value], old: Option<&Vec<Value>>, mut new: Vec<Value>) -> Value {
    let Some(old) = old.filter(|old| old.len() == raw.len()) else {
        return Value::Array(new);
    };
    let Some(ops) = align(old, &new) else {
        return Value::Array(new);
    };
    for op in ops {
        match op {
            DiffOp::Equal {
                old_index,
                new_index,
                len,
            } => {
                new[new_index..new_index + len].clone_from_slice(&raw[old_index..old_index + len]);
            }
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                for i in 0..old_len.min(new_len) {
                    let (from, to) = (old_index + i, new_index + i);
                    new[to] = merge(&raw[from], Some(&old[from]), std::mem::take(&mut new[to]));
                }
            }
            DiffOp::Delete { .. } | DiffOp::Insert { .. } => {}
        }
    }
    Value::Array(new)
}

#[cfg(test)]
mod tests {
    use super::keep_unknown;
    use serde_json::{json, Value};

    /// `raw` as read; `old` is what T knows of it; `f` changes T's view.
    fn write(raw: Value, old: Value, f: impl FnOnce(&mut Value)) -> Value {
        let mut new = old.clone();
        f(&mut new);
        keep_unknown(&raw, &old, new)
    }

    #[test]
    fn unknown_members_survive_at_any_depth() {
        let raw = json!({"n": 1, "added_in_v2": "x", "limits": {"max": 5, "burst": 9}});
        let old = json!({"n": 1, "limits": {"max": 5}});
        let out = write(raw, old, |v| {
            v["n"] = json!(2);
            v["limits"]["max"] = json!(6);
        });
        assert_eq!(
            out,
            json!({"n": 2, "added_in_v2": "x", "limits": {"max": 6, "burst": 9}})
        );
    }

    #[test]
    fn members_t_removes_go_and_members_t_adds_are_written() {
        let raw = json!({"flags": {"a": true, "b": false}, "extra": 1});
        let old = json!({"flags": {"a": true, "b": false}});
        let out = write(raw, old, |v| {
            v["flags"].as_object_mut().map(|m| m.remove("a"));
            v["flags"]["c"] = json!(true);
        });
        assert_eq!(out, json!({"flags": {"b": false, "c": true}, "extra": 1}));
    }

    #[test]
    fn a_member_t_sets_to_another_type_is_t_s() {
        let raw = json!({"limits": {"max": 5, "burst": 9}});
        let old = json!({"limits": {"max": 5}});
        let out = write(raw, old, |v| v["limits"] = Value::Null);
        assert_eq!(out, json!({"limits": null}));
    }

    #[test]
    fn elements_keep_unknown_members_through_inserts_edits_and_removals() {
        let raw = json!({"rules": [
            {"name": "a", "priority": 1},
            {"name": "b", "priority": 2},
            {"name": "c", "priority": 3},
        ]});
        let old = json!({"rules": [{"name": "a"}, {"name": "b"}, {"name": "c"}]});
        let out = write(raw, old, |v| {
            let rules = v["rules"].as_array_mut().expect("array");
            rules.insert(0, json!({"name": "new"})); // inserted: as T made it
            rules[2]["name"] = json!("b2"); // changed in place: keeps priority
            rules.pop(); // removed with its unknown members
        });
        assert_eq!(
            out,
            json!({"rules": [
                {"name": "new"},
                {"name": "a", "priority": 1},
                {"name": "b2", "priority": 2},
            ]})
        );
    }

    #[test]
    fn an_array_t_did_not_change_is_written_as_read() {
        let raw = json!({"n": 1, "rules": [{"name": "a", "priority": 1}]});
        let old = json!({"n": 1, "rules": [{"name": "a"}]});
        let out = write(raw, old, |v| v["n"] = json!(2));
        assert_eq!(
            out,
            json!({"n": 2, "rules": [{"name": "a", "priority": 1}]})
        );
    }

    #[test]
    fn arrays_that_do_not_line_up_are_t_s() {
        // A deserializer that dropped an element: no pairing is safe.
        let raw = json!({"xs": [{"v": 1, "u": 0}, "junk"]});
        let old = json!({"xs": [{"v": 1}]});
        let out = write(raw, old, |v| v["xs"][0]["v"] = json!(2));
        assert_eq!(out, json!({"xs": [{"v": 2}]}));
    }

    #[test]
    fn without_unknown_members_the_result_is_t_s_json() {
        let raw = json!({"globs": ["a"], "n": 1});
        let out = write(raw.clone(), raw, |v| v["globs"][0] = json!("b"));
        assert_eq!(out, json!({"globs": ["b"], "n": 1}));
    }
}
