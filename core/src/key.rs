//! Validated hierarchical keys (`/app/state/payload`).

use std::fmt;

use crate::error::{Error, ErrorKind, Operation};

/// Longest key accepted, in bytes. ZooKeeper and etcd both accept more; the
/// bound keeps keys readable and leaves room for backend prefixes (chroot).
pub const MAX_KEY_BYTES: usize = 1024;

/// A validated key: an absolute, `/`-separated path such as `/app/flags`.
///
/// One rule list for every backend, so that a key never works on one backend
/// and fails on another: `Key` refuses what any backend would refuse, with
/// the reason in the error.
///
/// - starts with `/`; is not `/` alone; no empty segment (`//`, trailing
///   `/`); no `.` or `..` segment; at most [`MAX_KEY_BYTES`] bytes;
/// - no control characters (U+0000-U+001F, U+007F-U+009F);
/// - no private-use characters (U+E000-U+F8FF), no specials
///   (U+FFF0-U+FFFF, which includes U+FFFD and the non-characters U+FFFE,
///   U+FFFF), and no characters outside the Basic Multilingual Plane
///   (above U+FFFF: emoji, mathematical alphanumerics): ZooKeeper checks
///   paths as UTF-16 and refuses U+D800-U+F8FF and U+FFF0-U+FFFF, which
///   takes in every surrogate pair;
/// - not ZooKeeper's reserved `/zookeeper` subtree, and no segment starting
///   with `sharedstate-fence-` (the ZooKeeper backend's conditional writes
///   create and delete such a sibling in the same transaction).
///
/// Letters of every script, combining marks, spaces and punctuation are
/// fine.
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

/// Segment prefix reserved for the ZooKeeper backend's fence nodes.
pub(crate) const RESERVED_SEGMENT_PREFIX: &str = "sharedstate-fence-";

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
    if let Some(c) = path.chars().find(|c| refused_char(*c).is_some()) {
        let why = refused_char(c).unwrap_or("refused");
        return Err(format!(
            "a key must not contain {why} (found U+{:04X}); ZooKeeper refuses it",
            c as u32
        ));
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err("a key must not have empty segments ('//' or a trailing '/')".into()),
            "." | ".." => return Err("a key must not have '.' or '..' segments".into()),
            s if s.starts_with(RESERVED_SEGMENT_PREFIX) => {
                return Err(format!(
                    "segments starting with {RESERVED_SEGMENT_PREFIX:?} are reserved for the \
                     ZooKeeper backend's conditional writes"
                ))
            }
            _ => {}
        }
    }
    if path == "/zookeeper" || path.starts_with("/zookeeper/") {
        return Err("'/zookeeper' is reserved by ZooKeeper".into());
    }
    Ok(())
}

/// Why a character is refused in keys, or `None` when it is fine.
fn refused_char(c: char) -> Option<&'static str> {
    match u32::from(c) {
        _ if c.is_control() => Some("control characters"),
        0xE000..=0xF8FF => Some("private-use characters"),
        0xFFF0..=0xFFFF => Some("special characters (U+FFF0-U+FFFF)"),
        0x10000.. => Some("characters outside the Basic Multilingual Plane"),
        _ => None,
    }
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
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// Any string: a key or a clear refusal, never a panic; an accepted
        /// key is its own text, its segments rebuild it, and its parent and
        /// children are keys too.
        #[test]
        fn prop_keys_accept_or_refuse_cleanly(path in "(/[^/]{0,6}){0,4}|.{0,40}") {
            match Key::new(path.clone()) {
                Ok(key) => {
                    prop_assert_eq!(key.as_str(), path.as_str());
                    let rebuilt: String = key.segments().map(|s| format!("/{s}")).collect();
                    prop_assert_eq!(rebuilt, path.clone());
                    if let Some(parent) = key.parent() {
                        let again = parent.child(key.name()).expect("the parent takes the name back");
                        prop_assert_eq!(again.as_str(), path.as_str());
                    }
                    let bytes = key.as_str().len();
                    prop_assert!(bytes <= MAX_KEY_BYTES);
                    // What ZooKeeper refuses (U+D800-U+F8FF; Rust strings hold no
                    // surrogates, so from U+E000) never passes.
                    let refused = |c: char| ('\u{E000}'..='\u{F8FF}').contains(&c)
                        || ('\u{FFF0}'..='\u{FFFF}').contains(&c);
                    prop_assert!(!key.as_str().chars().any(refused));
                }
                Err(error) => prop_assert_eq!(error.kind(), crate::ErrorKind::InvalidKey),
            }
        }

        #[test]
        fn prop_children_accept_or_refuse_cleanly(segment in ".{0,12}") {
            let root = Key::new("/root").expect("key");
            if let Ok(child) = root.child(&segment) {
                prop_assert_eq!(child.name(), segment.as_str());
                prop_assert_eq!(child.parent().map(|p| p.as_str().to_owned()), Some("/root".to_owned()));
            }
        }
    }

    #[test]
    fn accepts_ordinary_paths() {
        for ok in [
            "/a",
            "/app/state/payload",
            "/a-b_c.d/e:f",
            "/ünïcode/ключ",
            "/e\u{0301}t\u{00E9}",
            "/with space/and,punct;!",
            "/\u{D7FF}\u{F900}\u{FFEF}",
            "/p/x-sharedstate-fence-1",
        ] {
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
            "/p/rocket-\u{1F680}",
            "/p/math-\u{1D518}",
            "/p/\u{E000}",
            "/p/\u{F8FF}",
            "/p/\u{FFFD}",
            "/p/\u{FFFE}",
            "/p/\u{FFFF}",
            "/p/\u{0085}",
            "/p/sharedstate-fence-0000000001",
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
