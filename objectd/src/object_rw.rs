//! PutObject, GetObject and HeadObject: a streamed upload becomes a new version in one commit;
//! reads honour Range, the four conditional headers, versionId and the stored headers.

use std::time::{Duration, UNIX_EPOCH};

use s3s::dto::*;
use s3s::{S3ErrorCode, S3Request, S3Response, S3Result};

use crate::checksum::{self, Declared};
use crate::data::{self, MAX_PUT};
use crate::error::{ObjectdError, Result, s3err};
use crate::records::*;
use crate::store::{Extra, Store, check_key};

/// A Content-Encoding as stored: `aws-chunked` is how the request's body was sent, not how the
/// object is encoded, so it is dropped (`gzip, aws-chunked` is stored as `gzip`; `aws-chunked`
/// alone as none).
pub fn without_aws_chunked(enc: Option<String>) -> Option<String> {
    let kept: Vec<&str> = enc
        .as_deref()?
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(","))
}

/// The stored headers of a new object (PUT, copy, multipart upload); user metadata limited to
/// 2 KB like S3.
pub fn object_headers(
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    expires: Option<Timestamp>,
    metadata: Option<Metadata>,
) -> Result<ObjectHeaders> {
    let user: std::collections::BTreeMap<String, String> = metadata.unwrap_or_default().into_iter().collect();
    let size: usize = user.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > 2048 {
        return Err(s3err(
            S3ErrorCode::MetadataTooLarge,
            "Your metadata headers exceed the maximum allowed metadata size (2 KB).",
        ));
    }
    Ok(ObjectHeaders {
        content_type,
        content_encoding: without_aws_chunked(content_encoding),
        content_disposition,
        content_language,
        cache_control,
        expires,
        user,
    })
}

