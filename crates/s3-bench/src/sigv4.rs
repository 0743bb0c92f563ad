//! AWS Signature Version 4 in the `Authorization` header, for S3 requests: the canonical request,
//! the string to sign, the signing key and the header. Payloads are sent as `UNSIGNED-PAYLOAD`
//! (the body is not hashed), which is what the S3 API allows over any transport and what keeps the
//! client's CPU out of the throughput figures.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The `x-amz-content-sha256` value for a body that is not hashed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SERVICE: &str = "s3";

/// What is signed of one request.
pub struct ToSign<'a> {
    pub method: &'a str,
    /// The canonical (already URI-encoded) path.
    pub path: &'a str,
    /// Decoded query parameters.
    pub query: &'a [(&'a str, &'a str)],
    /// `Host`, as sent.
    pub host: &'a str,
    /// Further headers to sign (names in any case).
    pub headers: &'a [(&'a str, &'a str)],
    /// `x-amz-content-sha256`: the body's SHA-256 in hex, or [`UNSIGNED_PAYLOAD`].
    pub payload_hash: &'a str,
}

/// Signs requests with one access key for one region; caches the day's signing key.
pub struct Signer {
    access_key: String,
    secret_key: String,
    region: String,
    /// (yyyymmdd, signing key of that day)
    day_key: Mutex<Option<(String, [u8; 32])>>,
}

impl Signer {
    pub fn new(access_key: &str, secret_key: &str, region: &str) -> Self {
        Signer {
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            region: region.to_string(),
            day_key: Mutex::new(None),
        }
    }

    /// The headers to add to `req`: `host`, `x-amz-date`, `x-amz-content-sha256` and
    /// `authorization`.
    pub fn sign(&self, req: &ToSign<'_>, now: SystemTime) -> Vec<(&'static str, String)> {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let amz_date = amz_date(secs);
        let mut all: Vec<(String, String)> = vec![
            ("host".into(), req.host.to_string()),
            ("x-amz-content-sha256".into(), req.payload_hash.to_string()),
            ("x-amz-date".into(), amz_date.clone()),
        ];
        all.extend(req.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_string())));
        let auth = self.authorization(req.method, req.path, req.query, &all, req.payload_hash, &amz_date);
        vec![
            ("host", req.host.to_string()),
            ("x-amz-date", amz_date),
            ("x-amz-content-sha256", req.payload_hash.to_string()),
            ("authorization", auth),
        ]
    }

    /// The `Authorization` header value for a request whose signed headers are `headers`
    /// (lower-case names; must include `host` and `x-amz-date`).
    pub fn authorization(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(String, String)],
        payload_hash: &str,
        amz_date: &str,
    ) -> String {
        let day = &amz_date[..8];
        let scope = format!("{day}/{}/{SERVICE}/aws4_request", self.region);
        let (creq, signed_headers) = canonical_request(method, path, query, headers, payload_hash);
        let sts = string_to_sign(amz_date, &scope, &creq);
        let key = self.day_key(day);
        let signature = hex::encode(hmac(&key, sts.as_bytes()));
        format!(
            "{ALGORITHM} Credential={}/{scope},SignedHeaders={signed_headers},Signature={signature}",
            self.access_key
        )
    }

    fn day_key(&self, day: &str) -> [u8; 32] {
        let mut cached = self.day_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((d, k)) = cached.as_ref()
            && d == day
        {
            return *k;
        }
        let k = signing_key(&self.secret_key, day, &self.region, SERVICE);
        *cached = Some((day.to_string(), k));
        k
    }
}

/// The canonical request and the `SignedHeaders` list. Header names are lower-cased, values
/// trimmed with inner runs of spaces folded to one, all sorted by name; query parameters are
/// URI-encoded and sorted.
pub fn canonical_request(
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    headers: &[(String, String)],
    payload_hash: &str,
) -> (String, String) {
    let mut q: Vec<(String, String)> = query.iter().map(|(k, v)| (uri_encode(k, true), uri_encode(v, true))).collect();
    q.sort();
    let query = q.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let mut h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    h.sort();
    let canonical_headers: String = h.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed = h.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(";");
    let path = if path.is_empty() { "/" } else { path };
    (format!("{method}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{payload_hash}"), signed)
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical_request.as_bytes())))
}

