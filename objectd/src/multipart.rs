//! Multipart uploads: create, upload part (streamed into chunks, referenced by the part),
//! upload part copy (whole source chunks referenced, partial ones put anew), complete (the
//! parts' chunks become the object's in one transaction — nothing is copied), abort, list
//! parts, list uploads, and the sweep that aborts abandoned uploads.

use std::time::Duration;

use chunk_engine::ChunkHash;
use cluster::refs::{add_refs, ref_key, remove_refs};
use futures::StreamExt;
use metadata_client::Txn;
use s3s::dto::*;
use s3s::{S3ErrorCode, S3Request, S3Response, S3Result};

use crate::checksum::{self, Declared};
use crate::data;
use crate::error::{ObjectdError, Result, s3err};
use crate::object_rw::{check_conditions, expected_len, object_headers, timestamp};
use crate::records::*;
use crate::store::{Cond, Extra, Store, check_key};

/// Smallest part except the last (S3's rule).
pub const MIN_PART: u64 = 5 << 20;
/// Largest part (S3's rule).
pub const MAX_PART: u64 = 5 << 30;

fn no_such_upload() -> ObjectdError {
    s3err(
        S3ErrorCode::NoSuchUpload,
        "The specified multipart upload does not exist. The upload ID might be invalid, or the multipart upload might have been aborted or completed.",
    )
}

fn check_part_number(n: i32) -> Result<()> {
    if !(1..=10_000).contains(&n) {
        return Err(s3err(
            S3ErrorCode::InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive",
        ));
    }
    Ok(())
}

async fn upload(store: &Store, bucket: &str, key: &str, upload_id: &str) -> Result<(Vec<u8>, UploadRecord)> {
    if upload_id.len() != 32 || !upload_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(no_such_upload());
    }
    let k = upload_key(bucket, key, upload_id);
    match store.meta.get(&k).await? {
        Some(kv) => Ok((kv.value.clone(), decode(&k, &kv.value)?)),
        None => {
            store.bucket(bucket).await?;
            Err(no_such_upload())
        }
    }
}

pub async fn create(
    store: &Store,
    req: S3Request<CreateMultipartUploadInput>,
) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
    let who = req.credentials.as_ref().map(|c| c.access_key.clone()).unwrap_or_default();
    let i = req.input;
    check_key(&i.key)?;
    store.bucket(&i.bucket).await?;
    let headers = object_headers(
        i.content_type,
        i.content_encoding,
        i.content_disposition,
        i.content_language,
        i.cache_control,
        i.expires,
        i.metadata,
    )?;
    let rec = UploadRecord {
        version: RECORD_VERSION,
        upload_id: new_id(),
        bucket: i.bucket.clone(),
        key: i.key.clone(),
        initiated_unix_ms: now_ms(),
        initiator: who,
        headers,
        checksum_algorithm: i.checksum_algorithm.as_ref().map(|a| a.as_str().to_string()),
    };
    store.meta.put(&upload_key(&i.bucket, &i.key, &rec.upload_id), &encode(&rec)).await.map_err(ObjectdError::from)?;
    Ok(S3Response::new(CreateMultipartUploadOutput {
        bucket: Some(i.bucket),
        key: Some(i.key),
        upload_id: Some(rec.upload_id),
        checksum_algorithm: i.checksum_algorithm,
        ..Default::default()
    }))
}

