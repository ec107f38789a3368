//! The listening socket and the accept loop: connection caps (global and
//! per client address), one task per connection, and the graceful part of
//! shutdown (stop accepting, let in-flight requests end).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hyper::service::{Service, service_fn};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::client_body::ClientBody;
use super::client_io::ClientIo;
use super::headers::forwarded_for;
use super::idle_streams::{Streams, Tracked};
use super::observe::record_parser_refusal;
use super::stream_stall::Noted;
use super::timer::{self, Purpose};
use super::{ConnInfo, Proxy, h1, service};
use crate::busy_poll::{Work, note_work};

/// What a client speaking HTTP/2 with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a client speaks, as its first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// HTTP/2 with prior knowledge: the whole preface is in.
    Http2,
    /// Anything else (HTTP/1, or garbage that hyper's HTTP/1 parser
    /// answers).
    Http1,
}

impl Protocol {
    /// `None` while `first` could still become the preface.
    fn of(first: &[u8]) -> Option<Self> {
        if first.starts_with(H2_PREFACE) {
            Some(Self::Http2)
        } else if H2_PREFACE.starts_with(first) {
            None
        } else {
            Some(Self::Http1)
        }
    }
}

/// Room for a connection's first read: a typical request head whole.
/// The HTTP/1 server goes on reading into this buffer (making more room
/// when a head needs it); hyper, when it takes a connection over, is
/// given what it holds. (Waiting for readiness before making it was
/// tried: it cost one read that found nothing per connection, as many
/// calls as reading instead of peeking saves.)
const FIRST_READ: usize = 2048;

/// New connections accepted before the other tasks and the IO driver get a
/// turn (`yield_now` waits for the driver's next poll). Accepting a whole
/// burst first (up to the runtime's budget of 128) left every connection
/// of it waiting for every other's first step, so that the first
/// responses of 256 connections opened at once came all at the end.
const ACCEPT_BATCH: usize = 16;

/// Connections the kernel holds ready for an accept. std and tokio listen
/// with 128, and a burst of new clients beyond that (a deploy, a load
/// balancer failing over) had its connections refused at the handshake and
/// retried by the client a second later. nginx listens with 511, HAProxy
/// with its connection limit; the kernel caps this at `net.core.somaxconn`
/// (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`], rebindable at
/// once after a restart (`SO_REUSEADDR`, as tokio's `bind` sets it).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    bind_with(addr, false)
}

/// `count` listening sockets on one address, for the serving threads
/// ([`crate::serving`]): each has `SO_REUSEPORT`, so the kernel spreads
/// new connections over them. Returned deregistered (std sockets,
/// non-blocking), for each thread to register with its own runtime.
///
/// The kernel lets any process of the same user join a group of
/// `SO_REUSEPORT` sockets, so a second switchyard started on the same
/// address by mistake would quietly share the traffic. A plain bind first
/// makes that a clear "address in use", as it is with one listener (and
/// picks the port when `addr`'s is 0).
pub fn bind_per_thread(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let addr = {
        let probe = new_socket(addr)?;
        probe.bind(addr)?;
        probe.local_addr()?
    };
    (0..count)
        .map(|_| bind_with(addr, true)?.into_std())
        .collect()
}

fn new_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

