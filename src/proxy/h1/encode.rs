//! Writing a request for a backend: the head, and the chunked framing of a
//! body whose length is not known up front. Pure: bytes into a buffer.
//!
//! The head comes from an `http::Request` that the proxy has already
//! checked and rewritten (hop-by-hop headers gone), and its header names
//! and values are valid by construction (`http` refuses CR, LF and NUL in
//! them), so nothing here can split a request.

use std::io::Write;

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;

use crate::proxy::headers::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REAL_IP, X_REQUEST_ID,
};

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

/// The fields the proxy sets on every request it sends on, whatever the
/// client sent under their names: `Host` (what the client asked for;
/// HTTP/2 carries it in `:authority`), `X-Forwarded-For`, `-Host` and
/// `-Proto`, `X-Real-IP` (the client's address, as ingress-nginx sets
/// it), `X-Request-Id` when given one (the pipeline always gives the
/// request's id, the client's or one it made), and `Connection:
/// upgrade` with the `Upgrade` offered when the request is an upgrade the
/// route allows. switchyard is the edge: the client's values are
/// replaced, not trusted. The client's `Forwarded` (RFC 7239) goes too,
/// with nothing in its place: a backend that prefers it to
/// `X-Forwarded-For` would otherwise take the client's word for its own
/// address.
///
/// They are written by [`request_head`] rather than set in the request's
/// header map: growing the map to make room for them and inserting each
/// (a hash and a probe apiece) cost about 2,000 instructions per request,
/// for fields that only ever go onto the wire.
#[derive(Debug, Clone, Copy)]
pub struct ProxyFields<'a> {
    pub host: &'a HeaderValue,
    pub forwarded_for: &'a HeaderValue,
    pub forwarded_proto: &'static str,
    /// The request's id, written once in place of every `X-Request-Id`
    /// the client sent (see [`request_id`](crate::proxy::headers::request_id)).
    pub request_id: &'a HeaderValue,
    /// What is offered to the backend when the request is an upgrade.
    pub upgrade: Option<UpgradeOffer<'a>>,
}

/// An upgrade as the backend is offered it. The client's own `Connection`
/// and `Upgrade` are hop-by-hop and gone before the head is written.
#[derive(Debug, Clone, Copy)]
pub struct UpgradeOffer<'a> {
    /// The protocols the client asked for that the route allows: sent with
    /// `Connection: upgrade`.
    pub protocols: &'a HeaderValue,
    /// The client's `HTTP2-Settings`, when `h2c` is among the protocols:
    /// a backend may only switch to h2c with exactly one, listed in
    /// `Connection` (RFC 7540 section 3.2), and as a field `Connection`
    /// lists it is otherwise removed with the client's hop-by-hop fields.
    pub http2_settings: Option<&'a HeaderValue>,
}

impl ProxyFields<'_> {
    /// Whether the client's field `name` is one of these, to be left out.
    fn replaces(&self, name: &HeaderName) -> bool {
        *name == header::HOST
            || *name == X_FORWARDED_FOR
            || *name == X_FORWARDED_HOST
            || *name == X_FORWARDED_PROTO
            || *name == X_REAL_IP
            || *name == header::FORWARDED
            || *name == X_REQUEST_ID
    }

    /// The fields that follow the client's (`Host` goes first, see
    /// [`request_head`]).
    fn write_forwarding(&self, out: &mut Vec<u8>) {
        field(out, b"x-forwarded-for", self.forwarded_for.as_bytes());
        // An HTTP/1.0 request may name no host: there is none to forward.
        if !self.host.is_empty() {
            field(out, b"x-forwarded-host", self.host.as_bytes());
        }
        field(out, b"x-forwarded-proto", self.forwarded_proto.as_bytes());
        field(out, b"x-real-ip", self.forwarded_for.as_bytes());
        field(out, b"x-request-id", self.request_id.as_bytes());
        if let Some(offer) = self.upgrade {
            match offer.http2_settings {
                None => field(out, b"connection", b"upgrade"),
                Some(settings) => {
                    field(out, b"connection", b"upgrade, http2-settings");
                    field(out, b"http2-settings", settings.as_bytes());
                }
            }
            field(out, b"upgrade", offer.protocols.as_bytes());
        }
    }
}

