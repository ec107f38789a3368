//! A client's HTTP/1.1 connection served without hyper, for as long as its
//! requests are the kind [`super::request`] parses (no body, or one of a
//! plain `Content-Length`): almost all of them. hyper's server was about
//! 10,000 of the proxy's 23,000 instructions per such request with 64
//! connections busy: it parses the head into its own state before the
//! pipeline's request, runs a dispatcher between the two, and encodes the
//! response through general machinery. Here the head goes straight into
//! the pipeline's request and the response straight into one write
//! (20,100 instructions per request in all).
//!
//! A body of a `Content-Length` is read by the pipeline straight off the
//! socket ([`LengthBody`], never a byte past it); a body the pipeline did
//! not read to its end (a refusal before it, a backend that answered
//! early) leaves the connection unusable, and it closes after the
//! response, lingering ([`linger`]) so that a client still sending gets
//! the answer rather than a reset.
//!
//! The first request that is not of that kind (a chunked body, a
//! malformed head) and everything after it on the connection go to hyper
//! ([`Ended::HandOff`]), with the bytes already read: hyper answers it as
//! it answered every request before, so what a client sees of chunked
//! framing and of errors in heads is still hyper's.
//!
//! An upgrade request is served here: when the pipeline answers it `101`,
//! the head is written and the socket, with what the client sent behind
//! the request, goes to the tunnel the pipeline has waiting
//! ([`OwnUpgrade`]); nothing after the `101` is read as HTTP.
//!
//! The connection keeps hyper's limits and manners: a head has the header
//! read timeout from when it is waited for (keep-alive idle time
//! included), after which the connection closes without an answer (as it
//! does, on either server, when the client takes none of a response for
//! the client write timeout); a
//! client's `Connection: close` is answered `connection: close` and
//! closed after; draining closes an idle connection at once and a busy
//! one after its response.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body::{Body, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::encode::{chunk_size_line, last_chunk};
use super::request::{self, Head, Served};
use super::respond::{Framing, encode_head};
use crate::proxy::body::ResponseBody;
use crate::proxy::client_body::{ClientBody, LengthBody};
use crate::proxy::client_upgrade::{OwnUpgrade, Switched};
use crate::proxy::linger;
use crate::proxy::stall::{StallTimer, WriteStall};
use crate::proxy::timer::{Purpose, ReusedSleep, sleep_until};
use crate::proxy::{ConnInfo, Proxy, service};

/// Room made for a read when less is left in the buffer.
const READ_ROOM: usize = 4096;

/// Body bytes up to this size are copied behind the head (one write for
/// both); larger ones are written from where they are.
const COPY_LIMIT: usize = 16 * 1024;

/// Write buffer made for a response head.
const HEAD_ROOM: usize = 512;

/// How much of a response body is gathered for the client before it is
/// written even though more is ready: small frames go out together (one
/// write, not one each), and a fast backend before a slow client holds at
/// most this much here.
const GATHER_LIMIT: usize = 256 * 1024;

/// Write buffer kept between requests: a typical head and small body.
const IDLE_OUT_CAPACITY: usize = 4096;

/// How a connection left this server.
pub enum Ended {
    /// It is done: closed by either side, failed, or timed out.
    Closed,
    /// hyper serves it from here, reading these bytes first.
    HandOff(TcpStream, Bytes),
    /// It switched protocols: the tunnel has it.
    Switched,
}

/// What a connection's server and the accept loop that drives it tell
/// each other once draining begins. (Both sides run in one task: the
/// atomics are only there for the task to be `Send`.)
#[derive(Default)]
pub struct Drain {
    /// Waiting for a request that has not begun: closing loses nothing.
    idle: AtomicBool,
    /// Draining has begun: the response in progress is the last.
    begun: AtomicBool,
}

impl Drain {
    pub fn is_idle(&self) -> bool {
        self.idle.load(Ordering::Relaxed)
    }

    pub fn begin(&self) {
        self.begun.store(true, Ordering::Relaxed);
    }

    fn has_begun(&self) -> bool {
        self.begun.load(Ordering::Relaxed)
    }

    fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::Relaxed);
    }
}

