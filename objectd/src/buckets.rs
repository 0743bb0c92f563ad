//! Bucket operations: create (S3 naming rules), delete (only when empty), head, list,
//! location and the versioning configuration.

use s3s::dto::*;
use s3s::{S3ErrorCode, S3Request, S3Response, S3Result};

use metadata_client::Txn;

use crate::error::{Result, s3err};
use crate::object_rw::timestamp;
use crate::records::*;
use crate::store::Store;

fn caller<T>(req: &S3Request<T>) -> String {
    req.credentials.as_ref().map(|c| c.access_key.clone()).unwrap_or_default()
}

/// S3's bucket naming rules (3–63 characters of a–z, 0–9, '.', '-'; letters or digits at both
/// ends; no '..'; not an IP address; no reserved prefixes or suffixes).
pub fn check_bucket_name(name: &str) -> Result<()> {
    let bad = || s3err(S3ErrorCode::InvalidBucketName, "The specified bucket is not valid.");
    let b = name.as_bytes();
    if !(3..=63).contains(&b.len()) {
        return Err(bad());
    }
    if !b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-') {
        return Err(bad());
    }
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !edge(b[0]) || !edge(b[b.len() - 1]) || name.contains("..") || name.contains(".-") || name.contains("-.") {
        return Err(bad());
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(bad());
    }
    if name.starts_with("xn--")
        || name.starts_with("sthree-")
        || name.ends_with("-s3alias")
        || name.ends_with("--ol-s3")
    {
        return Err(bad());
    }
    Ok(())
}

pub async fn create_bucket(
    store: &Store,
    req: S3Request<CreateBucketInput>,
) -> S3Result<S3Response<CreateBucketOutput>> {
    let who = caller(&req);
    let name = req.input.bucket;
    check_bucket_name(&name)?;
    let rec = BucketRecord {
        version: RECORD_VERSION,
        name: name.clone(),
        created_unix_ms: now_ms(),
        owner: who.clone(),
        versioning: Versioning::Off,
        public_read: matches!(req.input.acl.as_ref().map(|a| a.as_str()), Some("public-read")),
        deleting: false,
    };
    let k = bucket_key(&name);
    let out =
        store.meta.txn(Txn::new().absent(&k).put(&k, &encode(&rec))).await.map_err(crate::error::ObjectdError::from)?;
    if !out.succeeded {
        let existing = store.buckets.refresh(&name).await?;
        let mine = match (&existing, store.keys.get(&who).await?) {
            (Some(b), Some(k)) => {
                k.rec.permission(&name, Some(&b.rec.owner)) == Some(crate::records::Permission::Owner)
            }
            _ => false,
        };
        return Err(if mine {
            s3err(
                S3ErrorCode::BucketAlreadyOwnedByYou,
                "Your previous request to create the named bucket succeeded and you already own it.",
            )
        } else {
            s3err(S3ErrorCode::BucketAlreadyExists, "The requested bucket name is not available.")
        }
        .into());
    }
    store.buckets.refresh(&name).await?;
    Ok(S3Response::new(CreateBucketOutput { location: Some(format!("/{name}")) }))
}

pub async fn delete_bucket(
    store: &Store,
    req: S3Request<DeleteBucketInput>,
) -> S3Result<S3Response<DeleteBucketOutput>> {
    let name = req.input.bucket;
    let b = store.bucket_fresh(&name).await?;
    let k = bucket_key(&name);
    // Mark it, so writes that read the bucket before fail their commit; then look for content.
    let mut marked = (*b.rec).clone();
    marked.deleting = true;
    let marked_raw = encode(&marked);
    if !store
        .meta
        .txn(Txn::new().value_equals(&k, &b.raw).put(&k, &marked_raw))
        .await
        .map_err(crate::error::ObjectdError::from)?
        .succeeded
    {
        return Err(s3err(
            S3ErrorCode::OperationAborted,
            "A conflicting operation is in progress against this bucket; retry.",
        )
        .into());
    }
    let mut empty = true;
    for start in [versions_prefix(&name), uploads_prefix(&name)] {
        let page = store.meta.range(&start, &prefix_end(&start), 1).await.map_err(crate::error::ObjectdError::from)?;
        empty &= page.kvs.is_empty();
    }
    if !empty {
        store
            .meta
            .txn(Txn::new().value_equals(&k, &marked_raw).put(&k, &b.raw))
            .await
            .map_err(crate::error::ObjectdError::from)?;
        store.buckets.refresh(&name).await?;
        return Err(s3err(S3ErrorCode::BucketNotEmpty, "The bucket you tried to delete is not empty.").into());
    }
    store
        .meta
        .txn(Txn::new().value_equals(&k, &marked_raw).delete(&k))
        .await
        .map_err(crate::error::ObjectdError::from)?;
    store.buckets.refresh(&name).await?;
    // Grants named after this bucket must not carry over to a new bucket of the same name.
    crate::admin::drop_grants_for(&store.meta, &name).await?;
    Ok(S3Response::new(DeleteBucketOutput {}))
}

