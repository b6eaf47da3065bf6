//! Secrets out of what is shown: URLs with credentials.

/// What stands in for a secret in messages and logs.
pub const REDACTED: &str = "<redacted>";

/// `url` with its secrets replaced by [`REDACTED`], for messages and logs:
/// the password of `scheme://user:password@host` and the value of every
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
    let mut out = String::with_capacity(url.len());
    let (scheme, rest) = match head.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, head),
    };
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    // The authority ends at the first '/' (a ZooKeeper chroot, a path).
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            out.push_str(hosts);
        }
        None => out.push_str(authority),
    }
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_key(name) => format!("{name}={REDACTED}"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

fn is_secret_key(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "password" | "token" | "pass" | "secret") || name.ends_with("password")
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("zk://h:1/a@b", "zk://h:1/a@b"),
            ("memory://", "memory://"),
            ("no-scheme:p@h", "no-scheme:<redacted>@h"),
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
