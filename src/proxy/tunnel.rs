//! The tunnel: what an upgraded connection becomes after the 101.
//!
//! A [`Tunnel`] owns both connections. It copies bytes both ways,
//! propagates a half-close in each direction while the other keeps flowing,
//! and ends on a clean close by both ends, an I/O error on either side, the
//! idle timeout, the maximum lifetime or forced shutdown. Its only result
//! is a [`TunnelOutcome`], which can do nothing but be recorded in metrics
//! and at debug level in the log: there is no way back to HTTP from here.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep};
use tokio_util::sync::CancellationToken;

use super::client_io::ClientIo;
use crate::metrics::{Metrics, route_values};
use crate::route_metrics::{CloseReason, FixedLabel, TunnelBytes};
use crate::routes::Route;
use crate::shutdown::Heard;

#[derive(Debug, Clone, Copy)]
pub struct TunnelLimits {
    pub idle_timeout: Duration,
    pub max_lifetime: Option<Duration>,
}

/// Both halves of an upgraded connection.
pub struct Tunnel<C, B> {
    client: C,
    backend: B,
    limits: TunnelLimits,
    shutdown: CancellationToken,
    counters: TunnelBytes,
    /// (to the backend, to the client): see [`Tunnel::with_early_data`].
    early: (Bytes, Bytes),
}

/// One side of a tunnel: the TCP socket itself (read and written without
/// hyper's wrapper), as the backend's always is and the client's is from
/// switchyard's own HTTP/1 server or when hyper hands it back; else
/// hyper's upgraded connection.
pub enum TunnelEnd {
    Socket(TcpStream),
    Upgraded(TokioIo<Upgraded>),
}

impl TunnelEnd {
    /// The side `upgraded` was, with the bytes already read from it past
    /// the HTTP exchange (for the other side; empty when hyper keeps them
    /// in `Upgraded`, which then reads them first).
    pub fn new(upgraded: Upgraded) -> (Self, Bytes) {
        match upgraded.downcast::<TokioIo<ClientIo>>() {
            Ok(parts) => {
                let (socket, unread) = parts.io.into_inner().into_parts();
                // hyper's buffer holds what it read, which came first.
                let early = match (parts.read_buf.is_empty(), unread.is_empty()) {
                    (_, true) => parts.read_buf,
                    (true, false) => unread,
                    (false, false) => [parts.read_buf, unread].concat().into(),
                };
                (Self::Socket(socket), early)
            }
            Err(upgraded) => (Self::Upgraded(TokioIo::new(upgraded)), Bytes::new()),
        }
    }
}

impl AsyncRead for TunnelEnd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Socket(s) => Pin::new(s).poll_read(cx, buf),
            Self::Upgraded(u) => Pin::new(u).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TunnelEnd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Socket(s) => Pin::new(s).poll_write(cx, buf),
            Self::Upgraded(u) => Pin::new(u).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Socket(s) => Pin::new(s).poll_flush(cx),
            Self::Upgraded(u) => Pin::new(u).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Socket(s) => Pin::new(s).poll_shutdown(cx),
            Self::Upgraded(u) => Pin::new(u).poll_shutdown(cx),
        }
    }
}

/// How a tunnel ended. Private fields and a consuming [`record`] are the
/// whole interface: an outcome cannot become an HTTP response.
///
/// [`record`]: TunnelOutcome::record
#[must_use = "a tunnel outcome must be recorded"]
pub struct TunnelOutcome {
    reason: CloseReason,
    error: Option<io::Error>,
    client_to_backend: u64,
    backend_to_client: u64,
    duration: Duration,
}