/// Serves `stream`, whose first bytes `buf` holds, until it closes or a
/// request goes to hyper. The first head must be in by `first_deadline`
/// (the header read timeout from when the connection was accepted).
pub async fn serve(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnInfo>,
    stream: TcpStream,
    mut buf: BytesMut,
    first_deadline: Instant,
    drain: &Drain,
) -> Ended {
    let mut head_timer: Option<ReusedSleep> = None;
    let mut out = Vec::new();
    // `None` only while a request body has the socket (see below).
    let mut socket = Some(stream);
    let mut deadline = Some(first_deadline);
    // The client write timeout, for every response on the connection.
    let mut write_stall = StallTimer::new(proxy.config.client_write_timeout);
    loop {
        let stream = socket
            .as_mut()
            .expect("the socket is back between requests");
        // Later heads have the timeout from when they are waited for.
        let deadline = deadline
            .take()
            .unwrap_or_else(|| Instant::now() + proxy.config.header_read_timeout);
        let waited = next_request(proxy, stream, &mut buf, &mut head_timer, deadline, drain);
        let Served {
            mut request,
            close: client_close,
            upgrade,
            body: length,
        } = match waited.await {
            Next::Request(served) => served,
            Next::HandOff => return Ended::HandOff(take(&mut socket), buf.freeze()),
            Next::Closed => return Ended::Closed,
        };
        let method = request.method().clone();
        // The tunnel's end of a switch, should the pipeline make one.
        let switch = upgrade.then(|| {
            let (switch, own) = OwnUpgrade::pair();
            request.extensions_mut().insert(own);
            switch
        });
        // A body is read by the pipeline from the socket, which comes back
        // once the body is gone (with the service's future, at the latest).
        let lent = (length > 0).then(|| {
            let early = usize::try_from(length).map_or(buf.len(), |n| n.min(buf.len()));
            let early = buf.split_to(early).freeze();
            let (body, lent) = LengthBody::new(take(&mut socket), early, length);
            *request.body_mut() = Some(ClientBody::Own(body));
            lent
        });
        // One call site: the pipeline's future is built in place.
        let Ok(response) = service::handle(proxy.clone(), conn.clone(), request).await;
        let mut body_unread = false;
        if let Some(lent) = lent {
            let Ok(lent) = Arc::try_unwrap(lent) else {
                // A body outliving its exchange: nothing to answer with.
                tracing::warn!("request body still held after its response; closing");
                return Ended::Closed;
            };
            body_unread = lent.unread() > 0;
            socket = Some(lent.stream);
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let stream = take(&mut socket);
            return switch_protocols(stream, &mut write_stall, out, buf, response, switch).await;
        }
        // Unread body bytes would be taken for the next request.
        let close = client_close || body_unread || drain.has_begun();
        let stream = socket
            .as_mut()
            .expect("the socket is back after the exchange");
        let mut writer = WriteStall::new(&mut *stream, &mut write_stall);
        match write_response(&mut writer, &mut out, response, &method, close).await {
            Ok(true) if !close && !drain.has_begun() => {}
            Ok(_) if body_unread => {
                // The client may still be sending the body: a plain close
                // would reset the connection under the answer.
                linger::close(stream).await;
                return Ended::Closed;
            }
            Ok(_) => {
                let _ = stream.shutdown().await;
                return Ended::Closed;
            }
            Err(error) => {
                tracing::debug!(remote = %conn.remote, %error, "client connection ended");
                return Ended::Closed;
            }
        }
        if out.capacity() > IDLE_OUT_CAPACITY {
            // Room a large head or a coalesced body took: not held while
            // the connection waits for its next request.
            out = Vec::new();
        }
    }
}

enum Next {
    Request(Served),
    HandOff,
    Closed,
}

/// Reads until `buf` starts with a whole head, by `deadline`.
async fn next_request(
    proxy: &Proxy,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timer: &mut Option<ReusedSleep>,
    deadline: Instant,
    drain: &Drain,
) -> Next {
    let max_head = proxy.config.max_header_bytes;
    let mut timer_set = false;
    loop {
        // Between keep-alive requests the buffer is usually empty: nothing
        // to parse until the next read.
        if !buf.is_empty() {
            match request::parse(buf, max_head) {
                Head::Request(served) => return Next::Request(served),
                Head::NotOurs => return Next::HandOff,
                Head::Partial => {}
            }
        }
        if buf.capacity() - buf.len() < READ_ROOM / 4 {
            buf.reserve(READ_ROOM);
        }
        // The timer only once a read has to wait: set for this head's
        // deadline, reused from the last head's.
        if !timer_set {
            match timer {
                Some(timer) => timer.reset(deadline),
                None => *timer = Some(sleep_until(Purpose::HeaderRead, deadline)),
            }
            timer_set = true;
        }
        let timer = timer.as_mut().expect("set above");
        drain.set_idle(buf.is_empty());
        let read = tokio::select! {
            biased;
            read = stream.read_buf(buf) => read,
            () = timer => {
                tracing::debug!("client took longer than the header read timeout; closing");
                return Next::Closed;
            }
        };
        drain.set_idle(false);
        match read {
            Ok(0) | Err(_) => return Next::Closed,
            Ok(_) => {}
        }
    }
}

/// The socket, which is there whenever the loop is not lending it out.
fn take(socket: &mut Option<TcpStream>) -> TcpStream {
    socket.take().expect("the socket is not lent out")
}

