//! Typed per-Ingress policy parsed from `switchyard.dev/*` annotations.
//! The proxy only ever sees the typed result, never an annotation string;
//! a bad value is a warning and the default applies.

use std::collections::BTreeMap;

use super::warning::WarningReason;

pub const PREFIX: &str = "switchyard.dev/";
/// Comma-separated upgrade protocols a route may tunnel.
pub const UPGRADE_PROTOCOLS: &str = "switchyard.dev/upgrade-protocols";

/// Upgrade protocols allowed when the annotation is absent.
pub const DEFAULT_UPGRADES: &[&str] = &["websocket"];

/// The policy an Ingress's annotations ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressPolicy {
    /// Lower-case upgrade tokens; empty means no upgrades at all.
    pub upgrades: Vec<String>,
}

impl Default for IngressPolicy {
    fn default() -> Self {
        Self {
            upgrades: DEFAULT_UPGRADES.iter().map(|s| s.to_string()).collect(),
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
