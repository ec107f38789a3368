//! All YAML parsing in one place: multi-document manifest files and the
//! optional config file. Errors carry a line number or a field path so a
//! user can find the mistake.

use serde::de::DeserializeOwned;
use serde_yaml::Value;

/// One YAML document of a multi-document file.
pub struct Document {
    /// 1-based position of the document in its file.
    pub index: usize,
    /// 1-based line on which the document starts.
    pub line: usize,
    pub value: Value,
}

/// A file that is not valid YAML from some point on.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    /// 1-based position of the document that failed.
    pub index: usize,
    pub line: Option<usize>,
    pub message: String,
}

/// Splits a file into its documents. Empty documents (a stray `---`) are
/// skipped. Parsing stops at the first syntax error, which is returned
/// alongside the documents that parsed before it.
pub fn documents(text: &str) -> (Vec<Document>, Option<SyntaxError>) {
    let mut docs = Vec::new();
    let error = for_each_document(text, |doc| docs.push(doc));
    (docs, error)
}

/// As [`documents`], handing each document to `f` as soon as it is
/// parsed, so that a large file never holds every parsed document at once.
/// Merge keys (`<<: *defaults`) are applied, as kubectl applies them; a
/// merge of something other than mappings is an error like a syntax error.
pub fn for_each_document(text: &str, mut f: impl FnMut(Document)) -> Option<SyntaxError> {
    let starts = document_start_lines(text);
    // The walk that looks for merge keys, only where one may be.
    let may_merge = text.contains("<<");
    for (position, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = position + 1;
        let line = starts.get(position).copied().unwrap_or(1);
        let mut value = match <Value as serde::Deserialize>::deserialize(de) {
            Ok(Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                return Some(SyntaxError {
                    index,
                    line: e.location().map(|l| l.line()),
                    message: without_location(&e.to_string()),
                });
            }
        };
        if may_merge && let Err(message) = apply_merges(&mut value) {
            return Some(SyntaxError {
                index,
                line: Some(line),
                message: format!("merge key <<: {message}"),
            });
        }
        f(Document { index, line, value });
    }
    None
}

/// Applies the `<<` merge keys in `value`, innermost first: an anchor's
/// copy may hold a merge of its own (`mid: &m {<<: *base, y: 2}`, then
/// `top: {<<: *m}`), which must be resolved before it is merged in.
/// (serde_yaml's `apply_merge` merges such a copy as it is, and its inner
/// `<<` becomes an ordinary key of the result.) A mapping's own keys win
/// over merged ones, and of several merged mappings the first wins, as
/// the merge key's specification has it. Recursion follows the document's
/// nesting, which the parser already bounds.
fn apply_merges(value: &mut Value) -> Result<(), String> {
    match value {
        Value::Mapping(mapping) => {
            for child in mapping.values_mut() {
                apply_merges(child)?;
            }
            let Some(merged) = mapping.remove("<<") else {
                return Ok(());
            };
            let sources = match merged {
                Value::Mapping(one) => vec![one],
                Value::Sequence(several) => several
                    .into_iter()
                    .map(|item| match item {
                        Value::Mapping(one) => Ok(one),
                        _ => Err("expected a mapping in the merged list".to_string()),
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err("expected a mapping or a list of mappings".into()),
            };
            for source in sources {
                for (key, field) in source {
                    mapping.entry(key).or_insert(field);
                }
            }
            Ok(())
        }
        Value::Sequence(items) => items.iter_mut().try_for_each(apply_merges),
        Value::Tagged(tagged) => apply_merges(&mut tagged.value),
        _ => Ok(()),
    }
}

/// Converts a parsed document into a typed value. The error names the
/// field path, e.g. `spec.rules[0].http.paths[1].backend.service.port.number`.
pub fn decode<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = without_location(&e.into_inner().to_string());
        if path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// As [`decode`], but the error names only the field, never its value:
/// for Secrets, whose values are key material that must not reach a log.
pub fn decode_without_values<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let what = if path == "." {
            "the object".to_string()
        } else {
            path
        };
        format!("{what}: wrong type or format (the value is not shown: Secrets hold key material)")
    })
}

/// Parses a whole single-document file into a typed value (the config file).
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let (mut docs, error) = documents(text);
    if let Some(e) = error {
        return Err(match e.line {
            Some(line) => format!("line {line}: {}", e.message),
            None => e.message,
        });
    }
    match docs.len() {
        0 => decode(Value::Mapping(Default::default())),
        1 => decode(docs.remove(0).value),
        n => Err(format!("expected one YAML document, found {n}")),
    }
}

/// Reads a string field of a mapping, such as `kind` or `apiVersion`.
pub fn str_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// serde_yaml appends " at line L column C" to messages; we report the
/// position ourselves, so keep the message short.
fn without_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// The 1-based line on which each document starts, in the order the
/// documents appear, empty ones included (they count in
/// [`Document::index`]). A document opened by `---` starts on the next
/// line, or on the marker's own line when content follows it there; only
/// the first document can start without a marker, on its first content
/// line (a `---` before any content does not open an extra document).
fn document_start_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    for (i, line) in yaml_lines(text).enumerate() {
        let number = i + 1;
        if let Some(rest) = line
            .strip_prefix("---")
            .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        {
            let rest = rest.trim_start_matches([' ', '\t']);
            let content_on_marker = !rest.is_empty() && !rest.starts_with('#');
            let start = if content_on_marker {
                number
            } else {
                number + 1
            };
            starts.push(start);
        } else if starts.is_empty() {
            let trimmed = line.trim_matches([' ', '\t']);
            let content = !trimmed.is_empty() && !trimmed.starts_with('#');
            // `%YAML` and `%TAG` directives come before a `---`.
            if content && !line.starts_with('%') {
                starts.push(number);
            }
        }
    }
    starts
}

