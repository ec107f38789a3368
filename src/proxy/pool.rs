//! Keep-alive connections to backends, for ordinary requests: HTTP/1.1
//! connections kept per endpoint address and used again once the
//! exchange on them has ended.
//!
//! A connection goes back to the pool when the response body it carried
//! has been read to its end ([`Checkin`], which the response body holds);
//! a response whose body is abandoned (the client went away) takes its
//! connection with it, closed. A request sent on a pooled connection that
//! the backend closed meanwhile (the keep-alive race every proxy meets) is
//! sent again on a fresh connection, which is safe because hyper hands it
//! back unsent. Idle connections are closed after [`IDLE_TIMEOUT`].
//!
//! Hand-rolled over hyper's connection API rather than hyper-util's
//! general-purpose client: keyed by socket address (no URI to format,
//! parse and hash per request) and returned to the pool by the body that
//! ends the exchange (no background task per request to wait for that).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use super::body::UpstreamBody;
use super::upstream::{StallGuard, UpstreamError, connect};

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint; beyond that, a connection whose
/// exchange ended is closed. Bounds what a burst leaves behind.
pub const MAX_IDLE_PER_ENDPOINT: usize = 512;

type Sender = http1::SendRequest<UpstreamBody>;

/// The pool. Shared by every connection of the proxy.
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>>,
    connect_timeout: Duration,
    /// See [`StallGuard`].
    write_stall: Duration,
    sweeper_started: AtomicBool,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

impl Idle {
    fn usable(&self, now: Instant) -> bool {
        !self.sender.is_closed() && now.duration_since(self.since) < IDLE_TIMEOUT
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

    /// Sends `request` (its URI in origin form, `Host` set) to `addr` on a
    /// pooled connection or a new one. The [`Checkin`] returns the
    /// connection when the response body has been read to its end.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut request: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Checkin), UpstreamError> {
        loop {
            let (mut sender, reused) = match self.checkout(addr).await {
                Some(sender) => (sender, true),
                None => (self.open(addr).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let checkin = Checkin {
                        pool: Arc::downgrade(self),
                        addr,
                        sender: Some(sender),
                    };
                    return Ok((response, checkin));
                }
                Err(mut error) => match error.take_message() {
                    // Not sent: a pooled connection closed under us. A new
                    // connection's failure is the backend's answer.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(UpstreamError::from_hyper(error.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection to `addr` that is still
    /// open, once it is ready for another request.
    async fn checkout(&self, addr: SocketAddr) -> Option<Sender> {
        loop {
            let mut idle = {
                let mut pool = self.idle.lock().expect("pool lock");
                let now = Instant::now();
                let list = pool.get_mut(&addr)?;
                loop {
                    let candidate = list.pop()?;
                    if candidate.usable(now) {
                        break candidate;
                    }
                }
            };
            // Checked in at the end of its response body, the connection
            // may not have noticed yet that the exchange is over; it is
            // ready within a turn of its task, or it is closing.
            if idle.sender.ready().await.is_ok() {
                return Some(idle.sender);
            }
        }
    }

    async fn open(&self, addr: SocketAddr) -> Result<Sender, UpstreamError> {
        let stream = connect(addr, self.connect_timeout).await?;
        let io = StallGuard::new(stream, self.write_stall);
        let (sender, connection) = http1::handshake::<_, UpstreamBody>(io)
            .await
            .map_err(UpstreamError::from_hyper)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "backend connection ended");
            }
        });
        Ok(sender)
    }

    fn checkin(self: &Arc<Self>, addr: SocketAddr, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        {
            let mut pool = self.idle.lock().expect("pool lock");
            let list = pool.entry(addr).or_default();
            if list.len() >= MAX_IDLE_PER_ENDPOINT {
                return;
            }
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
        if !self.sweeper_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Closes idle connections past their time and forgets closed ones
    /// (and endpoints left with none).
    fn sweep_once(&self) {
        let now = Instant::now();
        let mut pool = self.idle.lock().expect("pool lock");
        pool.retain(|_, list| {
            list.retain(|idle| idle.usable(now));
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

/// The right to put a connection back in the pool, held by the response
/// body it carries: used when that body has been read to its end, dropped
/// (and the connection with it) otherwise.
pub struct Checkin {
    pool: Weak<Pool>,
    addr: SocketAddr,
    sender: Option<Sender>,
}

impl Checkin {
    /// The exchange is complete: the connection may carry another.
    pub fn release(&mut self) {
        if let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) {
            pool.checkin(self.addr, sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn get() -> Request<UpstreamBody> {
        Request::builder()
            .uri("/")
            .header("host", "example.com")
            .body(UpstreamBody::Empty)
            .unwrap()
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// One request through the pool, its body read to the end and the
    /// connection checked in; returns the body.
    async fn round_trip(pool: &Arc<Pool>, addr: SocketAddr) -> bytes::Bytes {
        let (response, mut checkin) = pool.send(addr, get()).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        checkin.release();
        body
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
    async fn a_connection_whose_body_was_abandoned_is_not_used_again() {
        let (addr, accepted) = backend(OK).await;
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(5));
        let (response, checkin) = pool.send(addr, get()).await.unwrap();
        drop((response, checkin));
        assert_eq!(pool.idle_count(addr), 0);
        round_trip(&pool, addr).await;
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
    async fn a_refused_connect_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(5));
        let Err(error) = pool.send(addr, get()).await else {
            panic!("a closed port answered");
        };
        assert!(error.is_connect(), "{error}");
    }
}