/// Writes the `101` head and hands the connection, with the bytes read
/// past the request, to the tunnel waiting for it.
async fn switch_protocols(
    mut stream: TcpStream,
    write_stall: &mut StallTimer,
    mut out: Vec<u8>,
    mut buf: BytesMut,
    response: Response<ResponseBody>,
    switch: Option<oneshot::Sender<Switched>>,
) -> Ended {
    let Some(switch) = switch else {
        // The pipeline answers 101 only to an upgrade it made: not one.
        tracing::warn!("101 for a request that asked for no upgrade; closing");
        return Ended::Closed;
    };
    out.clear();
    // An upgrade is usually a connection's first request, so `out` has
    // never been grown: room at once (see `write_response`).
    out.reserve(HEAD_ROOM);
    let encoded = encode_head(
        &mut out,
        &response,
        SizeHint::with_exact(0),
        &Method::GET,
        false,
    );
    if encoded.is_err() {
        return Ended::Closed;
    }
    let mut writer = WriteStall::new(&mut stream, write_stall);
    if writer.write_all(&out).await.is_err() {
        return Ended::Closed;
    }
    let early = buf.split().freeze();
    // A tunnel that is gone by now drops the connection with the channel.
    let _ = switch.send(Switched { stream, early });
    Ended::Switched
}

/// Writes `response`; `Ok(false)` when the connection must close after
/// it (the response said so, or its body could not be sent whole).
async fn write_response(
    stream: &mut (impl AsyncWrite + Unpin),
    out: &mut Vec<u8>,
    mut response: Response<ResponseBody>,
    method: &Method,
    close: bool,
) -> io::Result<bool> {
    out.clear();
    // Room for a typical head at once, rather than grown a few bytes at a
    // time (five reallocations on a new connection); kept afterwards.
    out.reserve(HEAD_ROOM);
    let size_hint = response.body().size_hint();
    let (framing, asks_close) = match encode_head(out, &response, size_hint, method, close) {
        Ok(encoded) => encoded,
        Err(error) => {
            tracing::warn!(%error, "response not sent");
            return Ok(false);
        }
    };
    if framing == Framing::Nothing {
        // A body that is not sent is dropped, as hyper drops it: a backend
        // connection whose body was not read to its end is not reused.
        drop(response);
        stream.write_all(out).await?;
        return Ok(!asks_close);
    }
    // Polled where it is: taking the body out of the response would move
    // it.
    let mut body = Pin::new(response.body_mut());
    let mut remaining = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    loop {
        // What is ready goes into one write; before waiting for more, what
        // is there goes out.
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                stream.write_all(out).await?;
                out.clear();
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(error)) => {
                // Sent so far is all the client gets: the connection
                // closes, a chunked body without its last chunk.
                stream.write_all(out).await?;
                tracing::debug!(%error, "response body failed");
                return Ok(false);
            }
            // Trailers are not sent on: `Trailer` is hop-by-hop, and
            // without it hyper's HTTP/1 server leaves them out too.
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        if let Some(left) = remaining.as_mut() {
            let Some(rest) = left.checked_sub(data.len() as u64) else {
                tracing::warn!("response body longer than its Content-Length; closing");
                stream.write_all(out).await?;
                return Ok(false);
            };
            *left = rest;
        } else {
            out.extend_from_slice(chunk_size_line(data.len()).as_ref());
        }
        if data.len() <= COPY_LIMIT {
            out.extend_from_slice(&data);
        } else {
            stream
                .write_all_buf(&mut Buf::chain(&out[..], data))
                .await?;
            out.clear();
        }
        if remaining.is_none() {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= GATHER_LIMIT {
            // A backend whose small frames are all ready (a fast backend, a
            // slow client) would otherwise have them gathered here until
            // the runtime's budget runs out, megabytes a connection.
            stream.write_all(out).await?;
            out.clear();
        }
    }
    match remaining {
        None => last_chunk(out, &HeaderMap::new()),
        Some(0) => {}
        Some(_) => {
            stream.write_all(out).await?;
            tracing::debug!("response body shorter than its Content-Length; closing");
            return Ok(false);
        }
    }
    stream.write_all(out).await?;
    Ok(!asks_close)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proxy::h1::decode::Framing as BodyFraming;
    use crate::proxy::h1::{BackendBody, Connection};
    use crate::proxy::test_sockets::socket_pair;

    #[tokio::test]
    async fn a_body_whose_small_frames_are_all_ready_is_not_gathered_whole() {
        // 2 MiB in 8 KiB chunks, all read from the backend already.
        let (backend, _backend_peer) = socket_pair().await;
        let addr = backend.peer_addr().unwrap();
        let mut conn = Connection::new(backend, addr);
        let chunk = vec![b'x'; 8192];
        for _ in 0..256 {
            conn.read.extend_from_slice(b"2000\r\n");
            conn.read.extend_from_slice(&chunk);
            conn.read.extend_from_slice(b"\r\n");
        }
        conn.read.extend_from_slice(b"0\r\n\r\n");
        let body = BackendBody::new(BodyFraming::Chunked, conn, None);
        let response = Response::new(ResponseBody::upstream(body, Duration::from_secs(10)));

        let (mut client, mut client_peer) = socket_pair().await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client_peer.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        let mut out = Vec::new();
        let kept = write_response(&mut client, &mut out, response, &Method::GET, true).await;
        assert!(kept.is_ok());
        drop(client);
        assert!(
            reader.await.unwrap() > 256 * 8192,
            "the whole body was sent"
        );
        assert!(
            out.capacity() <= 2 * GATHER_LIMIT,
            "{} bytes held for the client at once",
            out.capacity()
        );
    }
}
