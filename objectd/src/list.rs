//! Listing by range scans of the metadata service: ListObjects (v1, v2) over a bucket's
//! current versions and ListObjectVersions over all of them, with prefix, delimiter (common
//! prefixes are skipped over with one seek each, never read through), markers and tokens —
//! a page costs the keys it returns, whatever the bucket's size.

use base64::Engine as _;
use metadata_client::KeyValue;
use s3s::dto::*;
use s3s::{S3ErrorCode, S3Request, S3Response, S3Result};

use crate::error::{Result, s3err};
use crate::object_rw::timestamp;
use crate::records::*;
use crate::store::Store;

/// One listed thing.
pub enum Item {
    /// An entry: the object key and its metadata pair.
    Entry(String, KeyValue),
    /// A common prefix.
    Prefix(String),
}

/// A page of a scan.
pub struct Page {
    pub items: Vec<Item>,
    pub truncated: bool,
}

/// Scans `base` + keys starting with `prefix`, from `start` (absolute, inclusive), grouping by
/// `delimiter`, at most `max` items. `name_of` turns the rest of a metadata key into the object
/// key; `after` is the exclusive marker common prefixes must sort after.
#[allow(clippy::too_many_arguments)] // each is one of S3's listing parameters
pub async fn scan(
    store: &Store,
    base: &[u8],
    prefix: &str,
    delimiter: Option<&str>,
    start: Vec<u8>,
    after: Option<&str>,
    max: usize,
    name_of: impl Fn(&[u8]) -> &[u8],
) -> Result<Page> {
    let mut span = base.to_vec();
    span.extend_from_slice(prefix.as_bytes());
    let end = prefix_end(&span);
    let mut start = start.max(span.clone());
    let mut items: Vec<Item> = Vec::new();
    let mut truncated = false;
    if max == 0 {
        return Ok(Page { items, truncated });
    }
    'outer: loop {
        if start >= end {
            break;
        }
        let want = (max.saturating_sub(items.len()) + 1).clamp(1, 1000) as u32;
        let page = store.meta.range(&start, &end, want).await?;
        if page.kvs.is_empty() {
            break;
        }
        for kv in page.kvs {
            let name = String::from_utf8_lossy(name_of(&kv.key[base.len()..])).into_owned();
            if let Some(d) = delimiter
                && let Some(i) = name[prefix.len().min(name.len())..].find(d)
            {
                let cp = name[..prefix.len() + i + d.len()].to_string();
                let mut skip = base.to_vec();
                skip.extend_from_slice(cp.as_bytes());
                skip.push(0xff);
                if after.is_none_or(|a| cp.as_str() > a) {
                    if items.len() == max {
                        truncated = true;
                        break 'outer;
                    }
                    items.push(Item::Prefix(cp));
                }
                start = skip;
                continue 'outer;
            }
            if items.len() == max {
                truncated = true;
                break 'outer;
            }
            items.push(Item::Entry(name, kv));
        }
        match page.next_key {
            Some(k) => start = k,
            None => break,
        }
    }
    Ok(Page { items, truncated })
}

pub fn url(s: &str, on: bool) -> String {
    if on { urlencoding::encode(s).into_owned() } else { s.to_string() }
}

/// Whether `encoding-type=url` was asked for. It applies to the names a listing returns and
/// echoes — keys, prefixes, delimiter, start-after and the key markers — never to version or
/// upload ids nor continuation tokens.
pub fn url_on(e: &Option<EncodingType>) -> Result<bool> {
    match e.as_ref().map(|e| e.as_str()) {
        None => Ok(false),
        Some("url") => Ok(true),
        Some(_) => Err(s3err(S3ErrorCode::InvalidArgument, "Invalid Encoding Method specified in Request")),
    }
}

/// A `delimiter` parameter: an empty one is no delimiter (and is not echoed).
pub fn delimiter_of(d: Option<String>) -> Option<String> {
    d.filter(|d| !d.is_empty())
}

fn max_keys(m: Option<i32>) -> Result<usize> {
    match m {
        None => Ok(1000),
        Some(n) if n < 0 => Err(s3err(S3ErrorCode::InvalidArgument, "maxKeys should be non-negative")),
        Some(n) => Ok((n as usize).min(1000)),
    }
}

fn heads_name(rest: &[u8]) -> &[u8] {
    rest
}

fn object_of(name: &str, kv: &KeyValue, owner: bool, enc: bool) -> Result<Object> {
    let rec: ObjectRecord = decode(&kv.key, &kv.value)?;
    Ok(Object {
        key: Some(url(name, enc)),
        e_tag: Some(ETag::Strong(rec.etag.clone())),
        last_modified: Some(timestamp(rec.last_modified_unix_ms)),
        size: Some(rec.size as i64),
        storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
        owner: owner.then(|| Owner { id: Some(rec.writer.clone()), display_name: Some(rec.writer.clone()) }),
        ..Default::default()
    })
}

