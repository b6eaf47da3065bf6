//! Instance registrations: one ephemeral key per live instance, under
//! `<path>/listeners` (the stored name stays).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// A live instance of a shared state, as registered under
/// `<path>/listeners/<id>` (JSON).
///
/// The last three fields are what the instance reports about the payload;
/// entries written by instances that do not report (older versions of
/// sharedstate, or [`report_interval`] switched off) decode with `None`
/// there.
///
/// [`report_interval`]: crate::SharedStateBuilder::report_interval
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The instance id (also the registration key's last segment).
    pub id: String,
    /// Host name of the process.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// When the instance opened the state, in milliseconds since the Unix
    /// epoch.
    pub since_unix_ms: u64,
    /// The payload version of the instance's local copy: the last version it
    /// applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_version: Option<Version>,
    /// The latest payload version the instance has seen, applied or not:
    /// above `applied_version` when it rejected that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_version: Option<Version>,
    /// Why the instance does not apply `seen_version`, one line: the
    /// payload does not decode as its type (the reason), or was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The old name of [`InstanceInfo`].
#[deprecated(note = "renamed to `InstanceInfo`: \"listeners\" named the instances")]
pub type ListenerInfo = InstanceInfo;

impl InstanceInfo {
    pub(crate) fn for_this_process(id: String) -> Self {
        let since_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        InstanceInfo {
            id,
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
            since_unix_ms,
            applied_version: None,
            seen_version: None,
            problem: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_instances_that_do_not_report_still_decode() {
        let old = r#"{"id":"a1","host":"web-1","pid":42,"since_unix_ms":7}"#;
        let info: InstanceInfo = serde_json::from_str(old).expect("decodes");
        assert_eq!(info.applied_version, None);
        assert_eq!(info.problem, None);
        // And the fields are left out again when there is nothing to say.
        assert_eq!(serde_json::to_string(&info).expect("encodes"), old);
    }

    #[test]
    fn reports_round_trip() {
        let info = InstanceInfo {
            applied_version: Some(Version::new(250)),
            seen_version: Some(Version::new(254)),
            problem: Some("payload does not match the state's type: invalid type".into()),
            ..InstanceInfo::for_this_process("b2".into())
        };
        let text = serde_json::to_string(&info).expect("encodes");
        assert!(text.contains(r#""applied_version":250"#), "{text}");
        assert_eq!(
            serde_json::from_str::<InstanceInfo>(&text).expect("decodes"),
            info
        );
    }
}