/// Stores a part record with its references, replacing (and unreferencing) an earlier upload of
/// the same part number — as long as the upload still exists.
async fn commit_part(
    store: &Store,
    up: &UploadRecord,
    part: PartRecord,
    acked: &crate::store::Acked,
    extra: Vec<(Cond, ObjectdError)>,
) -> Result<()> {
    let window = cluster::gc::WRITE_WINDOW;
    if acked.iter().any(|(_, at)| at.elapsed() >= window - window / 4) {
        return Err(ObjectdError::Cluster(cluster::ClusterError::Stale(
            "part chunks outlived the write window".into(),
        )));
    }
    let uk = upload_key(&up.bucket, &up.key, &up.upload_id);
    let pk = part_key(&up.upload_id, part.part_number);
    let hashes = part.chunks.iter().map(ChunkRef::hash).collect::<Result<Vec<_>>>()?;
    for _ in 0..16 {
        let old = store.meta.get(&pk).await?;
        let mut replaced = Vec::new();
        let mut txn = Txn::new().exists(&uk);
        txn = match &old {
            Some(kv) => txn.mod_revision_equals(&pk, kv.mod_revision),
            None => txn.absent(&pk),
        };
        for (c, _) in &extra {
            txn = match c {
                Cond::Exists(k) => txn.exists(k),
                Cond::ModRev(k, r) => txn.mod_revision_equals(k, *r),
            };
        }
        if let Some(kv) = &old {
            let prev: PartRecord = decode(&pk, &kv.value)?;
            let ph = prev.chunks.iter().map(ChunkRef::hash).collect::<Result<Vec<_>>>()?;
            txn = remove_refs(txn, &ph, &prev.data_owner);
            replaced = ph;
        }
        txn = add_refs(txn.put(&pk, &encode(&part)), &hashes, &part.data_owner);
        let out = store.meta.txn(txn).await?;
        if out.succeeded {
            // The part uploaded again: its earlier upload's chunks go at once (those the new
            // one also has stay, referenced).
            store.release(replaced.into_iter().filter(|h| !hashes.contains(h)).collect());
            return Ok(());
        }
        match out.failed_condition {
            Some(0) => return Err(no_such_upload()),
            Some(i) if i >= 2 => {
                return Err(extra.into_iter().nth(i - 2).map(|e| e.1).unwrap_or(ObjectdError::Conflict));
            }
            _ => {}
        }
    }
    Err(ObjectdError::Conflict)
}

pub async fn upload_part(store: &Store, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
    let trailers = req.trailing_headers.clone();
    let headers = req.headers;
    let i = req.input;
    check_part_number(i.part_number)?;
    let (_, up) = upload(store, &i.bucket, &i.key, &i.upload_id).await?;
    let declared = Declared::new(
        i.checksum_algorithm.as_ref(),
        &i.checksum_crc32,
        &i.checksum_crc32c,
        &i.checksum_sha1,
        &i.checksum_sha256,
        &i.checksum_crc64nvme,
    );
    let hasher = checksum::hasher_for(&headers, &declared);
    let got = data::ingest(store, i.body, expected_len(&headers, i.content_length), hasher, false, MAX_PART).await?;
    checksum::verify_content_md5(i.content_md5.as_deref(), &got.md5)?;
    let t = trailers.as_ref().and_then(|t| t.take());
    let sums = checksum::verify(got.hasher.finalize(), &declared, t.as_ref())?;
    let part = PartRecord {
        version: RECORD_VERSION,
        part_number: i.part_number,
        size: got.size,
        etag: hex::encode(got.md5),
        last_modified_unix_ms: now_ms(),
        data_owner: format!("s3p:{}:{}:{}", up.upload_id, i.part_number, new_id()),
        chunks: got.chunks,
        checksums: sums,
    };
    commit_part(store, &up, part.clone(), &got.acked, Vec::new()).await?;
    let c = checksum::to_dto(&part.checksums);
    Ok(S3Response::new(UploadPartOutput {
        e_tag: Some(ETag::Strong(part.etag)),
        checksum_crc32: c.checksum_crc32,
        checksum_crc32c: c.checksum_crc32c,
        checksum_sha1: c.checksum_sha1,
        checksum_sha256: c.checksum_sha256,
        checksum_crc64nvme: c.checksum_crc64nvme,
        ..Default::default()
    }))
}

/// Parses `bytes=first-last` (both required, as S3 wants for x-amz-copy-source-range).
fn copy_range(r: &str, size: u64) -> Result<std::ops::Range<u64>> {
    let bad = || {
        s3err(
            S3ErrorCode::InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy",
        )
    };
    let spec = r.strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a > b || b >= size {
        return Err(s3err(S3ErrorCode::InvalidRange, "The requested range is not satisfiable"));
    }
    Ok(a..b + 1)
}

