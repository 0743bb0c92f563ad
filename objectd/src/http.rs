//! The HTTP edge: axum serving s3s's S3 service with TCP_NODELAY, a limit on request header
//! size, a request id on every response (and inside every XML error), and request metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;

use crate::metrics::Metrics;

/// Request headers may total at most this many bytes (S3's limit is 8 KiB).
pub const MAX_HEADER_BYTES: usize = 8 << 10;

/// An S3 XML error response.
pub fn xml_error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{request_id}</RequestId></Error>"
    );
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    r
}

fn new_request_id() -> String {
    format!("{:016X}", rand::random::<u64>())
}

/// Wraps every request: header limit, request id, metrics; and makes sure every XML error
/// carries the request id.
pub async fn edge(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = new_request_id();
    let method = req.method().as_str().to_string();
    let header_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if let Some(n) = req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        metrics.bytes_in.inc_by(n);
    }
    let mut resp = if header_bytes > MAX_HEADER_BYTES {
        xml_error(
            StatusCode::BAD_REQUEST,
            "RequestHeaderSectionTooLarge",
            "Your request header section exceeds the maximum allowed size.",
            &id,
        )
    } else {
        next.run(req).await
    };
    let status = resp.status();
    if status.is_client_error() || status.is_server_error() {
        resp = add_request_id(resp, &id).await;
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    if let Some(n) = resp.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        metrics.bytes_out.inc_by(n);
    }
    metrics.requests.with_label_values(&[&method, status.as_str()]).inc();
    metrics.seconds.with_label_values(&[&method]).observe(started.elapsed().as_secs_f64());
    resp
}

/// Puts `<RequestId>` into an XML error body that lacks one.
async fn add_request_id(resp: Response, id: &str) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return xml_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "We encountered an internal error. Please try again.", id),
    };
    let text = String::from_utf8_lossy(&bytes);
    let body = if text.contains("</Error>") && !text.contains("<RequestId>") {
        text.replacen("</Error>", &format!("<RequestId>{id}</RequestId></Error>"), 1)
    } else {
        text.into_owned()
    };
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
