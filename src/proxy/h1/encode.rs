//! Writing a request for a backend: the head, and the chunked framing of a
//! body whose length is not known up front. Pure: bytes into a buffer.
//!
//! The head comes from an `http::Request` that the proxy has already
//! checked and rewritten (hop-by-hop headers gone, `Host` set), and its
//! header names and values are valid by construction (`http` refuses CR,
//! LF and NUL in them), so nothing here can split a request.

use std::io::Write;

use http::Method;
use http::header::{self, HeaderMap};
use http::uri::PathAndQuery;

/// Room made up front for a request head.
const TYPICAL_HEAD_BYTES: usize = 1024;

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body, and no header says otherwise.
    None,
    /// The `Content-Length` the request carries.
    Length(u64),
    /// A body of unknown length: `Transfer-Encoding: chunked` is added.
    Chunked,
}

impl RequestFraming {
    /// The framing of a request with these headers; `bodiless` when its
    /// body is known to be empty. `None` for a `Content-Length` that is
    /// not a single number (hyper's server refuses those before here; an
    /// HTTP/2 client's headers are only checked by this).
    pub fn of(headers: &HeaderMap, bodiless: bool) -> Option<Self> {
        let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
        match (lengths.next(), lengths.next()) {
            (Some(value), None) => {
                let digits = value.to_str().ok()?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                digits.parse().ok().map(Self::Length)
            }
            (Some(_), Some(_)) => None,
            (None, _) if bodiless => Some(Self::None),
            (None, _) => Some(Self::Chunked),
        }
    }
}

/// Appends `METHOD target HTTP/1.1`, the headers and the blank line.
pub fn request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &PathAndQuery,
    headers: &HeaderMap,
    framing: RequestFraming,
) {
    // Most heads fit: one allocation for a new connection's first head
    // instead of one at each doubling, and none after.
    out.reserve(TYPICAL_HEAD_BYTES);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    fields(out, headers);
    if framing == RequestFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// `name: value` lines, one per value.
fn fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The line before a chunk of `len` bytes (`len` in hex, CRLF).
pub fn chunk_size_line(len: usize) -> ChunkSizeLine {
    let mut line = ChunkSizeLine {
        bytes: [0; 18],
        len: 0,
    };
    let mut cursor = &mut line.bytes[..];
    write!(cursor, "{len:x}\r\n").expect("18 bytes hold a usize in hex and CRLF");
    line.len = 18 - cursor.len();
    line
}

/// See [`chunk_size_line`]: no allocation per chunk.
pub struct ChunkSizeLine {
    bytes: [u8; 18],
    len: usize,
}

impl AsRef<[u8]> for ChunkSizeLine {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The last chunk and the trailer section (`trailers` may be empty).
pub fn last_chunk(out: &mut Vec<u8>, trailers: &HeaderMap) {
    out.extend_from_slice(b"0\r\n");
    fields(out, trailers);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn a_head_is_the_request_line_the_fields_and_a_blank_line() {
        let mut out = Vec::new();
        let mut fields = headers(&[("host", "example.com"), ("accept", "*/*")]);
        fields.append("accept", HeaderValue::from_static("text/html"));
        request_head(
            &mut out,
            &Method::GET,
            &PathAndQuery::from_static("/a?b=c"),
            &fields,
            RequestFraming::None,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a?b=c HTTP/1.1\r\nhost: example.com\r\naccept: */*\r\naccept: text/html\r\n\r\n"
        );
    }

    #[test]
    fn a_body_of_unknown_length_is_sent_chunked() {
        let mut out = Vec::new();
        request_head(
            &mut out,
            &Method::POST,
            &PathAndQuery::from_static("/"),
            &HeaderMap::new(),
            RequestFraming::Chunked,
        );
        assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
        assert_eq!(chunk_size_line(0x1f40).as_ref(), b"1f40\r\n");
        assert_eq!(chunk_size_line(usize::MAX).as_ref().len(), 18);
        let mut end = Vec::new();
        last_chunk(&mut end, &headers(&[("x-sum", "1")]));
        assert_eq!(end, b"0\r\nx-sum: 1\r\n\r\n");
    }

    #[test]
    fn framing_comes_from_content_length_or_the_body() {
        let of = |pairs: &[(&str, &str)], bodiless| RequestFraming::of(&headers(pairs), bodiless);
        assert_eq!(
            of(&[("content-length", "12")], false),
            Some(RequestFraming::Length(12))
        );
        assert_eq!(
            of(&[("content-length", "0")], true),
            Some(RequestFraming::Length(0))
        );
        assert_eq!(of(&[], true), Some(RequestFraming::None));
        assert_eq!(of(&[], false), Some(RequestFraming::Chunked));
        assert_eq!(of(&[("content-length", "1, 1")], false), None);
        assert_eq!(of(&[("content-length", "-1")], false), None);
        let mut twice = headers(&[("content-length", "1")]);
        twice.append("content-length", HeaderValue::from_static("1"));
        assert_eq!(RequestFraming::of(&twice, false), None);
    }
}
