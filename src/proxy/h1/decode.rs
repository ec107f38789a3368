//! Reading a backend's answer: the response head (httparse does the
//! parsing), how its body is framed (RFC 9112 section 6.3), and the
//! chunked transfer coding. Pure: it works on the connection's read
//! buffer and does no IO, so every rule here is unit-tested on bytes.
//!
//! Strictness is on purpose. A backend connection is used again for
//! other clients' requests, so any doubt about where one response ends
//! (two different `Content-Length`s, a bare LF in a chunk line, a
//! `Transfer-Encoding` on HTTP/1.0) is an error that closes it, never a
//! guess.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use hyper::ext::ReasonPhrase;

use super::ProtocolError;
use crate::proxy::headers::{connection_has, tokens};

/// The most header fields a response head (or a trailer section) may have.
pub const MAX_HEADERS: usize = 100;
/// The largest response head, interim responses included.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The largest trailer section.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body, whatever the headers say (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
    /// Everything until the backend closes: the connection ends with it.
    UntilClose,
}

/// A final response head, taken off the front of the read buffer.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// A reason phrase other than the status code's usual one.
    pub reason: Option<Bytes>,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another exchange once this body
    /// has been read to its end.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// The response as the proxy relays it, with the body `body` makes for
    /// the framing. An unusual reason phrase goes along (hyper's server
    /// writes it); the backend's version does not: an intermediary sends
    /// its own (RFC 9110 6.2), and hyper's server would write an
    /// HTTP/1.0 one's, and close the client's connection after it.
    pub fn into_response<B>(self, body: impl FnOnce(Framing) -> B) -> Response<B> {
        let mut response = Response::new(body(self.framing));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        if let Some(reason) = self.reason.and_then(|r| ReasonPhrase::try_from(r).ok()) {
            response.extensions_mut().insert(reason);
        }
        response
    }
}

