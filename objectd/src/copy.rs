//! CopyObject without copying data: the new version references the source's chunks (added in
//! a transaction conditioned on the source's references still existing), with its metadata
//! copied or replaced.

use s3s::dto::*;
use s3s::{S3ErrorCode, S3Request, S3Response, S3Result};

use crate::checksum;
use crate::error::{Result, s3err};
use crate::object_rw::{check_conditions, object_headers, timestamp};
use crate::records::*;
use crate::store::{Cond, Extra, Store};

/// The source of a copy, after the caller's read permission on it was checked.
pub async fn copy_source(
    store: &Store,
    src: &CopySource,
    caller: Option<&str>,
) -> Result<(String, String, ObjectRecord)> {
    let (bucket, key, version) = match src {
        CopySource::Bucket { bucket, key, version_id } => {
            (bucket.to_string(), key.to_string(), version_id.as_deref().map(str::to_string))
        }
        _ => {
            return Err(s3err(S3ErrorCode::NotImplemented, "Access point copy sources are not supported"));
        }
    };
    let b = store.bucket(&bucket).await?;
    let allowed = match caller {
        Some(id) => match store.keys.get(id).await? {
            Some(k) => k.rec.permission(&bucket, Some(&b.rec.owner)).is_some(),
            None => false,
        },
        None => false,
    } || b.rec.public_read;
    if !allowed {
        return Err(s3err(S3ErrorCode::AccessDenied, "Access Denied"));
    }
    let rec = store.object_for_read(&bucket, &key, version.as_deref()).await?;
    Ok((bucket, key, rec))
}

/// Conditions that the source's chunk references still exist when the copy commits.
pub fn source_refs_exist(src: &ObjectRecord) -> Result<Vec<(Cond, crate::error::ObjectdError)>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for h in src.chunk_hashes()? {
        if seen.insert(h) {
            out.push((
                Cond::Exists(cluster::refs::ref_key(&h, &src.data_owner)),
                s3err(S3ErrorCode::NoSuchKey, "The copy source was deleted while copying."),
            ));
        }
    }
    Ok(out)
}

pub async fn copy_object(store: &Store, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
    let caller = req.credentials.as_ref().map(|c| c.access_key.clone());
    let input = req.input;
    crate::store::check_key(&input.key)?;
    let dst_bucket = store.bucket(&input.bucket).await?;
    let (sb, sk, src) = copy_source(store, &input.copy_source, caller.as_deref()).await?;
    check_conditions(
        &src,
        input.copy_source_if_match.as_ref(),
        input.copy_source_if_none_match.as_ref(),
        input.copy_source_if_modified_since.as_ref(),
        input.copy_source_if_unmodified_since.as_ref(),
        S3ErrorCode::PreconditionFailed,
    )?;
    let replace = input.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
    if sb == input.bucket && sk == input.key && !replace && dst_bucket.rec.versioning == Versioning::Off {
        return Err(s3err(
            S3ErrorCode::InvalidRequest,
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
        )
        .into());
    }
    let headers = if replace {
        object_headers(
            input.content_type,
            input.content_encoding,
            input.content_disposition,
            input.content_language,
            input.cache_control,
            input.expires,
            input.metadata,
        )?
    } else {
        src.headers.clone()
    };
    let rec = ObjectRecord {
        version: OBJECT_RECORD_VERSION,
        version_id: String::new(),
        sort_id: new_sort_id(),
        delete_marker: false,
        size: src.size,
        etag: src.etag.clone(),
        last_modified_unix_ms: now_ms(),
        data_owner: format!("s3:{}", new_id()),
        chunks: src.chunks.clone(),
        inline: src.inline.clone(),
        data_in_head: false,
        parts: src.parts.clone(),
        headers,
        checksums: src.checksums.clone(),
        writer: caller.unwrap_or_default(),
    };
    let extra = Extra { conditions: source_refs_exist(&src)?, ..Default::default() };
    let rec = store.commit_version(&input.bucket, &input.key, rec, &Vec::new(), false, extra).await?;
    let c = checksum::to_dto(&rec.checksums);
    Ok(S3Response::new(CopyObjectOutput {
        copy_object_result: Some(CopyObjectResult {
            e_tag: Some(ETag::Strong(rec.etag.clone())),
            last_modified: Some(timestamp(rec.last_modified_unix_ms)),
            checksum_crc32: c.checksum_crc32,
            checksum_crc32c: c.checksum_crc32c,
            checksum_sha1: c.checksum_sha1,
            checksum_sha256: c.checksum_sha256,
            checksum_crc64nvme: c.checksum_crc64nvme,
            ..Default::default()
        }),
        version_id: (rec.version_id != "null").then(|| rec.version_id.clone()),
        copy_source_version_id: (src.version_id != "null").then(|| src.version_id.clone()),
        ..Default::default()
    }))
}