/// The lines of a text as YAML parsers count them: `\n`, `\r\n`, a lone
/// `\r` and the Unicode breaks NEL, LS and PS each end a line.
fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        let Some(at) = text.find(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']) else {
            rest = None;
            return Some(text);
        };
        let after = &text[at..];
        let skip = if after.starts_with("\r\n") {
            2
        } else {
            after.chars().next().map_or(1, char::len_utf8)
        };
        rest = Some(&after[skip..]);
        Some(&text[..at])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keys_are_applied_and_the_mappings_own_keys_win() {
        let text = "defaults: &d {port: 80, name: base}\n\
                    a:\n  <<: *d\n  name: own\n\
                    ---\nb: {<<: [{x: 1}, {x: 2, y: 2}]}\n";
        let (docs, error) = documents(text);
        assert!(error.is_none(), "{error:?}");
        let a = &docs[0].value["a"];
        assert_eq!(a["port"], 80);
        assert_eq!(a["name"], "own");
        assert!(a.get("<<").is_none());
        let b = &docs[1].value["b"];
        assert_eq!((b["x"].as_u64(), b["y"].as_u64()), (Some(1), Some(2)));
    }

    #[test]
    fn a_merged_mapping_that_merges_another_brings_both() {
        let text = "base: &b {x: 1}\nmid: &m {<<: *b, y: 2}\ntop: {<<: *m, z: 3}\n";
        let (docs, error) = documents(text);
        assert!(error.is_none(), "{error:?}");
        let top = &docs[0].value["top"];
        let fields: Vec<_> = ["x", "y", "z"].map(|k| top[k].as_u64()).into();
        assert_eq!(fields, [Some(1), Some(2), Some(3)]);
        assert_eq!(top.as_mapping().unwrap().len(), 3, "{top:?}");
    }

    #[test]
    fn a_merge_of_a_scalar_is_an_error_naming_its_document() {
        let (docs, error) = documents("a: 1\n---\nb: {<<: 5}\n");
        assert_eq!(docs.len(), 1);
        let error = error.expect("an error");
        assert_eq!(error.index, 2);
        assert!(
            error
                .message
                .starts_with("merge key <<: expected a mapping"),
            "{}",
            error.message
        );
    }

    #[test]
    fn documents_report_their_start_lines() {
        let text = "# comment\n---\na: 1\n---\n\nb: 2\nc: 3\n";
        let (docs, error) = documents(text);
        assert!(error.is_none());
        let lines: Vec<_> = docs.iter().map(|d| (d.index, d.line)).collect();
        assert_eq!(lines, vec![(1, 3), (2, 5)]);
    }

    // Found by fuzzing (fuzz/fuzz_targets/manifest_loader.rs): content on
    // the `---` line was not seen, so document 2 had no start line of its
    // own and was reported on line 1.
    #[test]
    fn content_on_the_marker_line_starts_its_document_there() {
        let (docs, error) = documents("base: &metadata\n--- poue\n");
        assert!(error.is_none());
        let lines: Vec<_> = docs.iter().map(|d| (d.index, d.line)).collect();
        assert_eq!(lines, vec![(1, 1), (2, 2)]);
        let (docs, _) = documents("--- {a: 1}\n--- # b\nb: 2\n");
        let lines: Vec<_> = docs.iter().map(|d| (d.index, d.line)).collect();
        assert_eq!(lines, vec![(1, 1), (2, 3)]);
    }

    #[test]
    fn empty_documents_do_not_shift_the_lines_of_later_ones() {
        let text = "a: 1\n---\n# commented out\n---\n---\nb: 2\n";
        let (docs, error) = documents(text);
        assert!(error.is_none());
        let lines: Vec<_> = docs.iter().map(|d| (d.index, d.line)).collect();
        assert_eq!(lines, vec![(1, 1), (4, 6)]);
    }

    #[test]
    fn lines_are_counted_as_yaml_counts_them() {
        // A lone CR, CRLF, NEL and LS each end a line; a directive does not
        // open a document.
        let text = "%YAML 1.1\n---\r\na: 1\r---\u{85}b: 2\u{2028}---\t{c: 3}\n";
        let (docs, error) = documents(text);
        assert!(error.is_none(), "{error:?}");
        let lines: Vec<_> = docs.iter().map(|d| (d.index, d.line)).collect();
        assert_eq!(lines, vec![(1, 3), (2, 5), (3, 6)]);
    }

    #[test]
    fn syntax_error_names_document_and_line() {
        let text = "a: 1\n---\nb: [unclosed\nc: 2\n";
        let (docs, error) = documents(text);
        assert_eq!(docs.len(), 1);
        let error = error.expect("syntax error");
        assert_eq!(error.index, 2);
        assert!(error.line.is_some_and(|l| l >= 3), "{error:?}");
    }

    #[test]
    fn decode_error_names_the_field_path() {
        #[derive(serde::Deserialize, Debug)]
        struct Inner {
            #[allow(dead_code)]
            port: u16,
        }
        #[derive(serde::Deserialize, Debug)]
        struct Outer {
            #[allow(dead_code)]
            items: Vec<Inner>,
        }
        let (mut docs, _) = documents("items:\n  - port: 80\n  - port: eighty\n");
        let error = decode::<Outer>(docs.remove(0).value).unwrap_err();
        assert!(error.starts_with("items[1].port:"), "{error}");
    }
}
