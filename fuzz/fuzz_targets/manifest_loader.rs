//! Any bytes, read as a manifest file: `manifest::parse` must never panic,
//! whatever the YAML (broken syntax, deep nesting, anchors, tags, wrong
//! types, `kind: List`), and every object it returns must be usable: it is
//! then translated, compiled and looked up as the file source would.

#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use switchyard::routes::{RouteTable, TranslateOptions, translate};
use switchyard::snapshot::ClusterSnapshot;
use switchyard::source::manifest::{self, Object};

fuzz_target!(|data: &[u8]| {
    // The file source reads files with read_to_string: non-UTF-8 never
    // reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.yaml");
    let parsed = manifest::parse(text, file);

    for error in &parsed.errors {
        assert_eq!(error.location.file, file);
        assert!(error.location.document.is_some_and(|d| d >= 1), "{error}");
        let _ = error.to_string();
    }
    for skipped in &parsed.skipped {
        assert!(skipped.location.document.is_some_and(|d| d >= 1));
    }
    let mut snapshot = ClusterSnapshot::default();
    for (location, object) in &parsed.objects {
        assert!(location.document.is_some_and(|d| d >= 1));
        let meta = object.metadata();
        assert!(meta.name.as_deref().is_some_and(|n| !n.is_empty()));
        match object {
            Object::IngressClass(_) => assert!(meta.namespace.is_none()),
            _ => assert!(meta.namespace.as_deref().is_some_and(|n| !n.is_empty())),
        }
        let _ = object.describe();
        object.clone().add_to(&mut snapshot);
    }
    // parse_snapshot is parse plus "no errors".
    match manifest::parse_snapshot(text, file) {
        Ok(s) => assert!(parsed.errors.is_empty() && s.summary() == snapshot.summary()),
        Err(errors) => assert_eq!(errors, parsed.errors),
    }
    check_document_lines(text, &parsed);
    let _ = serde_json::to_string(&parsed.errors).unwrap();
    let _ = serde_json::to_string(&parsed.skipped).unwrap();

    let translation = translate(&snapshot, &TranslateOptions::default());
    for warning in &translation.warnings {
        let _ = warning.to_string();
    }
    let _ = translation.spec.to_text();
    let table = RouteTable::compile(translation.spec);
    for (host, path) in [
        ("", "/"),
        ("echo.localhost", "/ws"),
        ("a.example.com:80", "/a/b/"),
    ] {
        let _ = table.lookup(host, path);
    }
});

/// Every problem and object names the document it is in and the line on
/// which that document starts. Those lines must be consistent: one line
/// per document, later documents further down the file, and inside it.
fn check_document_lines(text: &str, parsed: &manifest::ParsedFile) {
    let mut lines: BTreeMap<usize, usize> = BTreeMap::new();
    let locations = parsed
        .objects
        .iter()
        .map(|(l, _)| l)
        .chain(parsed.skipped.iter().map(|s| &s.location))
        .chain(
            parsed
                .errors
                .iter()
                // A syntax error's line is where the error is.
                .filter(|e| !e.message.starts_with("not valid YAML"))
                .map(|e| &e.location),
        );
    for location in locations {
        let (Some(document), Some(line)) = (location.document, location.line) else {
            panic!("{location} has no document or line");
        };
        let first = *lines.entry(document).or_insert(line);
        assert_eq!(
            first, line,
            "document {document} is said to start on two lines"
        );
    }
    // At most this many lines, however YAML counts them (CR, LF, CRLF,
    // NEL, LS, PS; a CRLF counted twice here).
    let line_count = 1 + text
        .chars()
        .filter(|c| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        .count();
    let mut previous: Option<(usize, usize)> = None;
    for (&document, &line) in &lines {
        assert!(
            (1..=line_count + 1).contains(&line),
            "document {document} starts on line {line} of {line_count}"
        );
        if let Some((d, l)) = previous {
            assert!(
                l < line,
                "document {d} starts on line {l}, document {document} after it on line {line}"
            );
        }
        previous = Some((document, line));
    }
}