/// Takes the first final response head off the front of `buf`, skipping
/// interim (1xx) responses other than 101. `Ok(None)`: not all there yet
/// (whatever was skipped stays consumed). `method` is the request's, which
/// decides whether the response can have a body.
pub fn response_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, ProtocolError> {
    loop {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(ProtocolError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError::TooManyHeaders),
            Err(e) => return Err(ProtocolError::Head(e)),
        };
        if len > MAX_HEAD_BYTES {
            return Err(ProtocolError::HeadTooLarge);
        }
        let code = response.code.expect("a complete head has a status");
        let status = StatusCode::from_u16(code).map_err(|_| ProtocolError::Status(code))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 103 Early Hints: not for the client (hyper's
            // server sends its own 100 when the request body is read).
            buf.advance(len);
            continue;
        }
        let version = match response.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let reason = response
            .reason
            .filter(|r| Some(*r) != status.canonical_reason() && !r.is_empty())
            .map(|r| Bytes::copy_from_slice(r.as_bytes()));
        // Where each field is in the head, so that the values can share
        // the head's bytes (one allocation for all) once it is split off.
        let start = buf.as_ptr() as usize;
        let offset = |part: &[u8]| part.as_ptr() as usize - start;
        let mut fields = [[0u32; 4]; MAX_HEADERS];
        let count = response.headers.len();
        for (slot, field) in fields.iter_mut().zip(response.headers.iter()) {
            let (name, value) = (field.name.as_bytes(), field.value);
            // Within a head of at most MAX_HEAD_BYTES.
            #[allow(clippy::cast_possible_truncation)]
            let place = |at: usize, len: usize| [at as u32, (at + len) as u32];
            let [a, b] = place(offset(name), name.len());
            let [c, d] = place(offset(value), value.len());
            *slot = [a, b, c, d];
        }
        let head = buf.split_to(len).freeze();
        // One more for the `X-Request-Id` the proxy adds on the way out.
        let mut headers = HeaderMap::with_capacity(count + 1);
        let mut seen = FramingFields::default();
        for [a, b, c, d] in &fields[..count] {
            let name = HeaderName::from_bytes(&head[*a as usize..*b as usize])
                .map_err(|_| ProtocolError::HeaderName)?;
            let value = HeaderValue::from_maybe_shared(head.slice(*c as usize..*d as usize))
                .map_err(|_| ProtocolError::HeaderValue)?;
            seen.note(&name, &value);
            headers.append(name, value);
        }
        let (framing, reusable) = framing(status, version, method, &mut headers, &seen)?;
        let keep_alive = reusable
            && match version {
                Version::HTTP_10 => seen.connection && connection_has(&headers, "keep-alive"),
                _ => !(seen.connection && connection_has(&headers, "close")),
            };
        return Ok(Some(ResponseHead {
            status,
            version,
            reason,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// What the framing rules need of a head's fields, noted as its map is
/// built: looked up in the map afterwards, `Transfer-Encoding`,
/// `Content-Length` and `Connection` cost a hash and a probe each on every
/// response, most often for fields that are not there.
#[derive(Debug, Default)]
struct FramingFields {
    transfer_encoding: bool,
    connection: bool,
    /// The length every `Content-Length` value so far agreed on.
    length: Option<u64>,
    /// More than one `Content-Length` value, in one field or several.
    lengths_repeated: bool,
    /// A `Content-Length` value that is not a number, or two that differ.
    bad_length: bool,
}

impl FramingFields {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if *name == header::CONTENT_LENGTH {
            // A list of equal values (`5, 5`) is one length (RFC 9110 8.6).
            self.lengths_repeated |= self.length.is_some() || value.as_bytes().contains(&b',');
            for part in value.as_bytes().split(|b| *b == b',') {
                match content_length(part.trim_ascii()) {
                    Some(n) if self.length.is_none_or(|seen| seen == n) => self.length = Some(n),
                    _ => self.bad_length = true,
                }
            }
        } else if *name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if *name == header::CONNECTION {
            self.connection = true;
        }
    }
}

/// RFC 9112 section 6.3, for a response, and whether the framing lets the
/// connection be used again. A `Content-Length` beside a
/// `Transfer-Encoding` is removed (the coding decides, and the length must
/// not reach the client), and a backend that sent both is not trusted
/// with another exchange on that connection. Nor is one that switched
/// protocols: after a 101 the connection speaks the other protocol, even
/// where the proxy did not ask for the switch and refuses it.
fn framing(
    status: StatusCode,
    version: Version,
    method: &Method,
    headers: &mut HeaderMap,
    seen: &FramingFields,
) -> Result<(Framing, bool), ProtocolError> {
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || method == Method::HEAD;
    // What reaches the client is one well-formed length or none: a list of
    // equal values becomes that value once (RFC 9110 8.6), and a length
    // that frames nothing here is dropped if it is malformed, rather than
    // failing the answer or being passed on to a client that may trust it.
    // (Beside a Transfer-Encoding the length is removed in any case.)
    match (seen.bad_length, seen.length) {
        (false, Some(n)) if seen.lengths_repeated => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        (true, _) if bodiless => {
            headers.remove(header::CONTENT_LENGTH);
        }
        _ => {}
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((Framing::Empty, false));
    }
    if bodiless {
        if seen.transfer_encoding {
            headers.remove(header::CONTENT_LENGTH);
        }
        return Ok((Framing::Empty, true));
    }
    if seen.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(ProtocolError::TransferEncodingOnHttp10);
        }
        let both = headers.remove(header::CONTENT_LENGTH).is_some();
        let chunked_last = tokens(headers, &header::TRANSFER_ENCODING)
            .last()
            .is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"));
        return Ok(if chunked_last {
            (Framing::Chunked, !both)
        } else {
            (Framing::UntilClose, false)
        });
    }
    if seen.bad_length {
        return Err(ProtocolError::ContentLength);
    }
    Ok(match seen.length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::UntilClose, false),
    })
}

/// Digits only: no sign, no spaces inside, no empty value.
fn content_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// What the chunked decoder made of the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    Data(Bytes),
    /// The trailer section (not empty), which ends the body.
    Trailers(HeaderMap),
    /// The body is over.
    End,
    /// Nothing can be decoded until more bytes arrive.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// The chunked transfer coding (RFC 9112 section 7.1), decoded from the
/// front of a buffer as bytes arrive.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: ChunkState::Size,
        }
    }
}

