//! A response head for a client, and how its body is framed: the rules
//! hyper's HTTP/1 server applies (RFC 9112 6), for the requests
//! [`super::server`] serves. Header names go out in lower case, as hyper
//! writes them; a `Date` is added when the response has none.

use std::cell::RefCell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode};
use http_body::SizeHint;

use super::encode::field;

/// How the body after a head is sent.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Framing {
    /// Nothing follows the head: a `HEAD` request's answer, a 1xx, 204 or
    /// 304, or a length of 0.
    Nothing,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked, for a body whose length is not known up front.
    Chunked,
}

/// A response whose own fields make it impossible to send as it is.
#[derive(Debug, thiserror::Error)]
#[error("response Content-Length is not a single number")]
pub struct InvalidLength;

/// Writes the head of `response` into `out`; `close` adds
/// `connection: close` when the response has no `Connection` of its own.
/// Returns the body's framing and whether the response itself asks for
/// the connection to close.
pub fn encode_head<B>(
    out: &mut Vec<u8>,
    response: &Response<B>,
    body: SizeHint,
    method: &Method,
    close: bool,
) -> Result<(Framing, bool), InvalidLength> {
    let status = response.status();
    let no_body_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let head_request = method == Method::HEAD;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    // A backend's own reason phrase travels as hyper's extension for it.
    match response.extensions().get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or_default().as_bytes()),
    }
    out.extend_from_slice(b"\r\n");

    // A status that carries no body has its length left out below, so
    // only a length that frames something needs to be a number.
    let length = if no_body_status {
        None
    } else {
        declared_length(response.headers())?
    };
    let mut asks_close = false;
    for (name, value) in response.headers() {
        match *name {
            // The framing is written below, from what the body is.
            header::TRANSFER_ENCODING => continue,
            header::CONTENT_LENGTH if no_body_status => continue,
            header::CONNECTION => {
                asks_close |= value
                    .to_str()
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
            }
            _ => {}
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if close && !response.headers().contains_key(header::CONNECTION) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !response.headers().contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    let framing = if no_body_status {
        Framing::Nothing
    } else if let Some(length) = length {
        // Written above with the other fields.
        if head_request || length == 0 {
            Framing::Nothing
        } else {
            Framing::Length(length)
        }
    } else if let Some(exact) = body.exact() {
        if exact > 0 || !head_request {
            write!(out, "content-length: {exact}\r\n").expect("writing to a Vec");
        }
        if head_request || exact == 0 {
            Framing::Nothing
        } else {
            Framing::Length(exact)
        }
    } else if head_request {
        Framing::Nothing
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    out.extend_from_slice(b"\r\n");
    Ok((framing, asks_close))
}

/// The response's `Content-Length`, if it has one: every value the same
/// number (the backend decoder has already refused responses that
/// disagree; a local reply sets one).
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, InvalidLength> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let n = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or(InvalidLength)?;
        if length.is_some_and(|l| l != n) {
            return Err(InvalidLength);
        }
        length = Some(n);
    }
    Ok(length)
}

