//! How switchyard writes to the API server (the Lease, Ingress status,
//! Events): a client that gives up, and what one write's failure means
//! for the rest of its round.

use std::time::Duration;

use kube::Client;
use kube::client::{Body, ClientBuilder, DynBody};

/// The longest one API write may take to connect, or wait for its answer
/// (see [`leader`](super::leader) for how the Lease's timing is chosen
/// against it).
pub const API_WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest one API write may take in all: connecting, then waiting for
/// its answer.
pub const API_WRITE_LIMIT: Duration = Duration::from_secs(2 * API_WRITE_TIMEOUT.as_secs());

/// The client switchyard writes with. kube's default client sets no read
/// timeout (its watches stay open for minutes), so a write on a connection
/// that went half-open waited for TCP to give up, about a quarter of an
/// hour, while the replica went on believing it led. It also retries a
/// 429, 503 or 504 up to 15 times, minutes in all. This one connects and
/// waits for each answer at most `timeout`, and leaves retrying to the
/// callers, which know what else is waiting; the watches keep a client of
/// their own.
pub fn write_client(config: kube::Config, timeout: Duration) -> kube::Result<Client> {
    Ok(write_client_builder(config, timeout)?.build())
}

/// The stack kube builds a client on from its configuration.
pub type KubeStack =
    tower::util::BoxService<http::Request<Body>, http::Response<Box<DynBody>>, tower::BoxError>;

/// [`write_client`]'s stack, for a client that adds a layer of its own.
pub fn write_client_builder(
    mut config: kube::Config,
    timeout: Duration,
) -> kube::Result<ClientBuilder<KubeStack>> {
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    // Counted from the request, not from when its pooled connection went
    // idle.
    config.reset_reader_on_write = true;
    config.default_retry = false;
    ClientBuilder::try_from(config)
}

/// Why one API write failed, as far as the rest of its round is concerned.
#[derive(Debug)]
pub enum WriteFailure {
    /// The API server refused this object's write (a 403 in one namespace,
    /// a 422, a conflict): the next write may succeed.
    Refused(String),
    /// No answer (a timeout, a refused or broken connection), or one that
    /// refuses every write for now (401, 429, 5xx): the next write would
    /// fare the same.
    Unavailable(String),
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(e) | Self::Unavailable(e) => f.write_str(e),
        }
    }
}

/// What one write came to: `Ok` once the API server took it.
pub fn outcome<T>(result: kube::Result<T>) -> Result<(), WriteFailure> {
    match result {
        Ok(_) => Ok(()),
        // Only a successful answer's body is decoded as an object: the
        // write was taken, and is not made again.
        Err(kube::Error::SerdeError(error)) => {
            tracing::debug!(%error, "API server took a write but its answer could not be read");
            Ok(())
        }
        Err(kube::Error::Api(status))
            if status.code == 401 || status.code == 429 || status.code >= 500 =>
        {
            Err(WriteFailure::Unavailable(
                kube::Error::Api(status).to_string(),
            ))
        }
        Err(error @ kube::Error::Api(_)) => Err(WriteFailure::Refused(error.to_string())),
        Err(error) => Err(WriteFailure::Unavailable(error.to_string())),
    }
}

/// How a round of writes (status, then Events) ended. Ordered from best
/// to worst, so that a round's end is the worst of its parts'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RoundEnd {
    /// Everything written.
    Written,
    /// Some writes were refused, the others made: tried again later.
    Incomplete,
    /// Stopped early, the API server unavailable or this replica no longer
    /// the leader: tried again later, and the rest of the round skipped.
    Stopped,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use k8s_openapi::api::networking::v1::Ingress;
    use kube::Api;
    use kube::api::{Patch, PatchParams};
    use kube::core::Status;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server that counts connections and answers each with `answer`
    /// then closes it, or never answers when `answer` is `None`.
    async fn server(answer: Option<&'static [u8]>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                match answer {
                    Some(answer) => {
                        let mut buf = [0; 4096];
                        let _ = stream.read(&mut buf).await;
                        let _ = stream.write_all(answer).await;
                    }
                    None => held.push(stream),
                }
            }
        });
        (url, connections)
    }

    /// One status write through a write client (200 ms timeout) to `url`.
    async fn write_to(url: &str) -> Result<(), WriteFailure> {
        let config = kube::Config::new(url.parse().unwrap());
        let client = write_client(config, Duration::from_millis(200)).unwrap();
        let api: Api<Ingress> = Api::namespaced(client, "ns");
        let (params, patch) = (PatchParams::default(), serde_json::json!({ "status": {} }));
        let patch = Patch::Merge(&patch);
        // Only a guard against hanging the test run: the client's own
        // timeout is 200 ms, and it does not retry.
        let write = api.patch_status("web", &params, &patch);
        let result = tokio::time::timeout(Duration::from_secs(60), write)
            .await
            .expect("the write gives up by itself");
        outcome(result)
    }

    #[tokio::test]
    async fn a_write_that_gets_no_answer_fails_as_unavailable() {
        let (url, _) = server(None).await;
        let failure = write_to(&url).await.expect_err("nothing answered");
        assert!(
            matches!(failure, WriteFailure::Unavailable(_)),
            "{failure:?}"
        );
    }

    #[tokio::test]
    async fn a_write_answered_503_is_not_retried_by_the_client() {
        let answer =
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let (url, connections) = server(Some(answer)).await;
        let failure = write_to(&url).await.expect_err("503");
        assert!(
            matches!(failure, WriteFailure::Unavailable(_)),
            "{failure:?}"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 1, "one attempt");
    }

    fn api_error(code: u16) -> kube::Result<()> {
        Err(kube::Error::Api(
            Status::failure("no", "Reason").with_code(code).boxed(),
        ))
    }

    #[test]
    fn answers_that_refuse_every_write_for_now_stop_a_round_and_others_do_not() {
        for code in [401, 429, 500, 503, 504] {
            let failure = outcome(api_error(code));
            assert!(
                matches!(failure, Err(WriteFailure::Unavailable(_))),
                "{code}"
            );
        }
        for code in [403, 404, 409, 422] {
            let failure = outcome(api_error(code));
            assert!(matches!(failure, Err(WriteFailure::Refused(_))), "{code}");
        }
        let unreadable = serde_json::from_str::<u8>("x").unwrap_err();
        assert!(outcome::<()>(Err(kube::Error::SerdeError(unreadable))).is_ok());
    }

    #[test]
    fn a_rounds_end_is_the_worst_of_its_parts() {
        use RoundEnd::*;
        assert_eq!(Written.max(Incomplete), Incomplete);
        assert_eq!(Incomplete.max(Stopped), Stopped);
        assert_eq!(Written.max(Written), Written);
    }
}
