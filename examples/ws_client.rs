//! A small WebSocket client for trying switchyard's upgrade path: sends
//! each argument as a text message and prints what comes back.
//!
//! Usage: `cargo run --example ws_client -- URL [MESSAGE]...`, e.g.
//! `cargo run --example ws_client -- ws://127.0.0.1:8080/ws hello world`
//! (the Host header is taken from `--host NAME` if given first).

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let host = match args.first().map(String::as_str) {
        Some("--host") if args.len() >= 2 => {
            let host = args.remove(1);
            args.remove(0);
            Some(host)
        }
        _ => None,
    };
    let Some(url) = args.first().cloned() else {
        eprintln!("usage: ws_client [--host NAME] URL [MESSAGE]...");
        std::process::exit(2);
    };
    let mut request = url.as_str().into_client_request()?;
    if let Some(host) = host {
        request.headers_mut().insert("host", host.parse()?);
    }
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await?;
    println!("connected: {}", response.status());
    for text in &args[1..] {
        ws.send(Message::text(text.as_str())).await?;
        match ws.next().await {
            Some(Ok(reply)) => println!("echo: {}", reply.to_text().unwrap_or("<binary>")),
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    ws.close(None).await?;
    Ok(())
}
