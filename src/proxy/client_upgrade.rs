//! The client's side of a protocol switch: where its connection comes
//! from once the proxy's `101` has been written. A request switchyard's
//! own HTTP/1 server parsed gets the socket and what the client sent
//! behind the request from that server ([`OwnUpgrade`]); one hyper's
//! server parsed gets it from hyper (`hyper::upgrade::on`).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::ClientRequest;
use super::tunnel::TunnelEnd;

/// A client connection after its `101`: the socket, and the bytes the
/// client sent behind its request (the new protocol's first).
pub struct Switched {
    pub stream: TcpStream,
    pub early: Bytes,
}

/// The receiving end, put in a request's extensions by the own server.
/// (Extensions must be `Clone`, hence the shared slot, as in hyper's
/// `OnUpgrade`; only the first taker gets the connection.)
#[derive(Clone)]
pub struct OwnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Switched>>>>);

impl OwnUpgrade {
    /// The pair: the server keeps the sender and sends the connection
    /// once the `101` is written; dropping it unsent means no switch.
    pub fn pair() -> (oneshot::Sender<Switched>, Self) {
        let (sender, receiver) = oneshot::channel();
        (sender, Self(Arc::new(Mutex::new(Some(receiver)))))
    }
}

/// Where a request's client connection comes from after a `101`.
pub enum ClientUpgrade {
    Hyper(OnUpgrade),
    Own(Option<oneshot::Receiver<Switched>>),
}

/// The client connection did not come: the client went away, or the
/// server closed its connection instead of switching.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeGone {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error("client connection closed before the switch")]
    Own,
}

impl ClientUpgrade {
    /// Taken before the request is consumed.
    pub fn of(request: &mut ClientRequest) -> Self {
        match request.extensions_mut().remove::<OwnUpgrade>() {
            Some(OwnUpgrade(slot)) => Self::Own(slot.lock().ok().and_then(|mut r| r.take())),
            None => Self::Hyper(hyper::upgrade::on(request)),
        }
    }

    /// The client's side of the tunnel, with the bytes it sent behind the
    /// request (for the backend).
    pub async fn connection(self) -> Result<(TunnelEnd, Bytes), UpgradeGone> {
        match self {
            Self::Hyper(on) => Ok(TunnelEnd::new(on.await?)),
            Self::Own(Some(receiver)) => {
                let switched = receiver.await.map_err(|_| UpgradeGone::Own)?;
                Ok((TunnelEnd::Socket(switched.stream), switched.early))
            }
            Self::Own(None) => Err(UpgradeGone::Own),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_sockets::socket_pair;

    /// A request as the own server passes an upgrade on: the server's end
    /// of the switch, and the pipeline's.
    fn own_upgrade() -> (oneshot::Sender<Switched>, ClientUpgrade) {
        let (sender, own) = OwnUpgrade::pair();
        let mut request = ClientRequest::new(None);
        request.extensions_mut().insert(own);
        (sender, ClientUpgrade::of(&mut request))
    }

    #[tokio::test]
    async fn the_own_server_hands_over_the_socket_and_early_bytes() {
        let (sender, upgrade) = own_upgrade();
        assert!(matches!(upgrade, ClientUpgrade::Own(Some(_))));
        let (stream, _peer) = socket_pair().await;
        let sent = sender.send(Switched {
            stream,
            early: Bytes::from_static(b"frame"),
        });
        assert!(sent.is_ok());
        let (end, early) = upgrade.connection().await.unwrap();
        assert!(matches!(end, TunnelEnd::Socket(_)));
        assert_eq!(&early[..], b"frame");
    }

    #[tokio::test]
    async fn no_switch_when_the_server_drops_its_end() {
        let (sender, upgrade) = own_upgrade();
        drop(sender);
        assert!(matches!(upgrade.connection().await, Err(UpgradeGone::Own)));
    }

    #[tokio::test]
    async fn a_request_from_hyper_waits_on_hyper() {
        let mut request = ClientRequest::new(None);
        let upgrade = ClientUpgrade::of(&mut request);
        // Not a request hyper served: hyper says there is no upgrade.
        assert!(matches!(upgrade, ClientUpgrade::Hyper(_)));
        assert!(matches!(
            upgrade.connection().await,
            Err(UpgradeGone::Hyper(_))
        ));
    }
}
