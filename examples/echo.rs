//! The example backend: an HTTP echo and a WebSocket echo on one port.
//!
//! `GET /anything` answers with the request line and the headers it
//! received (so you can see what switchyard forwards); a WebSocket upgrade
//! on any path echoes every message back.
//!
//! Usage: `cargo run --example echo -- [ADDR]` (default 127.0.0.1:9000).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[path = "shared/websocket_echo.rs"]
mod websocket_echo;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("echo backend listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service =
                service_fn(|request| async move { Ok::<_, Infallible>(respond(request)) });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn respond(mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(switching) = websocket_echo::accept(&mut request) {
        return switching;
    }

    let mut text = format!(
        "{} {} {:?}\n",
        request.method(),
        request.uri(),
        request.version()
    );
    for (name, value) in request.headers() {
        text += &format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes()));
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::from(text))
        .expect("valid response")
}
