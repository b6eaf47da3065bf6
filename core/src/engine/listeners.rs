//! Listener registrations: one ephemeral key per live instance.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A live instance of a shared state, as registered under
/// `<path>/listeners/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerInfo {
    /// The instance id (also the registration key's last segment).
    pub id: String,
    /// Host name of the process.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// When the instance opened the state, in milliseconds since the Unix
    /// epoch.
    pub since_unix_ms: u64,
}

impl ListenerInfo {
    pub(crate) fn for_this_process(id: String) -> Self {
        let since_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        ListenerInfo {
            id,
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
            since_unix_ms,
        }
    }
}
