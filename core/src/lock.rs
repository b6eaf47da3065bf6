//! The held-lock handle shared by every backend.

use std::fmt;
use std::future::Future;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::key::Key;
use crate::version::FencingToken;

/// Backend side of a held lock: how to give it back.
#[async_trait]
pub trait LockRelease: Send + Sync + fmt::Debug + 'static {
    /// Releases the lock (deletes the lock node / key).
    ///
    /// # Errors
    ///
    /// Backend failures; the lock still goes with the session at the latest.
    async fn release(self: Box<Self>) -> Result<()>;
}

/// An exclusive lock held by one client's session.
///
/// Carries a strictly increasing [`FencingToken`], a [`lost`](Self::lost)
/// signal that fires when the session or lease dies, and
/// [`release`](Self::release). Dropping the guard releases it in the
/// background.
pub struct LockGuard {
    key: Key,
    owner: String,
    token: FencingToken,
    lost: CancellationToken,
    releaser: Option<Box<dyn LockRelease>>,
}

impl LockGuard {
    /// See [`backend::lock_guard`](crate::backend::lock_guard).
    pub(crate) fn new(
        key: Key,
        owner: String,
        token: FencingToken,
        lost: CancellationToken,
        releaser: Box<dyn LockRelease>,
    ) -> Self {
        LockGuard {
            key,
            owner,
            token,
            lost,
            releaser: Some(releaser),
        }
    }

    /// The key that was locked.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The backend object that represents the held lock.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The fencing token of this acquisition.
    pub fn fencing_token(&self) -> FencingToken {
        self.token
    }

    /// True once the lock is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Resolves when the lock is lost (session expired, lease revoked).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.lost.clone().cancelled_owned()
    }

    /// Releases the lock now.
    ///
    /// # Errors
    ///
    /// Backend failures (the lock still goes with the session at the latest).
    pub async fn release(mut self) -> Result<()> {
        match self.releaser.take() {
            Some(releaser) => releaser.release().await,
            None => Ok(()),
        }
    }

    /// Releases the lock now, logging a failure instead of returning it: for
    /// paths that already have an error to report, or whose outcome does not
    /// depend on the release (the lock goes with the session at the latest).
    /// `after` says what happened before, for the log line.
    pub async fn release_or_warn(self, after: &str) {
        let key = self.key.clone();
        if let Err(error) = self.release().await {
            tracing::warn!(%error, %key, "releasing the lock after {after} failed; it goes with the session");
        }
    }

    /// See [`backend::disarm`](crate::backend::disarm).
    pub(crate) fn disarm(mut self) -> Option<Box<dyn LockRelease>> {
        self.releaser.take()
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("owner", &self.owner)
            .field("token", &self.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(releaser) = self.releaser.take() {
            crate::backend::cleanup::spawn_cleanup(
                "releasing a dropped lock",
                self.key.clone(),
                releaser.release(),
            );
        }
    }
}