fn bind_with(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = new_socket(addr)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What a listener does when an accept fails: out of file descriptors,
/// typically, with the connection left queued, so that retrying at once
/// would spin on the runtime. It logs `message` and backs off briefly.
/// (The admin listener does the same.)
pub async fn after_failed_accept(error: &std::io::Error, message: &'static str) {
    tracing::warn!(%error, "{message}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

impl Proxy {
    /// Accepts connections until draining begins.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut accepted_since_yield = 0;
        loop {
            if accepted_since_yield == ACCEPT_BATCH {
                accepted_since_yield = 0;
                tokio::task::yield_now().await;
            }
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = self.shutdown.draining() => break,
            };
            let (stream, remote) = match accepted {
                Ok(a) => {
                    accepted_since_yield += 1;
                    note_work();
                    a
                }
                Err(e) => {
                    after_failed_accept(&e, "accept failed").await;
                    continue;
                }
            };
            let Ok(slot) = self.connection_slots.clone().try_acquire_owned() else {
                self.metrics.connections_rejected.inc();
                tracing::debug!(%remote, "connection limit reached; closing new connection");
                continue;
            };
            let client_slot = match self.client_limits.connect(remote.ip()) {
                Ok(client_slot) => client_slot,
                Err(refusal) => {
                    self.metrics
                        .client_limit_rejections
                        .with_label_values(&[refusal.label()])
                        .inc();
                    tracing::debug!(%remote, "per-client connection limit reached; closing new connection");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            self.metrics.connections_active.inc();
            let conn = Arc::new(ConnInfo {
                remote,
                forwarded_for: forwarded_for(remote.ip()),
                _slot: slot,
                _client_slot: client_slot,
                metrics: self.metrics.clone(),
            });
            let proxy = self.clone();
            // Boxed: a large future, moved by pointer rather than by value
            // into the task.
            let serve = super::boxed_in_place(|| proxy.serve_connection(stream, conn));
            self.shutdown.tracker().spawn(Work::new(serve));
        }
    }

    async fn serve_connection(self: Arc<Self>, mut stream: TcpStream, conn: Arc<ConnInfo>) {
        // A client that connects and sends nothing gets the header read
        // timeout here. The own server's first head keeps this deadline, so
        // a client trickling its head gets one timeout, not two; hyper's
        // (for an HTTP/2 preface) starts once these first bytes are in.
        let head_deadline =
            tokio::time::Instant::now().into_std() + self.config.header_read_timeout;
        let mut first = BytesMut::with_capacity(FIRST_READ);
        // Read until the first bytes tell HTTP/1 from HTTP/2: almost always
        // the first read. A client whose first segment is a bare prefix of
        // the preface (a lone "P", say) is read on here, so that each
        // connection goes to the one server for its protocol (an HTTP/1 one
        // that hyper serves keeps a socket a tunnel can take back out, see
        // `TunnelEnd::new`).
        let protocol = loop {
            // A connection that has sent nothing is idle: draining closes
            // it at once rather than wait for its timeout.
            let read = {
                let read = pin!(timer::timeout_at(
                    Purpose::HeaderRead,
                    head_deadline,
                    stream.read_buf(&mut first),
                ));
                self.shutdown.until_draining(read).await
            };
            if !matches!(read, Some(Some(Ok(1..)))) {
                tracing::debug!(remote = %conn.remote, "client sent no request; closing");
                return;
            }
            if let Some(protocol) = Protocol::of(&first) {
                break protocol;
            }
        };
        let http2 = protocol == Protocol::Http2;
        // Most HTTP/1 requests are served here (see `h1::request`); the
        // first other one, and the rest of its connection, go to hyper.
        let (stream, first) = if http2 {
            (stream, first.freeze())
        } else {
            let drain = h1::server::Drain::default();
            let mut served = pin!(h1::server::serve(
                &self,
                &conn,
                stream,
                first,
                head_deadline,
                &drain
            ));
            let ended = match self.shutdown.until_draining(served.as_mut()).await {
                Some(ended) => ended,
                None if drain.is_idle() => return,
                None => {
                    drain.begin();
                    tokio::select! {
                        ended = served => ended,
                        () = self.shutdown.forced() => return,
                    }
                }
            };
            match ended {
                h1::server::Ended::Closed | h1::server::Ended::Switched => return,
                h1::server::Ended::HandOff(stream, read) => (stream, read),
            }
        };
        let stream = ClientIo::new(first, stream, self.config.client_write_timeout);
        let proxy = self.clone();
        let handler_conn = conn.clone();
        let service = service_fn(move |request| {
            service::handle(
                proxy.clone(),
                handler_conn.clone(),
                Box::new(request.map(|body| Some(ClientBody::Hyper(body)))),
            )
        });
        let io = TokioIo::new(stream);
        let result: Result<(), Box<dyn std::error::Error + Send + Sync>> = if http2 {
            // hyper's HTTP/2 server has no idle limit of its own: the
            // connection is shut down gracefully once it has had no open
            // stream for the header read timeout (see `idle_streams`).
            let streams = Streams::new();
            let counted = streams.clone();
            let service = service_fn(move |request| {
                let stream = counted.open();
                let answer = service.call(request);
                async move {
                    let Ok(response) = answer.await;
                    Ok::<_, Infallible>(response.map(|body| Noted::new(Tracked::new(body, stream))))
                }
            });
            // Boxed: HTTP/2 connections are rare; unboxed, every
            // connection's future would be as large as one's.
            let mut connection = Box::pin(self.http2.serve_connection(io, service));
            let idle = streams.idle_for(self.config.header_read_timeout);
            let ended: Result<(), hyper::Error> = tokio::select! {
                result = self.until_closed(connection.as_mut(), |c| c.graceful_shutdown()) => result,
                () = idle => {
                    tracing::debug!(remote = %conn.remote, "HTTP/2 connection idle; shutting it down");
                    connection.as_mut().graceful_shutdown();
                    // A graceful end waits for the client to answer a
                    // ping; one that never does would hold the connection
                    // still. Unless a stream opened meanwhile, it is
                    // dropped after as long again.
                    // (A stream the client still opens may finish first:
                    // the connection goes once it is idle again.) The
                    // connection is polled first, so the GOAWAY goes out.
                    let limit = self.config.header_read_timeout;
                    streams.restart_idle();
                    let ending = self.until_closed(connection.as_mut(), |c| c.graceful_shutdown());
                    tokio::select! {
                        biased;
                        result = ending => result,
                        () = streams.idle_for(limit) => Ok(()),
                    }
                }
            };
            ended.map_err(Into::into)
        } else {
            let connection = pin!(self.http1.serve_connection(io, service).with_upgrades());
            self.until_closed(connection, |c| c.graceful_shutdown())
                .await
                .map_err(Into::into)
        };
        if let Err(e) = result {
            // A head hyper could not parse was answered by hyper itself
            // (400, 414 or 431, then close) without reaching the pipeline:
            // count it here. An HTTP/2 preface on an HTTP/1 connection is
            // a parse error too, but hyper closes without answering it.
            if let Some(e) = e.downcast_ref::<hyper::Error>()
                && e.is_parse()
                && !e.is_parse_version_h2()
            {
                record_parser_refusal(&self.metrics);
            }
            // Clients reset and time out all the time: not an error for us.
            tracing::debug!(remote = %conn.remote, error = %e, "client connection ended");
        }
    }

    /// Drives a client connection to its end; once draining begins, lets
    /// its requests in flight finish (`graceful`) until shutdown is forced.
    ///
    /// The connection comes pinned by the caller: pinned here, it would be
    /// held twice in this future's state.
    async fn until_closed<C, E>(
        &self,
        mut connection: Pin<&mut C>,
        graceful: fn(Pin<&mut C>),
    ) -> Result<(), E>
    where
        C: Future<Output = Result<(), E>>,
    {
        if let Some(result) = self.shutdown.until_draining(connection.as_mut()).await {
            return result;
        }
        graceful(connection.as_mut());
        tokio::select! {
            result = connection.as_mut() => result,
            _ = self.shutdown.forced() => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_first_bytes_tell_http2_only_once_the_whole_preface_is_in() {
        assert_eq!(Protocol::of(H2_PREFACE), Some(Protocol::Http2));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        assert_eq!(Protocol::of(&more), Some(Protocol::Http2));
        for undecided in [&b"P"[..], b"PR", b"PRI * HTTP/2.0\r\n"] {
            assert_eq!(Protocol::of(undecided), None, "{undecided:?}");
        }
        for http1 in [
            &b"G"[..],
            b"PO",
            b"PUT / HTTP/1.1\r\n",
            b"PRI * HTTP/1.1\r\n",
        ] {
            assert_eq!(Protocol::of(http1), Some(Protocol::Http1), "{http1:?}");
        }
    }

    /// More connections at once than the 128 std and tokio listen with,
    /// and than the accept queue of a kernel whose `somaxconn` is that old
    /// default.
    const BURST: usize = 300;

    /// Connects `BURST` clients at once to `listener`, which accepts none
    /// of them while they connect: each handshake completes only if the
    /// kernel has room to queue it. (Beyond the queue's limit the
    /// connection is refused at the handshake again on each retry for as
    /// long as nothing accepts, so the guard below is a hang guard, not a
    /// measure of time.)
    async fn queued_handshakes(listener: &TcpListener) -> usize {
        let addr = listener.local_addr().unwrap();
        let connects = (0..BURST).map(|_| tokio::spawn(tokio::net::TcpStream::connect(addr)));
        let connected = tokio::time::timeout(
            Duration::from_secs(20),
            futures_util::future::join_all(connects),
        )
        .await;
        let Ok(connected) = connected else { return 0 };
        let mut streams = Vec::new();
        for stream in connected {
            streams.push(stream.unwrap().unwrap());
        }
        // Every one of them is waiting in the queue for an accept.
        for _ in 0..streams.len() {
            listener.accept().await.unwrap();
        }
        streams.len()
    }

    #[tokio::test]
    async fn a_burst_beyond_128_connections_is_queued_for_accept_not_refused() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .map_or(4096, |text| text.trim().parse().unwrap_or(4096));
        if somaxconn < BURST {
            eprintln!(
                "net.core.somaxconn is {somaxconn}: the kernel caps every backlog below {BURST}"
            );
            return;
        }
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(queued_handshakes(&listener).await, BURST);
    }
}
