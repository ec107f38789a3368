//! A backend's response body, read off its connection as the client's
//! connection asks for it. When the body has been read to its end and the
//! connection may carry another exchange, it goes back to the pool (its
//! [`Checkin`]); a body that fails, or is dropped part-way (the client went
//! away), closes it.
//!
//! A small response usually arrives whole with its head: then the body is
//! taken out at once and the connection is back in the pool before the
//! response is handed to the client's connection.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio_util::io::poll_read_buf;

use super::connection::Connection;
use super::decode::{Chunk, ChunkedDecoder, Framing};
use crate::proxy::body::BoxError;
use crate::proxy::pool::Checkin;

/// The smallest and largest read while a body is read.
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;

/// The backend closed before the end of a body whose end it had announced.
#[derive(Debug, thiserror::Error)]
#[error("backend closed the connection before the end of the response body")]
pub struct BodyCutShort;

enum State {
    /// This many bytes still to come.
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    /// Taken out whole when the head was read.
    Whole(Option<Bytes>),
    /// Trailers to hand on, then the end (boxed: rare, and large).
    Trailers(Option<Box<HeaderMap>>),
    Done,
}

/// See the module documentation.
pub struct BackendBody {
    state: State,
    /// Held while the body is read from it.
    conn: Option<Box<Connection>>,
    /// Where `conn` goes once the body is over, when it may carry another
    /// exchange (never for an upgrade's own connection).
    checkin: Option<Checkin>,
}

impl BackendBody {
    /// The body that follows a head with `framing` on `conn`; `checkin`
    /// when the connection may be used again after it.
    pub fn new(framing: Framing, mut conn: Box<Connection>, checkin: Option<Checkin>) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Whole(None),
            Framing::Length(n) if n <= conn.read.len() as u64 => {
                #[allow(clippy::cast_possible_truncation)] // n <= a buffer length
                let data = conn.read.split_to(n as usize).freeze();
                State::Whole(Some(data))
            }
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(ChunkedDecoder::default()),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = Self {
            state,
            conn: Some(conn),
            checkin,
        };
        if matches!(body.state, State::Whole(_)) {
            body.finish();
        }
        body
    }

    /// The body is over: the connection goes back to the pool if nothing
    /// unasked follows it and it may be used again, else it closes.
    fn finish(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if let (true, Some(checkin)) = (conn.read.is_empty(), self.checkin.take()) {
            conn.idle();
            checkin.release(conn);
        }
    }

    /// The body failed: the connection closes.
    fn fail(&mut self, error: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.state = State::Done;
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Whole(data) => {
                    let frame = data.take().map(|d| Ok(Frame::data(d)));
                    if frame.is_none() {
                        this.state = State::Done;
                    }
                    return Poll::Ready(frame);
                }
                State::Trailers(trailers) => {
                    let frame = trailers.take().map(|t| Ok(Frame::trailers(*t)));
                    this.state = State::Done;
                    return Poll::Ready(frame);
                }
                State::Done => return Poll::Ready(None),
                State::Length(remaining) => {
                    let conn = this
                        .conn
                        .as_mut()
                        .expect("a body being read has its connection");
                    if !conn.read.is_empty() {
                        let take = usize::try_from(*remaining)
                            .map_or(conn.read.len(), |r| r.min(conn.read.len()));
                        let data = conn.read.split_to(take).freeze();
                        *remaining -= take as u64;
                        if *remaining == 0 {
                            this.state = State::Done;
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(decoder) => {
                    let conn = this
                        .conn
                        .as_mut()
                        .expect("a body being read has its connection");
                    match decoder.decode(&mut conn.read) {
                        Ok(Chunk::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Chunk::Trailers(trailers)) => {
                            this.state = State::Trailers(Some(Box::new(trailers)));
                            this.finish();
                            continue;
                        }
                        Ok(Chunk::End) => {
                            this.state = State::Done;
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Ok(Chunk::NeedMore) => {}
                        Err(error) => return this.fail(error.into()),
                    }
                }
                State::UntilClose => {
                    let conn = this
                        .conn
                        .as_mut()
                        .expect("a body being read has its connection");
                    if !conn.read.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(conn.read.split().freeze()))));
                    }
                }
            }
            // Nothing buffered to hand on: read more.
            let want = match this.state {
                State::Length(remaining) => {
                    usize::try_from(remaining).map_or(MAX_READ, |r| r.clamp(MIN_READ, MAX_READ))
                }
                _ => MIN_READ,
            };
            let conn = this
                .conn
                .as_mut()
                .expect("a body being read has its connection");
            conn.read.reserve(want);
            match ready!(poll_read_buf(
                Pin::new(&mut conn.stream),
                cx,
                &mut conn.read
            )) {
                Ok(0) if matches!(this.state, State::UntilClose) => {
                    this.conn = None;
                    this.state = State::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Box::new(BodyCutShort)),
                Ok(_) => {}
                Err(error) => return this.fail(Box::new(error)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Whole(data) => data.is_none(),
            State::Trailers(trailers) => trailers.is_none(),
            State::Done => true,
            State::Length(_) | State::Chunked(_) | State::UntilClose => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Whole(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            State::Length(remaining) => SizeHint::with_exact(*remaining),
            State::Done | State::Trailers(_) => SizeHint::with_exact(0),
            State::Chunked(_) | State::UntilClose => SizeHint::default(),
        }
    }
}
