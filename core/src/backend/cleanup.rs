//! The release of a handle dropped without an explicit release.

use std::future::Future;

use crate::error::Result;
use crate::key::Key;

/// Runs `cleanup` (a lock's release, a registration's removal) in the
/// background on the current tokio runtime, logging its failure with
/// `what` ("releasing a dropped lock"). Outside a runtime nothing can run:
/// it logs that the object goes with the session instead. For `Drop`
/// implementations, which cannot await.
pub fn spawn_cleanup<F>(what: &'static str, key: Key, cleanup: F)
where
    F: Future<Output = Result<()>> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move {
                if let Err(error) = cleanup.await {
                    tracing::warn!(%error, %key, "{what} failed");
                }
            });
        }
        Err(_) => tracing::warn!(
            %key,
            "{what}: dropped outside a tokio runtime; it goes with the session"
        ),
    }
}
