//! Typed per-Ingress policy parsed from `switchyard.dev/*` annotations.
//! The proxy only ever sees the typed result, never an annotation string;
//! a bad value is a warning and the default applies.
//!
//! ingress-nginx's `nginx.ingress.kubernetes.io/*` annotations are not
//! applied yet. Each Ingress that carries some gets a warning naming them,
//! since some of them restrict access (`whitelist-source-range`, `auth-*`)
//! and their silent absence would open what the Ingress meant to close.
//! A canary Ingress is not served at all (see [`IngressPolicy::canary`]).

use std::collections::BTreeMap;

use super::warning::WarningReason;

pub const PREFIX: &str = "switchyard.dev/";
/// ingress-nginx's annotations.
pub const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";
/// Marks an ingress-nginx canary Ingress.
pub const NGINX_CANARY: &str = "nginx.ingress.kubernetes.io/canary";
/// Comma-separated upgrade protocols a route may tunnel.
pub const UPGRADE_PROTOCOLS: &str = "switchyard.dev/upgrade-protocols";

/// Upgrade protocols allowed when the annotation is absent.
pub const DEFAULT_UPGRADES: &[&str] = &["websocket"];

/// The policy an Ingress's annotations ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressPolicy {
    /// Lower-case upgrade tokens; empty means no upgrades at all.
    pub upgrades: Vec<String>,
    /// An ingress-nginx canary (`nginx.ingress.kubernetes.io/canary:
    /// "true"`). ingress-nginx sends it a share of the traffic of the
    /// Ingress it shadows and never serves it alone; served here as an
    /// ordinary Ingress, it could take that Ingress's whole traffic (when
    /// older) or serve its paths alone, so it is not served.
    pub canary: bool,
}

impl Default for IngressPolicy {
    fn default() -> Self {
        Self {
            upgrades: DEFAULT_UPGRADES.iter().map(|s| s.to_string()).collect(),
            canary: false,
        }
    }
}

/// A problem with one annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationProblem {
    pub reason: WarningReason,
    pub message: String,
}

/// Reads the policy from an Ingress's annotations. Unknown `switchyard.dev/`
/// keys are reported (a typo should not silently do nothing).
pub fn parse(
    annotations: Option<&BTreeMap<String, String>>,
) -> (IngressPolicy, Vec<AnnotationProblem>) {
    let mut policy = IngressPolicy::default();
    let mut problems = Vec::new();
    let Some(annotations) = annotations else {
        return (policy, problems);
    };
    let nginx: Vec<&str> = annotations
        .range(NGINX_PREFIX.to_string()..)
        .map(|(key, _)| key.as_str())
        .take_while(|key| key.starts_with(NGINX_PREFIX))
        .collect();
    if !nginx.is_empty() {
        problems.push(AnnotationProblem {
            reason: WarningReason::IgnoredAnnotation,
            message: format!(
                "metadata.annotations: ingress-nginx annotations are not applied; this Ingress is served as if it had none of {nginx:?}"
            ),
        });
    }
    // ingress-nginx reads it as Go's strconv.ParseBool does.
    policy.canary = annotations
        .get(NGINX_CANARY)
        .is_some_and(|v| matches!(v.trim(), "1" | "t" | "T" | "true" | "TRUE" | "True"));
    for (key, value) in annotations.range(PREFIX.to_string()..) {
        if !key.starts_with(PREFIX) {
            break;
        }
        let result = match key.as_str() {
            UPGRADE_PROTOCOLS => parse_upgrades(value).map(|u| policy.upgrades = u),
            _ => Err(format!(
                "unknown annotation {key:?}; known: {UPGRADE_PROTOCOLS}"
            )),
        };
        if let Err(message) = result {
            problems.push(AnnotationProblem {
                reason: WarningReason::InvalidAnnotation,
                message: format!("metadata.annotations[{key:?}]: {message}"),
            });
        }
    }
    (policy, problems)
}

/// `websocket, h2c` → `["h2c", "websocket"]`; `""` or `none` → no upgrades.
fn parse_upgrades(value: &str) -> Result<Vec<String>, String> {
    let value = value.trim();
    if value.is_empty() || value.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut tokens = Vec::new();
    for token in value.split(',').map(str::trim) {
        let valid = !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
        if !valid {
            return Err(format!(
                "{value:?} is not a comma-separated list of protocol tokens (e.g. \"websocket, h2c\"); using the default \"websocket\""
            ));
        }
        tokens.push(token.to_ascii_lowercase());
    }
    tokens.sort();
    tokens.dedup();
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn websocket_is_the_default_upgrade() {
        let (policy, problems) = parse(None);
        assert_eq!(policy.upgrades, vec!["websocket"]);
        assert!(problems.is_empty());
    }

    #[test]
    fn upgrade_protocols_are_lower_cased_and_sorted() {
        let a = annotations(&[(UPGRADE_PROTOCOLS, "WebSocket, h2c")]);
        let (policy, problems) = parse(Some(&a));
        assert_eq!(policy.upgrades, vec!["h2c", "websocket"]);
        assert!(problems.is_empty());
        let a = annotations(&[(UPGRADE_PROTOCOLS, "none")]);
        assert!(parse(Some(&a)).0.upgrades.is_empty());
    }

    #[test]
    fn ingress_nginx_annotations_are_named_in_one_warning() {
        let a = annotations(&[
            (
                "nginx.ingress.kubernetes.io/whitelist-source-range",
                "10.0.0.0/8",
            ),
            ("nginx.ingress.kubernetes.io/rewrite-target", "/"),
            ("nginx.org/ignored", "x"),
        ]);
        let (policy, problems) = parse(Some(&a));
        assert_eq!(policy, IngressPolicy::default());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].reason, WarningReason::IgnoredAnnotation);
        let message = &problems[0].message;
        assert!(
            message.contains("\"nginx.ingress.kubernetes.io/rewrite-target\"")
                && message.contains("\"nginx.ingress.kubernetes.io/whitelist-source-range\"")
                && !message.contains("nginx.org"),
            "{message}"
        );
    }

    #[test]
    fn a_canary_is_marked_as_ingress_nginx_reads_the_flag() {
        for (value, canary) in [
            ("true", true),
            ("True", true),
            ("1", true),
            ("false", false),
            ("yes", false),
        ] {
            let a = annotations(&[(NGINX_CANARY, value)]);
            assert_eq!(parse(Some(&a)).0.canary, canary, "{value:?}");
        }
        assert!(!parse(None).0.canary);
    }

    #[test]
    fn bad_values_and_unknown_keys_warn_and_keep_the_default() {
        let a = annotations(&[
            (UPGRADE_PROTOCOLS, "web socket"),
            ("switchyard.dev/upgrade-protocol", "h2c"),
            ("other.io/ignored", "x"),
        ]);
        let (policy, problems) = parse(Some(&a));
        assert_eq!(policy, IngressPolicy::default());
        assert_eq!(problems.len(), 2);
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("\"web socket\""))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("unknown annotation"))
        );
    }
}
