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
pub fn for_each_document(text: &str, mut f: impl FnMut(Document)) -> Option<SyntaxError> {
    let starts = document_start_lines(text);
    for (position, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = position + 1;
        let line = starts.get(position).copied().unwrap_or(1);
        match <Value as serde::Deserialize>::deserialize(de) {
            Ok(Value::Null) => {}
            Ok(value) => f(Document { index, line, value }),
            Err(e) => {
                return Some(SyntaxError {
                    index,
                    line: e.location().map(|l| l.line()),
                    message: without_location(&e.to_string()),
                });
            }
        }
    }
    None
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
/// documents appear. A `---` marker before any content does not open an
/// extra document.
fn document_start_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut current_start = Some(1);
    let mut seen_content = false;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line == "---" || line.starts_with("--- ") {
            if seen_content {
                starts.extend(current_start);
            }
            current_start = Some(number + 1);
            seen_content = false;
        } else if !line.trim().is_empty() && !line.trim_start().starts_with('#') && !seen_content {
            seen_content = true;
            if current_start.is_none() {
                current_start = Some(number);
            }
        }
    }
    if seen_content {
        starts.extend(current_start);
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_report_their_start_lines() {
        let text = "# comment\n---\na: 1\n---\n\nb: 2\nc: 3\n";
        let (docs, error) = documents(text);
        assert!(error.is_none());
        let lines: Vec<_> = docs.iter().map(|d| (d.index, d.line)).collect();
        assert_eq!(lines, vec![(1, 3), (2, 5)]);
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
