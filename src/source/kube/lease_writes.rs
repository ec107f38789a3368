//! When this replica's Lease was last renewed, as the API server's
//! answers to its Lease writes show.
//!
//! kube-lease-manager reports a change of holder, not a renewal, and keeps
//! calling this replica the leader for as long as it cannot read the Lease,
//! however long ago its last renewal went through. The Lease's own client
//! goes through [`ConfirmLeaseWrites`], which reads the Lease each
//! successful write returns, so the election can stop leading once the
//! Lease may have expired in everybody else's eyes (see
//! [`leader`](super::leader)).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::client::{Body, DynBody};
use tokio::sync::watch;
use tokio::time::Instant;

use super::writes::write_client_builder;

/// When the Lease was last renewed by this replica, as far as the API
/// server confirmed it; `None` before the first.
pub type Confirmations = watch::Receiver<Option<Instant>>;

/// A client for the Lease of the replica `identity`, with the write
/// timeout of every API write, and the confirmations of its renewals.
pub fn lease_client(
    config: kube::Config,
    timeout: Duration,
    identity: &str,
) -> kube::Result<(Client, Confirmations)> {
    let (layer, confirmations) = ConfirmLeaseWrites::new(identity);
    let client = write_client_builder(config, timeout)?
        .with_layer(&layer)
        .build();
    Ok((client, confirmations))
}

/// Notes, for each Lease write (anything but a read) the API server took,
/// whether the Lease it returns is held by this replica and when it was
/// renewed.
///
/// A write that went through is not enough: kube-lease-manager renews with
/// a patch of `renewTime` alone, which succeeds on a Lease another replica
/// took over meanwhile, and it only learns of that from the read after
/// it, which may fail.
#[derive(Clone)]
pub struct ConfirmLeaseWrites {
    identity: Arc<str>,
    confirmed: Arc<watch::Sender<Option<Instant>>>,
}

impl ConfirmLeaseWrites {
    pub fn new(identity: &str) -> (Self, Confirmations) {
        let (confirmed, confirmations) = watch::channel(None);
        let layer = Self {
            identity: identity.into(),
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
            layer: self.clone(),
        }
    }
}

/// The service [`ConfirmLeaseWrites`] wraps a client's stack in.
#[derive(Clone)]
pub struct Confirming<S> {
    inner: S,
    layer: ConfirmLeaseWrites,
}

type Answer = Response<Box<DynBody>>;

impl<S> tower::Service<Request<Body>> for Confirming<S>
where
    S: tower::Service<Request<Body>, Response = Answer, Error = tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = Answer;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), tower::BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let sent = Instant::now();
        let write = !matches!(*request.method(), Method::GET | Method::HEAD);
        let layer = self.layer.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await?;
            if !write || !answer.status().is_success() {
                return Ok(answer);
            }
            // A Lease is a few hundred bytes: read whole, then handed on.
            let (parts, body) = answer.into_parts();
            let body = body.collect().await?.to_bytes();
            if let Some(renewed) = renewal(&body, &layer.identity, sent) {
                layer.confirmed.send_replace(Some(renewed));
            }
            let body = Full::new(body).map_err(|never| -> tower::BoxError { match never {} });
            Ok(Response::from_parts(parts, Box::new(body) as Box<DynBody>))
        })
    }
}

