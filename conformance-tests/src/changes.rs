//! Applying change sets to a JSON document: what a subscriber that mirrors
//! the state does, and the check that the differ is right (applying
//! `diff(a, b)` to `a` gives `b`).

use std::collections::HashMap;

use serde_json::Value;
use sharedstate_core::Change;

/// Applies `changes` (as [`sharedstate_core::diff`] or a
/// [`ChangeSet`](sharedstate_core::ChangeSet) gives them, in order) to
/// `doc`.
///
/// Index rules, as the differ's: a `Removed` directly in an array names the
/// element's index in the old array; `Added` and `Modified` indices, and
/// every index above the last segment, are those of the new array. Within
/// one array the changes come in index order, so an old index is found by
/// counting what was added and removed before it.
///
/// ```
/// use serde_json::json;
/// let (old, new) = (json!({"a": [1, 2, 3]}), json!({"a": [0, 1, 3], "b": true}));
/// let mut doc = old.clone();
/// sharedstate_conformance::apply_changes(&mut doc, &sharedstate_core::diff(&old, &new)).unwrap();
/// assert_eq!(doc, new);
/// ```
///
/// # Errors
///
/// A message when a change's path does not exist in `doc`.
pub fn apply_changes(doc: &mut Value, changes: &[Change]) -> Result<(), String> {
    // Per array (by its path): elements added minus elements removed so far.
    let mut shift: HashMap<String, i64> = HashMap::new();
    for change in changes {
        let path = change.path();
        let (parent_path, last) = match path.rfind('/') {
            Some(i) => (&path[..i], unescape(&path[i + 1..])),
            None if path.is_empty() => {
                match change {
                    Change::Added { value, .. } | Change::Modified { new: value, .. } => {
                        *doc = value.clone()
                    }
                    Change::Removed { .. } => *doc = Value::Null,
                }
                continue;
            }
            None => return Err(format!("{path:?} is not a JSON Pointer")),
        };
        let parent = doc
            .pointer_mut(parent_path)
            .ok_or_else(|| format!("no {parent_path:?} for {change}"))?;
        match parent {
            Value::Object(map) => match change {
                Change::Added { value, .. } | Change::Modified { new: value, .. } => {
                    map.insert(last, value.clone());
                }
                Change::Removed { .. } => {
                    map.remove(&last)
                        .ok_or_else(|| format!("nothing to remove at {path:?}"))?;
                }
            },
            Value::Array(items) => {
                let index: usize = last
                    .parse()
                    .map_err(|_| format!("{last:?} is not an index in {path:?}"))?;
                let offset = shift.entry(parent_path.to_owned()).or_insert(0);
                match change {
                    Change::Added { value, .. } => {
                        if index > items.len() {
                            return Err(format!("{path:?} is past the end"));
                        }
                        items.insert(index, value.clone());
                        *offset += 1;
                    }
                    Change::Modified { new, .. } => {
                        let slot = items
                            .get_mut(index)
                            .ok_or_else(|| format!("{path:?} is past the end"))?;
                        *slot = new.clone();
                    }
                    Change::Removed { .. } => {
                        let at = usize::try_from(index as i64 + *offset)
                            .map_err(|_| format!("{path:?} is before the start"))?;
                        if at >= items.len() {
                            return Err(format!("{path:?} is past the end"));
                        }
                        items.remove(at);
                        *offset -= 1;
                    }
                }
            }
            other => return Err(format!("{parent_path:?} is {other}, not a container")),
        }
    }
    Ok(())
}

/// RFC 6901: `~1` is `/`, `~0` is `~`.
fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}
