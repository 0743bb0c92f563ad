//! The HTTP edge: axum serving s3s's S3 service with TCP_NODELAY, a limit on request header
//! size, what it settles about authentication (`auth_edge`), a request id on every response
//! (and inside every XML error), and request metrics.

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
pub async fn edge(State(metrics): State<Arc<Metrics>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = new_request_id();
    let method = req.method().as_str().to_string();
    // A request whose body may not have been read (an early error) must not leave its bytes on
    // a kept-alive connection: such error responses close the connection.
    let has_body = req.headers().get(http::header::TRANSFER_ENCODING).is_some()
        || req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v != "0");
    // A request that asked for `100 Continue` but has no body to send gets its final response
    // without one. botocore (boto/botocore#3755) then keeps that response's status for the next
    // request on the connection and reads the next answer against it: a 60 s stall, a hidden
    // retry, and after a crash a PUT reported done that never reached us. Closing the
    // connection after such a response clears the stale state (boto3 sends this on every empty
    // PUT).
    let expects_continue = req
        .headers()
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let header_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if let Some(n) = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
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
        match crate::auth_edge::settle(&mut req) {
            Ok(()) => next.run(req).await,
            Err(r) => xml_error(r.status, r.code, r.message, &id),
        }
    };
    let status = resp.status();
    if status.is_client_error() || status.is_server_error() {
        resp = add_request_id(resp, &id).await;
        if has_body {
            resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    if expects_continue && !has_body {
        resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    if let Some(n) = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        metrics.bytes_out.inc_by(n);
    }
    metrics.requests.with_label_values(&[&method, status.as_str()]).inc();
    metrics.seconds.with_label_values(&[&method]).observe(started.elapsed().as_secs_f64());
    resp
}

/// S3's wording for errors raised without a message (s3s's own checks).
fn default_message(code: &str) -> &'static str {
    match code {
        "SignatureDoesNotMatch" => {
            "The request signature we calculated does not match the signature you provided. Check your key and signing method."
        }
        "MalformedXML" => "The XML you provided was not well-formed or did not validate against our published schema.",
        "InvalidBucketName" => "The specified bucket is not valid.",
        "AccessDenied" => "Access Denied",
        "InvalidAccessKeyId" => "The AWS Access Key Id you provided does not exist in our records.",
        "NoSuchBucket" => "The specified bucket does not exist.",
        "NoSuchKey" => "The specified key does not exist.",
        "NotImplemented" => "A header or operation you provided implies functionality that is not implemented.",
        "InvalidArgument" => "Invalid Argument",
        "InvalidRequest" => "Invalid Request",
        "MissingContentLength" => "You must provide the Content-Length HTTP header.",
        "RequestTimeTooSkewed" => "The difference between the request time and the server's time is too large.",
        "MethodNotAllowed" => "The specified method is not allowed against this resource.",
        _ => "The request failed.",
    }
}

/// Puts `<Message>` and `<RequestId>` into an XML error body that lacks them.
async fn add_request_id(resp: Response, id: &str) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return xml_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
                id,
            );
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut body = text.into_owned();
    if body.contains("</Error>") && !body.contains("<Message>") {
        let code = body.split("<Code>").nth(1).and_then(|r| r.split("</Code>").next()).unwrap_or("").to_string();
        body = body.replacen("</Code>", &format!("</Code><Message>{}</Message>", default_message(&code)), 1);
    }
    if body.contains("</Error>") && !body.contains("<RequestId>") {
        body = body.replacen("</Error>", &format!("<RequestId>{id}</RequestId></Error>"), 1);
    }
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// Serves `app` on `listener` until `shutdown`, then lets connections finish (up to 30 s).
/// hyper directly rather than `axum::serve`, to accept up to 1000 header lines (hyper's default
/// of 100 would answer more with a bare 431; the edge answers oversized headers in S3 XML).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().max_headers(1000).timer(TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(60));
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            r = listener.accept() => {
                let stream = match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service.clone()).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => tracing::warn!("connections still open after 30 s; closing"),
    }
}