pub async fn head_bucket(store: &Store, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
    store.bucket(&req.input.bucket).await?;
    Ok(S3Response::new(HeadBucketOutput { bucket_region: Some(store.cfg.region.clone()), ..Default::default() }))
}

/// ListBuckets: the buckets the caller may see, in name order, from `prefix`, in pages of
/// `max-buckets` (1–10000; all of them by default) resumed by `continuation-token` (the last
/// name of the previous page, base64: a position, so it stays valid if that bucket goes).
pub async fn list_buckets(store: &Store, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let who = caller(&req);
    let key = store.keys.get(&who).await?;
    let input = req.input;
    let prefix = input.prefix.clone().unwrap_or_default();
    let max = match input.max_buckets {
        None => usize::MAX,
        Some(n) if (1..=10_000).contains(&n) => n as usize,
        Some(_) => return Err(s3err(S3ErrorCode::InvalidArgument, "max-buckets must be between 1 and 10000").into()),
    };
    let after = match input.continuation_token.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => Some(
            b64.decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| s3err(S3ErrorCode::InvalidArgument, "The continuation token provided is incorrect"))?,
        ),
        None => None,
    };
    let mut buckets = Vec::new();
    let mut next = None;
    for (name, b) in store.buckets.all() {
        if b.rec.deleting || !name.starts_with(&prefix) || after.as_ref().is_some_and(|a| name <= *a) {
            continue;
        }
        let visible = key.as_ref().is_some_and(|k| k.rec.permission(&name, Some(&b.rec.owner)).is_some());
        if !visible {
            continue;
        }
        if buckets.len() == max {
            next = buckets.last().and_then(|l: &Bucket| l.name.as_ref()).map(|n| b64.encode(n));
            break;
        }
        buckets.push(Bucket {
            name: Some(name),
            creation_date: Some(timestamp(b.rec.created_unix_ms)),
            bucket_region: Some(store.cfg.region.clone()),
        });
    }
    Ok(S3Response::new(ListBucketsOutput {
        buckets: Some(buckets),
        owner: Some(Owner { id: Some(who.clone()), display_name: key.map(|k| k.rec.name.clone()) }),
        continuation_token: next,
        prefix: input.prefix,
    }))
}

pub async fn get_bucket_location(
    store: &Store,
    req: S3Request<GetBucketLocationInput>,
) -> S3Result<S3Response<GetBucketLocationOutput>> {
    store.bucket(&req.input.bucket).await?;
    // us-east-1 is reported as an empty constraint, as S3 does.
    let loc = (store.cfg.region != "us-east-1").then(|| BucketLocationConstraint::from(store.cfg.region.clone()));
    Ok(S3Response::new(GetBucketLocationOutput { location_constraint: loc }))
}

pub async fn get_bucket_versioning(
    store: &Store,
    req: S3Request<GetBucketVersioningInput>,
) -> S3Result<S3Response<GetBucketVersioningOutput>> {
    let b = store.bucket(&req.input.bucket).await?;
    let status = match b.rec.versioning {
        Versioning::Off => None,
        Versioning::Enabled => Some(BucketVersioningStatus::from_static(BucketVersioningStatus::ENABLED)),
        Versioning::Suspended => Some(BucketVersioningStatus::from_static(BucketVersioningStatus::SUSPENDED)),
    };
    Ok(S3Response::new(GetBucketVersioningOutput { status, ..Default::default() }))
}

pub async fn put_bucket_versioning(
    store: &Store,
    req: S3Request<PutBucketVersioningInput>,
) -> S3Result<S3Response<PutBucketVersioningOutput>> {
    let name = req.input.bucket;
    let want = match req.input.versioning_configuration.status.as_ref().map(|s| s.as_str()) {
        Some("Enabled") => Versioning::Enabled,
        Some("Suspended") => Versioning::Suspended,
        _ => return Err(s3err(S3ErrorCode::MalformedXML, "The versioning status must be Enabled or Suspended.").into()),
    };
    for _ in 0..8 {
        let b = store.bucket_fresh(&name).await?;
        if b.rec.versioning == want {
            return Ok(S3Response::new(PutBucketVersioningOutput {}));
        }
        let mut rec = (*b.rec).clone();
        rec.versioning = want;
        let k = bucket_key(&name);
        if store
            .meta
            .txn(Txn::new().value_equals(&k, &b.raw).put(&k, &encode(&rec)))
            .await
            .map_err(crate::error::ObjectdError::from)?
            .succeeded
        {
            store.buckets.refresh(&name).await?;
            return Ok(S3Response::new(PutBucketVersioningOutput {}));
        }
    }
    Err(s3err(S3ErrorCode::OperationAborted, "A conflicting operation is in progress against this bucket; retry.")
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket.data", "a1b", "123"] {
            assert!(check_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "UPPER", "a..b", "-ab", "ab-", "192.168.1.1", "a_b", &"a".repeat(64), "xn--ab"] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
    }
}