impl TunnelOutcome {
    /// The client connection was gone before its tunnel could start.
    pub fn client_gone(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            reason: CloseReason::ClientError,
            error: Some(io::Error::other(error)),
            client_to_backend: 0,
            backend_to_client: 0,
            duration: Duration::ZERO,
        }
    }

    #[cfg(test)]
    pub fn reason(&self) -> CloseReason {
        self.reason
    }

    /// Counts the close and writes the tunnel's log line. Ordinary ends,
    /// abrupt ones included, are never logged above debug level; the access
    /// log line (when enabled) carries the close reason.
    pub fn record(self, metrics: &Metrics, route: &Route, access_log: bool) {
        let reason = self.reason.as_str();
        route.metrics.tunnels(metrics, &route.labels).count_close(
            metrics,
            &route.labels,
            self.reason,
            self.duration,
        );
        tracing::debug!(
            reason,
            error = self
                .error
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            "tunnel closed"
        );
        if access_log {
            let [ns, ingress, service] = route_values(&route.labels);
            tracing::info!(
                target: super::observe::ACCESS_TARGET,
                namespace = ns,
                ingress,
                service,
                reason,
                client_to_backend_bytes = self.client_to_backend,
                backend_to_client_bytes = self.backend_to_client,
                duration_ms = self.duration.as_secs_f64() * 1000.0,
                "tunnel closed"
            );
        }
    }
}

impl<C, B> Tunnel<C, B>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(
        client: C,
        backend: B,
        limits: TunnelLimits,
        shutdown: CancellationToken,
        counters: TunnelBytes,
    ) -> Self {
        Self {
            client,
            backend,
            limits,
            shutdown,
            counters,
            early: (Bytes::new(), Bytes::new()),
        }
    }

    /// Bytes each side sent right behind the HTTP exchange, which hyper
    /// read already: sent on before anything else.
    pub fn with_early_data(mut self, to_backend: Bytes, to_client: Bytes) -> Self {
        self.early = (to_backend, to_client);
        self
    }

    /// Copies until the tunnel ends, then reports how.
    pub async fn run(mut self) -> TunnelOutcome {
        let start = Instant::now();
        let (to_backend, to_client) = self.early;
        let TunnelBytes {
            client_to_backend,
            backend_to_client,
        } = self.counters;
        let mut up = Pipe::new(client_to_backend, to_backend);
        let mut down = Pipe::new(backend_to_client, to_client);
        let mut last_activity = start;
        let mut idle = IdleTimer::new(self.limits.idle_timeout);
        let mut lifetime: Option<Pin<Box<Sleep>>> =
            self.limits.max_lifetime.map(|d| Box::pin(sleep(d)));
        let shutdown = self.shutdown.clone();
        let mut forced = Box::pin(shutdown.cancelled());
        let mut heard = Heard::default();
        let mut up_first = false;

        let (reason, error) = poll_fn(|cx| {
            if heard.fired(cx, &shutdown, forced.as_mut()) {
                return Poll::Ready((CloseReason::Shutdown, None));
            }
            if let Some(l) = lifetime.as_mut()
                && l.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready((CloseReason::MaxLifetime, None));
            }
            let mut progress = false;
            // Each direction copies until its reader has nothing more or
            // the runtime's budget for this turn runs out, after which
            // every read finds nothing: the direction that goes first
            // changes from turn to turn, or one that is never short of data
            // would leave the other waiting for as long as it lasts.
            up_first = !up_first;
            let mut done = [false; 2];
            for up_now in [up_first, !up_first] {
                let copied = if up_now {
                    up.poll_copy(cx, &mut self.client, &mut self.backend, &mut progress)
                        .map_err(|e| e.into_close(Side::Client))
                } else {
                    down.poll_copy(cx, &mut self.backend, &mut self.client, &mut progress)
                        .map_err(|e| e.into_close(Side::Backend))
                };
                match copied {
                    Poll::Ready(Err(close)) => return Poll::Ready(close),
                    copied => done[usize::from(up_now)] = copied.is_ready(),
                }
            }
            if done == [true, true] {
                return Poll::Ready((CloseReason::Completed, None));
            }
            let now = progress.then(Instant::now);
            if let Some(now) = now {
                last_activity = now;
            }
            if idle.expired(cx, last_activity, self.limits.idle_timeout, now) {
                return Poll::Ready((CloseReason::IdleTimeout, None));
            }
            Poll::Pending
        })
        .await;

        TunnelOutcome {
            reason,
            error,
            client_to_backend: up.moved.bytes,
            backend_to_client: down.moved.bytes,
            duration: start.elapsed(),
        }
    }
}