pub fn timestamp(ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

/// The length the client announced for the decoded body.
pub fn expected_len(headers: &http::HeaderMap, content_length: Option<i64>) -> Option<u64> {
    headers
        .get("x-amz-decoded-content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or_else(|| content_length.and_then(|n| u64::try_from(n).ok()))
}

pub async fn put_object(store: &Store, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
    let writer = req.credentials.as_ref().map(|c| c.access_key.clone()).unwrap_or_default();
    let trailers = req.trailing_headers.clone();
    let headers = req.headers;
    let input = req.input;
    check_key(&input.key)?;
    let bucket = store.bucket(&input.bucket).await?;
    let if_none_match = match &input.if_none_match {
        None => false,
        Some(ETagCondition::Any) => true,
        Some(_) => return Err(s3err(S3ErrorCode::NotImplemented, "If-None-Match on PUT supports only '*'").into()),
    };
    if let Some(cond) = &input.if_match {
        let cur = store.head(&input.bucket, &input.key).await?;
        let ok = match (cond, &cur) {
            (_, None) => false,
            (ETagCondition::Any, Some(_)) => true,
            (ETagCondition::ETag(e), Some((_, r))) => e.value() == r.etag,
        };
        if !ok {
            return Err(s3err(
                S3ErrorCode::PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold",
            )
            .into());
        }
    }
    let hdrs = object_headers(
        input.content_type.clone(),
        input.content_encoding.clone(),
        input.content_disposition.clone(),
        input.content_language.clone(),
        input.cache_control.clone(),
        input.expires.clone(),
        input.metadata.clone(),
    )?;
    let declared = Declared::new(
        input.checksum_algorithm.as_ref(),
        &input.checksum_crc32,
        &input.checksum_crc32c,
        &input.checksum_sha1,
        &input.checksum_sha256,
        &input.checksum_crc64nvme,
    );
    let hasher = checksum::hasher_for(&headers, &declared);
    let expected = expected_len(&headers, input.content_length);
    let got = data::ingest(store, input.body, expected, hasher, true, MAX_PUT).await?;
    checksum::verify_content_md5(input.content_md5.as_deref(), &got.md5)?;
    let trailer_map = trailers.as_ref().and_then(|t| t.take());
    let sums = checksum::verify(got.hasher.finalize(), &declared, trailer_map.as_ref())?;
    let sort_id = new_sort_id();
    let rec = ObjectRecord {
        version: OBJECT_RECORD_VERSION,
        version_id: String::new(),
        sort_id: sort_id.clone(),
        delete_marker: false,
        size: got.size,
        etag: hex::encode(got.md5),
        last_modified_unix_ms: now_ms(),
        data_owner: format!("s3:{}", new_id()),
        chunks: got.chunks,
        inline: got.inline,
        data_in_head: false,
        parts: Vec::new(),
        headers: hdrs,
        checksums: sums,
        writer,
    };
    let rec = store.commit_version(&input.bucket, &input.key, rec, &got.acked, if_none_match, Extra::default()).await?;
    let c = checksum::to_dto(&rec.checksums);
    let out = PutObjectOutput {
        e_tag: Some(ETag::Strong(rec.etag.clone())),
        version_id: (bucket.rec.versioning != Versioning::Off).then(|| rec.version_id.clone()),
        checksum_crc32: c.checksum_crc32,
        checksum_crc32c: c.checksum_crc32c,
        checksum_sha1: c.checksum_sha1,
        checksum_sha256: c.checksum_sha256,
        checksum_crc64nvme: c.checksum_crc64nvme,
        ..Default::default()
    };
    Ok(S3Response::new(out))
}

/// A 304 for `rec`, with its ETag and Last-Modified headers as S3 sends them (a copy source's
/// condition answers a plain 412 instead).
fn not_modified_error(rec: &ObjectRecord, code: S3ErrorCode) -> ObjectdError {
    if code != S3ErrorCode::NotModified {
        return s3err(code, "At least one of the pre-conditions you specified did not hold");
    }
    let mut e = s3s::S3Error::with_message(code, "Not Modified");
    let mut h = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(&format!("\"{}\"", rec.etag)) {
        h.insert(http::header::ETAG, v);
    }
    let mut date = Vec::new();
    if timestamp(rec.last_modified_unix_ms).format(TimestampFormat::HttpDate, &mut date).is_ok()
        && let Ok(v) = http::HeaderValue::from_bytes(&date)
    {
        h.insert(http::header::LAST_MODIFIED, v);
    }
    if rec.version_id != "null"
        && let Ok(v) = http::HeaderValue::from_str(&rec.version_id)
    {
        h.insert("x-amz-version-id", v);
    }
    e.set_headers(h);
    ObjectdError::S3(e)
}

/// RFC 7232 as S3 applies it: If-Match / If-Unmodified-Since fail with 412, If-None-Match /
/// If-Modified-Since with 304 (a true If-Match overrides If-Unmodified-Since, a false
/// If-None-Match overrides If-Modified-Since).
pub fn check_conditions(
    rec: &ObjectRecord,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
    not_modified: S3ErrorCode,
) -> Result<()> {
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == rec.etag,
    };
    let secs = |t: &Timestamp| {
        let st: time::OffsetDateTime = t.clone().into();
        st.unix_timestamp()
    };
    let modified = (rec.last_modified_unix_ms / 1000) as i64;
    let failed =
        || s3err(S3ErrorCode::PreconditionFailed, "At least one of the pre-conditions you specified did not hold");
    let unchanged = || not_modified_error(rec, not_modified.clone());
    match if_match {
        Some(c) if !matches(c) => return Err(failed()),
        Some(_) => {}
        None => {
            if let Some(t) = if_unmodified_since
                && modified > secs(t)
            {
                return Err(failed());
            }
        }
    }
    match if_none_match {
        Some(c) if matches(c) => return Err(unchanged()),
        Some(_) => {}
        None => {
            if let Some(t) = if_modified_since
                && modified <= secs(t)
            {
                return Err(unchanged());
            }
        }
    }
    Ok(())
}

fn user_meta(rec: &ObjectRecord) -> Option<Metadata> {
    (!rec.headers.user.is_empty()).then(|| rec.headers.user.clone().into_iter().collect())
}

pub async fn get_object(store: &Store, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
    let input = req.input;
    let rec = store.object_for_read(&input.bucket, &input.key, input.version_id.as_deref()).await?;
    check_conditions(
        &rec,
        input.if_match.as_ref(),
        input.if_none_match.as_ref(),
        input.if_modified_since.as_ref(),
        input.if_unmodified_since.as_ref(),
        S3ErrorCode::NotModified,
    )?;
    if input.part_number.is_some() {
        return Err(s3err(S3ErrorCode::NotImplemented, "GetObject by partNumber is not supported").into());
    }
    let (range, content_range) = match &input.range {
        None => (0..rec.size, None),
        Some(r) => {
            let got = r
                .check(rec.size)
                .map_err(|_| s3err(S3ErrorCode::InvalidRange, "The requested range is not satisfiable"))?;
            let cr = format!("bytes {}-{}/{}", got.start, got.end - 1, rec.size);
            (got, Some(cr))
        }
    };
    let body = data::read_range(store, &rec, range.clone())?;
    let full = content_range.is_none();
    let c = if full && input.checksum_mode.is_some() { checksum::to_dto(&rec.checksums) } else { Checksum::default() };
    let h = &rec.headers;
    let out = GetObjectOutput {
        body: Some(body),
        content_length: Some((range.end - range.start) as i64),
        content_range,
        accept_ranges: Some("bytes".into()),
        e_tag: Some(ETag::Strong(rec.etag.clone())),
        last_modified: Some(timestamp(rec.last_modified_unix_ms)),
        metadata: user_meta(&rec),
        content_type: input
            .response_content_type
            .or_else(|| h.content_type.clone())
            .or_else(|| Some("binary/octet-stream".into())),
        content_encoding: input.response_content_encoding.or_else(|| h.content_encoding.clone()),
        content_disposition: input.response_content_disposition.or_else(|| h.content_disposition.clone()),
        content_language: input.response_content_language.or_else(|| h.content_language.clone()),
        cache_control: input.response_cache_control.or_else(|| h.cache_control.clone()),
        expires: input.response_expires.or_else(|| h.expires.clone()),
        version_id: (rec.version_id != "null").then(|| rec.version_id.clone()),
        parts_count: (!rec.parts.is_empty()).then_some(rec.parts.len() as i32),
        checksum_crc32: c.checksum_crc32,
        checksum_crc32c: c.checksum_crc32c,
        checksum_sha1: c.checksum_sha1,
        checksum_sha256: c.checksum_sha256,
        checksum_crc64nvme: c.checksum_crc64nvme,
        ..Default::default()
    };
    Ok(S3Response::new(out))
}

pub async fn head_object(store: &Store, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
    let input = req.input;
    let rec = store.object_for_read(&input.bucket, &input.key, input.version_id.as_deref()).await?;
    check_conditions(
        &rec,
        input.if_match.as_ref(),
        input.if_none_match.as_ref(),
        input.if_modified_since.as_ref(),
        input.if_unmodified_since.as_ref(),
        S3ErrorCode::NotModified,
    )?;
    let (len, content_range) = match &input.range {
        None => (rec.size, None),
        Some(r) => {
            let got = r
                .check(rec.size)
                .map_err(|_| s3err(S3ErrorCode::InvalidRange, "The requested range is not satisfiable"))?;
            (got.end - got.start, Some(format!("bytes {}-{}/{}", got.start, got.end - 1, rec.size)))
        }
    };
    let c = if input.checksum_mode.is_some() { checksum::to_dto(&rec.checksums) } else { Checksum::default() };
    let h = &rec.headers;
    let out = HeadObjectOutput {
        content_length: Some(len as i64),
        content_range,
        accept_ranges: Some("bytes".into()),
        e_tag: Some(ETag::Strong(rec.etag.clone())),
        last_modified: Some(timestamp(rec.last_modified_unix_ms)),
        metadata: user_meta(&rec),
        content_type: h.content_type.clone().or_else(|| Some("binary/octet-stream".into())),
        content_encoding: h.content_encoding.clone(),
        content_disposition: h.content_disposition.clone(),
        content_language: h.content_language.clone(),
        cache_control: h.cache_control.clone(),
        expires: h.expires.clone(),
        version_id: (rec.version_id != "null").then(|| rec.version_id.clone()),
        parts_count: (!rec.parts.is_empty()).then_some(rec.parts.len() as i32),
        checksum_crc32: c.checksum_crc32,
        checksum_crc32c: c.checksum_crc32c,
        checksum_sha1: c.checksum_sha1,
        checksum_sha256: c.checksum_sha256,
        checksum_crc64nvme: c.checksum_crc64nvme,
        ..Default::default()
    };
    Ok(S3Response::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_chunked_is_not_stored() {
        let w = |s: &str| without_aws_chunked(Some(s.to_string()));
        assert_eq!(w("gzip, aws-chunked").as_deref(), Some("gzip"));
        assert_eq!(w("aws-chunked,gzip").as_deref(), Some("gzip"));
        assert_eq!(w("aws-chunked"), None);
        assert_eq!(w("AWS-Chunked"), None);
        assert_eq!(w("gzip,br").as_deref(), Some("gzip,br"));
        assert_eq!(without_aws_chunked(None), None);
    }
}
