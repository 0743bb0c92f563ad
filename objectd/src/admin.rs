//! Operator actions on access keys and buckets, straight on the metadata service (used by the
//! `cairn s3` CLI and the local all-in-one): create, list, revoke and grant keys; make a bucket
//! public-read.

use metadata_client::{MetaClient, Txn};

use crate::error::{ObjectdError, Result};
use crate::records::*;

async fn scan<T: serde::de::DeserializeOwned + Versioned>(
    meta: &MetaClient,
    prefix: &str,
) -> Result<Vec<(Vec<u8>, Vec<u8>, T)>> {
    let start = prefix.as_bytes().to_vec();
    let end = prefix_end(&start);
    let mut from = start;
    let mut out = Vec::new();
    loop {
        let page = meta.range(&from, &end, 1000).await?;
        for kv in page.kvs {
            let rec = decode(&kv.key, &kv.value)?;
            out.push((kv.key, kv.value, rec));
        }
        match page.next_key {
            Some(k) => from = k,
            None => return Ok(out),
        }
    }
}

/// Creates a key with a fresh id and secret.
pub async fn create_key(
    meta: &MetaClient,
    name: &str,
    admin: bool,
    create_buckets: bool,
    grants: &[(String, Permission)],
) -> Result<AccessKey> {
    let mut k = AccessKey::generate(name, admin, create_buckets);
    for (b, p) in grants {
        k.grants.insert(b.clone(), *p);
    }
    let key = access_key_key(&k.id);
    if !meta.txn(Txn::new().absent(&key).put(&key, &encode(&k))).await?.succeeded {
        return Err(ObjectdError::Conflict);
    }
    Ok(k)
}

/// Keeps an admin key with this id and secret in the metadata service (objectd's configured
/// admin key from a Kubernetes Secret, the local all-in-one's first key): made (named `name`)
/// if missing, its secret replaced if the configured one changed (rotation), its grants kept.
pub async fn sync_admin_key(meta: &MetaClient, id: &str, secret: &str, name: &str) -> Result<AccessKey> {
    let key = access_key_key(id);
    for _ in 0..8 {
        let Some(kv) = meta.get(&key).await? else {
            let mut k = AccessKey::generate(name, true, true);
            k.id = id.to_string();
            k.secret = secret.to_string();
            if meta.txn(Txn::new().absent(&key).put(&key, &encode(&k))).await?.succeeded {
                return Ok(k);
            }
            continue;
        };
        let mut k: AccessKey = decode(&kv.key, &kv.value)?;
        if k.secret == secret && k.admin {
            return Ok(k);
        }
        k.secret = secret.to_string();
        k.admin = true;
        if meta.txn(Txn::new().mod_revision_equals(&key, kv.mod_revision).put(&key, &encode(&k))).await?.succeeded {
            return Ok(k);
        }
    }
    Err(ObjectdError::Conflict)
}

/// Every key, by id.
pub async fn list_keys(meta: &MetaClient) -> Result<Vec<AccessKey>> {
    Ok(scan::<AccessKey>(meta, KEYS_PREFIX).await?.into_iter().map(|(_, _, k)| k).collect())
}

/// Deletes a key; false if there was none.
pub async fn revoke_key(meta: &MetaClient, id: &str) -> Result<bool> {
    Ok(meta.delete(&access_key_key(id)).await?)
}

/// Sets (or with `None` removes) a key's permission on a bucket.
pub async fn grant(meta: &MetaClient, id: &str, bucket: &str, perm: Option<Permission>) -> Result<bool> {
    let key = access_key_key(id);
    for _ in 0..8 {
        let Some(kv) = meta.get(&key).await? else { return Ok(false) };
        let mut k: AccessKey = decode(&kv.key, &kv.value)?;
        match perm {
            Some(p) => k.grants.insert(bucket.to_string(), p),
            None => k.grants.remove(bucket),
        };
        if meta.txn(Txn::new().value_equals(&key, &kv.value).put(&key, &encode(&k))).await?.succeeded {
            return Ok(true);
        }
    }
    Err(ObjectdError::Conflict)
}

/// Removes every key's grant on `bucket` (after the bucket is deleted).
pub async fn drop_grants_for(meta: &MetaClient, bucket: &str) -> Result<()> {
    for k in list_keys(meta).await? {
        if k.grants.contains_key(bucket) {
            grant(meta, &k.id, bucket, None).await?;
        }
    }
    Ok(())
}

/// Every bucket.
pub async fn list_buckets(meta: &MetaClient) -> Result<Vec<BucketRecord>> {
    Ok(scan::<BucketRecord>(meta, BUCKETS_PREFIX).await?.into_iter().map(|(_, _, b)| b).collect())
}

/// Allows or stops anonymous reads of a bucket; false if there is no such bucket.
pub async fn set_public_read(meta: &MetaClient, bucket: &str, on: bool) -> Result<bool> {
    let key = bucket_key(bucket);
    for _ in 0..8 {
        let Some(kv) = meta.get(&key).await? else { return Ok(false) };
        let mut b: BucketRecord = decode(&kv.key, &kv.value)?;
        b.public_read = on;
        if meta.txn(Txn::new().value_equals(&key, &kv.value).put(&key, &encode(&b))).await?.succeeded {
            return Ok(true);
        }
    }
    Err(ObjectdError::Conflict)
}
