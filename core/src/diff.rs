//! The deep JSON differ behind change sets.
//!
//! Objects are compared key by key, arrays by alignment (Myers' diff from
//! the `similar` crate), so an element inserted at the front of an array is
//! one [`Change::Added`], not a cascade of [`Change::Modified`]. Paths are
//! JSON Pointers (RFC 6901).

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use similar::algorithms::{myers, Capture, Replace};
use similar::DiffOp;

/// Longest time spent aligning one array; past it the alignment is still
/// correct but may not be minimal (more Added/Removed pairs).
const ALIGNMENT_DEADLINE: Duration = Duration::from_millis(50);

/// One change between two JSON documents.
///
/// Index rules for arrays: `Removed` paths use indices of the old array;
/// `Added` and `Modified` paths use indices of the new array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    /// A value appeared at `path`.
    Added {
        /// JSON Pointer of the new value.
        path: String,
        /// The new value.
        value: Value,
    },
    /// The value at `path` changed (a scalar, or a change of type).
    Modified {
        /// JSON Pointer of the value.
        path: String,
        /// The value before.
        old: Value,
        /// The value after.
        new: Value,
    },
    /// The value at `path` disappeared.
    Removed {
        /// JSON Pointer of the removed value (old indices).
        path: String,
        /// The value before.
        old: Value,
    },
}

impl Change {
    /// The JSON Pointer this change is about.
    pub fn path(&self) -> &str {
        match self {
            Change::Added { path, .. }
            | Change::Modified { path, .. }
            | Change::Removed { path, .. } => path,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |p: &str| {
            if p.is_empty() {
                "/".to_owned()
            } else {
                p.to_owned()
            }
        };
        match self {
            Change::Added { path, value } => write!(f, "Added {} {}", show(path), value),
            Change::Modified { path, old, new } => {
                write!(f, "Modified {} {} -> {}", show(path), old, new)
            }
            Change::Removed { path, old } => write!(f, "Removed {} {}", show(path), old),
        }
    }
}

/// The changes that turn `old` into `new`, deepest first where it matters:
/// nested objects and arrays are descended into, scalars and type changes
/// are one `Modified`.
///
/// ```
/// use serde_json::json;
/// use sharedstate_core::{diff, Change};
/// let changes = diff(&json!({"globs": ["a", "b"]}), &json!({"globs": ["a", "b", "c"]}));
/// assert_eq!(changes, vec![Change::Added { path: "/globs/2".into(), value: json!("c") }]);
/// ```
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut path = String::new();
    diff_into(old, new, &mut path, &mut changes);
    changes
}

fn diff_into(old: &Value, new: &Value, path: &mut String, out: &mut Vec<Change>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            // serde_json maps are sorted, so the changes come in key order.
            for (key, old_value) in a {
                with_segment(path, key, |path| match b.get(key) {
                    Some(new_value) => diff_into(old_value, new_value, path, out),
                    None => out.push(Change::Removed {
                        path: path.clone(),
                        old: old_value.clone(),
                    }),
                });
            }
            for (key, new_value) in b {
                if !a.contains_key(key) {
                    with_segment(path, key, |path| {
                        out.push(Change::Added {
                            path: path.clone(),
                            value: new_value.clone(),
                        })
                    });
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => diff_arrays(a, b, path, out),
        _ => out.push(Change::Modified {
            path: path.clone(),
            old: old.clone(),
            new: new.clone(),
        }),
    }
}

/// The alignment of two arrays (Myers' diff, equal runs, deletions,
/// insertions, and replaced runs whose elements are paired in order), or
/// `None` if it could not be computed. Change sets and the payload merge
/// that keeps unknown fields ([`crate::engine`]) use the same alignment, so
/// an element that a change set shows as modified in place is the one whose
/// unknown members survive.
pub(crate) fn align(a: &[Value], b: &[Value]) -> Option<Vec<DiffOp>> {
    let mut hook = Replace::new(Capture::new());
    let deadline = Instant::now() + ALIGNMENT_DEADLINE;
    // The Capture hook never fails; the Result only exists for other hooks.
    myers::diff_deadline(&mut hook, a, 0..a.len(), b, 0..b.len(), Some(deadline)).ok()?;
    Some(hook.into_inner().into_ops())
}

fn diff_arrays(a: &[Value], b: &[Value], path: &mut String, out: &mut Vec<Change>) {
    let Some(ops) = align(a, b) else {
        out.push(Change::Modified {
            path: path.clone(),
            old: Value::Array(a.to_vec()),
            new: Value::Array(b.to_vec()),
        });
        return;
    };
    for op in ops {
        match op {
            DiffOp::Equal { .. } => {}
            DiffOp::Delete {
                old_index, old_len, ..
            } => removed(a, old_index, old_len, path, out),
            DiffOp::Insert {
                new_index, new_len, ..
            } => added(b, new_index, new_len, path, out),
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                // Pair replaced elements in order and descend into them; the
                // surplus on either side is plain removal or addition.
                let paired = old_len.min(new_len);
                for i in 0..paired {
                    with_segment(path, &(new_index + i).to_string(), |path| {
                        diff_into(&a[old_index + i], &b[new_index + i], path, out)
                    });
                }
                removed(a, old_index + paired, old_len - paired, path, out);
                added(b, new_index + paired, new_len - paired, path, out);
            }
        }
    }
}

