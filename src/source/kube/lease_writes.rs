//! When the API server last took one of this replica's Lease writes.
//!
//! kube-lease-manager reports a change of holder, not a renewal, and keeps
//! calling this replica the leader for as long as it cannot read the Lease,
//! however long ago its last renewal went through. The Lease's own client
//! goes through [`ConfirmLeaseWrites`], which notes when each write that
//! succeeded was sent, so the election can stop leading once the Lease may
//! have expired in everybody else's eyes (see
//! [`leader`](super::leader)).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use tokio::sync::watch;
use tokio::time::Instant;

use super::writes::write_client_builder;

/// When the last Lease write the API server took was sent, `None` before
/// the first.
pub type Confirmations = watch::Receiver<Option<Instant>>;

/// A client for the Lease alone (any other write through it would count as
/// a renewal), with the write timeout of every API write, and the
/// confirmations of its writes.
pub fn lease_client(
    config: kube::Config,
    timeout: Duration,
) -> kube::Result<(Client, Confirmations)> {
    let (layer, confirmations) = ConfirmLeaseWrites::new();
    let client = write_client_builder(config, timeout)?
        .with_layer(&layer)
        .build();
    Ok((client, confirmations))
}

/// Notes the send time of every Lease write (anything but a read) that was
/// answered with a 2xx.
#[derive(Clone)]
pub struct ConfirmLeaseWrites {
    confirmed: Arc<watch::Sender<Option<Instant>>>,
}

impl ConfirmLeaseWrites {
    pub fn new() -> (Self, Confirmations) {
        let (confirmed, confirmations) = watch::channel(None);
        let layer = Self {
            confirmed: Arc::new(confirmed),
        };
        (layer, confirmations)
    }
}

impl<S> tower::Layer<S> for ConfirmLeaseWrites {
    type Service = Confirming<S>;

    fn layer(&self, inner: S) -> Confirming<S> {
        Confirming {
            inner,
            confirmed: self.confirmed.clone(),
        }
    }
}

/// The service [`ConfirmLeaseWrites`] wraps a client's stack in.
#[derive(Clone)]
pub struct Confirming<S> {
    inner: S,
    confirmed: Arc<watch::Sender<Option<Instant>>>,
}

impl<S, B> tower::Service<Request<Body>> for Confirming<S>
where
    S: tower::Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The Lease's renewTime is taken just before the write is sent:
        // counting from the send, not the answer, never stretches the Lease
        // past what the other replicas see in it.
        let sent = Instant::now();
        let write = !matches!(*request.method(), Method::GET | Method::HEAD);
        let confirmed = self.confirmed.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            if write && matches!(&answer, Ok(response) if response.status().is_success()) {
                confirmed.send_replace(Some(sent));
            }
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    type Mock = tower_test::mock::Mock<Request<Body>, Response<Body>>;
    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn confirming() -> (Confirming<Mock>, Handle, Confirmations) {
        let (service, handle) = tower_test::mock::pair();
        let (layer, confirmations) = ConfirmLeaseWrites::new();
        (layer.layer(service), handle, confirmations)
    }

    /// Sends `method` through `service`; the mock answers `status` after
    /// `delay`.
    async fn exchange(
        service: &mut Confirming<Mock>,
        handle: &mut Handle,
        method: Method,
        status: u16,
        delay: Duration,
    ) {
        let request = Request::builder()
            .method(method)
            .uri("/apis/coordination.k8s.io/v1/namespaces/ingress/leases/switchyard-leader")
            .body(Body::empty())
            .unwrap();
        let call = service.ready().await.unwrap().call(request);
        let answer = async {
            let (_, respond) = handle.next_request().await.unwrap();
            tokio::time::sleep(delay).await;
            let response = Response::builder()
                .status(status)
                .body(Body::empty())
                .unwrap();
            respond.send_response(response);
        };
        let (response, ()) = tokio::join!(call, answer);
        assert_eq!(response.unwrap().status(), status);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_taken_is_confirmed_as_of_when_it_was_sent() {
        let (mut service, mut handle, confirmations) = confirming();
        let sent = Instant::now();
        exchange(
            &mut service,
            &mut handle,
            Method::PATCH,
            200,
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(*confirmations.borrow(), Some(sent));
    }

    #[tokio::test(start_paused = true)]
    async fn reads_and_refused_writes_confirm_nothing() {
        let (mut service, mut handle, confirmations) = confirming();
        let quick = Duration::ZERO;
        exchange(&mut service, &mut handle, Method::GET, 200, quick).await;
        exchange(&mut service, &mut handle, Method::PATCH, 409, quick).await;
        exchange(&mut service, &mut handle, Method::PATCH, 503, quick).await;
        assert_eq!(*confirmations.borrow(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_gets_no_answer_confirms_nothing() {
        let (mut service, mut handle, confirmations) = confirming();
        let request = Request::builder()
            .method(Method::PATCH)
            .uri("/")
            .body(Body::empty())
            .unwrap();
        let call = service.ready().await.unwrap().call(request);
        let (_, respond) = handle.next_request().await.unwrap();
        respond.send_error(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer",
        ));
        assert!(call.await.is_err());
        assert_eq!(*confirmations.borrow(), None);
    }
}
