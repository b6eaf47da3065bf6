//! Secrets out of what is shown: URLs with credentials.

/// What stands in for a secret in messages and logs.
pub const REDACTED: &str = "<redacted>";

/// `url` with its secrets replaced by [`REDACTED`], for messages and logs:
/// the password of `scheme://user:password@host` (everything between the
/// first `:` of the user info and its last `@`) and the value of every
/// `password=` (and `token=`) query parameter. Anything else is left as
/// written, so the result still names the hosts, the path and the options.
///
/// ```
/// use sharedstate_core::redact_url;
///
/// assert_eq!(
///     redact_url("etcd://alice:s3cret@h1:2379?password=s3cret&session_ttl_s=5"),
///     "etcd://alice:<redacted>@h1:2379?password=<redacted>&session_ttl_s=5"
/// );
/// assert_eq!(redact_url("zk://h1:2181/app"), "zk://h1:2181/app");
/// ```
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    // The user info runs from after `scheme://` (or the start, for text
    // that is not quite a URL) to the last `@`: a password may hold `/` or
    // `@` itself. When in doubt more is hidden, never less.
    // A `://` after an `@` does not end a scheme: `zk:/u:pw@h://` is a typo
    // whose user info starts at the beginning.
    let start = match head.find("://") {
        Some(i) if !head[..i].contains('@') => i + 3,
        _ => 0,
    };
    let mut out = hide_user_info(head, start);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_key(name) => format!("{name}={REDACTED}"),
                Some((name, _)) => hide_user_info(pair, name.len() + 1),
                // Text that was meant as `user:password@host`.
                None => hide_user_info(pair, 0),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

/// `text` with what looks like a password in user info (`user:password@`
/// from `start` on, up to the last `@`) redacted.
fn hide_user_info(text: &str, start: usize) -> String {
    let Some(at) = text[start..].rfind('@').map(|at| start + at) else {
        return text.to_owned();
    };
    match text[start..at].split_once(':') {
        Some((user, _password)) => format!("{}{user}:{REDACTED}{}", &text[..start], &text[at..]),
        None => text.to_owned(),
    }
}

fn is_secret_key(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "password" | "token" | "pass" | "secret") || name.ends_with("password")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn prop_redact_never_panics(url in ".{0,80}") {
            let _ = redact_url(&url);
        }

        #[test]
        fn prop_passwords_never_survive(
            scheme in "(etcd|etcds|zk|zks)",
            user in "[a-z]{1,6}",
            secret in "S3[a-zA-Z0-9%!*]{6,12}",
            hosts in "[a-z0-9.]{1,8}(:[0-9]{1,5})?(,[a-z0-9.]{1,8}:[0-9]{1,5}){0,2}",
            path in "(/[a-z]{1,5}){0,2}",
            extra in "(&[a-z_]{1,8}=[a-z0-9]{0,5}){0,3}",
        ) {
            let url = format!("{scheme}://{user}:{secret}@{hosts}{path}?password={secret}{extra}");
            let shown = redact_url(&url);
            prop_assert!(!shown.contains(&secret), "{} -> {}", url, shown);
            prop_assert!(shown.contains(&hosts), "{} -> {}", url, shown);
            prop_assert!(shown.contains(&user), "{} -> {}", url, shown);
        }
    }

    #[test]
    fn secrets_go_everything_else_stays() {
        let cases = [
            ("etcd://u:p@h:1", "etcd://u:<redacted>@h:1"),
            ("etcd://u@h:1", "etcd://u@h:1"),
            ("etcd://u:p:q@h:1,h2:2/", "etcd://u:<redacted>@h:1,h2:2/"),
            (
                "zk://h:1/app?user=u&password=p%40ss&acl=creator-all",
                "zk://h:1/app?user=u&password=<redacted>&acl=creator-all",
            ),
            ("zk://h:1/app", "zk://h:1/app"),
            // A chroot with an `@` looks like user info: hidden too.
            ("zk://h:1/a@b", "zk://h:<redacted>@b"),
            ("etcd://u:pa/ss@h:1", "etcd://u:<redacted>@h:1"),
            ("etcd:/u:pw@h", "etcd:<redacted>@h"),
            // A `://` after the user info (the CLI's property test found it).
            ("zk:/u:pw@://", "zk:<redacted>@://"),
            ("memory://", "memory://"),
            ("no-scheme:p@h", "no-scheme:<redacted>@h"),
            ("x?u:p@h", "x?u:<redacted>@h"),
            (
                "zk://h:1?user=alice@corp&acl=open",
                "zk://h:1?user=alice@corp&acl=open",
            ),
            (
                "etcd://h?Password=x&token=t",
                "etcd://h?Password=<redacted>&token=<redacted>",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
