//! Keep-alive connections to backends, for ordinary requests: HTTP/1.1
//! connections kept per endpoint address and used again once the
//! exchange on them has ended.
//!
//! A connection goes back to the pool when the response body it carried
//! has been read to its end ([`Checkin`], which the body holds); a
//! response whose body is abandoned (the client went away) takes its
//! connection with it, closed. An idle connection is checked with one
//! non-blocking read before it is used: one the backend has closed
//! meanwhile (the keep-alive race every proxy meets) is dropped and the
//! request goes on another. A backend that closes just as a request
//! arrives is caught after the fact: a request that can be sent again
//! (bodiless and idempotent) is, on a fresh connection. Idle connections
//! are closed after [`IDLE_TIMEOUT`].
//!
//! Keyed by socket address: no URI to format, parse and hash per request.
//! The exchange itself runs in the request's task ([`super::h1`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::Response;

use super::body::UpstreamBody;
use super::h1::{BackendBody, Connection, Outgoing};
use super::upstream::{UpstreamError, connect};

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint; beyond that, a connection whose
/// exchange ended is closed. Bounds what a burst leaves behind.
pub const MAX_IDLE_PER_ENDPOINT: usize = 512;

/// The pool. Shared by every connection of the proxy.
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>>,
    connect_timeout: Duration,
    /// The longest a backend may take no request bytes.
    write_stall: Duration,
    sweeper_started: AtomicBool,
}

struct Idle {
    conn: Box<Connection>,
    since: Instant,
}

impl Idle {
    fn fresh(&self, now: Instant) -> bool {
        now.duration_since(self.since) < IDLE_TIMEOUT
    }
}