/// Appends `METHOD target HTTP/1.1`, `Host`, the client's fields, the
/// proxy's others ([`ProxyFields`]), the framing and the blank line.
pub fn request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &PathAndQuery,
    headers: &HeaderMap,
    framing: RequestFraming,
    proxy_fields: &ProxyFields<'_>,
) {
    // Most heads fit: one allocation for a new connection's first head
    // instead of one at each doubling, and none after.
    out.reserve(TYPICAL_HEAD_BYTES);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // First, as RFC 9110 (7.2) asks of a client: it is what routes the
    // request.
    field(out, b"host", proxy_fields.host.as_bytes());
    for (name, value) in headers {
        if !proxy_fields.replaces(name) {
            field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    proxy_fields.write_forwarding(out);
    if framing == RequestFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

pub(super) fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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
    for (name, value) in trailers {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
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

    /// What the proxy sets for a client at 10.1.2.3 asking for
    /// `example.com`, with the request id `id`.
    fn proxy_fields(id: &HeaderValue) -> ProxyFields<'_> {
        static HOST: HeaderValue = HeaderValue::from_static("example.com");
        static CLIENT: HeaderValue = HeaderValue::from_static("10.1.2.3");
        ProxyFields {
            host: &HOST,
            forwarded_for: &CLIENT,
            forwarded_proto: "http",
            request_id: id,
            upgrade: None,
        }
    }

    static ID: HeaderValue = HeaderValue::from_static("the-id");

    fn head(headers: &HeaderMap, framing: RequestFraming, fields: &ProxyFields<'_>) -> String {
        let mut out = Vec::new();
        let target = PathAndQuery::from_static("/a?b=c");
        request_head(&mut out, &Method::GET, &target, headers, framing, fields);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_head_is_the_request_line_the_fields_and_a_blank_line() {
        let mut fields = headers(&[("accept", "*/*")]);
        fields.append("accept", HeaderValue::from_static("text/html"));
        assert_eq!(
            head(&fields, RequestFraming::None, &proxy_fields(&ID)),
            "GET /a?b=c HTTP/1.1\r\nhost: example.com\r\n\
             accept: */*\r\naccept: text/html\r\nx-forwarded-for: 10.1.2.3\r\n\
             x-forwarded-host: example.com\r\nx-forwarded-proto: http\r\nx-real-ip: 10.1.2.3\r\n\
             x-request-id: the-id\r\n\r\n"
        );
    }

    #[test]
    fn the_proxy_fields_replace_what_the_client_sent_under_their_names() {
        let mut fields = headers(&[
            ("host", "elsewhere.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "elsewhere.example"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-request-id", ""),
            ("x-kept", "1"),
        ]);
        fields.append("x-forwarded-for", HeaderValue::from_static("7.7.7.7"));
        let made = HeaderValue::from_static("made-here");
        assert_eq!(
            head(&fields, RequestFraming::None, &proxy_fields(&made)),
            "GET /a?b=c HTTP/1.1\r\nhost: example.com\r\n\
             x-kept: 1\r\nx-forwarded-for: 10.1.2.3\r\n\
             x-forwarded-host: example.com\r\nx-forwarded-proto: http\r\nx-real-ip: 10.1.2.3\r\n\
             x-request-id: made-here\r\n\r\n"
        );
    }

    #[test]
    fn an_upgrade_offers_its_protocols_after_the_forwarding_fields() {
        let offered = HeaderValue::from_static("websocket");
        let fields = ProxyFields {
            upgrade: Some(UpgradeOffer {
                protocols: &offered,
                http2_settings: None,
            }),
            ..proxy_fields(&ID)
        };
        assert_eq!(
            head(
                &headers(&[("sec-websocket-version", "13")]),
                RequestFraming::None,
                &fields
            ),
            "GET /a?b=c HTTP/1.1\r\nhost: example.com\r\n\
             sec-websocket-version: 13\r\nx-forwarded-for: 10.1.2.3\r\n\
             x-forwarded-host: example.com\r\nx-forwarded-proto: http\r\nx-real-ip: 10.1.2.3\r\n\
             x-request-id: the-id\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        );
    }

    #[test]
    fn an_h2c_upgrade_carries_the_client_settings_listed_in_connection() {
        let offered = HeaderValue::from_static("h2c");
        let settings = HeaderValue::from_static("AAMAAABkAAQAAP__");
        let fields = ProxyFields {
            upgrade: Some(UpgradeOffer {
                protocols: &offered,
                http2_settings: Some(&settings),
            }),
            ..proxy_fields(&ID)
        };
        let head = head(&HeaderMap::new(), RequestFraming::None, &fields);
        assert!(
            head.ends_with(
                "connection: upgrade, http2-settings\r\n\
                 http2-settings: AAMAAABkAAQAAP__\r\nupgrade: h2c\r\n\r\n"
            ),
            "{head}"
        );
    }

    #[test]
    fn the_request_id_is_written_once_in_place_of_the_clients() {
        let mut fields = headers(&[("x-request-id", "abc")]);
        fields.append("x-request-id", HeaderValue::from_static("second"));
        let id = HeaderValue::from_static("abc");
        let head = head(&fields, RequestFraming::None, &proxy_fields(&id));
        assert_eq!(head.matches("x-request-id").count(), 1, "{head}");
        assert!(head.contains("x-request-id: abc\r\n"), "{head}");
    }

    #[test]
    fn a_body_of_unknown_length_is_sent_chunked() {
        let head = head(
            &HeaderMap::new(),
            RequestFraming::Chunked,
            &proxy_fields(&ID),
        );
        assert!(head.ends_with("transfer-encoding: chunked\r\n\r\n"));
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
