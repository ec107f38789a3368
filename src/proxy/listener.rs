//! The accept loop: connection cap, one task per connection, and the
//! graceful part of shutdown (stop accepting, let in-flight requests end).

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

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
            let _ = stream.set_nodelay(true);
            self.metrics.connections_active.inc();
            let conn = Arc::new(ConnInfo {
                remote,
                _slot: slot,
                metrics: self.metrics.clone(),
            });
            let proxy = self.clone();
            self.shutdown
                .tracker()
                .spawn(proxy.serve_connection(stream, conn));
        }
    }

    async fn serve_connection(self: Arc<Self>, stream: TcpStream, conn: Arc<ConnInfo>) {
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