impl Pool {
    pub fn new(connect_timeout: Duration, write_stall: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::default(),
            connect_timeout,
            write_stall,
            sweeper_started: AtomicBool::new(false),
        })
    }

    /// Sends `request` to `addr` on a pooled connection or a new one, and
    /// returns the response once its head is in. Its body returns the
    /// connection when it has been read to its end.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        request: &Outgoing<'_>,
        body: UpstreamBody,
    ) -> Result<Response<BackendBody>, UpstreamError> {
        let replayable = matches!(body, UpstreamBody::Empty) && request.method.is_idempotent();
        let mut unsent = Some(body);
        loop {
            let (mut conn, reused) = match self.checkout(addr) {
                Some(conn) => (conn, true),
                None => (
                    Connection::new(connect(addr, self.connect_timeout).await?, addr),
                    false,
                ),
            };
            let body = unsent.take().expect("a body for each attempt");
            let sent = conn.exchange(request, body, self.write_stall).await;
            match sent {
                Ok((head, whole)) => {
                    let checkin = Checkin {
                        pool: Arc::downgrade(self),
                    };
                    let checkin = (whole && head.keep_alive).then_some(checkin);
                    return Ok(
                        head.into_response(|framing| BackendBody::new(framing, conn, checkin))
                    );
                }
                // The backend closed this kept-alive connection as the
                // request went out: nothing reached it.
                Err(error) if reused && replayable && error.is_stale_connection() => {
                    unsent = Some(UpstreamBody::Empty);
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The most recently used idle connection to `addr` that the backend
    /// has not closed.
    fn checkout(&self, addr: SocketAddr) -> Option<Box<Connection>> {
        loop {
            let idle = {
                let mut pool = self.idle.lock().expect("pool lock");
                let now = Instant::now();
                let list = pool.get_mut(&addr)?;
                loop {
                    let candidate = list.pop()?;
                    if candidate.fresh(now) {
                        break candidate;
                    }
                }
            };
            if idle.conn.is_open() {
                return Some(idle.conn);
            }
        }
    }

    fn checkin(self: &Arc<Self>, conn: Box<Connection>) {
        let addr = conn.addr();
        {
            let mut pool = self.idle.lock().expect("pool lock");
            let list = pool.entry(addr).or_default();
            if list.len() >= MAX_IDLE_PER_ENDPOINT {
                return;
            }
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        if !self.sweeper_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Closes idle connections past their time or closed by their backend
    /// (which frees their descriptors), and forgets endpoints left with
    /// none.
    fn sweep_once(&self) {
        let now = Instant::now();
        let mut pool = self.idle.lock().expect("pool lock");
        pool.retain(|_, list| {
            list.retain(|idle| idle.fresh(now) && idle.conn.is_open());
            !list.is_empty()
        });
    }

    /// Idle connections now, for tests.
    #[cfg(test)]
    fn idle_count(&self, addr: SocketAddr) -> usize {
        let pool = self.idle.lock().expect("pool lock");
        pool.get(&addr).map_or(0, Vec::len)
    }
}

/// Runs while the pool exists: a connection idle for longer than
/// [`IDLE_TIMEOUT`] is closed within a third of that again.
async fn sweep(pool: Weak<Pool>) {
    let mut ticks = tokio::time::interval(IDLE_TIMEOUT / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep_once();
    }
}

/// Where a connection goes back when the response body it carries has
/// been read to its end; dropped (and the connection closed) otherwise.
pub struct Checkin {
    pool: Weak<Pool>,
}

impl Checkin {
    /// The exchange on `conn` is complete: it may carry another.
    pub fn release(self, conn: Box<Connection>) {
        if let Some(pool) = self.pool.upgrade() {
            pool.checkin(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::h1::{ProxyFields, RequestFraming};
    use http::HeaderValue;
    use http::request::Parts;
    use http::uri::PathAndQuery;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A backend that answers every request on a connection with a
    /// fixed response, and counts the connections it accepted.
    async fn backend(response: &'static [u8]) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if stream.write_all(response).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get() -> Parts {
        let request = http::Request::builder()
            .uri("/")
            .header("host", "example.com")
            .body(())
            .unwrap();
        request.into_parts().0
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// Sends a GET through the pool.
    async fn send(
        pool: &Arc<Pool>,
        addr: SocketAddr,
    ) -> Result<Response<BackendBody>, UpstreamError> {
        send_with(pool, addr, &get(), UpstreamBody::Empty).await
    }

    async fn send_with(
        pool: &Arc<Pool>,
        addr: SocketAddr,
        parts: &Parts,
        body: UpstreamBody,
    ) -> Result<Response<BackendBody>, UpstreamError> {
        static HOST: HeaderValue = HeaderValue::from_static("example.com");
        static CLIENT: HeaderValue = HeaderValue::from_static("127.0.0.1");
        static ID: HeaderValue = HeaderValue::from_static("the-id");
        let outgoing = Outgoing {
            method: &parts.method,
            headers: &parts.headers,
            target: &PathAndQuery::from_static("/"),
            framing: RequestFraming::None,
            proxy_fields: ProxyFields {
                host: &HOST,
                forwarded_for: &CLIENT,
                forwarded_proto: "http",
                request_id: &ID,
                upgrade: None,
            },
        };
        pool.send(addr, &outgoing, body).await
    }

    /// One request through the pool, its body read to the end; returns
    /// the body.
    async fn round_trip(pool: &Arc<Pool>, addr: SocketAddr) -> bytes::Bytes {
        let response = send(pool, addr).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_used_again_once_its_response_body_was_read() {
        let (addr, accepted) = backend(OK).await;
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(5));
        for _ in 0..3 {
            assert_eq!(&round_trip(&pool, addr).await[..], b"ok");
            assert_eq!(pool.idle_count(addr), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_response_that_arrived_whole_frees_its_connection_at_once() {
        let (addr, _) = backend(OK).await;
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(5));
        let response = send(&pool, addr).await.unwrap();
        assert_eq!(pool.idle_count(addr), 1, "back before its body is read");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    #[tokio::test]
    async fn a_connection_whose_body_was_abandoned_is_not_used_again() {
        // Promises four bytes, sends two: the body is never over.
        let (addr, accepted) = backend(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nok").await;
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(5));
        drop(send(&pool, addr).await.unwrap());
        assert_eq!(pool.idle_count(addr), 0);
        drop(send(&pool, addr).await.unwrap());
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closes_is_not_used_again() {
        let (addr, accepted) =
            backend(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(5));
        for _ in 0..2 {
            round_trip(&pool, addr).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_backend_drops_without_a_word_is_replaced() {
        // Answers one request per connection, then closes it although the
        // response promised keep-alive.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(OK).await;
            }
        });
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(5));
        for _ in 0..3 {
            assert_eq!(&round_trip(&pool, addr).await[..], b"ok");
        }
    }

    /// A backend that answers the first request on each connection and
    /// closes the connection when the second one arrives, unanswered: the
    /// keep-alive race, every time.
    async fn closes_on_the_second_request() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream.write_all(OK).await;
                    let _ = stream.read(&mut buf).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_replayable_request_the_backend_closed_on_goes_again_on_a_fresh_connection() {
        let addr = closes_on_the_second_request().await;
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(&round_trip(&pool, addr).await[..], b"ok");
        assert_eq!(&round_trip(&pool, addr).await[..], b"ok", "sent again");
    }

    #[tokio::test]
    async fn a_request_that_is_not_replayable_is_not_sent_twice() {
        let addr = closes_on_the_second_request().await;
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(5));
        round_trip(&pool, addr).await;
        let mut post = get();
        post.method = http::Method::POST;
        let Err(error) = send_with(&pool, addr, &post, UpstreamBody::Empty).await else {
            panic!("a POST was sent again");
        };
        assert!(
            error.is_retryable(),
            "another endpoint may still take it: {error}"
        );
    }

    #[tokio::test]
    async fn idle_connections_past_their_time_are_closed_by_the_sweep() {
        let (addr, _) = backend(OK).await;
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(5));
        round_trip(&pool, addr).await;
        pool.sweep_once();
        assert_eq!(pool.idle_count(addr), 1, "a fresh connection stays");
        pool.idle.lock().unwrap().get_mut(&addr).unwrap()[0].since -= IDLE_TIMEOUT;
        pool.sweep_once();
        assert_eq!(pool.idle_count(addr), 0);
    }

    #[tokio::test]
    async fn idle_connections_their_backend_closed_are_closed_by_the_sweep() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(OK).await;
            drop(stream);
            let _ = closed_tx.send(());
        });
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(5));
        round_trip(&pool, addr).await;
        closed_rx.await.unwrap();
        // The close is seen once it has crossed the loopback.
        for _ in 0..100 {
            pool.sweep_once();
            if pool.idle_count(addr) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("a connection its backend closed stayed in the pool");
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(5));
        let Err(error) = send(&pool, addr).await else {
            panic!("a closed port answered");
        };
        assert!(error.is_connect(), "{error}");
    }
}
