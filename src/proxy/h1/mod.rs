//! HTTP/1.1 on both sides: to backends, driven inside the request's own
//! task, and from clients for the common request.
//!
//! hyper's client runs every backend connection as a task of its own and
//! hands each request and response across channels: two more wake-ups and
//! a dispatcher per exchange, a third of the proxy's user time per request
//! when it was measured. Here the task that serves the client writes the
//! request and reads the response head itself, and the response body
//! reads the rest off the socket as the client's connection asks for it.
//!
//! - [`encode`]: the request head and chunked request bodies;
//! - [`decode`]: the response head, body framing and chunked decoding
//!   (httparse parses; the framing rules are RFC 9112's);
//! - [`connection`]: one backend connection and its exchange;
//! - [`reader`]: a response body, which gives its connection back to the
//!   pool when it has been read to its end.
//!
//! And HTTP/1.1 from clients, for requests without a body or with one of
//! a plain `Content-Length` (the rest go to hyper's server):
//!
//! - [`request`]: a client's request head, into the pipeline's request;
//! - [`respond`]: a response head and its body's framing;
//! - [`server`]: one client connection, until it closes or is handed to
//!   hyper.

pub mod connection;
pub mod decode;
pub mod encode;
pub mod reader;
pub mod request;
pub mod respond;
pub mod server;

pub use connection::{Connection, ExchangeError, Outgoing};
pub use decode::ResponseHead;
pub use encode::{ProxyFields, RequestFraming, UpgradeOffer};
pub use reader::BackendBody;

/// A backend sent something that is not a well-formed HTTP/1 response.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {} bytes", decode::MAX_HEAD_BYTES)]
    HeadTooLarge,
    #[error("more than {} response header fields", decode::MAX_HEADERS)]
    TooManyHeaders,
    #[error("invalid status code {0}")]
    Status(u16),
    #[error("invalid header name")]
    HeaderName,
    #[error("invalid header value")]
    HeaderValue,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingOnHttp10,
    #[error("malformed chunked body")]
    Chunk,
    #[error("malformed or oversized trailer section")]
    Trailers,
}
