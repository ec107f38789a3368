//! The accept loop: connection caps (global and per client address), one
//! task per connection, and the
//! graceful part of shutdown (stop accepting, let in-flight requests end).

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::headers::forwarded_for;
use super::observe::record_parser_refusal;
use super::{ConnInfo, Proxy, service};

impl Proxy {
    /// Accepts connections until draining begins.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = self.shutdown.draining() => break,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, typically: back off briefly
                    // rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
            self.shutdown
                .tracker()
                .spawn(proxy.serve_connection(stream, conn));
        }
    }

    async fn serve_connection(self: Arc<Self>, stream: TcpStream, conn: Arc<ConnInfo>) {
        // hyper's header read timeout starts at a request's first byte, and
        // the HTTP/1-or-2 detection before it has no timeout: a client that
        // connects and sends nothing would hold its slot for ever. It gets
        // the same limit as a slow request head.
        let mut first = [0u8; 1];
        let first_bytes =
            tokio::time::timeout(self.config.header_read_timeout, stream.peek(&mut first));
        if !matches!(first_bytes.await, Ok(Ok(n)) if n > 0) {
            tracing::debug!(remote = %conn.remote, "client sent nothing; closing");
            return;
        }
        let proxy = self.clone();
        let handler_conn = conn.clone();
        let service = service_fn(move |request| {
            service::handle(proxy.clone(), handler_conn.clone(), request)
        });
        let connection = self
            .http
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = self.shutdown.draining() => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = connection.as_mut() => result,
                    _ = self.shutdown.forced() => Ok(()),
                }
            }
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
}
