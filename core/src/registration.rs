//! Ephemeral registrations (one per live instance).

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, ErrorKind, Operation, Result};
use crate::key::Key;

/// Backend side of a registration: how to change its value and how to
/// remove it.
#[async_trait]
pub trait RegistrationClose: Send + Sync + fmt::Debug + 'static {
    /// Replaces the registration's value: the live key gets it now (when
    /// this session holds the key), and every later re-creation on a new
    /// session uses it. Never creates a key: a registration whose key is
    /// gone (its session ended, a re-creation is pending) only records the
    /// value for the re-creation. Idempotent, and cancellation-safe: a
    /// dropped call leaves no key behind, and the value it recorded is the
    /// one the next re-creation writes.
    ///
    /// The default says `Unsupported`, for backends that cannot change a
    /// registration's value.
    ///
    /// # Errors
    ///
    /// `Unsupported`; `ValueTooLarge` (checked before anything is recorded
    /// or sent); backend failures (`Unavailable`, `Timeout`, `SessionLost`):
    /// the key may still hold the previous value, the new one is recorded
    /// for re-creations, and calling again with it is safe.
    async fn update(&self, key: &Key, value: Bytes) -> Result<()> {
        let _ = value;
        Err(
            Error::new(ErrorKind::Unsupported, Operation::UpdateRegistration)
                .with_key(key)
                .with_message("this backend cannot change a registration's value"),
        )
    }

    /// Stops re-creating the registration and deletes its key.
    ///
    /// # Errors
    ///
    /// Backend failures; the key still goes with the session at the latest.
    async fn close(self: Box<Self>) -> Result<()>;
}

/// An ephemeral key that exists while the session lives and is re-created
/// (with its latest value) after a new session replaces a lost one. Closing
/// or dropping it removes the key.
pub struct Registration {
    key: Key,
    closer: Option<Box<dyn RegistrationClose>>,
}

impl Registration {
    /// See [`backend::registration`](crate::backend::registration).
    pub(crate) fn new(key: Key, closer: Box<dyn RegistrationClose>) -> Self {
        Registration {
            key,
            closer: Some(closer),
        }
    }

    /// The registered key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Replaces the registration's value, now on the live key and for every
    /// later re-creation (see [`RegistrationClose::update`]). Idempotent and
    /// cancellation-safe.
    ///
    /// # Errors
    ///
    /// `Unsupported` when the backend cannot change a registration's value,
    /// `ValueTooLarge`, and backend failures such as `Unavailable` (safe to
    /// call again with the same value).
    pub async fn update(&self, value: Bytes) -> Result<()> {
        match &self.closer {
            Some(closer) => closer.update(&self.key, value).await,
            None => {
                Err(Error::new(ErrorKind::Closed, Operation::UpdateRegistration)
                    .with_key(&self.key))
            }
        }
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
            crate::backend::cleanup::spawn_cleanup(
                "closing a dropped registration",
                self.key.clone(),
                closer.close(),
            );
        }
    }
}
