//! Any bytes as what a client sends: the request head parser of
//! switchyard's own HTTP/1 server (src/proxy/h1/request.rs) must never
//! panic, must give the same answer whether the bytes come in one read or
//! in the pieces the input names (a request served or handed on that
//! depended on where a read ended would be a desync), must leave the
//! buffer exactly as it was when it hands a request to hyper, and must
//! never serve a request that carries `Transfer-Encoding`, `Expect`, `TE`,
//! or a `Content-Length` other than one plain number (which must be the
//! body length it reports). The body of a request served is skipped, as
//! the server's body reader takes it, and the next head read after it. A
//! violation is a crash.
//!
//! Input: one byte of read size, then the bytes the client sends.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard::proxy::h1::request::{Head, Served, parse};

/// The head limit the parser is given (small, so the fuzzer reaches it).
const MAX_HEAD: usize = 512;

/// What one way of reading gave: for each request served, its method,
/// target, fields, whether it closes and its body length; then how the bytes ended (handed on, with what is
/// left; or more wanted).
#[derive(Debug, PartialEq)]
struct Reading {
    served: Vec<(String, String, Vec<(String, Vec<u8>)>, bool, u64)>,
    handed_on: Option<Vec<u8>>,
}

fn read(input: &[u8], step: usize) -> Reading {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    // Body bytes of the last request served still to be taken.
    let mut body_left = 0u64;
    let mut reading = Reading {
        served: Vec::new(),
        handed_on: None,
    };
    loop {
        if body_left > 0 {
            let here = usize::try_from(body_left).map_or(buf.len(), |n| n.min(buf.len()));
            let _ = buf.split_to(here);
            body_left -= here as u64;
            if body_left > 0 {
                if !feed(&mut buf, input, &mut fed, step) {
                    return reading;
                }
                continue;
            }
        }
        let before = buf.clone();
        match parse(&mut buf, MAX_HEAD) {
            Head::Request(Served {
                request,
                close,
                body,
                ..
            }) => {
                for name in ["transfer-encoding", "expect", "te"] {
                    assert!(!request.headers().contains_key(name), "served with {name}");
                }
                let lengths: Vec<_> = request.headers().get_all("content-length").iter().collect();
                match lengths[..] {
                    [] => assert_eq!(body, 0),
                    [length] => {
                        let digits = length.as_bytes();
                        assert!(!digits.is_empty() && digits.iter().all(u8::is_ascii_digit));
                        assert_eq!(
                            std::str::from_utf8(digits).unwrap().parse::<u64>().ok(),
                            Some(body)
                        );
                    }
                    _ => panic!("served with {} lengths", lengths.len()),
                }
                assert_eq!(request.version(), http::Version::HTTP_11);
                assert!(request.body().is_none());
                assert!(buf.len() < before.len(), "a served head is taken off");
                assert!(before.ends_with(&buf), "only the head is taken off");
                let fields = request
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect();
                reading.served.push((
                    request.method().to_string(),
                    request.uri().to_string(),
                    fields,
                    close,
                    body,
                ));
                body_left = body;
            }
            Head::NotOurs => {
                assert_eq!(
                    buf, before,
                    "a head for hyper leaves the bytes as they were"
                );
                reading.handed_on = Some(buf.to_vec());
                return reading;
            }
            Head::Partial => {
                assert_eq!(
                    buf, before,
                    "an unfinished head leaves the bytes as they were"
                );
                if !feed(&mut buf, input, &mut fed, step) {
                    return reading;
                }
            }
        }
    }
}

/// One more read of at most `step` bytes; false when the input is all read.
fn feed(buf: &mut BytesMut, input: &[u8], fed: &mut usize, step: usize) -> bool {
    if *fed == input.len() {
        return false;
    }
    let end = (*fed + step).min(input.len());
    buf.extend_from_slice(&input[*fed..end]);
    *fed = end;
    true
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let whole = read(input, input.len().max(1));
    let pieces = read(input, usize::from(step % 64) + 1);
    // Handed on at the same request, the bytes left may differ only by
    // what had not been read yet when the pieces reached it.
    assert_eq!(whole.served, pieces.served);
    match (&whole.handed_on, &pieces.handed_on) {
        (Some(all), Some(part)) => assert!(all.starts_with(part)),
        (None, None) => {}
        (whole, pieces) => panic!("whole: {whole:?}, pieces: {pieces:?}"),
    }
});
