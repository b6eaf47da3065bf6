//! Ephemeral registrations (one per live instance).

use std::fmt;

use async_trait::async_trait;

use crate::error::Result;
use crate::key::Key;

/// Backend side of a registration: how to remove it.
#[async_trait]
pub trait RegistrationClose: Send + Sync + fmt::Debug + 'static {
    /// Stops re-creating the registration and deletes its key.
    ///
    /// # Errors
    ///
    /// Backend failures; the key still goes with the session at the latest.
    async fn close(self: Box<Self>) -> Result<()>;
}

/// An ephemeral key that exists while the session lives and is re-created
/// after a new session replaces a lost one. Closing or dropping it removes
/// the key.
pub struct Registration {
    key: Key,
    closer: Option<Box<dyn RegistrationClose>>,
}

impl Registration {
    /// For backend implementations: wraps a live registration.
    pub fn new(key: Key, closer: Box<dyn RegistrationClose>) -> Self {
        Registration {
            key,
            closer: Some(closer),
        }
    }

    /// The registered key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Removes the registration now.
    ///
    /// # Errors
    ///
    /// Backend failures (the key still goes with the session at the latest).
    pub async fn close(mut self) -> Result<()> {
        match self.closer.take() {
            Some(closer) => closer.close().await,
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(closer) = self.closer.take() {
            let key = self.key.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        if let Err(error) = closer.close().await {
                            tracing::warn!(%error, %key, "closing a dropped registration failed");
                        }
                    });
                }
                Err(_) => tracing::warn!(
                    %key,
                    "registration dropped outside a tokio runtime; it goes with the session"
                ),
            }
        }
    }
}