fn removed(a: &[Value], start: usize, len: usize, path: &mut String, out: &mut Vec<Change>) {
    for (i, old) in a.iter().enumerate().skip(start).take(len) {
        with_segment(path, &i.to_string(), |path| {
            out.push(Change::Removed {
                path: path.clone(),
                old: old.clone(),
            })
        });
    }
}

fn added(b: &[Value], start: usize, len: usize, path: &mut String, out: &mut Vec<Change>) {
    for (i, value) in b.iter().enumerate().skip(start).take(len) {
        with_segment(path, &i.to_string(), |path| {
            out.push(Change::Added {
                path: path.clone(),
                value: value.clone(),
            })
        });
    }
}

/// Runs `f` with `segment` (escaped per RFC 6901) appended to `path`.
fn with_segment(path: &mut String, segment: &str, f: impl FnOnce(&mut String)) {
    let len = path.len();
    path.push('/');
    for c in segment.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
    f(path);
    path.truncate(len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn added(path: &str, value: Value) -> Change {
        Change::Added {
            path: path.into(),
            value,
        }
    }
    fn removed(path: &str, old: Value) -> Change {
        Change::Removed {
            path: path.into(),
            old,
        }
    }
    fn modified(path: &str, old: Value, new: Value) -> Change {
        Change::Modified {
            path: path.into(),
            old,
            new,
        }
    }

    #[test]
    fn equal_documents_have_no_changes() {
        let v = json!({"a": [1, {"b": null}], "c": "x"});
        assert!(diff(&v, &v.clone()).is_empty());
    }

    #[test]
    fn nested_objects_are_descended() {
        let old = json!({"db": {"host": "a", "port": 1}, "gone": true});
        let new = json!({"db": {"host": "b", "port": 1, "tls": {"on": true}}});
        assert_eq!(
            diff(&old, &new),
            vec![
                modified("/db/host", json!("a"), json!("b")),
                added("/db/tls", json!({"on": true})),
                removed("/gone", json!(true)),
            ]
        );
    }

    #[test]
    fn insert_at_front_is_one_added() {
        let old = json!({"globs": ["systemd*", "rsync*"]});
        let new = json!({"globs": ["firefox*", "systemd*", "rsync*"]});
        assert_eq!(diff(&old, &new), vec![added("/globs/0", json!("firefox*"))]);
    }

    #[test]
    fn insert_in_middle_and_at_end() {
        let old = json!([1, 2, 3]);
        assert_eq!(
            diff(&old, &json!([1, 9, 2, 3])),
            vec![added("/1", json!(9))]
        );
        assert_eq!(
            diff(&old, &json!([1, 2, 3, 4])),
            vec![added("/3", json!(4))]
        );
        assert_eq!(
            diff(
                &json!({"globs": ["systemd*", "rsync*"]}),
                &json!({"globs": ["systemd*", "rsync*", "firefox*"]})
            ),
            vec![added("/globs/2", json!("firefox*"))]
        );
    }

    #[test]
    fn removal_uses_old_indices() {
        assert_eq!(
            diff(&json!([1, 2, 3]), &json!([1, 3])),
            vec![removed("/1", json!(2))]
        );
        assert_eq!(
            diff(&json!([1, 2, 3]), &json!([])),
            vec![
                removed("/0", json!(1)),
                removed("/1", json!(2)),
                removed("/2", json!(3)),
            ]
        );
    }

    #[test]
    fn replaced_element_in_place_is_descended() {
        let old = json!([{"name": "a", "n": 1}, {"name": "b", "n": 2}]);
        let new = json!([{"name": "a", "n": 1}, {"name": "b", "n": 3}]);
        assert_eq!(diff(&old, &new), vec![modified("/1/n", json!(2), json!(3))]);
    }

    #[test]
    fn type_changes_are_one_modified() {
        assert_eq!(
            diff(&json!({"a": [1]}), &json!({"a": {"x": 1}})),
            vec![modified("/a", json!([1]), json!({"x": 1}))]
        );
        assert_eq!(
            diff(&json!({"a": 1}), &json!({"a": "1"})),
            vec![modified("/a", json!(1), json!("1"))]
        );
        assert_eq!(
            diff(&json!(1), &json!([1])),
            vec![modified("", json!(1), json!([1]))]
        );
    }

    #[test]
    fn null_is_a_value_distinct_from_absence() {
        assert_eq!(
            diff(&json!({"a": null}), &json!({"a": 1})),
            vec![modified("/a", json!(null), json!(1))]
        );
        assert_eq!(
            diff(&json!({}), &json!({"a": null})),
            vec![added("/a", json!(null))]
        );
        assert_eq!(
            diff(&json!({"a": null}), &json!({})),
            vec![removed("/a", json!(null))]
        );
    }

    #[test]
    fn pointer_segments_are_escaped() {
        assert_eq!(
            diff(&json!({}), &json!({"a/b": 1, "m~n": 2})),
            vec![added("/a~1b", json!(1)), added("/m~0n", json!(2))]
        );
    }

    #[test]
    fn display_is_one_readable_line() {
        assert_eq!(
            added("/globs/2", json!("firefox*")).to_string(),
            "Added /globs/2 \"firefox*\""
        );
        assert_eq!(
            modified("", json!(1), json!(2)).to_string(),
            "Modified / 1 -> 2"
        );
    }
}