/// The current time as an HTTP date, formatted once a second.
fn http_date(out: &mut Vec<u8>) {
    const LEN: usize = 29;
    thread_local! {
        static CACHED: RefCell<(u64, [u8; LEN])> = const { RefCell::new((u64::MAX, [0; LEN])) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != second {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == LEN {
                text.copy_from_slice(formatted.as_bytes());
                *at = second;
            } else {
                out.extend_from_slice(formatted.as_bytes());
                return;
            }
        }
        out.extend_from_slice(text);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(
        response: Response<()>,
        body: SizeHint,
        method: Method,
        close: bool,
    ) -> (String, Framing, bool) {
        let mut out = Vec::new();
        let (framing, asks_close) = encode_head(&mut out, &response, body, &method, close).unwrap();
        (String::from_utf8(out).unwrap(), framing, asks_close)
    }

    fn lines(head: &str) -> Vec<&str> {
        head.split("\r\n")
            .filter(|l| !l.starts_with("date: "))
            .collect()
    }

    #[test]
    fn a_response_with_a_length_keeps_it_and_gets_a_date() {
        let response = Response::builder()
            .status(200)
            .header("content-length", "5")
            .header("X-Thing", "a")
            .body(())
            .unwrap();
        let (head, framing, asks_close) =
            encoded(response, SizeHint::with_exact(5), Method::GET, false);
        assert_eq!(
            lines(&head),
            ["HTTP/1.1 200 OK", "content-length: 5", "x-thing: a", "", ""]
        );
        assert!(head.contains("\r\ndate: "), "{head}");
        assert_eq!(framing, Framing::Length(5));
        assert!(!asks_close);
    }

    #[test]
    fn a_body_of_unknown_length_is_chunked_and_its_transfer_encoding_replaced() {
        let response = Response::builder()
            .header("transfer-encoding", "gzip")
            .body(())
            .unwrap();
        let (head, framing, _) = encoded(response, SizeHint::new(), Method::GET, false);
        assert_eq!(
            lines(&head),
            ["HTTP/1.1 200 OK", "transfer-encoding: chunked", "", ""]
        );
        assert_eq!(framing, Framing::Chunked);
    }

    #[test]
    fn a_known_body_without_a_length_field_gets_one() {
        let response = Response::new(());
        let (head, framing, _) = encoded(response, SizeHint::with_exact(3), Method::GET, false);
        assert_eq!(
            lines(&head),
            ["HTTP/1.1 200 OK", "content-length: 3", "", ""]
        );
        assert_eq!(framing, Framing::Length(3));
        let (head, framing, _) = encoded(
            Response::new(()),
            SizeHint::with_exact(0),
            Method::GET,
            false,
        );
        assert_eq!(
            lines(&head),
            ["HTTP/1.1 200 OK", "content-length: 0", "", ""]
        );
        assert_eq!(framing, Framing::Nothing);
    }

    #[test]
    fn a_head_request_gets_the_length_but_no_body() {
        let response = Response::builder()
            .header("content-length", "1234")
            .body(())
            .unwrap();
        let (head, framing, _) = encoded(response, SizeHint::with_exact(0), Method::HEAD, false);
        assert_eq!(
            lines(&head),
            ["HTTP/1.1 200 OK", "content-length: 1234", "", ""]
        );
        assert_eq!(framing, Framing::Nothing);
        // No length known: none is made up, and nothing is chunked.
        let (head, framing, _) = encoded(Response::new(()), SizeHint::new(), Method::HEAD, false);
        assert_eq!(lines(&head), ["HTTP/1.1 200 OK", "", ""]);
        assert_eq!(framing, Framing::Nothing);
    }

    #[test]
    fn statuses_without_a_body_get_no_framing_fields() {
        for status in [204, 304] {
            let response = Response::builder()
                .status(status)
                .header("content-length", "10")
                .body(())
                .unwrap();
            let (head, framing, _) = encoded(response, SizeHint::new(), Method::GET, false);
            assert_eq!(lines(&head).len(), 3, "{head}");
            assert!(!head.contains("content-length"), "{head}");
            assert!(!head.contains("transfer-encoding"), "{head}");
            assert_eq!(framing, Framing::Nothing);
        }
    }

    #[test]
    fn closing_adds_connection_close_and_a_response_can_ask_for_it() {
        let (head, _, asks_close) = encoded(
            Response::new(()),
            SizeHint::with_exact(0),
            Method::GET,
            true,
        );
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert!(!asks_close);
        let response = Response::builder()
            .header("connection", "close")
            .body(())
            .unwrap();
        let (head, _, asks_close) = encoded(response, SizeHint::with_exact(0), Method::GET, true);
        assert_eq!(head.matches("connection: close").count(), 1, "{head}");
        assert!(asks_close);
    }

    #[test]
    fn an_unknown_status_has_an_empty_reason() {
        let response = Response::builder().status(599).body(()).unwrap();
        let (head, _, _) = encoded(response, SizeHint::with_exact(0), Method::GET, false);
        assert!(head.starts_with("HTTP/1.1 599 \r\n"), "{head}");
    }

    #[test]
    fn a_reason_phrase_of_its_own_is_kept() {
        let mut response = Response::new(());
        response
            .extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b"Fine Thanks"));
        let (head, _, _) = encoded(response, SizeHint::with_exact(0), Method::GET, false);
        assert!(head.starts_with("HTTP/1.1 200 Fine Thanks\r\n"), "{head}");
    }

    #[test]
    fn disagreeing_or_malformed_lengths_are_refused() {
        for values in [&["5", "6"][..], &["five"]] {
            let mut response = Response::new(());
            for v in values {
                response
                    .headers_mut()
                    .append("content-length", v.parse().unwrap());
            }
            let result = encode_head(
                &mut Vec::new(),
                &response,
                SizeHint::new(),
                &Method::GET,
                false,
            );
            assert!(result.is_err(), "{values:?}");
        }
    }

    #[test]
    fn the_date_is_an_http_date() {
        let mut out = Vec::new();
        http_date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
        assert!(text.ends_with(" GMT"), "{text}");
    }
}
