//! The request path as routes match it, which is not always the path as
//! received.
//!
//! `/admin`, `//admin`, `/x/../admin` and `/%61dmin` name the same resource
//! to most backends, which decode and resolve the path before serving it. A
//! proxy that matches the raw text lets them all past a rule that sends
//! `/admin` elsewhere (to a deny backend, say): Envoy's CVE-2019-9901. So,
//! as nginx (and so ingress-nginx) matches its locations, the path is
//! matched percent-decoded, with `.` and `..` segments resolved and runs of
//! slashes merged. The request is still forwarded with the path it came
//! with, as ingress-nginx forwards it. A path whose `..` climbs above the
//! root, or with a `%` not followed by two hex digits, is refused (400), as
//! nginx refuses it.

use std::borrow::Cow;

/// Why a request path cannot be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// A `..` segment above the root.
    AboveRoot,
    /// A `%` not followed by two hex digits.
    BadEscape,
}

impl PathRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            Self::AboveRoot => "request path climbs above the root",
            Self::BadEscape => "malformed percent-encoding in the request path",
        }
    }
}

/// `raw` as routes match it. Borrowed (no work beyond one scan) for the
/// usual path, which has no escapes, no repeated slashes and no segment
/// starting with a dot.
pub fn for_matching(raw: &str) -> Result<Cow<'_, str>, PathRefusal> {
    if is_plain(raw.as_bytes()) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode(raw.as_bytes())?;
    // A decoded byte that is not UTF-8 can be in no rule: matched as the
    // replacement character, it still leaves the segments around it
    // intact for prefix matching.
    let decoded = String::from_utf8_lossy(&decoded);
    resolve(&decoded).map(Cow::Owned)
}

/// Whether `path` is already as routes match it.
fn is_plain(path: &[u8]) -> bool {
    let mut after_slash = false;
    for &b in path {
        if b == b'%' || (after_slash && (b == b'/' || b == b'.')) {
            return false;
        }
        after_slash = b == b'/';
    }
    true
}

/// Every `%XX` decoded.
fn decode(path: &[u8]) -> Result<Vec<u8>, PathRefusal> {
    let mut out = Vec::with_capacity(path.len());
    let mut bytes = path.iter();
    while let Some(&b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        match (hex(bytes.next()), hex(bytes.next())) {
            (Some(high), Some(low)) => out.push((high * 16 + low) as u8),
            _ => return Err(PathRefusal::BadEscape),
        }
    }
    Ok(out)
}

/// `.` and `..` segments resolved (RFC 3986 §5.2.4) and empty segments
/// dropped; a path that ends in a slash or a dot segment keeps a trailing
/// slash, since `Exact` rules tell `/a/` from `/a`.
fn resolve(path: &str) -> Result<String, PathRefusal> {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/') {
        trailing_slash = true;
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathRefusal::AboveRoot);
                }
            }
            segment => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut resolved = String::with_capacity(path.len());
    for segment in &segments {
        resolved.push('/');
        resolved.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        resolved.push('/');
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(raw: &str) -> Result<String, PathRefusal> {
        for_matching(raw).map(Cow::into_owned)
    }

    #[test]
    fn a_plain_path_is_matched_as_it_came_without_a_copy() {
        for raw in ["/", "/api/v1/items", "/a/b/", "/file.tar.gz", "/a.b/c"] {
            assert!(
                matches!(for_matching(raw), Ok(Cow::Borrowed(p)) if p == raw),
                "{raw}"
            );
        }
    }

    #[test]
    fn other_spellings_of_a_path_match_as_the_path_they_name() {
        for (raw, path) in [
            ("//admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/x/%2e%2e/admin", "/admin"),
            ("/admin%2Fsecret", "/admin/secret"),
            ("/api//v1///items", "/api/v1/items"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b//", "/a/b/"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/..", "/"),
            ("/%20space", "/ space"),
        ] {
            assert_eq!(matched(raw).as_deref(), Ok(path), "{raw}");
        }
    }

    #[test]
    fn a_path_above_the_root_or_with_a_broken_escape_is_refused() {
        for raw in ["/..", "/../admin", "/a/../../b", "/%2e%2e/x"] {
            assert_eq!(matched(raw), Err(PathRefusal::AboveRoot), "{raw}");
        }
        for raw in ["/%", "/%4", "/%zz", "/a%g1"] {
            assert_eq!(matched(raw), Err(PathRefusal::BadEscape), "{raw}");
        }
    }

    #[test]
    fn decoded_bytes_that_are_not_utf8_keep_the_segments_around_them() {
        assert_eq!(matched("/api/%ff/x").as_deref(), Ok("/api/\u{fffd}/x"));
    }
}
