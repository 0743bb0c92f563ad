//! DeleteObject and DeleteObjects: without a version id, the current version goes (unversioned
//! buckets) or a delete marker is added (versioned ones); with one, exactly that version goes.

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use crate::error::{ObjectdError, Result, s3err};
use crate::records::*;
use crate::store::{Extra, Store, check_key};

/// What one delete did.
pub struct Deleted {
    pub version_id: Option<String>,
    pub delete_marker: bool,
}

pub async fn delete_one(
    store: &Store,
    bucket: &str,
    key: &str,
    version_id: Option<&str>,
    writer: &str,
) -> Result<Deleted> {
    check_key(key)?;
    let b = store.bucket(bucket).await?;
    if let Some(v) = version_id {
        let Some((kv, rec)) = store.version(bucket, key, v).await? else {
            return Ok(Deleted { version_id: Some(v.to_string()), delete_marker: false });
        };
        store.delete_version(bucket, key, &kv, &rec).await?;
        return Ok(Deleted { version_id: Some(rec.version_id), delete_marker: rec.delete_marker });
    }
    match b.rec.versioning {
        Versioning::Off => {
            for _ in 0..16 {
                let Some((_, cur)) = store.head(bucket, key).await? else {
                    // Nothing to delete, as of the last committed write. A write still on its
                    // way into the log (its request failed, its transaction not yet applied)
                    // must not land after this answer: a write through the log orders this
                    // delete after it, and finds it.
                    if store.confirm_absent(bucket, key).await? {
                        return Ok(Deleted { version_id: None, delete_marker: false });
                    }
                    continue;
                };
                let Some(kv) = store.meta.get(&version_key(bucket, key, &cur.sort_id)).await? else {
                    continue;
                };
                store.delete_version(bucket, key, &kv, &cur).await?;
                return Ok(Deleted { version_id: None, delete_marker: false });
            }
            Err(ObjectdError::Conflict)
        }
        Versioning::Enabled | Versioning::Suspended => {
            let marker = ObjectRecord {
                version: OBJECT_RECORD_VERSION,
                version_id: String::new(),
                sort_id: new_sort_id(),
                delete_marker: true,
                size: 0,
                etag: String::new(),
                last_modified_unix_ms: now_ms(),
                data_owner: format!("s3:{}", new_id()),
                chunks: Vec::new(),
                inline: None,
                data_in_head: false,
                parts: Vec::new(),
                headers: ObjectHeaders::default(),
                checksums: Checksums::default(),
                writer: writer.to_string(),
            };
            let rec = store.commit_version(bucket, key, marker, &Vec::new(), false, Extra::default()).await?;
            Ok(Deleted { version_id: Some(rec.version_id), delete_marker: true })
        }
    }
}

fn writer_of<T>(req: &S3Request<T>) -> String {
    req.credentials.as_ref().map(|c| c.access_key.clone()).unwrap_or_default()
}

pub async fn delete_object(
    store: &Store,
    req: S3Request<DeleteObjectInput>,
) -> S3Result<S3Response<DeleteObjectOutput>> {
    let writer = writer_of(&req);
    let input = req.input;
    let d = delete_one(store, &input.bucket, &input.key, input.version_id.as_deref(), &writer).await?;
    Ok(S3Response::new(DeleteObjectOutput {
        delete_marker: d.delete_marker.then_some(true),
        version_id: d.version_id,
        ..Default::default()
    }))
}

pub async fn delete_objects(
    store: &Store,
    req: S3Request<DeleteObjectsInput>,
) -> S3Result<S3Response<DeleteObjectsOutput>> {
    let writer = writer_of(&req);
    let input = req.input;
    store.bucket(&input.bucket).await?;
    if input.delete.objects.len() > 1000 {
        return Err(s3err(S3ErrorCode::MalformedXML, "At most 1000 keys can be deleted at once.").into());
    }
    let quiet = input.delete.quiet.unwrap_or(false);
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for o in input.delete.objects {
        match delete_one(store, &input.bucket, &o.key, o.version_id.as_deref(), &writer).await {
            Ok(d) => {
                if !quiet {
                    deleted.push(DeletedObject {
                        key: Some(o.key),
                        version_id: o.version_id.clone(),
                        delete_marker: d.delete_marker.then_some(true),
                        delete_marker_version_id: if o.version_id.is_none() && d.delete_marker {
                            d.version_id
                        } else {
                            None
                        },
                    });
                }
            }
            Err(e) => {
                let e: S3Error = e.into();
                errors.push(Error {
                    key: Some(o.key),
                    version_id: o.version_id,
                    code: Some(e.code().as_str().to_string()),
                    message: e.message().map(str::to_string),
                });
            }
        }
    }
    Ok(S3Response::new(DeleteObjectsOutput {
        deleted: Some(deleted),
        errors: (!errors.is_empty()).then_some(errors),
        ..Default::default()
    }))
}