impl ChunkedDecoder {
    /// Decodes what it can from the front of `buf`, consuming it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, ProtocolError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let (len, size) = match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete(found)) => found,
                        Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                            return Err(ProtocolError::Chunk);
                        }
                        Ok(httparse::Status::Partial) => return Ok(Chunk::NeedMore),
                        Err(_) => return Err(ProtocolError::Chunk),
                    };
                    // httparse lets any byte through in an extension; a
                    // bare LF there is a line end to someone else.
                    if len > MAX_CHUNK_LINE || buf[..len - 2].contains(&b'\n') {
                        return Err(ProtocolError::Chunk);
                    }
                    buf.advance(len);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Chunk::NeedMore);
                    }
                    let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Chunk::Data(buf.split_to(take).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Chunk::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtocolError::Chunk);
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = ChunkState::Done;
                        return Ok(Chunk::End);
                    }
                    return self.trailers(buf);
                }
                ChunkState::Done => return Ok(Chunk::End),
            }
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Chunk, ProtocolError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (len, fields) = match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILER_BYTES => {
                return Err(ProtocolError::Trailers);
            }
            Ok(httparse::Status::Partial) => return Ok(Chunk::NeedMore),
            Err(_) => return Err(ProtocolError::Trailers),
        };
        if len > MAX_TRAILER_BYTES {
            return Err(ProtocolError::Trailers);
        }
        let mut trailers = HeaderMap::with_capacity(fields.len());
        for field in fields.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| ProtocolError::Trailers)?;
            let value =
                HeaderValue::from_bytes(field.value).map_err(|_| ProtocolError::Trailers)?;
            trailers.append(name, value);
        }
        buf.advance(len);
        self.state = ChunkState::Done;
        Ok(if trailers.is_empty() {
            Chunk::End
        } else {
            Chunk::Trailers(trailers)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(raw: &str, method: &Method) -> Result<Option<ResponseHead>, ProtocolError> {
        response_head(&mut BytesMut::from(raw), method)
    }

    fn complete(raw: &str) -> ResponseHead {
        head(raw, &Method::GET).unwrap().expect("a complete head")
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_and_the_body_stays() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: b\r\n\r\nok");
        let head = response_head(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers["x-a"], "b");
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn a_partial_head_waits_for_more_and_an_endless_one_is_refused() {
        assert!(
            head("HTTP/1.1 200 OK\r\ncontent-le", &Method::GET)
                .unwrap()
                .is_none()
        );
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES + 1));
        assert!(matches!(
            head(&endless, &Method::GET),
            Err(ProtocolError::HeadTooLarge)
        ));
    }

    #[test]
    fn too_many_header_fields_are_refused() {
        let fields: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let raw = format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
        assert!(matches!(
            head(&raw, &Method::GET),
            Err(ProtocolError::TooManyHeaders)
        ));
    }

    #[test]
    fn interim_responses_are_skipped_but_101_is_final() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
             HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
        );
        let head = response_head(&mut buf, &Method::POST).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert!(!head.headers.contains_key("link"));
        let switched = complete("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n");
        assert_eq!(switched.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(switched.framing, Framing::Empty);
        assert!(!switched.keep_alive, "a switched connection is not HTTP's");
    }

    #[test]
    fn bodiless_statuses_and_head_requests_have_no_body_whatever_the_headers() {
        for raw in [
            "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(complete(raw).framing, Framing::Empty, "{raw}");
        }
        let to_head = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            &Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert_eq!(to_head.framing, Framing::Empty);
        assert_eq!(
            to_head.headers["content-length"], "5",
            "kept for the client"
        );
    }

    #[test]
    fn a_length_that_frames_nothing_reaches_the_client_well_formed_or_not_at_all() {
        let listed = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
            &Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert_eq!(listed.headers["content-length"], "5");
        for raw in [
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\ncontent-length: x\r\n\r\n",
            "HTTP/1.1 204 No Content\r\ncontent-length: 1, 2\r\n\r\n",
        ] {
            let answer = complete(raw);
            assert_eq!(answer.framing, Framing::Empty, "{raw}");
            assert!(!answer.headers.contains_key("content-length"), "{raw}");
        }
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: abc\r\n\r\n",
            // Transfer-Encoding decides, to a HEAD as to a GET.
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5, 5\r\n\r\n",
        ] {
            let to_head = head(raw, &Method::HEAD).unwrap().unwrap();
            assert!(!to_head.headers.contains_key("content-length"), "{raw}");
        }
        let malformed_to_head = head(
            "HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n",
            &Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert!(
            malformed_to_head.keep_alive,
            "the framing was never in doubt"
        );
    }

    #[test]
    fn content_length_must_be_digits_and_agree_with_itself() {
        let agreed =
            complete("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\ncontent-length: 7\r\n\r\n");
        assert_eq!(agreed.framing, Framing::Length(7));
        let passed_on: Vec<_> = agreed.headers.get_all("content-length").iter().collect();
        assert_eq!(passed_on, ["7"], "the client gets the length once");
        for bad in [
            "+7",
            "-1",
            "7 7",
            "0x10",
            "",
            "7, 8",
            "99999999999999999999999",
        ] {
            let raw = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert!(
                matches!(head(&raw, &Method::GET), Err(ProtocolError::ContentLength)),
                "{bad:?} was accepted"
            );
        }
        let differing = "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n";
        assert!(head(differing, &Method::GET).is_err());
    }

    #[test]
    fn transfer_encoding_decides_and_removes_content_length() {
        let both =
            complete("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(both.framing, Framing::Chunked);
        assert!(!both.headers.contains_key("content-length"));
        assert!(
            !both.keep_alive,
            "a backend that sent both is not trusted again"
        );
        let gzip_last = complete("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n");
        assert_eq!(gzip_last.framing, Framing::UntilClose);
        // The coding decides: a malformed length beside it is dropped with
        // it, not an error.
        let bad_length_too =
            complete("HTTP/1.1 200 OK\r\ncontent-length: x\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(bad_length_too.framing, Framing::Chunked);
        assert!(!bad_length_too.headers.contains_key("content-length"));
        assert!(!gzip_last.keep_alive);
        let on_http10 = "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(matches!(
            head(on_http10, &Method::GET),
            Err(ProtocolError::TransferEncodingOnHttp10)
        ));
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(
            !complete("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                .keep_alive
        );
        assert!(!complete("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").keep_alive);
        assert!(
            complete("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n")
                .keep_alive
        );
        let until_close = complete("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(until_close.framing, Framing::UntilClose);
        assert!(!until_close.keep_alive);
    }

    #[test]
    fn an_unusual_reason_phrase_is_kept() {
        assert_eq!(
            complete("HTTP/1.1 200 Fine\r\ncontent-length: 0\r\n\r\n")
                .reason
                .unwrap(),
            "Fine"
        );
        assert!(
            complete("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .reason
                .is_none()
        );
    }

    #[test]
    fn malformed_heads_are_errors() {
        for raw in [
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(head(raw, &Method::GET).is_err(), "{raw:?} was accepted");
        }
    }

    /// Feeds `wire` to a decoder in pieces of `step` bytes and collects
    /// what it decodes.
    fn decode_in_steps(
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), ProtocolError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Chunk::Data(bytes) => data.extend_from_slice(&bytes),
                Chunk::Trailers(trailers) => return Ok((data, Some(trailers))),
                Chunk::End => return Ok((data, None)),
                Chunk::NeedMore => {
                    assert!(fed < wire.len(), "the decoder wants more than the message");
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"4\r\nWiki\r\n5;name=value\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n";
        for step in 1..=wire.len() {
            let (data, trailers) = decode_in_steps(wire, step).unwrap();
            assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.", "step {step}");
            assert!(trailers.is_none());
        }
    }

    #[test]
    fn trailers_end_a_chunked_body() {
        let (data, trailers) =
            decode_in_steps(b"2\r\nok\r\n0\r\nx-checksum: 1\r\n\r\n", 3).unwrap();
        assert_eq!(data, b"ok");
        assert_eq!(trailers.unwrap()["x-checksum"], "1");
    }

    #[test]
    fn malformed_chunked_framing_is_an_error() {
        for wire in [
            &b"zz\r\nok\r\n0\r\n\r\n"[..],
            b"2\nok\r\n0\r\n\r\n",
            b"2;ext\nx\r\nok\r\n0\r\n\r\n",
            b"2\r\nokX\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"-2\r\nok\r\n",
        ] {
            assert!(
                decode_in_steps(wire, wire.len()).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(wire)
            );
        }
        let endless_extension = format!("2;{}", "e".repeat(MAX_CHUNK_LINE));
        assert!(
            ChunkedDecoder::default()
                .decode(&mut BytesMut::from(endless_extension.as_str()))
                .is_err()
        );
    }

    #[test]
    fn bytes_after_the_last_chunk_stay_in_the_buffer() {
        let mut buf = BytesMut::from("0\r\n\r\nHTTP/1.1");
        let mut decoder = ChunkedDecoder::default();
        assert_eq!(decoder.decode(&mut buf).unwrap(), Chunk::End);
        assert_eq!(&buf[..], b"HTTP/1.1");
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Chunk::End,
            "and stays over"
        );
        assert_eq!(&buf[..], b"HTTP/1.1");
    }

    /// What decoding a whole input gave: the data, the trailers, how it
    /// ended (`Ok(true)`: the body's end, `Ok(false)`: wants more) and
    /// what was left in the buffer.
    #[derive(Debug, PartialEq)]
    struct Decoded {
        data: Vec<u8>,
        trailers: Option<HeaderMap>,
        end: Result<bool, ()>,
        left: Vec<u8>,
    }

    /// Feeds `wire` to a decoder in pieces that end at `cuts`.
    fn decode_cut(wire: &[u8], cuts: &[usize]) -> Decoded {
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        ends.push(wire.len());
        ends.sort_unstable();
        let mut pieces = ends.into_iter();
        let mut decoder = ChunkedDecoder::default();
        let (mut buf, mut fed) = (BytesMut::new(), 0);
        let (mut data, mut trailers) = (Vec::new(), None);
        let end = loop {
            match decoder.decode(&mut buf) {
                Ok(Chunk::Data(bytes)) => data.extend_from_slice(&bytes),
                Ok(Chunk::Trailers(t)) => trailers = Some(t),
                Ok(Chunk::End) => break Ok(true),
                Ok(Chunk::NeedMore) => match pieces.next() {
                    Some(next) => {
                        buf.extend_from_slice(&wire[fed..next]);
                        fed = next;
                    }
                    None => break Ok(false),
                },
                Err(_) => break Err(()),
            }
        };
        buf.extend_from_slice(&wire[fed..]);
        Decoded {
            data,
            trailers,
            end,
            left: buf.to_vec(),
        }
    }

    fn chunk_line() -> impl Strategy<Value = (Vec<u8>, Option<String>)> {
        (
            proptest::collection::vec(any::<u8>(), 1..64),
            proptest::option::of("[a-z]{1,8}(=[a-z0-9]{1,8})?"),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A well-formed chunked body decodes to its data and trailers
        /// wherever the reads happen to end, and what follows it stays.
        #[test]
        fn chunked_bodies_decode_to_what_was_encoded(
            chunks in proptest::collection::vec(chunk_line(), 0..8),
            trailers in proptest::collection::vec(("x-[a-z]{1,6}", "[a-z0-9]{0,12}"), 0..3),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut wire = Vec::new();
            let mut data = Vec::new();
            for (bytes, extension) in &chunks {
                wire.extend_from_slice(format!("{:x}", bytes.len()).as_bytes());
                if let Some(extension) = extension {
                    wire.extend_from_slice(format!(";{extension}").as_bytes());
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(bytes);
                wire.extend_from_slice(b"\r\n");
                data.extend_from_slice(bytes);
            }
            wire.extend_from_slice(b"0\r\n");
            for (name, value) in &trailers {
                wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            wire.extend_from_slice(b"\r\nHTTP/1.1 200 OK");
            let decoded = decode_cut(&wire, &cuts);
            prop_assert_eq!(decoded.end, Ok(true));
            prop_assert_eq!(decoded.data, data);
            prop_assert_eq!(decoded.left, b"HTTP/1.1 200 OK".to_vec());
            let mut expected = HeaderMap::new();
            for (name, value) in &trailers {
                expected.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            prop_assert_eq!(decoded.trailers, (!expected.is_empty()).then_some(expected));
        }

        /// Any bytes at all decode to the same outcome whether they come
        /// in one read or in many: the decoder's answer never depends on
        /// where a read ended.
        #[test]
        fn any_bytes_decode_the_same_whatever_the_reads(
            wire in proptest::collection::vec(
                prop_oneof![
                    Just(b'\r'), Just(b'\n'), Just(b';'), Just(b':'), Just(b' '),
                    Just(b'0'), Just(b'1'), Just(b'a'), Just(b'F'), any::<u8>(),
                ],
                0..96,
            ),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            prop_assert_eq!(decode_cut(&wire, &cuts), decode_cut(&wire, &[]));
        }
    }
}