/// A page of current versions as S3 lists them, with the last name returned (the next marker).
fn objects_of(page: &Page, owner: bool, enc: bool) -> Result<(Vec<Object>, Vec<CommonPrefix>, Option<String>)> {
    let mut contents = Vec::new();
    let mut prefixes = Vec::new();
    let mut last = None;
    for it in &page.items {
        match it {
            Item::Entry(name, kv) => {
                contents.push(object_of(name, kv, owner, enc)?);
                last = Some(name.clone());
            }
            Item::Prefix(p) => {
                prefixes.push(CommonPrefix { prefix: Some(url(p, enc)) });
                last = Some(p.clone());
            }
        }
    }
    Ok((contents, prefixes, last))
}

/// The absolute start for resuming after `marker` (exclusive) in a span of object keys.
fn after_key(base: &[u8], marker: &str) -> Vec<u8> {
    let mut s = base.to_vec();
    s.extend_from_slice(marker.as_bytes());
    s.push(0);
    s
}

pub async fn list_objects_v2(
    store: &Store,
    req: S3Request<ListObjectsV2Input>,
) -> S3Result<S3Response<ListObjectsV2Output>> {
    let i = req.input;
    store.bucket(&i.bucket).await?;
    let enc = url_on(&i.encoding_type)?;
    let max = max_keys(i.max_keys)?;
    let delimiter = delimiter_of(i.delimiter.clone());
    let prefix = i.prefix.clone().unwrap_or_default();
    let base = heads_prefix(&i.bucket);
    let token = match &i.continuation_token {
        Some(t) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| s3err(S3ErrorCode::InvalidArgument, "The continuation token provided is incorrect"))?,
        ),
        None => None,
    };
    let after = token.clone().or_else(|| i.start_after.clone());
    let start = after.as_deref().map(|a| after_key(&base, a)).unwrap_or_else(|| base.clone());
    let page = scan(store, &base, &prefix, delimiter.as_deref(), start, after.as_deref(), max, heads_name).await?;
    let owner = i.fetch_owner.unwrap_or(false);
    let (contents, prefixes, last) = objects_of(&page, owner, enc)?;
    let next =
        if page.truncated { last.map(|l| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(l)) } else { None };
    Ok(S3Response::new(ListObjectsV2Output {
        name: Some(i.bucket),
        prefix: Some(url(&prefix, enc)),
        max_keys: Some(max as i32),
        key_count: Some((contents.len() + prefixes.len()) as i32),
        continuation_token: i.continuation_token,
        is_truncated: Some(page.truncated),
        next_continuation_token: next,
        contents: Some(contents),
        common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
        delimiter: delimiter.map(|d| url(&d, enc)),
        encoding_type: i.encoding_type,
        start_after: i.start_after.map(|s| url(&s, enc)),
        ..Default::default()
    }))
}

pub async fn list_objects(store: &Store, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
    let i = req.input;
    store.bucket(&i.bucket).await?;
    let enc = url_on(&i.encoding_type)?;
    let max = max_keys(i.max_keys)?;
    let delimiter = delimiter_of(i.delimiter.clone());
    let prefix = i.prefix.clone().unwrap_or_default();
    let base = heads_prefix(&i.bucket);
    let marker = i.marker.clone().filter(|m| !m.is_empty());
    let start = marker.as_deref().map(|a| after_key(&base, a)).unwrap_or_else(|| base.clone());
    let page = scan(store, &base, &prefix, delimiter.as_deref(), start, marker.as_deref(), max, heads_name).await?;
    let (contents, prefixes, last) = objects_of(&page, true, enc)?;
    Ok(S3Response::new(ListObjectsOutput {
        name: Some(i.bucket),
        prefix: Some(url(&prefix, enc)),
        marker: Some(url(&marker.unwrap_or_default(), enc)),
        max_keys: Some(max as i32),
        is_truncated: Some(page.truncated),
        next_marker: if page.truncated { last.map(|l| url(&l, enc)) } else { None },
        contents: Some(contents),
        common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
        delimiter: delimiter.map(|d| url(&d, enc)),
        encoding_type: i.encoding_type,
        ..Default::default()
    }))
}

pub fn version_name(rest: &[u8]) -> &[u8] {
    match rest.iter().position(|b| *b == 0) {
        Some(i) => &rest[..i],
        None => rest,
    }
}

