//! What the HTTP edge settles about a request's authentication before s3s verifies it, where
//! s3s alone would answer otherwise than S3 does:
//! - an empty `Authorization` header is no signature at all: the request is anonymous (so
//!   AccessDenied on anything private), not a malformed one;
//! - SigV4 dated by a `Date` header alone (no `X-Amz-Date`, which SigV4 allows) gets that date
//!   as `x-amz-date`: the string to sign holds the date either way, and a header outside
//!   SignedHeaders changes no signature;
//! - a presigned URL's `X-Amz-Expires` must be 1..=604800 seconds (AuthorizationQueryParametersError).
//!
//! Expiry, clock skew (15 minutes) and the signatures themselves stay with s3s.

use axum::extract::Request;
use http::{HeaderValue, StatusCode};
use s3s::dto::{Timestamp, TimestampFormat};

/// A request refused at the edge: status, S3 error code and message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: &'static str,
}

/// The longest validity of a presigned URL (7 days).
pub const MAX_PRESIGNED_SECS: i64 = 604_800;

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').filter_map(|p| p.split_once('=').or(Some((p, "")))).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// Checks a presigned query's `X-Amz-Expires`.
pub fn check_presigned_expiry(query: &str) -> Result<(), Refusal> {
    if query_param(query, "X-Amz-Signature").is_none() && query_param(query, "X-Amz-Algorithm").is_none() {
        return Ok(());
    }
    let Some(v) = query_param(query, "X-Amz-Expires") else { return Ok(()) };
    let refuse =
        |message| Err(Refusal { status: StatusCode::BAD_REQUEST, code: "AuthorizationQueryParametersError", message });
    match v.parse::<i64>() {
        Err(_) => refuse("X-Amz-Expires should be a number"),
        Ok(n) if n < 0 => refuse("X-Amz-Expires must be non-negative"),
        Ok(0) => refuse("X-Amz-Expires must be at least 1 second"),
        Ok(n) if n > MAX_PRESIGNED_SECS => refuse("X-Amz-Expires must be less than a week (in seconds) that is 604800"),
        Ok(_) => Ok(()),
    }
}

/// An HTTP date (`Date` header) as SigV4's `YYYYMMDDTHHMMSSZ`.
pub fn amz_date_of(http_date: &str) -> Option<String> {
    // RFC 1123 with GMT, or the same with a numeric UTC offset (Python's email.utils.formatdate).
    let d = http_date.trim();
    let d = match d.rsplit_once(' ') {
        Some((rest, "-0000" | "+0000" | "UTC")) => format!("{rest} GMT"),
        _ => d.to_string(),
    };
    let t: time::OffsetDateTime = Timestamp::parse(TimestampFormat::HttpDate, &d).ok()?.into();
    Some(format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// Settles `req` as described in the module docs, or refuses it.
pub fn settle(req: &mut Request) -> Result<(), Refusal> {
    let headers = req.headers_mut();
    let auth = headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes().trim_ascii().to_vec());
    match auth {
        Some(a) if a.is_empty() => {
            headers.remove(http::header::AUTHORIZATION);
        }
        Some(a) if a.starts_with(b"AWS4-HMAC-SHA256") && !headers.contains_key("x-amz-date") => {
            if let Some(d) = headers.get(http::header::DATE).and_then(|v| v.to_str().ok()).and_then(amz_date_of)
                && let Ok(v) = HeaderValue::from_str(&d)
            {
                headers.insert("x-amz-date", v);
            }
        }
        _ => {}
    }
    check_presigned_expiry(req.uri().query().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_become_amz_dates() {
        assert_eq!(amz_date_of("Tue, 29 Apr 2014 18:30:38 GMT").as_deref(), Some("20140429T183038Z"));
        assert_eq!(amz_date_of("Tue, 29 Apr 2014 18:30:38 -0000").as_deref(), Some("20140429T183038Z"));
        assert_eq!(amz_date_of("yesterday"), None);
    }

    #[test]
    fn presigned_expiry_bounds() {
        let q = |e: &str| format!("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires={e}&X-Amz-Signature=ab");
        for ok in ["1", "3600", "604800"] {
            assert_eq!(check_presigned_expiry(&q(ok)), Ok(()), "{ok}");
        }
        for bad in ["0", "-1", "604801", "x", ""] {
            let r = check_presigned_expiry(&q(bad)).expect_err(bad);
            assert_eq!((r.status, r.code), (StatusCode::BAD_REQUEST, "AuthorizationQueryParametersError"));
        }
        // Not a presigned request: X-Amz-Expires means nothing.
        assert_eq!(check_presigned_expiry("X-Amz-Expires=0"), Ok(()));
        assert_eq!(check_presigned_expiry(""), Ok(()));
    }

    #[test]
    fn empty_authorization_is_anonymous_and_date_becomes_amz_date() {
        let mut r =
            Request::builder().uri("/b/k").header("authorization", " ").body(axum::body::Body::empty()).unwrap();
        settle(&mut r).unwrap();
        assert!(r.headers().get("authorization").is_none());
        let mut r = Request::builder()
            .uri("/b/k")
            .header("authorization", "AWS4-HMAC-SHA256 Credential=x")
            .header("date", "Tue, 29 Apr 2014 18:30:38 GMT")
            .body(axum::body::Body::empty())
            .unwrap();
        settle(&mut r).unwrap();
        assert_eq!(r.headers().get("x-amz-date").unwrap(), "20140429T183038Z");
    }
}
