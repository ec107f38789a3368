//! The few responses switchyard writes itself: short plain-text errors.

use http::{HeaderValue, Response, StatusCode, header};

use super::body::ResponseBody;

/// Why switchyard answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReply {
    BadRequest(&'static str),
    NoRoute,
    NoEndpoints,
    UpstreamConnect,
    UpstreamTimeout,
    UpstreamFailed,
    UpgradeMismatch,
    BodyTimeout,
    /// The client address is over its request rate.
    TooManyRequests,
}

impl LocalReply {
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoEndpoints => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamConnect | Self::UpstreamFailed | Self::UpgradeMismatch => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::BadRequest(why) => why,
            Self::NoRoute => "no route for this host and path",
            Self::NoEndpoints => "no ready endpoints for this route",
            Self::UpstreamConnect => "could not connect to the backend",
            Self::UpstreamTimeout => "the backend did not answer in time",
            Self::UpstreamFailed => "the backend connection failed",
            Self::UpgradeMismatch => "the backend's switch of protocols was not the one asked for",
            Self::BodyTimeout => "request body not received in time",
            Self::TooManyRequests => "too many requests from this client address; retry later",
        }
    }

    /// Whether the client connection must close after this reply: after a
    /// malformed request or an unread body, the byte stream can't be trusted.
    fn closes_connection(self) -> bool {
        matches!(self, Self::BadRequest(_) | Self::BodyTimeout)
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        let status = self.status();
        let text = format!(
            "{} {}: {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.message()
        );
        let mut response = Response::new(ResponseBody::full(text));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self == Self::TooManyRequests {
            // The bucket refills a token within a second at any rate >= 1.
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