pub async fn upload_part_copy(
    store: &Store,
    req: S3Request<UploadPartCopyInput>,
) -> S3Result<S3Response<UploadPartCopyOutput>> {
    let caller = req.credentials.as_ref().map(|c| c.access_key.clone());
    let i = req.input;
    check_part_number(i.part_number)?;
    let (_, up) = upload(store, &i.bucket, &i.key, &i.upload_id).await?;
    let (_, _, src) = crate::copy::copy_source(store, &i.copy_source, caller.as_deref()).await?;
    check_conditions(
        &src,
        i.copy_source_if_match.as_ref(),
        i.copy_source_if_none_match.as_ref(),
        i.copy_source_if_modified_since.as_ref(),
        i.copy_source_if_unmodified_since.as_ref(),
        S3ErrorCode::PreconditionFailed,
    )?;
    let range = match &i.copy_source_range {
        Some(r) => copy_range(r, src.size)?,
        None => 0..src.size,
    };
    // Whole source chunks inside the range are referenced; the bytes around them are put anew.
    // The part's MD5 needs every byte, so the range is read once.
    let mut chunks = Vec::new();
    let mut acked = Vec::new();
    let mut conds = Vec::new();
    let mut md5 = s3s::crypto::Md5::default();
    use s3s::crypto::Checksum as _;
    let mut pending: Vec<u8> = Vec::new();
    let flush = |pending: &mut Vec<u8>| {
        let data = bytes::Bytes::from(std::mem::take(pending));
        let client = store.chunks.clone();
        async move {
            let n = data.len() as u64;
            let r = client.put(data).await?;
            Ok::<_, ObjectdError>((ChunkRef { h: r.hash.to_hex(), n }, (r.hash, r.acked_at)))
        }
    };
    if src.chunks.is_empty() {
        let data = src.inline.as_deref().unwrap_or_default();
        let piece = &data[range.start as usize..range.end as usize];
        md5.update(piece);
        if !piece.is_empty() {
            pending.extend_from_slice(piece);
            let (c, a) = flush(&mut pending).await?;
            chunks.push(c);
            acked.push(a);
        }
    } else {
        let mut off = 0u64;
        for c in &src.chunks {
            let (s, e) = (off, off + c.n);
            off = e;
            if e <= range.start || s >= range.end {
                continue;
            }
            let h: ChunkHash = c.hash()?;
            let data = store.chunks.get(&h).await.map_err(ObjectdError::from)?;
            let (a, b) = ((range.start.max(s) - s) as usize, (range.end.min(e) - s) as usize);
            md5.update(&data[a..b]);
            if a == 0 && b as u64 == c.n {
                if !pending.is_empty() {
                    let (pc, pa) = flush(&mut pending).await?;
                    chunks.push(pc);
                    acked.push(pa);
                }
                chunks.push(c.clone());
                conds.push((
                    Cond::Exists(ref_key(&h, &src.data_owner)),
                    s3err(S3ErrorCode::NoSuchKey, "The copy source was deleted while copying."),
                ));
            } else {
                pending.extend_from_slice(&data[a..b]);
            }
        }
        if !pending.is_empty() {
            let (pc, pa) = flush(&mut pending).await?;
            chunks.push(pc);
            acked.push(pa);
        }
    }
    let md5: [u8; 16] = md5.finalize();
    let part = PartRecord {
        version: RECORD_VERSION,
        part_number: i.part_number,
        size: range.end - range.start,
        etag: hex::encode(md5),
        last_modified_unix_ms: now_ms(),
        data_owner: format!("s3p:{}:{}:{}", up.upload_id, i.part_number, new_id()),
        chunks,
        checksums: Checksums::default(),
    };
    commit_part(store, &up, part.clone(), &acked, conds).await?;
    Ok(S3Response::new(UploadPartCopyOutput {
        copy_part_result: Some(CopyPartResult {
            e_tag: Some(ETag::Strong(part.etag)),
            last_modified: Some(timestamp(part.last_modified_unix_ms)),
            ..Default::default()
        }),
        copy_source_version_id: (src.version_id != "null").then(|| src.version_id.clone()),
        ..Default::default()
    }))
}

async fn parts_of(
    store: &Store,
    upload_id: &str,
    from: i32,
    limit: u32,
) -> Result<(Vec<(Vec<u8>, u64, PartRecord)>, bool)> {
    let start = part_key(upload_id, from);
    let end = prefix_end(&parts_prefix(upload_id));
    let mut out = Vec::new();
    let mut cursor = start;
    loop {
        let want = (limit as usize - out.len()).min(1000) as u32 + 1;
        let page = store.meta.range(&cursor, &end, want).await?;
        for kv in page.kvs {
            if out.len() == limit as usize {
                return Ok((out, true));
            }
            let rec: PartRecord = decode(&kv.key, &kv.value)?;
            out.push((kv.key, kv.mod_revision, rec));
        }
        match page.next_key {
            Some(k) if out.len() < limit as usize => cursor = k,
            Some(_) => return Ok((out, true)),
            None => return Ok((out, false)),
        }
    }
}

