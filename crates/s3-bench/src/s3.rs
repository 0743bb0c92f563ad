//! A minimal S3 client: path-style requests over HTTP/1.1 (hyper-util's pooled client, keep-alive,
//! TCP_NODELAY), signed with SigV4 and `UNSIGNED-PAYLOAD`. Only what the bench needs: create and
//! delete a bucket, PUT, GET (streamed into a blake3 hasher and checked), DELETE.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::Res;
use crate::sigv4::{Signer, ToSign, UNSIGNED_PAYLOAD, uri_encode};

/// Longest an error body is read for its `<Code>` and `<Message>`.
const ERROR_BODY_MAX: usize = 64 * 1024;

pub struct S3 {
    client: Client<HttpConnector, Full<Bytes>>,
    signer: Signer,
    /// `http://host:port`
    base: String,
    /// `host:port`, sent and signed as `Host`
    host: String,
    /// Limit on one request, body included (a stuck server fails the bench instead of hanging it).
    timeout: Duration,
}

impl S3 {
    pub fn new(endpoint: &str, access_key: &str, secret_key: &str, region: &str, pool: usize) -> Res<S3> {
        let uri: Uri = endpoint.parse().map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(format!("endpoint {endpoint}: only http:// endpoints are supported").into()),
            _ => return Err(format!("endpoint {endpoint:?}: expected http://host:port").into()),
        }
        let host = uri.authority().ok_or_else(|| format!("endpoint {endpoint:?}: no host"))?.to_string();
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("endpoint {endpoint}: expected http://host:port without a path").into());
        }
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(conn);
        Ok(S3 {
            client,
            signer: Signer::new(access_key, secret_key, region),
            base: format!("http://{host}"),
            host,
            timeout: Duration::from_secs(300),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.base
    }

    pub async fn create_bucket(&self, bucket: &str) -> Res<()> {
        let path = format!("/{}", uri_encode(bucket, true));
        self.call(Method::PUT, &path, Bytes::new(), |resp| async move { drain(resp).await }).await
    }

    pub async fn delete_bucket(&self, bucket: &str) -> Res<()> {
        let path = format!("/{}", uri_encode(bucket, true));
        self.call(Method::DELETE, &path, Bytes::new(), |resp| async move { drain(resp).await }).await
    }

    pub async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Res<()> {
        self.call(Method::PUT, &object_path(bucket, key), body, |resp| async move { drain(resp).await }).await
    }

    pub async fn delete(&self, bucket: &str, key: &str) -> Res<()> {
        self.call(Method::DELETE, &object_path(bucket, key), Bytes::new(), |resp| async move { drain(resp).await })
            .await
    }

    /// GETs an object, hashing the body as it streams in, and checks its length and blake3 hash.
    pub async fn get_verify(&self, bucket: &str, key: &str, len: u64, hash: blake3::Hash) -> Res<()> {
        let path = object_path(bucket, key);
        self.call(Method::GET, &path, Bytes::new(), |resp| async move {
            let mut body = resp.into_body();
            let mut h = blake3::Hasher::new();
            let mut got = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(|e| format!("reading the body: {}", chain(&e)))?.into_data() {
                    got += data.len() as u64;
                    h.update(&data);
                }
            }
            if got != len {
                return Err(format!("body of {got} bytes, {len} were PUT").into());
            }
            if h.finalize() != hash {
                return Err("body differs from what was PUT (blake3 mismatch)".into());
            }
            Ok(())
        })
        .await
    }

    /// Signs and sends one request; a 2xx answer goes to `on_ok`, anything else becomes an error
    /// naming the request, the status and the S3 error code and message.
    async fn call<F, Fut>(&self, method: Method, path: &str, body: Bytes, on_ok: F) -> Res<()>
    where
        F: FnOnce(Response<Incoming>) -> Fut,
        Fut: Future<Output = Res<()>>,
    {
        let what = format!("{method} {path}");
        let work = async {
            let mut req = Request::builder().method(method.as_str()).uri(format!("{}{path}", self.base));
            let to_sign = ToSign {
                method: method.as_str(),
                path,
                query: &[],
                host: &self.host,
                headers: &[],
                payload_hash: UNSIGNED_PAYLOAD,
            };
            for (k, v) in self.signer.sign(&to_sign, SystemTime::now()) {
                req = req.header(k, v);
            }
            let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
            let resp =
                self.client.request(req).await.map_err(|e| format!("cannot reach {}: {}", self.base, chain(&e)))?;
            let status = resp.status();
            if status.is_success() {
                return on_ok(resp).await;
            }
            let text = read_limited(resp.into_body(), ERROR_BODY_MAX).await;
            let mut msg = format!("HTTP {status}");
            for tag in ["Code", "Message"] {
                if let Some(v) = xml_field(&text, tag) {
                    msg.push_str(": ");
                    msg.push_str(v);
                }
            }
            Err(msg.into())
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{what}: {e}").into()),
            Err(_) => Err(format!("{what}: no answer within {} s", self.timeout.as_secs()).into()),
        }
    }
}

fn object_path(bucket: &str, key: &str) -> String {
    format!("/{}/{}", uri_encode(bucket, true), uri_encode(key, false))
}

/// Reads the body to its end (so the connection goes back to the pool).
async fn drain(resp: Response<Incoming>) -> Res<()> {
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(|e| format!("reading the body: {}", chain(&e)))?;
    }
    Ok(())
}

async fn read_limited(mut body: Incoming, max: usize) -> String {
    let mut out = Vec::new();
    while out.len() < max {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d);
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The text of the first `<tag>...</tag>` in `xml`.
fn xml_field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim()).filter(|s| !s.is_empty())
}

/// An error and its sources, joined with ": " (hyper's top-level errors say little alone).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_and_paths() {
        let xml = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(xml_field(xml, "Code"), Some("NoSuchBucket"));
        assert_eq!(xml_field(xml, "Message"), Some("The specified bucket does not exist"));
        assert_eq!(xml_field("", "Code"), None);
        assert_eq!(object_path("b", "small/000001"), "/b/small/000001");
        assert_eq!(object_path("b", "a b"), "/b/a%20b");
    }

    #[test]
    fn endpoints() {
        assert!(S3::new("http://127.0.0.1:7780", "k", "s", "us-east-1", 1).is_ok());
        assert!(S3::new("http://127.0.0.1:7780/", "k", "s", "us-east-1", 1).is_ok());
        assert!(S3::new("https://127.0.0.1:7780", "k", "s", "us-east-1", 1).is_err());
        assert!(S3::new("127.0.0.1:7780", "k", "s", "us-east-1", 1).is_err());
        assert!(S3::new("http://127.0.0.1:7780/x", "k", "s", "us-east-1", 1).is_err());
    }
}
