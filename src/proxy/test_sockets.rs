//! Loopback TCP socket pairs for the proxy's unit tests.

use tokio::net::{TcpListener, TcpStream};

/// Two ends of a loopback TCP connection.
pub async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connecting = TcpStream::connect(listener.local_addr().unwrap());
    let (accepted, connected) = tokio::join!(listener.accept(), connecting);
    (accepted.unwrap().0, connected.unwrap())
}
