//! A client's request head, parsed into the pipeline's request when it is
//! one [`super::server`] serves itself: HTTP/1.1, no `Transfer-Encoding`,
//! at most one `Content-Length` that is a plain number, no `Expect`, no
//! `TE`. That is almost every request a page, an API client or a
//! WebSocket client sends, and it leaves no framing in doubt: the body is
//! that many bytes, or none without the field (RFC 9112 6.3).
//!
//! Anything else, malformed heads included, is [`Head::NotOurs`]: hyper is
//! given the connection from that request on and answers it as it always
//! has (400, 414, 431, chunked bodies, merged or conflicting lengths,
//! `100 Continue`).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

use crate::proxy::ClientRequest;

/// Header fields a head may have, as hyper allows (more is a 431 there).
pub const MAX_HEADERS: usize = 100;

/// hyper's limit on a request target (longer is a 414 there).
const MAX_TARGET_BYTES: usize = u16::MAX as usize - 1;

pub enum Head {
    /// A whole head, taken off the buffer.
    Request(Served),
    /// The head is not whole yet.
    Partial,
    /// Not a request served here; the buffer is left as it was.
    NotOurs,
}

/// A request served here, with what the server decides on beyond it.
pub struct Served {
    /// Boxed: the request is moved from the parser into the connection's
    /// loop and on into the pipeline, and each move of the request itself
    /// (280 bytes) is a copy, which together cost more than the box.
    pub request: Box<ClientRequest>,
    /// The client asked for the connection to close after it.
    pub close: bool,
    /// It asks for an upgrade (an `Upgrade` field): the pipeline decides
    /// whether there is one.
    pub upgrade: bool,
    /// The length of its body, 0 for none.
    pub body: u64,
}

/// Where a field's name and value are in the head.
#[derive(Clone, Copy)]
struct FieldAt {
    name: (usize, usize),
    value: (usize, usize),
}

/// Parses the head at the start of `buf`, which may be at most
/// `max_head_bytes` long.
pub fn parse(buf: &mut BytesMut, max_head_bytes: usize) -> Head {
    // Uninitialised, as httparse's own array: a head's fields are written
    // in, and zeroing room for a hundred per request cost more than
    // parsing the head.
    let mut fields = [const { MaybeUninit::<FieldAt>::uninit() }; MAX_HEADERS];
    let (len, count, method, target, close, upgrade, body) = {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let len = match request.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() < max_head_bytes => return Head::Partial,
            Ok(httparse::Status::Partial) | Err(_) => return Head::NotOurs,
        };
        if len > max_head_bytes || request.version != Some(1) {
            return Head::NotOurs;
        }
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            (start, start + s.len())
        };
        let (mut close, mut upgrade, mut body) = (false, false, None);
        for (field, header) in fields.iter_mut().zip(request.headers.iter()) {
            match Field::of(header.name.as_bytes()) {
                Field::HandedOff => return Head::NotOurs,
                Field::Connection => close |= names_close(header.value),
                Field::Upgrade => upgrade = true,
                Field::ContentLength => match (body, plain_number(header.value)) {
                    (None, Some(length)) => body = Some(length),
                    // A second one, even an equal one, or not a number.
                    _ => return Head::NotOurs,
                },
                Field::Other => {}
            }
            field.write(FieldAt {
                name: at(header.name.as_bytes()),
                value: at(header.value),
            });
        }
        let Ok(method) = Method::from_bytes(request.method.unwrap_or_default().as_bytes()) else {
            return Head::NotOurs;
        };
        let target = request.path.unwrap_or_default();
        if target.len() >= MAX_TARGET_BYTES {
            return Head::NotOurs;
        }
        (
            len,
            request.headers.len(),
            method,
            at(target.as_bytes()),
            close,
            upgrade,
            body.unwrap_or(0),
        )
    };
    // SAFETY: the loop above wrote the first `count` (the number of
    // fields httparse found, at most `MAX_HEADERS`) before anything
    // returned the head as complete.
    let fields = unsafe { std::slice::from_raw_parts(fields.as_ptr().cast::<FieldAt>(), count) };
    let head = buf.split_to(len).freeze();
    match build(&head, fields, method, target) {
        Some(request) => Head::Request(Served {
            request,
            close,
            upgrade,
            body,
        }),
        None => {
            // Rare (a target or name httparse allows and `http` does
            // not): the bytes go back for hyper, which answers 400.
            let mut whole = BytesMut::with_capacity(head.len() + buf.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(buf);
            *buf = whole;
            Head::NotOurs
        }
    }
}

/// The request, its target and values sharing the head's bytes.
fn build(
    head: &Bytes,
    fields: &[FieldAt],
    method: Method,
    target: (usize, usize),
) -> Option<Box<ClientRequest>> {
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.1)).ok()?;
    let mut headers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(&head[field.name.0..field.name.1]).ok()?;
        let value = head.slice(field.value.0..field.value.1);
        // SAFETY: httparse accepts in a value exactly the bytes a
        // `HeaderValue` may hold (HTAB, and 0x20 up except DEL), as
        // hyper relies on too.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(value) };
        headers.append(name, value);
    }
    let mut request = Box::new(Request::new(None));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

/// What a field means for serving the request here.
enum Field {
    /// It frames a body in chunks, or asks for `100 Continue` or
    /// trailers: hyper's.
    HandedOff,
    Connection,
    Upgrade,
    ContentLength,
    Other,
}

impl Field {
    fn of(name: &[u8]) -> Self {
        const HANDED_OFF: [&[u8]; 3] = [b"transfer-encoding", b"expect", b"te"];
        if name.eq_ignore_ascii_case(b"connection") {
            Self::Connection
        } else if name.eq_ignore_ascii_case(b"content-length") {
            Self::ContentLength
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            Self::Upgrade
        } else if HANDED_OFF.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            Self::HandedOff
        } else {
            Self::Other
        }
    }
}

