//! Upload integrity: which checksums a request declares (headers, `x-amz-trailer`, algorithm
//! fields), computing them while the body streams, and comparing with what the client sent —
//! in headers or in the aws-chunked trailer. Content-MD5 too.

use base64::Engine as _;
use http::HeaderMap;
use s3s::S3ErrorCode;
use s3s::checksum::ChecksumHasher;
use s3s::dto::Checksum;

use crate::error::{Result, s3err};
use crate::records::Checksums;

/// Values the client sent in headers (any may be absent).
#[derive(Default, Clone)]
pub struct Declared {
    pub algorithm: Option<String>,
    pub given: Checksum,
}

fn lower_names(headers: &HeaderMap) -> Vec<String> {
    let mut v = Vec::new();
    for name in ["x-amz-trailer", "x-amz-sdk-checksum-algorithm", "x-amz-checksum-algorithm"] {
        if let Some(val) = headers.get(name).and_then(|v| v.to_str().ok()) {
            v.extend(val.split(',').map(|s| s.trim().to_ascii_lowercase()));
        }
    }
    v
}

impl Declared {
    /// From an upload's algorithm and checksum fields (PutObject and UploadPart carry the same).
    pub fn new(
        algorithm: Option<&s3s::dto::ChecksumAlgorithm>,
        crc32: &Option<String>,
        crc32c: &Option<String>,
        sha1: &Option<String>,
        sha256: &Option<String>,
        crc64nvme: &Option<String>,
    ) -> Self {
        Declared {
            algorithm: algorithm.map(|a| a.as_str().to_string()),
            given: Checksum {
                checksum_crc32: crc32.clone(),
                checksum_crc32c: crc32c.clone(),
                checksum_sha1: sha1.clone(),
                checksum_sha256: sha256.clone(),
                checksum_crc64nvme: crc64nvme.clone(),
                ..Default::default()
            },
        }
    }
}

/// A hasher for every algorithm the request names anywhere.
pub fn hasher_for(headers: &HeaderMap, d: &Declared) -> ChecksumHasher {
    let names = lower_names(headers);
    let algo = d.algorithm.as_deref().map(str::to_ascii_lowercase).unwrap_or_default();
    let wants = |short: &str, given: &Option<String>| {
        given.is_some() || algo == short || names.iter().any(|n| n == short || n == &format!("x-amz-checksum-{short}"))
    };
    let mut h = ChecksumHasher::default();
    if wants("crc32", &d.given.checksum_crc32) {
        h.crc32 = Some(Default::default());
    }
    if wants("crc32c", &d.given.checksum_crc32c) {
        h.crc32c = Some(Default::default());
    }
    if wants("sha1", &d.given.checksum_sha1) {
        h.sha1 = Some(Default::default());
    }
    if wants("sha256", &d.given.checksum_sha256) {
        h.sha256 = Some(Default::default());
    }
    if wants("crc64nvme", &d.given.checksum_crc64nvme) {
        h.crc64nvme = Some(Default::default());
    }
    h
}

/// Compares what was computed with what the client sent (headers, then trailers) and returns
/// what to store. A mismatch is BadDigest and nothing is stored.
pub fn verify(computed: Checksum, d: &Declared, trailers: Option<&HeaderMap>) -> Result<Checksums> {
    let trailer = |name: &str| trailers.and_then(|t| t.get(name)).and_then(|v| v.to_str().ok()).map(str::to_string);
    let pairs = [
        ("crc32", &computed.checksum_crc32, &d.given.checksum_crc32),
        ("crc32c", &computed.checksum_crc32c, &d.given.checksum_crc32c),
        ("sha1", &computed.checksum_sha1, &d.given.checksum_sha1),
        ("sha256", &computed.checksum_sha256, &d.given.checksum_sha256),
        ("crc64nvme", &computed.checksum_crc64nvme, &d.given.checksum_crc64nvme),
    ];
    for (name, have, given) in pairs {
        let given = given.clone().or_else(|| trailer(&format!("x-amz-checksum-{name}")));
        if let (Some(have), Some(given)) = (have, given)
            && have != &given
        {
            return Err(s3err(
                S3ErrorCode::BadDigest,
                format!("The x-amz-checksum-{name} you specified did not match the calculated checksum."),
            ));
        }
    }
    Ok(Checksums {
        crc32: computed.checksum_crc32,
        crc32c: computed.checksum_crc32c,
        sha1: computed.checksum_sha1,
        sha256: computed.checksum_sha256,
        crc64nvme: computed.checksum_crc64nvme,
    })
}

/// Checks a Content-MD5 header against the body's MD5.
pub fn verify_content_md5(given: Option<&str>, md5: &[u8; 16]) -> Result<()> {
    let Some(given) = given else { return Ok(()) };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(given.trim())
        .map_err(|_| s3err(S3ErrorCode::InvalidDigest, "The Content-MD5 you specified is not valid."))?;
    if bytes.len() != 16 {
        return Err(s3err(S3ErrorCode::InvalidDigest, "The Content-MD5 you specified is not valid."));
    }
    if bytes != md5 {
        return Err(s3err(S3ErrorCode::BadDigest, "The Content-MD5 you specified did not match what we received."));
    }
    Ok(())
}

/// The stored checksums in the DTO's shape.
pub fn to_dto(c: &Checksums) -> Checksum {
    Checksum {
        checksum_crc32: c.crc32.clone(),
        checksum_crc32c: c.crc32c.clone(),
        checksum_sha1: c.sha1.clone(),
        checksum_sha256: c.sha256.clone(),
        checksum_crc64nvme: c.crc64nvme.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_trailer_checksums_are_verified() {
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-trailer", "x-amz-checksum-crc32".parse().unwrap());
        let d = Declared::default();
        let mut h = hasher_for(&headers, &d);
        assert!(h.crc32.is_some() && h.sha256.is_none());
        h.update(b"hello");
        let computed = h.finalize();
        let good = computed.checksum_crc32.clone().unwrap();
        let mut t = HeaderMap::new();
        t.insert("x-amz-checksum-crc32", good.parse().unwrap());
        let stored = verify(computed.clone(), &d, Some(&t)).unwrap();
        assert_eq!(stored.crc32.as_deref(), Some(good.as_str()));
        t.insert("x-amz-checksum-crc32", "AAAAAA==".parse().unwrap());
        assert!(verify(computed, &d, Some(&t)).is_err());
    }

    #[test]
    fn content_md5() {
        let md5: [u8; 16] = [0; 16];
        assert!(verify_content_md5(Some("AAAAAAAAAAAAAAAAAAAAAA=="), &md5).is_ok());
        assert!(verify_content_md5(Some("AQAAAAAAAAAAAAAAAAAAAA=="), &md5).is_err());
        assert!(verify_content_md5(Some("zz"), &md5).is_err());
    }
}
