//! A mock API server for unit tests of what the leader writes: a kube
//! [`Client`] over tower-test's mock service, each request answered as the
//! test says.

use kube::Client;
use kube::client::Body;

type Handle = tower_test::mock::Handle<http::Request<Body>, http::Response<Body>>;

/// How the mock answers one request.
pub enum Answer {
    /// 200 with this object.
    Ok(serde_json::Value),
    /// A 403 Status: the API server refused this one write.
    Refused,
    /// No answer at all, as when the client's read timeout fires.
    Silence,
}

impl Answer {
    /// The API server's answer to an Event it created (or added to its
    /// series), in namespace `ns`.
    pub fn event_created() -> Self {
        Self::Ok(serde_json::json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "ns"},
            "eventTime": "2026-01-01T00:00:00.000000Z"}))
    }
}

/// A client whose requests reach `answers` (see [`MockApi::serve`]).
pub struct MockApi {
    handle: Handle,
}

impl MockApi {
    pub fn new() -> (Client, Self) {
        let (service, handle) = tower_test::mock::pair();
        (Client::new(service, "default"), Self { handle })
    }

    /// Answers every request with `answer(path)` until the client is
    /// dropped; the method and path of each, in order.
    pub async fn serve(mut self, mut answer: impl FnMut(&str) -> Answer) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(request) = self.next(&mut answer).await {
            seen.push(request);
        }
        seen
    }

    /// Answers the next request with `answer(path)`; its method and path,
    /// or `None` once the client is dropped.
    pub async fn next(&mut self, answer: impl FnOnce(&str) -> Answer) -> Option<String> {
        let (request, respond) = self.handle.next_request().await?;
        let path = request.uri().path().to_string();
        let reply = |status: u16, body: serde_json::Value| {
            http::Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap()
        };
        match answer(&path) {
            Answer::Ok(object) => respond.send_response(reply(200, object)),
            Answer::Refused => respond.send_response(reply(
                403,
                serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "reason": "Forbidden", "code": 403,
                    "message": "forbidden"}),
            )),
            Answer::Silence => respond.send_error(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer",
            )),
        }
        Some(format!("{} {path}", request.method()))
    }
}