/// When the Lease in `body` was last renewed, if `identity` holds it: its
/// `renewTime` (set by this replica's clock before the write), and never
/// later than `sent`, the write's own send time. Counting from then,
/// never from the answer, does not stretch the Lease past what the other
/// replicas see in it.
fn renewal(body: &Bytes, identity: &str, sent: Instant) -> Option<Instant> {
    let lease: Lease = serde_json::from_slice(body).ok()?;
    let spec = lease.spec?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = SystemTime::from(spec.renew_time?.0);
    let age = SystemTime::now()
        .duration_since(renewed)
        .unwrap_or(Duration::ZERO);
    let renewed = Instant::now().checked_sub(age)?;
    Some(renewed.min(sent))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::Timestamp;
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    type Mock = tower_test::mock::Mock<Request<Body>, Answer>;
    type Handle = tower_test::mock::Handle<Request<Body>, Answer>;

    const ME: &str = "pod-a";

    fn confirming() -> (Confirming<Mock>, Handle, Confirmations) {
        let (service, handle) = tower_test::mock::pair();
        let (layer, confirmations) = ConfirmLeaseWrites::new(ME);
        (layer.layer(service), handle, confirmations)
    }

    /// A Lease as the API server returns it.
    fn lease(holder: Option<&str>, renewed: SystemTime) -> Vec<u8> {
        let lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                renew_time: Some(MicroTime(Timestamp::try_from(renewed).unwrap())),
                lease_duration_seconds: Some(30),
                ..Default::default()
            }),
            ..Default::default()
        };
        serde_json::to_vec(&lease).unwrap()
    }

    fn lease_request(method: Method) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri("/apis/coordination.k8s.io/v1/namespaces/ingress/leases/switchyard-leader")
            .body(Body::empty())
            .unwrap()
    }

    /// Sends `method` through `service`; the mock answers `status` and
    /// `body` after `delay`. The body the caller got.
    async fn exchange(
        service: &mut Confirming<Mock>,
        handle: &mut Handle,
        method: Method,
        (status, body): (u16, Vec<u8>),
        delay: Duration,
    ) -> Bytes {
        let call = service.ready().await.unwrap().call(lease_request(method));
        let answer = async {
            let (_, respond) = handle.next_request().await.unwrap();
            tokio::time::sleep(delay).await;
            let body =
                Full::new(Bytes::from(body)).map_err(|never| -> tower::BoxError { match never {} });
            let response = Response::builder()
                .status(status)
                .body(Box::new(body) as Box<DynBody>)
                .unwrap();
            respond.send_response(response);
        };
        let (response, ()) = tokio::join!(call, answer);
        let response = response.unwrap();
        assert_eq!(response.status(), status);
        response.into_body().collect().await.unwrap().to_bytes()
    }

    /// A PATCH the mock answers at once.
    async fn patch_now(
        service: &mut Confirming<Mock>,
        handle: &mut Handle,
        answer: (u16, Vec<u8>),
    ) -> Bytes {
        exchange(service, handle, Method::PATCH, answer, Duration::ZERO).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_is_confirmed_no_later_than_it_was_sent() {
        let (mut service, mut handle, confirmations) = confirming();
        let sent = Instant::now();
        let answer = (200, lease(Some(ME), SystemTime::now()));
        let delay = Duration::from_secs(2);
        exchange(&mut service, &mut handle, Method::PATCH, answer, delay).await;
        assert_eq!(*confirmations.borrow(), Some(sent));
    }

    #[tokio::test]
    async fn a_renewal_is_confirmed_as_of_its_renew_time() {
        let (mut service, mut handle, confirmations) = confirming();
        // The patch of the transitions count after a take-over returns the
        // take-over's renewTime.
        let renewed = SystemTime::now() - Duration::from_secs(5);
        let answer = (200, lease(Some(ME), renewed));
        patch_now(&mut service, &mut handle, answer).await;
        let confirmed = confirmations.borrow().expect("confirmed");
        let age = confirmed.elapsed();
        assert!(
            age >= Duration::from_secs(5) && age < Duration::from_secs(6),
            "{age:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_leaves_the_lease_to_another_confirms_nothing() {
        let (mut service, mut handle, confirmations) = confirming();
        let now = SystemTime::now();
        // A renewal patch that landed on the Lease another replica took.
        let other = (200, lease(Some("pod-b"), now));
        patch_now(&mut service, &mut handle, other).await;
        // A release.
        let released = (200, lease(None, now));
        patch_now(&mut service, &mut handle, released).await;
        assert_eq!(*confirmations.borrow(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_and_refused_writes_confirm_nothing() {
        let (mut service, mut handle, confirmations) = confirming();
        let quick = Duration::ZERO;
        let mine = lease(Some(ME), SystemTime::now());
        for (method, status) in [
            (Method::GET, 200),
            (Method::PATCH, 409),
            (Method::PATCH, 503),
        ] {
            let answer = (status, mine.clone());
            exchange(&mut service, &mut handle, method, answer, quick).await;
        }
        assert_eq!(*confirmations.borrow(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_caller_gets_the_body_the_layer_read() {
        let (mut service, mut handle, _confirmations) = confirming();
        let mine = lease(Some(ME), SystemTime::now());
        let answer = (200, mine.clone());
        let got = patch_now(&mut service, &mut handle, answer).await;
        assert_eq!(got, mine);
        let garbage = (200, b"not json".to_vec());
        let got = patch_now(&mut service, &mut handle, garbage).await;
        assert_eq!(got, &b"not json"[..]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_gets_no_answer_confirms_nothing() {
        let (mut service, mut handle, confirmations) = confirming();
        let call = service
            .ready()
            .await
            .unwrap()
            .call(lease_request(Method::PATCH));
        let (_, respond) = handle.next_request().await.unwrap();
        respond.send_error(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer",
        ));
        assert!(call.await.is_err());
        assert_eq!(*confirmations.borrow(), None);
    }
}