/// A tunnel's idle timeout: a timer set for the timeout after the start
/// and moved on only when it fires, not on every byte (cheaper, and just
/// as exact), and looked at only when it may have fired.
struct IdleTimer {
    sleep: Pin<Box<Sleep>>,
    /// The waker the timer will wake, once it has been polled.
    told: Option<Waker>,
}

impl IdleTimer {
    fn new(timeout: Duration) -> Self {
        Self {
            sleep: Box::pin(sleep(timeout)),
            told: None,
        }
    }

    /// Whether the tunnel has been idle for all of `timeout` since
    /// `last_activity`. `now` is the time when the caller has just read
    /// the clock (there was activity at this wake-up): a timer that was
    /// polled with this task's waker and is not due by then cannot have
    /// fired, and polling it again would only find it pending (about 120
    /// instructions at every wake-up of a busy tunnel).
    fn expired(
        &mut self,
        cx: &mut Context<'_>,
        last_activity: Instant,
        timeout: Duration,
        now: Option<Instant>,
    ) -> bool {
        let told = self.told.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if told && now.is_some_and(|now| now < self.sleep.deadline()) {
            return false;
        }
        while self.sleep.as_mut().poll(cx).is_ready() {
            let deadline = last_activity + timeout;
            if deadline <= Instant::now() {
                return true;
            }
            self.sleep.as_mut().reset(deadline);
        }
        if !told {
            self.told = Some(cx.waker().clone());
        }
        false
    }
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Backend,
}

/// A failed read (from `source`) or write (to the other side).
enum PipeError {
    Read(io::Error),
    Write(io::Error),
}

impl PipeError {
    /// Which end failed: a pipe reads from `source` and writes to the other.
    fn into_close(self, source: Side) -> (CloseReason, Option<io::Error>) {
        let (side, error) = match (self, source) {
            (PipeError::Read(e), side) => (side, e),
            (PipeError::Write(e), Side::Client) => (Side::Backend, e),
            (PipeError::Write(e), Side::Backend) => (Side::Client, e),
        };
        let reason = match side {
            Side::Client => CloseReason::ClientError,
            Side::Backend => CloseReason::BackendError,
        };
        (reason, Some(error))
    }
}

/// The most read in one go, and the size of the per-thread buffer reads
/// go into. The buffer is per thread, not per tunnel: an idle tunnel holds
/// no memory for data.
///
/// Large reads are what make a fast tunnel: its speed is set by the
/// hand-offs (a wake-up and a system call on each side per read), not by
/// the bytes. Copying through 256 KiB moved 11-19 % more per second each
/// way than splice(2) through a pipe, which this module used for bulk data
/// before (the benchmark's tunnel figures, three before/after runs), for
/// 10-40 % more of the proxy's CPU per MB (the copies splice saves).
/// Tried again with 1 MiB pipes (`loadgen tunnels`): splice used 10-19 %
/// less of the proxy's CPU per MB but 7-22 % more of the CPU the client
/// and the backend share (a sender probably cannot reuse pages a pipe
/// still holds), and moved 12 % less. Reads of up to 1 MiB moved 2-4 %
/// more than 256 KiB ones (median of 21 paired transfers each way), within
/// the host's noise, for four times what a stalled direction may hold.
const MAX_READ: usize = 256 * 1024;

/// Where a direction's read size starts, and where it drops back to when
/// the writer does not take a whole read.
const MIN_READ: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; MAX_READ].into_boxed_slice());
}

/// What one read into the scratch buffer led to.
enum Step {
    Pending,
    /// Data was read and written on (some of it may wait in `pending`).
    Moved,
    Eof,
    Failed(PipeError),
}

/// One direction of a tunnel. Reads go into the thread's scratch buffer and
/// are written on at once; only what the writer does not take right away
/// is copied into `pending`, which also pauses reading (back-pressure). An
/// idle tunnel therefore owns no buffer at all. On end-of-stream the
/// writer's side is shut down (a half-close).
///
/// The read size grows like a window: it doubles, from [`MIN_READ`] up to
/// [`MAX_READ`], after each read that filled it and was written on whole,
/// and drops back to [`MIN_READ`] when the writer left some behind. A fast
/// transfer reads in large pieces; what a direction holds for a peer that
/// keeps pushing back is at most twice what the peer took since it last
/// pushed back ([`MIN_READ`] when it took nothing), not [`MAX_READ`] each
/// time.
struct Pipe {
    pending: Vec<u8>,
    written: usize,
    read_size: usize,
    eof: bool,
    needs_flush: bool,
    done: bool,
    moved: Moved,
}