pub async fn complete(
    store: &Store,
    req: S3Request<CompleteMultipartUploadInput>,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    let who = req.credentials.as_ref().map(|c| c.access_key.clone()).unwrap_or_default();
    let i = req.input;
    let (up_raw, up) = upload(store, &i.bucket, &i.key, &i.upload_id).await?;
    let wanted = i.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
    if wanted.is_empty() {
        return Err(s3err(S3ErrorCode::MalformedXML, "You must specify at least one part.").into());
    }
    let (stored, _) = parts_of(store, &up.upload_id, 1, 10_001).await?;
    let by_number: std::collections::HashMap<i32, &(Vec<u8>, u64, PartRecord)> =
        stored.iter().map(|p| (p.2.part_number, p)).collect();
    let mut prev = 0;
    let mut chunks = Vec::new();
    let mut sizes = Vec::new();
    let mut md5s = Vec::new();
    let mut conds: Vec<(Cond, ObjectdError)> =
        vec![(Cond::Exists(upload_key(&i.bucket, &i.key, &up.upload_id)), no_such_upload())];
    let invalid_part = || {
        s3err(
            S3ErrorCode::InvalidPart,
            "One or more of the specified parts could not be found. The part might not have been uploaded, or the specified entity tag might not have matched the part's entity tag.",
        )
    };
    for (n, w) in wanted.iter().enumerate() {
        let num = w.part_number.ok_or_else(|| s3err(S3ErrorCode::MalformedXML, "A part is missing its PartNumber."))?;
        if num <= prev {
            return Err(s3err(S3ErrorCode::InvalidPartOrder, "The list of parts was not in ascending order. The parts list must be specified in order by part number.").into());
        }
        prev = num;
        let Some((pk, rev, p)) = by_number.get(&num).copied() else { return Err(invalid_part().into()) };
        let etag = w.e_tag.as_ref().map(|e| e.value().trim_matches('"').to_string());
        if etag.as_deref() != Some(p.etag.as_str()) {
            return Err(invalid_part().into());
        }
        if p.size < MIN_PART && n + 1 < wanted.len() {
            return Err(s3err(
                S3ErrorCode::EntityTooSmall,
                "Your proposed upload is smaller than the minimum allowed object size.",
            )
            .into());
        }
        md5s.extend(hex::decode(&p.etag).map_err(|_| invalid_part())?);
        sizes.push(p.size);
        chunks.extend(p.chunks.iter().cloned());
        conds.push((Cond::ModRev(pk.clone(), *rev), invalid_part()));
    }
    let etag = {
        use s3s::crypto::Checksum as _;
        let mut m = s3s::crypto::Md5::default();
        m.update(&md5s);
        let d: [u8; 16] = m.finalize();
        format!("{}-{}", hex::encode(d), wanted.len())
    };
    // Every stored part goes: listed ones hand their chunks to the object, the rest are dropped.
    let mut drop_refs = Vec::new();
    let mut deletes = vec![upload_key(&i.bucket, &i.key, &up.upload_id)];
    for (pk, _, p) in &stored {
        deletes.push(pk.clone());
        drop_refs.push((p.data_owner.clone(), p.chunks.iter().map(ChunkRef::hash).collect::<Result<Vec<_>>>()?));
    }
    let _ = up_raw;
    let rec = ObjectRecord {
        version: OBJECT_RECORD_VERSION,
        version_id: String::new(),
        sort_id: new_sort_id(),
        delete_marker: false,
        size: sizes.iter().sum(),
        etag,
        last_modified_unix_ms: now_ms(),
        data_owner: format!("s3:{}", new_id()),
        chunks,
        inline: None,
        data_in_head: false,
        parts: sizes,
        headers: up.headers.clone(),
        checksums: Checksums::default(),
        writer: who,
    };
    let b = store.bucket(&i.bucket).await?;
    let extra = Extra { conditions: conds, deletes, drop_refs };
    let rec = store.commit_version(&i.bucket, &i.key, rec, &Vec::new(), false, extra).await?;
    Ok(S3Response::new(CompleteMultipartUploadOutput {
        bucket: Some(i.bucket.clone()),
        key: Some(i.key.clone()),
        e_tag: Some(ETag::Strong(rec.etag.clone())),
        location: Some(format!("/{}/{}", i.bucket, i.key)),
        version_id: (b.rec.versioning != Versioning::Off).then(|| rec.version_id.clone()),
        ..Default::default()
    }))
}