/// A `Content-Length` value that is digits alone (RFC 9110 8.6), few
/// enough to be a `u64`: anything else (a list, a sign, spaces inside,
/// an empty value) is left to hyper.
fn plain_number(value: &[u8]) -> Option<u64> {
    // 18 digits cannot overflow a u64, so the sum below needs no checks.
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether a `Connection` value lists `close`.
fn names_close(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|option| option.trim_ascii().eq_ignore_ascii_case(b"close"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(raw: &str) -> (Served, BytesMut) {
        let mut buf = BytesMut::from(raw);
        match parse(&mut buf, 1024) {
            Head::Request(served) => (served, buf),
            Head::Partial => panic!("partial: {raw:?}"),
            Head::NotOurs => panic!("not ours: {raw:?}"),
        }
    }

    fn parsed(raw: &str) -> (ClientRequest, bool, BytesMut) {
        let (served, rest) = served(raw);
        (*served.request, served.close, rest)
    }

    fn not_ours(raw: &str) {
        let mut buf = BytesMut::from(raw);
        assert!(
            matches!(parse(&mut buf, 1024), Head::NotOurs),
            "served here: {raw:?}"
        );
        assert_eq!(&buf[..], raw.as_bytes(), "the bytes stay for hyper");
    }

    #[test]
    fn a_bodiless_request_is_parsed_and_taken_off_the_buffer() {
        let (request, close, rest) = parsed(
            "GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next",
        );
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/a/b");
        assert_eq!(request.uri().query(), Some("c=d"));
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["host"], "example.com");
        let two: Vec<_> = request.headers().get_all("x-two").iter().collect();
        assert_eq!(two, ["1", "2"]);
        assert!(request.body().is_none());
        assert!(!close);
        assert_eq!(&rest[..], b"GET /next", "a pipelined request stays");
    }

    #[test]
    fn a_connection_option_close_is_noted_among_others() {
        let (_, close, _) = parsed("GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n");
        assert!(close);
        let (_, close, _) =
            parsed("GET / HTTP/1.1\r\nHost: h\r\nConnection: x-secret ,close\r\n\r\n");
        assert!(close);
        let (request, close, _) =
            parsed("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-secret\r\n\r\n");
        assert!(!close);
        assert_eq!(request.headers()["connection"], "keep-alive, x-secret");
    }

    #[test]
    fn an_upgrade_request_is_served_and_noted() {
        let (ws, _) = served(
            "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(ws.upgrade);
        assert!(!ws.close);
        assert_eq!(ws.request.headers()["upgrade"], "websocket");
        assert!(!served("GET / HTTP/1.1\r\nHost: h\r\n\r\n").0.upgrade);
    }

    fn body_length(raw: &str) -> u64 {
        served(raw).0.body
    }

    #[test]
    fn one_plain_content_length_is_served_with_its_body_left_in_the_buffer() {
        let raw = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(body_length(raw), 5);
        let (request, _, rest) = parsed(raw);
        assert_eq!(request.headers()["content-length"], "5");
        assert_eq!(&rest[..], b"hello", "the body is the server's to read");
        assert_eq!(
            body_length("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"),
            0
        );
        assert_eq!(
            body_length("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 007\r\n\r\n"),
            7
        );
        assert_eq!(body_length("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    }

    #[test]
    fn lengths_that_are_not_one_plain_number_go_to_hyper() {
        for value in [
            "5, 5",
            "-1",
            "+5",
            "5 5",
            "",
            "0x10",
            "1234567890123456789",
            "five",
        ] {
            not_ours(&format!(
                "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {value}\r\n\r\n"
            ));
        }
        not_ours("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        not_ours(
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
    }

    #[test]
    fn chunked_bodies_continue_and_trailers_go_to_hyper() {
        not_ours("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
        not_ours("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n");
        not_ours("GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n");
    }

    #[test]
    fn other_versions_and_malformed_heads_go_to_hyper() {
        not_ours("GET / HTTP/1.0\r\nHost: h\r\n\r\n");
        not_ours("GET / HTTP/2.0\r\nHost: h\r\n\r\n");
        not_ours("GET / HTTP/1.1\r\nHost : h\r\n\r\n");
        not_ours("GET / HTTP/1.1\r\nHost: h\r\nBad\0Value: x\r\n\r\n");
        not_ours("G(T / HTTP/1.1\r\nHost: h\r\n\r\n");
    }

    #[test]
    fn a_target_httparse_allows_and_http_refuses_goes_back_whole() {
        // `http` refuses a target that is neither origin- nor
        // absolute-form nor `*`.
        not_ours("GET a:b:c HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\n");
    }

    #[test]
    fn a_head_over_the_limit_goes_to_hyper_whole_or_not() {
        let field = format!("X-Big: {}\r\n", "b".repeat(1100));
        not_ours(&format!("GET / HTTP/1.1\r\n{field}\r\n"));
        not_ours(&format!("GET / HTTP/1.1\r\n{field}"));
    }

    #[test]
    fn an_unfinished_head_asks_for_more() {
        let mut buf = BytesMut::from("GET / HTTP/1.1\r\nHost: h\r\n");
        assert!(matches!(parse(&mut buf, 1024), Head::Partial));
        assert_eq!(buf.len(), 25);
    }

    #[test]
    fn more_fields_than_hyper_allows_go_to_hyper() {
        let fields: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{fields}\r\n");
        let mut buf = BytesMut::from(raw.as_str());
        assert!(matches!(parse(&mut buf, 64 * 1024), Head::NotOurs));
    }
}
