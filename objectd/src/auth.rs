//! Who may do what: access keys' secrets for SigV4 verification (`S3Auth`) and the per-bucket
//! permission check every request passes before it runs (`S3Access`).

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{S3Error, S3ErrorCode, S3Result};

use crate::cache::Cache;
use crate::records::{AccessKey, BucketRecord, Permission};

/// Looks secrets up in the watched key cache.
pub struct KeyAuth {
    pub keys: Cache<AccessKey>,
}

#[async_trait::async_trait]
impl S3Auth for KeyAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if access_key.is_empty() || access_key.len() > 128 || access_key.contains('/') {
            return Err(S3Error::new(S3ErrorCode::InvalidAccessKeyId));
        }
        match self.keys.get(access_key).await.map_err(S3Error::from)? {
            Some(k) => Ok(SecretKey::from(k.rec.secret.as_str())),
            None => Err(S3Error::with_message(
                S3ErrorCode::InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records.",
            )),
        }
    }
}

/// The permission an operation needs on its bucket; `None` for operations on no bucket.
pub fn needed(op: &str) -> Permission {
    match op {
        "GetObject"
        | "HeadObject"
        | "ListObjects"
        | "ListObjectsV2"
        | "ListObjectVersions"
        | "HeadBucket"
        | "GetBucketLocation"
        | "GetBucketVersioning"
        | "ListMultipartUploads"
        | "GetObjectAttributes"
        | "GetBucketAcl"
        | "GetObjectAcl"
        | "GetObjectTagging"
        | "GetBucketTagging" => Permission::Read,
        "PutObject"
        | "DeleteObject"
        | "DeleteObjects"
        | "CopyObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "UploadPartCopy"
        | "CompleteMultipartUpload"
        | "AbortMultipartUpload"
        | "ListParts" => Permission::Write,
        _ => Permission::Owner,
    }
}

/// Operations an anonymous caller may run on a public-read bucket.
fn public_op(op: &str) -> bool {
    matches!(op, "GetObject" | "HeadObject" | "ListObjects" | "ListObjectsV2" | "HeadBucket")
}

/// Checks each request against the caller's key and the bucket.
pub struct BucketAccess {
    pub keys: Cache<AccessKey>,
    pub buckets: Cache<BucketRecord>,
}

fn denied() -> S3Error {
    S3Error::with_message(S3ErrorCode::AccessDenied, "Access Denied")
}

#[async_trait::async_trait]
impl S3Access for BucketAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let op = cx.s3_op().name().to_string();
        let bucket = match cx.s3_path() {
            S3Path::Root => None,
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(bucket.to_string()),
        };
        let key = match cx.credentials() {
            Some(c) => match self.keys.get(&c.access_key).await.map_err(S3Error::from)? {
                Some(k) => Some(k.rec),
                None => return Err(S3Error::new(S3ErrorCode::InvalidAccessKeyId)),
            },
            None => None,
        };
        let Some(bucket) = bucket else {
            // ListBuckets: any key (it lists what the key may see).
            return if key.is_some() { Ok(()) } else { Err(denied()) };
        };
        if op == "CreateBucket" {
            return match key {
                Some(k) if k.admin || k.create_buckets => Ok(()),
                _ => Err(denied()),
            };
        }
        let rec = self.buckets.get(&bucket).await.map_err(S3Error::from)?;
        let Some(rec) = rec.filter(|r| !r.rec.deleting) else {
            // NoSuchBucket before anything else (rights, the key, an operation we lack), as S3
            // answers; but only to a caller who could have a right to know.
            return Err(if key.is_some() { crate::store::no_such_bucket(&bucket).into() } else { denied() });
        };
        match key {
            Some(k) => match k.permission(&bucket, Some(&rec.rec.owner)) {
                Some(p) if p >= needed(&op) => Ok(()),
                _ if rec.rec.public_read && public_op(&op) => Ok(()),
                _ => Err(denied()),
            },
            None if rec.rec.public_read && public_op(&op) => Ok(()),
            None => Err(denied()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_levels() {
        assert_eq!(needed("GetObject"), Permission::Read);
        assert_eq!(needed("UploadPart"), Permission::Write);
        assert_eq!(needed("DeleteBucket"), Permission::Owner);
        assert_eq!(needed("PutBucketVersioning"), Permission::Owner);
        assert!(public_op("GetObject") && !public_op("PutObject"));
    }
}