/// HMAC chain `AWS4<secret>` → day → region → service → `aws4_request`.
pub fn signing_key(secret: &str, day: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac(format!("AWS4{secret}").as_bytes(), day.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// S3's URI encoding: every byte but `A-Z a-z 0-9 - . _ ~` as `%XX` (upper-case hex); `/` kept
/// unless `encode_slash` (object key paths keep it, query values do not).
pub fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || (b == b'/' && !encode_slash) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the Unix epoch (UTC).
pub fn amz_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The examples of "Signature Calculations for the Authorization Header: Transferring Payload
    // in a Single Chunk" in the Amazon S3 API reference (sig-v4-header-based-auth).
    const ACCESS: &str = "AKIAIOSFODNN7EXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const HOST: &str = "examplebucket.s3.amazonaws.com";
    const DATE: &str = "20130524T000000Z";

    fn headers(extra: &[(&str, &str)], payload: &str) -> Vec<(String, String)> {
        let mut h = vec![
            ("Host".to_string(), HOST.to_string()),
            ("x-amz-date".to_string(), DATE.to_string()),
            ("x-amz-content-sha256".to_string(), payload.to_string()),
        ];
        h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        h
    }

    #[test]
    fn aws_example_get_object() {
        let h = headers(&[("Range", "bytes=0-9")], EMPTY_SHA256);
        let (creq, signed) = canonical_request("GET", "/test.txt", &[], &h, EMPTY_SHA256);
        assert_eq!(
            creq,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(signed, "host;range;x-amz-content-sha256;x-amz-date");
        assert_eq!(
            string_to_sign(DATE, "20130524/us-east-1/s3/aws4_request", &creq),
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        let signer = Signer::new(ACCESS, SECRET, "us-east-1");
        let lower: Vec<_> = h.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
        assert_eq!(
            signer.authorization("GET", "/test.txt", &[], &lower, EMPTY_SHA256, DATE),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn aws_example_put_object_encodes_the_key() {
        let payload = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072";
        let h = headers(
            &[("Date", "Fri, 24 May 2013 00:00:00 GMT"), ("x-amz-storage-class", "REDUCED_REDUNDANCY")],
            payload,
        );
        let signer = Signer::new(ACCESS, SECRET, "us-east-1");
        let path = format!("/{}", uri_encode("test$file.text", false));
        assert_eq!(path, "/test%24file.text");
        assert!(
            signer
                .authorization("PUT", &path, &[], &h, payload, DATE)
                .ends_with("Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
        );
    }

    #[test]
    fn aws_example_list_objects_sorts_the_query() {
        let h = headers(&[], EMPTY_SHA256);
        let signer = Signer::new(ACCESS, SECRET, "us-east-1");
        let q = [("prefix", "J"), ("max-keys", "2")];
        assert!(
            signer
                .authorization("GET", "/", &q, &h, EMPTY_SHA256, DATE)
                .ends_with("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
        );
        let q = [("lifecycle", "")];
        assert!(
            signer
                .authorization("GET", "/", &q, &h, EMPTY_SHA256, DATE)
                .ends_with("Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")
        );
    }

    #[test]
    fn sign_adds_the_headers_it_signs() {
        let signer = Signer::new(ACCESS, SECRET, "us-east-1");
        let now = UNIX_EPOCH + std::time::Duration::from_secs(1_369_353_600);
        let req = ToSign {
            method: "GET",
            path: "/test.txt",
            query: &[],
            host: HOST,
            headers: &[("Range", "bytes=0-9")],
            payload_hash: EMPTY_SHA256,
        };
        let out = signer.sign(&req, now);
        let get = |n: &str| out.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("x-amz-date"), Some(DATE));
        assert_eq!(get("host"), Some(HOST));
        assert!(
            get("authorization").unwrap().ends_with("f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        );
        // the cached day key is the same key
        assert_eq!(out, signer.sign(&req, now));
        let req = ToSign {
            method: "PUT",
            path: "/b/k",
            query: &[],
            host: "127.0.0.1:7780",
            headers: &[],
            payload_hash: UNSIGNED_PAYLOAD,
        };
        let unsigned = signer.sign(&req, now);
        assert!(unsigned.iter().any(|(k, v)| *k == "x-amz-content-sha256" && v == UNSIGNED_PAYLOAD));
    }

    #[test]
    fn dates_and_encoding() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(amz_date(951_782_400 + 3661), "20000229T010101Z");
        assert_eq!(amz_date(4_102_444_799), "20991231T235959Z");
        assert_eq!(uri_encode("a b/c~d+é", false), "a%20b/c~d%2B%C3%A9");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
    }
}
