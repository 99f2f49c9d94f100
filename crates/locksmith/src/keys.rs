//! etcd key names, exactly as locksmith builds them, plus the lease side keys of fastpatch.

/// The default group's semaphore key (locksmith's).
pub const DEFAULT_SEMAPHORE_KEY: &str = "coreos.com/updateengine/rebootlock/semaphore";
const GROUPS_PREFIX: &str = "coreos.com/updateengine/rebootlock/groups/";

/// Escapes like Go's `url.QueryEscape`: unreserved bytes stay, space becomes `+`, the rest `%XX`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The semaphore key of `group` (`""` = the default group).
pub fn semaphore_key(group: &str) -> String {
    if group.is_empty() {
        DEFAULT_SEMAPHORE_KEY.to_string()
    } else {
        format!("{GROUPS_PREFIX}{}/semaphore", query_escape(group))
    }
}

/// Prefix of the "this holder is lease-backed" marker keys of a semaphore (no lease attached;
/// they say the holder opted in, so a missing `alive` key means it died).
pub fn leased_prefix(sem_key: &str) -> String {
    format!("{sem_key}.leases/held/")
}

/// Prefix of the per-holder keys attached to the holder's etcd lease.
pub fn alive_prefix(sem_key: &str) -> String {
    format!("{sem_key}.leases/alive/")
}

/// Marker key of holder `id`.
pub fn leased_key(sem_key: &str, id: &str) -> String {
    format!("{}{}", leased_prefix(sem_key), query_escape(id))
}

/// Lease-attached key of holder `id`.
pub fn alive_key(sem_key: &str, id: &str) -> String {
    format!("{}{}", alive_prefix(sem_key), query_escape(id))
}

/// Reverses [`query_escape`] (for ids read back from key names).
pub fn query_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_locksmith() {
        assert_eq!(semaphore_key(""), DEFAULT_SEMAPHORE_KEY);
        assert_eq!(
            semaphore_key("web"),
            "coreos.com/updateengine/rebootlock/groups/web/semaphore"
        );
        assert_eq!(
            semaphore_key("a b/c?"),
            "coreos.com/updateengine/rebootlock/groups/a+b%2Fc%3F/semaphore"
        );
    }

    #[test]
    fn escape_roundtrip() {
        for s in ["abc", "a b", "x/y%z+", "é~._-"] {
            assert_eq!(query_unescape(&query_escape(s)).as_deref(), Some(s));
        }
        assert_eq!(query_escape("é"), "%C3%A9");
        assert_eq!(query_unescape("%zz"), None);
    }
}
