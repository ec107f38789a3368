//! Arbitrary annotation maps (see `annotation_map` for the input format)
//! → `annotations::parse`. Never panics, and the
//! policy it returns is always well formed: upgrade tokens lower-case,
//! sorted, unique and valid HTTP tokens; a warning for each bad
//! `switchyard.dev/` key and for nothing else; the default when the
//! upgrade annotation is absent or bad.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use switchyard::routes::WarningReason;
use switchyard::routes::annotations::{self, IngressPolicy, PREFIX, UPGRADE_PROTOCOLS};

/// The input is text, one annotation a line, `key=value` (split at the
/// first `=`), so the seed corpus is readable and every map is reachable:
/// `\n`, `\t`, `\=` and `\\` are escapes, and a key starting with `@/`
/// stands for `switchyard.dev/` (so the fuzzer reaches our keys quickly).
fn annotation_map(text: &str) -> BTreeMap<String, String> {
    let unescape = |s: &str| {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        }
        out
    };
    let mut map = BTreeMap::new();
    for line in text.split('\n') {
        // The first `=` not escaped by a backslash.
        let mut split = None;
        let mut escaped = false;
        for (i, c) in line.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '=' if !escaped => {
                    split = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let (key, value) = match split {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, ""),
        };
        let mut key = unescape(key);
        if let Some(rest) = key.strip_prefix("@/") {
            key = format!("{PREFIX}{rest}");
        }
        map.insert(key, unescape(value));
    }
    map
}

fn is_token(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b))
}

/// The documented reading of the annotation: `none` or empty for no
/// upgrades, else comma-separated tokens, lower-cased; `None` when invalid.
fn expected_tokens(value: &str) -> Option<Vec<String>> {
    let value = value.trim();
    if value.is_empty() || value.eq_ignore_ascii_case("none") {
        return Some(Vec::new());
    }
    let mut tokens = Vec::new();
    for token in value.split(',') {
        let token = token.trim();
        if !is_token(token) {
            return None;
        }
        tokens.push(token.to_ascii_lowercase());
    }
    tokens.sort();
    tokens.dedup();
    Some(tokens)
}

fuzz_target!(|data: &[u8]| {
    let (policy, problems) = annotations::parse(None);
    assert_eq!(policy, IngressPolicy::default());
    assert!(problems.is_empty());

    let text = String::from_utf8_lossy(data);
    let map = annotation_map(&text);
    let (policy, problems) = annotations::parse(Some(&map));

    // The upgrade list is always usable by the proxy as it is.
    let mut normalised = policy.upgrades.clone();
    normalised.sort();
    normalised.dedup();
    assert_eq!(normalised, policy.upgrades, "sorted and unique");
    for token in &policy.upgrades {
        assert!(is_token(token), "{token:?}");
        assert_eq!(*token, token.to_ascii_lowercase());
    }

    // One problem per unknown switchyard.dev/ key, plus one for a bad
    // upgrade value; none for anything else.
    let unknown = map
        .keys()
        .filter(|k| k.starts_with(PREFIX) && k.as_str() != UPGRADE_PROTOCOLS)
        .count();
    let upgrade_value = map.get(UPGRADE_PROTOCOLS);
    let expected_upgrades = upgrade_value.and_then(|v| expected_tokens(v));
    let bad_upgrade = upgrade_value.is_some() && expected_upgrades.is_none();
    assert_eq!(
        problems.len(),
        unknown + usize::from(bad_upgrade),
        "{problems:?}"
    );
    for p in &problems {
        assert_eq!(p.reason, WarningReason::InvalidAnnotation);
        assert!(
            p.message
                .starts_with("metadata.annotations[\"switchyard.dev/"),
            "{}",
            p.message
        );
    }
    match expected_upgrades {
        Some(tokens) => assert_eq!(policy.upgrades, tokens),
        None => assert_eq!(policy, IngressPolicy::default()),
    }
});