/// Deletes an upload with its parts and their references (in transactions of bounded size).
pub async fn abort_upload(store: &Store, up: &UploadRecord) -> Result<()> {
    let uk = upload_key(&up.bucket, &up.key, &up.upload_id);
    // The upload record goes first, so no new part can commit; then the parts.
    store.meta.delete(&uk).await?;
    loop {
        let (parts, _) = parts_of(store, &up.upload_id, 1, 64).await?;
        if parts.is_empty() {
            return Ok(());
        }
        let mut txn = Txn::new();
        let mut freed = Vec::new();
        for (pk, rev, p) in &parts {
            let hs = p.chunks.iter().map(ChunkRef::hash).collect::<Result<Vec<_>>>()?;
            txn = remove_refs(txn.mod_revision_equals(pk, *rev).delete(pk), &hs, &p.data_owner);
            freed.extend(hs);
        }
        if store.meta.txn(txn).await?.succeeded {
            store.release(freed);
        }
    }
}

pub async fn abort(
    store: &Store,
    req: S3Request<AbortMultipartUploadInput>,
) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
    let i = req.input;
    let (_, up) = upload(store, &i.bucket, &i.key, &i.upload_id).await?;
    abort_upload(store, &up).await?;
    Ok(S3Response::new(AbortMultipartUploadOutput::default()))
}

pub async fn list_parts(store: &Store, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
    let i = req.input;
    let (_, up) = upload(store, &i.bucket, &i.key, &i.upload_id).await?;
    let max = i.max_parts.unwrap_or(1000).clamp(0, 1000);
    let marker = i.part_number_marker.unwrap_or(0);
    let (parts, truncated) = parts_of(store, &up.upload_id, marker.saturating_add(1).max(1), max as u32).await?;
    let next = if truncated { parts.last().map(|p| p.2.part_number) } else { None };
    let owner = Owner { id: Some(up.initiator.clone()), display_name: Some(up.initiator.clone()) };
    Ok(S3Response::new(ListPartsOutput {
        bucket: Some(i.bucket),
        key: Some(i.key),
        upload_id: Some(up.upload_id.clone()),
        max_parts: Some(max),
        part_number_marker: i.part_number_marker,
        next_part_number_marker: next,
        is_truncated: Some(truncated),
        initiator: Some(Initiator { id: owner.id.clone(), display_name: owner.display_name.clone() }),
        owner: Some(owner),
        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
        parts: Some(
            parts
                .into_iter()
                .map(|(_, _, p)| {
                    let c = checksum::to_dto(&p.checksums);
                    Part {
                        part_number: Some(p.part_number),
                        e_tag: Some(ETag::Strong(p.etag)),
                        size: Some(p.size as i64),
                        last_modified: Some(timestamp(p.last_modified_unix_ms)),
                        checksum_crc32: c.checksum_crc32,
                        checksum_crc32c: c.checksum_crc32c,
                        checksum_sha1: c.checksum_sha1,
                        checksum_sha256: c.checksum_sha256,
                        checksum_crc64nvme: c.checksum_crc64nvme,
                    }
                })
                .collect(),
        ),
        ..Default::default()
    }))
}