/// What a direction has carried: kept for its outcome, and added to the
/// route's byte counter as it goes.
struct Moved {
    bytes: u64,
    counter: IntCounter,
}

impl Moved {
    fn add(&mut self, n: usize, progress: &mut bool) {
        self.bytes += n as u64;
        self.counter.inc_by(n as u64);
        *progress = true;
    }
}

impl Pipe {
    /// A direction whose first bytes are `early`.
    fn new(counter: IntCounter, early: Bytes) -> Self {
        Self {
            // A copy of just the bytes: `early` may be a view of hyper's
            // whole read buffer, which a tunnel must not keep alive.
            pending: early.to_vec(),
            written: 0,
            read_size: MIN_READ,
            eof: false,
            needs_flush: false,
            done: false,
            moved: Moved { bytes: 0, counter },
        }
    }

    fn count(&mut self, n: usize, progress: &mut bool) {
        self.moved.add(n, progress);
        self.needs_flush = true;
    }

    /// Moves data until the reader has nothing now (Pending) or has ended
    /// and the writer has been shut down (Ready).
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        progress: &mut bool,
    ) -> Poll<Result<(), PipeError>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            // First whatever the writer did not take last time.
            while self.written < self.pending.len() {
                match Pin::new(&mut *writer).poll_write(cx, &self.pending[self.written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(PipeError::Write(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        self.count(n, progress);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PipeError::Write(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !self.pending.is_empty() {
                // Drained: give the memory back rather than keep it idle.
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.eof {
                match Pin::new(&mut *writer).poll_shutdown(cx) {
                    Poll::Ready(Ok(())) => {
                        self.done = true;
                        *progress = true;
                    }
                    // The peer may already be fully gone; its other
                    // direction will tell us if that matters.
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::NotConnected => {
                        self.done = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PipeError::Write(e))),
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            match self.read_and_write(cx, reader, writer, progress) {
                Step::Moved => {}
                Step::Eof => self.eof = true,
                Step::Failed(e) => return Poll::Ready(Err(e)),
                Step::Pending => {
                    if self.needs_flush {
                        match Pin::new(&mut *writer).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.needs_flush = false,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(PipeError::Write(e))),
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// One read into the scratch buffer, written on as far as the writer
    /// takes it now; the rest is kept in `pending`.
    fn read_and_write<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        progress: &mut bool,
    ) -> Step
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut read_buf = ReadBuf::new(&mut scratch[..self.read_size]);
            match Pin::new(&mut *reader).poll_read(cx, &mut read_buf) {
                Poll::Pending => return Step::Pending,
                Poll::Ready(Err(e)) => return Step::Failed(PipeError::Read(e)),
                Poll::Ready(Ok(())) => {}
            }
            let data = read_buf.filled();
            if data.is_empty() {
                return Step::Eof;
            }
            let mut written = 0;
            while written < data.len() {
                match Pin::new(&mut *writer).poll_write(cx, &data[written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Step::Failed(PipeError::Write(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        written += n;
                        self.count(n, progress);
                    }
                    Poll::Ready(Err(e)) => return Step::Failed(PipeError::Write(e)),
                    Poll::Pending => {
                        self.pending = data[written..].to_vec();
                        self.written = 0;
                        self.read_size = MIN_READ;
                        return Step::Moved;
                    }
                }
            }
            if data.len() == self.read_size {
                self.read_size = (self.read_size * 2).min(MAX_READ);
            }
            Step::Moved
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_metrics::TunnelSeries;
    use crate::routes::RouteLabels;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    fn counters() -> TunnelBytes {
        let metrics = Metrics::new();
        TunnelSeries::new(&metrics, &RouteLabels::default()).bytes
    }

    /// A tunnel between two 64-byte in-memory pipes, running; returns its
    /// task and the client's and backend's ends.
    fn start(
        idle: Duration,
    ) -> (
        tokio::task::JoinHandle<TunnelOutcome>,
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
    ) {
        let (client, client_peer) = duplex(64);
        let (backend, backend_peer) = duplex(64);
        let tunnel = Tunnel::new(
            client,
            backend,
            limits(idle),
            CancellationToken::new(),
            counters(),
        );
        (tokio::spawn(tunnel.run()), client_peer, backend_peer)
    }

    fn limits(idle: Duration) -> TunnelLimits {
        TunnelLimits {
            idle_timeout: idle,
            max_lifetime: None,
        }
    }

    #[tokio::test]
    async fn half_close_each_way_keeps_the_other_direction_flowing() {
        let (task, mut client_peer, mut backend_peer) = start(Duration::from_secs(30));

        client_peer.write_all(b"ping").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping", "backend sees the data, then EOF");

        backend_peer
            .write_all(b"pong after half-close")
            .await
            .unwrap();
        backend_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pong after half-close");

        let outcome = task.await.unwrap();
        assert_eq!(outcome.reason(), CloseReason::Completed);
        assert_eq!(
            (outcome.client_to_backend, outcome.backend_to_client),
            (4, 21)
        );
    }

    #[tokio::test]
    async fn a_flood_one_way_does_not_hold_up_the_other_direction() {
        // Both ends hold more than the runtime lets one task move before
        // it must yield (its budget of socket operations).
        const ROOM: usize = 64 << 20;
        let (client, mut client_peer) = duplex(ROOM);
        let (backend, mut backend_peer) = duplex(ROOM);
        backend_peer.write_all(b"pong").await.unwrap();
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..32 {
            client_peer.write_all(&chunk).await.unwrap();
        }
        let (mut from_client, mut to_client) = tokio::io::split(client_peer);
        // The client keeps its side full; the backend takes it all.
        let flood = tokio::spawn(async move { while to_client.write_all(&chunk).await.is_ok() {} });
        let sink = tokio::spawn(async move {
            let mut buf = vec![0; 1 << 20];
            while backend_peer.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let tunnel = tokio::spawn(
            Tunnel::new(
                client,
                backend,
                limits(Duration::from_secs(60)),
                CancellationToken::new(),
                counters(),
            )
            .run(),
        );
        let mut pong = [0u8; 4];
        let answered =
            tokio::time::timeout(Duration::from_secs(10), from_client.read_exact(&mut pong)).await;
        flood.abort();
        sink.abort();
        tunnel.abort();
        assert!(
            matches!(answered, Ok(Ok(_))),
            "the backend's message waited behind the client's flood"
        );
        assert_eq!(&pong, b"pong");
    }

    /// Sends 4 MB from one socket, through `pipe`, to another; returns
    /// the pipe afterwards, the bytes sent and the bytes that arrived.
    async fn copy_bulk_between_sockets(pipe: Pipe) -> (Pipe, Vec<u8>, Vec<u8>) {
        use crate::proxy::test_sockets::socket_pair;
        let (source, from) = socket_pair().await;
        let (to, sink) = socket_pair().await;
        copy_bulk(pipe, (source, from), (to, sink)).await
    }

    /// Sends 4 MB into `source`, through `pipe` from `from` to `to`, and
    /// reads what comes out of `sink`.
    async fn copy_bulk<S, F, T, K>(
        mut pipe: Pipe,
        (mut source, mut from): (S, F),
        (mut to, mut sink): (T, K),
    ) -> (Pipe, Vec<u8>, Vec<u8>)
    where
        S: AsyncWrite + Unpin + Send + 'static,
        F: AsyncRead + Unpin,
        T: AsyncWrite + Unpin,
        K: AsyncRead + Unpin + Send + 'static,
    {
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            source.write_all(&sent).await.unwrap();
            source.shutdown().await.unwrap();
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            sink.read_to_end(&mut got).await.unwrap();
            got
        });
        let copied = poll_fn(|cx| pipe.poll_copy(cx, &mut from, &mut to, &mut false)).await;
        assert!(copied.is_ok(), "the copy ended cleanly");
        writer.await.unwrap();
        (pipe, data, reader.await.unwrap())
    }

    #[tokio::test]
    async fn bulk_data_between_streams_that_are_not_sockets_arrives_whole() {
        let pipe = Pipe::new(counters().client_to_backend, Bytes::new());
        let (pipe, data, got) = copy_bulk(pipe, duplex(1 << 20), duplex(1 << 20)).await;
        assert!(got == data, "every byte, in order");
        assert_eq!(pipe.moved.bytes, data.len() as u64);
    }

    #[tokio::test]
    async fn bulk_data_between_sockets_arrives_whole_early_data_first() {
        let pipe = Pipe::new(counters().client_to_backend, Bytes::from_static(b"early "));
        let (pipe, data, got) = copy_bulk_between_sockets(pipe).await;
        assert_eq!(&got[..6], b"early ");
        assert!(got[6..] == data[..], "every byte, in order");
        assert_eq!(pipe.moved.bytes, 6 + data.len() as u64);
        assert!(pipe.pending.is_empty(), "nothing held once drained");
    }

    /// `len` patterned bytes, already written (and ended) into an
    /// in-memory stream; returns the data and the end to read them from.
    async fn queued(len: u32) -> (Vec<u8>, tokio::io::DuplexStream) {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let (mut source, from) = duplex(len as usize);
        source.write_all(&data).await.unwrap();
        source.shutdown().await.unwrap();
        (data, from)
    }

    #[tokio::test]
    async fn reads_grow_to_the_largest_size_while_the_writer_takes_them_whole() {
        let (data, mut from) = queued(4_000_000).await;
        let (mut to, mut sink) = duplex(8 << 20);
        let mut pipe = Pipe::new(counters().client_to_backend, Bytes::new());
        assert_eq!(pipe.read_size, MIN_READ);
        let copied = poll_fn(|cx| pipe.poll_copy(cx, &mut from, &mut to, &mut false)).await;
        assert!(copied.is_ok());
        assert_eq!(pipe.read_size, MAX_READ, "doubled after every full read");
        drop(to);
        let mut got = Vec::new();
        sink.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "every byte, in order");
    }

    #[tokio::test]
    async fn a_writer_that_pushes_back_is_read_for_in_small_pieces_again() {
        let (data, mut from) = queued(1_000_000).await;
        // Takes one smallest read, then pushes back until drained.
        let (mut to, mut sink) = duplex(MIN_READ);
        let mut pipe = Pipe::new(counters().client_to_backend, Bytes::new());
        let step = poll_fn(|cx| Poll::Ready(pipe.poll_copy(cx, &mut from, &mut to, &mut false)));
        assert!(step.await.is_pending(), "waits for the writer");
        // The first read went on whole, so the second was twice as large
        // and is what the writer left.
        assert_eq!(pipe.pending.len(), 2 * MIN_READ);
        assert_eq!(pipe.read_size, MIN_READ, "back to the smallest read");

        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            sink.read_to_end(&mut got).await.unwrap();
            got
        });
        let copied = poll_fn(|cx| pipe.poll_copy(cx, &mut from, &mut to, &mut false)).await;
        assert!(copied.is_ok());
        drop(to);
        assert!(reader.await.unwrap() == data, "every byte, in order");
    }

    #[tokio::test]
    async fn a_slow_reader_gets_every_byte_in_order() {
        // 64-byte pipes take far less than one read: most writes are
        // partial, so the pending path carries the data.
        let (task, mut client_peer, mut backend_peer) = start(Duration::from_secs(30));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client_peer.write_all(&sent).await.unwrap();
            client_peer.shutdown().await.unwrap();
            client_peer
        });
        let mut got = Vec::new();
        backend_peer.read_to_end(&mut got).await.unwrap();
        assert!(
            got == data,
            "{} bytes arrived, in order: {}",
            got.len(),
            got.len() == data.len()
        );
        backend_peer.shutdown().await.unwrap();
        drop(writer.await.unwrap());
        let outcome = task.await.unwrap();
        assert_eq!(outcome.client_to_backend, data.len() as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_closes_after_the_idle_timeout_not_before() {
        let (task, mut client_peer, mut backend_peer) = start(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(8)).await;
        client_peer.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        backend_peer.read_exact(&mut one).await.unwrap();
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(
            !task.is_finished(),
            "activity at 8s pushed the deadline to 18s"
        );
        let outcome = task.await.unwrap();
        assert_eq!(outcome.reason(), CloseReason::IdleTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_wakes_the_waker_it_was_last_looked_at_with() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::Wake;
        struct Wakes(AtomicUsize);
        impl Wake for Wakes {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let first = std::sync::Arc::new(Wakes(AtomicUsize::new(0)));
        let second = std::sync::Arc::new(Wakes(AtomicUsize::new(0)));
        let (first_waker, second_waker) = (Waker::from(first.clone()), Waker::from(second.clone()));
        let start = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut idle = IdleTimer::new(timeout);
        let mut cx = Context::from_waker(&first_waker);
        assert!(!idle.expired(&mut cx, start, timeout, Some(start)));
        // Activity before the deadline, seen by another task's waker: the
        // timer must be told of that waker, not skipped as not due.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut cx = Context::from_waker(&second_waker);
        assert!(!idle.expired(&mut cx, start, timeout, Some(Instant::now())));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert!(idle.expired(&mut cx, start, timeout, None));
    }

    /// A running tunnel between two in-memory peers, with the token that
    /// forces it closed.
    fn cancellable_tunnel() -> (
        DuplexStream,
        DuplexStream,
        CancellationToken,
        tokio::task::JoinHandle<TunnelOutcome>,
    ) {
        let (client, client_peer) = duplex(64);
        let (backend, backend_peer) = duplex(64);
        let token = CancellationToken::new();
        let tunnel = Tunnel::new(
            client,
            backend,
            limits(Duration::from_secs(30)),
            token.clone(),
            counters(),
        );
        let task = tokio::spawn(tunnel.run());
        (client_peer, backend_peer, token, task)
    }

    #[tokio::test]
    async fn forced_shutdown_closes_with_reason_shutdown() {
        let (_client_peer, _backend_peer, token, task) = cancellable_tunnel();
        token.cancel();
        assert_eq!(task.await.unwrap().reason(), CloseReason::Shutdown);
    }

    #[tokio::test]
    async fn forced_shutdown_closes_a_tunnel_woken_many_times_before() {
        // The shutdown signal is heard once and then only looked at: a
        // tunnel that carried traffic since still closes when it fires.
        let (mut client_peer, mut backend_peer, token, task) = cancellable_tunnel();
        let mut echoed = [0u8; 4];
        for _ in 0..20 {
            client_peer.write_all(b"ping").await.unwrap();
            backend_peer.read_exact(&mut echoed).await.unwrap();
            backend_peer.write_all(&echoed).await.unwrap();
            client_peer.read_exact(&mut echoed).await.unwrap();
        }
        token.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the tunnel heard the shutdown");
        assert_eq!(outcome.unwrap().reason(), CloseReason::Shutdown);
    }

    #[tokio::test(start_paused = true)]
    async fn max_lifetime_closes_a_busy_tunnel() {
        let (client, mut client_peer) = duplex(64);
        let (backend, _backend_peer) = duplex(1 << 20);
        let tunnel = Tunnel::new(
            client,
            backend,
            TunnelLimits {
                idle_timeout: Duration::from_secs(30),
                max_lifetime: Some(Duration::from_secs(5)),
            },
            CancellationToken::new(),
            counters(),
        );
        let task = tokio::spawn(tunnel.run());
        for _ in 0..10 {
            let _ = client_peer.write_all(b"busy").await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(task.await.unwrap().reason(), CloseReason::MaxLifetime);
    }

    #[tokio::test]
    async fn a_vanished_backend_is_a_backend_error() {
        let (task, mut client_peer, backend_peer) = start(Duration::from_secs(30));
        drop(backend_peer);
        client_peer.write_all(b"into the void").await.unwrap();
        let outcome = task.await.unwrap();
        assert_eq!(outcome.reason(), CloseReason::BackendError);
    }
}
