//! Any bytes as a backend's answer: the response head parser and the
//! chunked decoder (src/proxy/h1/decode.rs) must never panic, and must
//! give the same answer whether the bytes come in one read or in the
//! pieces the input names. A backend connection carries other clients'
//! requests afterwards, so an answer that depends on where a read ended
//! would be a desync. A disagreement is a crash.
//!
//! Input: one byte choosing the request method (HEAD has no body), one
//! byte of read size, then the bytes the backend sends.

#![no_main]

use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use switchyard::proxy::h1::decode::{Chunk, ChunkedDecoder, Framing, response_head};

/// What one way of reading gave: the head's status, framing and header
/// count (or the error's text), then for a chunked body its data and
/// whether it ended, failed or wants more, and the bytes left over.
#[derive(Debug, PartialEq)]
struct Reading {
    head: Result<Option<(u16, Framing, usize)>, String>,
    body: Vec<u8>,
    ended: Option<Result<bool, String>>,
    left: Vec<u8>,
}

fn read(method: &Method, wire: &[u8], step: usize) -> Reading {
    let mut pieces = wire.chunks(step);
    let mut buf = BytesMut::new();
    let head = loop {
        match response_head(&mut buf, method) {
            Ok(Some(head)) => break Ok(Some(head)),
            Ok(None) => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => break Ok(None),
            },
            Err(error) => break Err(error.to_string()),
        }
    };
    let mut reading = Reading {
        head: head
            .as_ref()
            .map(|h| h.as_ref().map(|h| (h.status.as_u16(), h.framing, h.headers.len())))
            .map_err(Clone::clone),
        body: Vec::new(),
        ended: None,
        left: Vec::new(),
    };
    if let Ok(Some(head)) = &head
        && head.framing == Framing::Chunked
    {
        let mut decoder = ChunkedDecoder::default();
        reading.ended = Some(loop {
            match decoder.decode(&mut buf) {
                Ok(Chunk::Data(data)) => reading.body.extend_from_slice(&data),
                Ok(Chunk::Trailers(_)) => {}
                Ok(Chunk::End) => break Ok(true),
                Ok(Chunk::NeedMore) => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => break Ok(false),
                },
                Err(error) => break Err(error.to_string()),
            }
        });
    }
    for piece in pieces {
        buf.extend_from_slice(piece);
    }
    reading.left = buf.to_vec();
    reading
}

fuzz_target!(|input: &[u8]| {
    let [method, step, wire @ ..] = input else {
        return;
    };
    let method = if method % 4 == 0 { Method::HEAD } else { Method::GET };
    let step = usize::from(*step).max(1);
    let whole = read(&method, wire, wire.len().max(1));
    let in_pieces = read(&method, wire, step);
    assert_eq!(whole, in_pieces, "the answer depends on where the reads end");
});
