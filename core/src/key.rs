//! Validated hierarchical keys (`/app/state/payload`).

use std::fmt;

use crate::error::{Error, ErrorKind, Operation};

/// Longest key accepted, in bytes. ZooKeeper and etcd both accept more; the
/// bound keeps keys readable and leaves room for backend prefixes (chroot).
pub const MAX_KEY_BYTES: usize = 1024;

/// A validated key: an absolute, `/`-separated path such as `/app/flags`.
///
/// Rules, identical on every backend: starts with `/`; is not `/` alone; no
/// empty segment (`//`, trailing `/`); no `.` or `..` segment; no control
/// characters; at most [`MAX_KEY_BYTES`] bytes. ZooKeeper's reserved
/// `/zookeeper` subtree is rejected too so a state can never land there.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// Validates `path` and returns it as a key.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKey`] with the reason when a rule above is broken.
    ///
    /// ```
    /// use sharedstate_core::{Key, ErrorKind};
    /// assert_eq!(Key::new("/app/flags").unwrap().as_str(), "/app/flags");
    /// assert_eq!(Key::new("app").unwrap_err().kind(), ErrorKind::InvalidKey);
    /// assert_eq!(Key::new("/a/../b").unwrap_err().kind(), ErrorKind::InvalidKey);
    /// ```
    pub fn new(path: impl Into<String>) -> Result<Self, Error> {
        let path = path.into();
        if let Err(reason) = validate(&path) {
            return Err(Error::new(ErrorKind::InvalidKey, Operation::ValidateKey)
                .with_raw_key(&path)
                .with_message(reason));
        }
        Ok(Key(path))
    }

    /// The key as a string slice, always starting with `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key one level below this one.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidKey`] when `segment` is empty, contains `/`, is
    /// `.`/`..`, contains control characters, or the result is too long.
    pub fn child(&self, segment: &str) -> Result<Key, Error> {
        if segment.contains('/') {
            return Err(Error::new(ErrorKind::InvalidKey, Operation::ValidateKey)
                .with_raw_key(&format!("{}/{}", self.0, segment))
                .with_message("a child segment must not contain '/'"));
        }
        Key::new(format!("{}/{}", self.0, segment))
    }

    /// The parent key, or `None` for a top-level key such as `/app`.
    pub fn parent(&self) -> Option<Key> {
        let idx = self.0.rfind('/')?;
        if idx == 0 {
            None
        } else {
            Some(Key(self.0[..idx].to_owned()))
        }
    }

    /// The last segment (`payload` for `/app/payload`).
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }

    /// The segments from the top (`["app", "payload"]`).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0[1..].split('/')
    }
}

fn validate(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("a key must start with '/'".into());
    }
    if path == "/" {
        return Err("the root '/' is not a usable key".into());
    }
    if path.len() > MAX_KEY_BYTES {
        return Err(format!(
            "a key is at most {MAX_KEY_BYTES} bytes, this one has {}",
            path.len()
        ));
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(format!(
            "a key must not contain control characters (found U+{:04X})",
            c as u32
        ));
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err("a key must not have empty segments ('//' or a trailing '/')".into()),
            "." | ".." => return Err("a key must not have '.' or '..' segments".into()),
            _ => {}
        }
    }
    if path == "/zookeeper" || path.starts_with("/zookeeper/") {
        return Err("'/zookeeper' is reserved by ZooKeeper".into());
    }
    Ok(())
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Key {
    type Error = Error;
    fn try_from(value: &str) -> Result<Self, Error> {
        Key::new(value)
    }
}

impl TryFrom<String> for Key {
    type Error = Error;
    fn try_from(value: String) -> Result<Self, Error> {
        Key::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for ok in ["/a", "/app/state/payload", "/a-b_c.d/e:f", "/ünïcode/ключ"] {
            assert!(Key::new(ok).is_ok(), "{ok} should be valid");
        }
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in [
            "",
            "/",
            "a",
            "a/b",
            "//a",
            "/a//b",
            "/a/",
            "/a/./b",
            "/a/..",
            "/a\nb",
            "/a\0b",
            "/zookeeper",
            "/zookeeper/quota",
        ] {
            let err = Key::new(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidKey, "{bad:?}");
        }
        assert!(Key::new(format!("/{}", "x".repeat(MAX_KEY_BYTES))).is_err());
    }

    #[test]
    fn navigation() {
        let k = Key::new("/app/state").unwrap();
        assert_eq!(k.child("payload").unwrap().as_str(), "/app/state/payload");
        assert_eq!(k.parent().unwrap().as_str(), "/app");
        assert_eq!(k.parent().unwrap().parent(), None);
        assert_eq!(k.name(), "state");
        assert_eq!(k.segments().collect::<Vec<_>>(), vec!["app", "state"]);
        assert!(k.child("a/b").is_err());
        assert!(k.child("..").is_err());
    }
}
