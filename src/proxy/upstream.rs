//! Talking to backends: a pooled keep-alive client for ordinary requests,
//! dedicated connections for upgrades, and the classification of failures
//! into the answer the client gets.

use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::{BodyReadTimeout, TimeoutBody};
use super::responses::LocalReply;

/// How long an idle pooled backend connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub type RequestBody = TimeoutBody<Incoming>;
pub type PooledClient = Client<HttpConnector, RequestBody>;

pub fn pooled_client(connect_timeout: Duration) -> PooledClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Opens a fresh connection for an upgrade; it is never pooled, so it is
/// released the moment its exchange ends.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TokioIo<TcpStream>, UpstreamError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(UpstreamError::ConnectTimeout),
        Ok(Err(e)) => Err(UpstreamError::Connect(e)),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(TokioIo::new(stream))
        }
    }
}

/// Why a backend exchange failed before a response head arrived.
#[derive(Debug)]
pub enum UpstreamError {
    Connect(io::Error),
    ConnectTimeout,
    ResponseTimeout,
    ClientBodyTimeout,
    Other(Box<dyn StdError + Send + Sync>),
}

impl UpstreamError {
    /// Sorts a pooled-client error by its cause.
    pub fn from_client(error: hyper_util::client::legacy::Error) -> Self {
        if caused_by::<BodyReadTimeout>(&error) {
            return Self::ClientBodyTimeout;
        }
        if error.is_connect() {
            let timed_out = source_chain(&error)
                .filter_map(|e| e.downcast_ref::<io::Error>())
                .any(|e| e.kind() == io::ErrorKind::TimedOut);
            return if timed_out {
                Self::ConnectTimeout
            } else {
                Self::Connect(io::Error::other(error.to_string()))
            };
        }
        Self::Other(Box::new(error))
    }

    pub fn from_hyper(error: hyper::Error) -> Self {
        if caused_by::<BodyReadTimeout>(&error) {
            Self::ClientBodyTimeout
        } else {
            Self::Other(Box::new(error))
        }
    }

    pub fn reply(&self) -> LocalReply {
        match self {
            Self::Connect(_) => LocalReply::UpstreamConnect,
            Self::ConnectTimeout | Self::ResponseTimeout => LocalReply::UpstreamTimeout,
            Self::ClientBodyTimeout => LocalReply::BodyTimeout,
            Self::Other(_) => LocalReply::UpstreamFailed,
        }
    }

    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::ConnectTimeout)
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::ConnectTimeout | Self::ResponseTimeout)
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect failed: {e}"),
            Self::ConnectTimeout => f.write_str("connect timed out"),
            Self::ResponseTimeout => f.write_str("response timed out"),
            Self::ClientBodyTimeout => f.write_str("client request body timed out"),
            Self::Other(e) => write!(f, "{e}"),
        }
    }
}

fn source_chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    let mut next = Some(error);
    std::iter::from_fn(move || {
        let current = next?;
        next = current.source();
        Some(current)
    })
}

fn caused_by<T: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    source_chain(error).any(|e| e.is::<T>())
}