pub async fn list_uploads(
    store: &Store,
    req: S3Request<ListMultipartUploadsInput>,
) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
    let i = req.input;
    store.bucket(&i.bucket).await?;
    let max = i.max_uploads.unwrap_or(1000).clamp(1, 1000) as usize;
    let enc = crate::list::url_on(&i.encoding_type)?;
    let url = |s: &str| crate::list::url(s, enc);
    let delimiter = crate::list::delimiter_of(i.delimiter.clone());
    let prefix = i.prefix.clone().unwrap_or_default();
    let base = uploads_prefix(&i.bucket);
    let uid_marker = i.upload_id_marker.as_deref().filter(|u| !u.is_empty());
    let start = match (&i.key_marker, uid_marker) {
        (Some(k), Some(u)) if !k.is_empty() => {
            let mut s = upload_key(&i.bucket, k, u);
            s.push(0);
            s
        }
        (Some(k), _) if !k.is_empty() => {
            let mut s = base.clone();
            s.extend_from_slice(k.as_bytes());
            s.push(1);
            s
        }
        _ => base.clone(),
    };
    // A key marker alone may be a common prefix of the previous page: it must not come back.
    let after = i.key_marker.as_deref().filter(|k| !k.is_empty() && uid_marker.is_none());
    let page =
        crate::list::scan(store, &base, &prefix, delimiter.as_deref(), start, after, max, crate::list::version_name)
            .await?;
    let mut uploads = Vec::new();
    let mut prefixes = Vec::new();
    let mut last: Option<(String, String)> = None;
    for it in page.items {
        match it {
            crate::list::Item::Entry(_, kv) => {
                let u: UploadRecord = decode(&kv.key, &kv.value)?;
                last = Some((u.key.clone(), u.upload_id.clone()));
                uploads.push(MultipartUpload {
                    key: Some(url(&u.key)),
                    upload_id: Some(u.upload_id),
                    initiated: Some(timestamp(u.initiated_unix_ms)),
                    initiator: Some(Initiator {
                        id: Some(u.initiator.clone()),
                        display_name: Some(u.initiator.clone()),
                    }),
                    owner: Some(Owner { id: Some(u.initiator.clone()), display_name: Some(u.initiator) }),
                    storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                    ..Default::default()
                });
            }
            crate::list::Item::Prefix(p) => {
                last = Some((p.clone(), String::new()));
                prefixes.push(CommonPrefix { prefix: Some(url(&p)) });
            }
        }
    }
    let (nk, nu) = match (page.truncated, last) {
        (true, Some((k, u))) => (Some(url(&k)), (!u.is_empty()).then_some(u)),
        _ => (None, None),
    };
    Ok(S3Response::new(ListMultipartUploadsOutput {
        bucket: Some(i.bucket),
        prefix: i.prefix.map(|p| url(&p)),
        delimiter: delimiter.map(|d| url(&d)),
        key_marker: i.key_marker.map(|k| url(&k)),
        encoding_type: i.encoding_type,
        upload_id_marker: i.upload_id_marker,
        max_uploads: Some(max as i32),
        is_truncated: Some(page.truncated),
        next_key_marker: nk,
        next_upload_id_marker: nu,
        uploads: Some(uploads),
        common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
        ..Default::default()
    }))
}

/// Aborts every upload older than `expiry`, every `every` (the first sweep after one period).
pub async fn sweep_abandoned(store: Store, expiry: Duration, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match sweep_once(&store, expiry).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(aborted = n, "aborted abandoned multipart uploads"),
            Err(e) => tracing::warn!(error = %e, "multipart sweep failed; next period retries"),
        }
    }
}

/// One sweep; returns how many uploads it aborted.
pub async fn sweep_once(store: &Store, expiry: Duration) -> Result<usize> {
    let start = b"s3/u/".to_vec();
    let end = prefix_end(&start);
    let cutoff = now_ms().saturating_sub(expiry.as_millis() as u64);
    let mut from = start;
    let mut n = 0;
    loop {
        let page = store.meta.range(&from, &end, 500).await?;
        let stale: Vec<UploadRecord> = page
            .kvs
            .iter()
            .filter_map(|kv| decode::<UploadRecord>(&kv.key, &kv.value).ok())
            .filter(|u| u.initiated_unix_ms < cutoff)
            .collect();
        let mut s =
            futures::stream::iter(stale).map(|u| async move { abort_upload(store, &u).await }).buffer_unordered(4);
        while let Some(r) = s.next().await {
            r?;
            n += 1;
            store.metrics.mpu_aborted.inc();
        }
        match page.next_key {
            Some(k) => from = k,
            None => return Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ranges() {
        assert_eq!(copy_range("bytes=0-9", 100).unwrap(), 0..10);
        assert!(copy_range("bytes=0-100", 100).is_err());
        assert!(copy_range("bytes=5-", 100).is_err());
        assert!(copy_range("0-5", 100).is_err());
    }
}
