//! Ingress path matching as the Kubernetes specification defines it.
//!
//! - `Exact` matches the request path exactly, case-sensitively.
//! - `Prefix` matches element by element on `/`: `/foo` matches `/foo`,
//!   `/foo/` and `/foo/bar`, never `/foobar`. A trailing slash on the rule
//!   is ignored, so `/foo/` and `/foo` are the same rule, and `/` matches
//!   every path. (Both sides reach this module normalised, runs of
//!   slashes merged among the rest: see `request_path`, and translate's
//!   `rule_path_for_matching`.)
//! - `ImplementationSpecific` is treated as `Prefix`.
//!
//! Rule length is compared with the trailing slash removed; the longest
//! match wins and, on a tie, Exact beats Prefix.

use serde::Serialize;

/// The `pathType` of an Ingress path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PathType {
    Exact,
    Prefix,
    ImplementationSpecific,
}

impl PathType {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "Exact" => Some(Self::Exact),
            "Prefix" => Some(Self::Prefix),
            "ImplementationSpecific" => Some(Self::ImplementationSpecific),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "Exact",
            Self::Prefix => "Prefix",
            Self::ImplementationSpecific => "ImplementationSpecific",
        }
    }

    /// How the path is matched: only Exact is exact.
    pub fn is_exact(self) -> bool {
        self == Self::Exact
    }
}

/// The key two paths of this type share exactly when they are the same
/// rule: Exact paths as written, prefix paths without trailing slashes.
pub fn rule_key(path: &str, path_type: PathType) -> &str {
    if path_type.is_exact() {
        path
    } else {
        path.trim_end_matches('/')
    }
}

/// Every prefix-rule key that matches `request_path`, longest first.
///
/// For `/a/b/` these are `/a/b`, `/a` and `` (the key of `/`). Looking each
/// up in a map of rule keys finds the longest matching prefix rule without
/// scanning the rules.
pub fn prefix_candidates(request_path: &str) -> impl Iterator<Item = &str> {
    let trimmed = request_path.trim_end_matches('/');
    let mut next = Some(trimmed.len());
    std::iter::from_fn(move || {
        let end = next?;
        let candidate = &trimmed[..end];
        next = trimmed[..end].rfind('/');
        Some(candidate)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_walk_path_elements_from_longest() {
        let all: Vec<_> = prefix_candidates("/a/b/").collect();
        assert_eq!(all, vec!["/a/b", "/a", ""]);
        let all: Vec<_> = prefix_candidates("/").collect();
        assert_eq!(all, vec![""]);
        let all: Vec<_> = prefix_candidates("/foo//bar").collect();
        assert_eq!(all, vec!["/foo//bar", "/foo/", "/foo", ""]);
    }

    #[test]
    fn rule_keys_ignore_trailing_slashes_for_prefixes_only() {
        assert_eq!(rule_key("/foo/", PathType::Prefix), "/foo");
        assert_eq!(rule_key("/", PathType::ImplementationSpecific), "");
        assert_eq!(rule_key("/foo/", PathType::Exact), "/foo/");
    }
}