/// Where a page of versions resumes: after the marker version of the marker key, or after every
/// version of the marker key (also a common prefix, which `after` then keeps from coming back).
/// Markers are positions: a version id names its place in the key's versions (its sort id)
/// whether or not that version still exists, so a page deleted since it was listed does not
/// stop the listing. Only a deleted `null` version has no place left; the page then resumes at
/// the key's first remaining version (which may list again versions already listed).
async fn versions_start<'a>(
    store: &Store,
    bucket: &str,
    key_marker: Option<&'a str>,
    vid_marker: Option<&str>,
) -> Result<(Vec<u8>, Option<&'a str>)> {
    match (key_marker, vid_marker) {
        (Some(k), Some("null")) => match store.version(bucket, k, "null").await? {
            Some((_, r)) => {
                let mut s = version_key(bucket, k, &r.sort_id);
                s.push(0);
                Ok((s, None))
            }
            None => Ok((key_versions_prefix(bucket, k), None)),
        },
        (Some(k), Some(v)) => {
            if v.len() != 24 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(s3err(S3ErrorCode::InvalidArgument, "Invalid version id marker"));
            }
            // A version id is its sort id.
            let mut s = version_key(bucket, k, v);
            s.push(0);
            Ok((s, None))
        }
        (Some(k), None) => {
            let mut s = key_versions_prefix(bucket, k);
            *s.last_mut().expect("ends with NUL") = 1;
            Ok((s, Some(k)))
        }
        (None, Some(_)) => {
            Err(s3err(S3ErrorCode::InvalidArgument, "A version-id marker cannot be specified without a key marker."))
        }
        (None, None) => Ok((versions_prefix(bucket), None)),
    }
}

pub async fn list_object_versions(
    store: &Store,
    req: S3Request<ListObjectVersionsInput>,
) -> S3Result<S3Response<ListObjectVersionsOutput>> {
    let i = req.input;
    store.bucket(&i.bucket).await?;
    let enc = url_on(&i.encoding_type)?;
    let max = max_keys(i.max_keys)?;
    let delimiter = delimiter_of(i.delimiter.clone());
    let prefix = i.prefix.clone().unwrap_or_default();
    let base = versions_prefix(&i.bucket);
    let key_marker = i.key_marker.clone().filter(|m| !m.is_empty());
    let vid_marker = i.version_id_marker.clone().filter(|m| !m.is_empty());
    let (start, after) = versions_start(store, &i.bucket, key_marker.as_deref(), vid_marker.as_deref()).await?;
    // A page that resumes inside a key's versions does not start with that key's latest one,
    // unless every newer version is gone since the previous page.
    let mut prev_key: Option<String> = None;
    if let (Some(k), Some(_)) = (&key_marker, &vid_marker)
        && let Some((kv, _)) = store.versions_of(&i.bucket, k, 1).await?.into_iter().next()
        && kv.key < start
    {
        prev_key = Some(k.clone());
    }
    let page = scan(store, &base, &prefix, delimiter.as_deref(), start, after, max, version_name).await?;
    let mut versions = Vec::new();
    let mut markers = Vec::new();
    let mut prefixes = Vec::new();
    let mut last: Option<(String, Option<String>)> = None;
    for it in &page.items {
        match it {
            Item::Entry(name, kv) => {
                let rec: ObjectRecord = decode(&kv.key, &kv.value)?;
                let latest = prev_key.as_deref() != Some(name.as_str());
                prev_key = Some(name.clone());
                let owner = Some(Owner { id: Some(rec.writer.clone()), display_name: Some(rec.writer.clone()) });
                if rec.delete_marker {
                    markers.push(DeleteMarkerEntry {
                        key: Some(url(name, enc)),
                        version_id: Some(rec.version_id.clone()),
                        is_latest: Some(latest),
                        last_modified: Some(timestamp(rec.last_modified_unix_ms)),
                        owner,
                    });
                } else {
                    versions.push(ObjectVersion {
                        key: Some(url(name, enc)),
                        version_id: Some(rec.version_id.clone()),
                        is_latest: Some(latest),
                        e_tag: Some(ETag::Strong(rec.etag.clone())),
                        last_modified: Some(timestamp(rec.last_modified_unix_ms)),
                        size: Some(rec.size as i64),
                        storage_class: Some(ObjectVersionStorageClass::from_static(
                            ObjectVersionStorageClass::STANDARD,
                        )),
                        owner,
                        ..Default::default()
                    });
                }
                last = Some((name.clone(), Some(rec.version_id)));
            }
            Item::Prefix(p) => {
                prefixes.push(CommonPrefix { prefix: Some(url(p, enc)) });
                last = Some((p.clone(), None));
            }
        }
    }
    let (next_key, next_vid) = match (page.truncated, last) {
        (true, Some((k, v))) => (Some(url(&k, enc)), v),
        _ => (None, None),
    };
    Ok(S3Response::new(ListObjectVersionsOutput {
        name: Some(i.bucket),
        prefix: Some(url(&prefix, enc)),
        key_marker: Some(key_marker.map(|k| url(&k, enc)).unwrap_or_default()),
        version_id_marker: Some(vid_marker.unwrap_or_default()),
        max_keys: Some(max as i32),
        is_truncated: Some(page.truncated),
        next_key_marker: next_key,
        next_version_id_marker: next_vid,
        versions: Some(versions),
        delete_markers: (!markers.is_empty()).then_some(markers),
        common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
        delimiter: delimiter.map(|d| url(&d, enc)),
        encoding_type: i.encoding_type,
        ..Default::default()
    }))
}
