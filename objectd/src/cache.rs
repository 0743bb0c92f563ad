//! Watched caches of the small, hot records every request needs (access keys, buckets): loaded
//! by a range scan, kept current by the metadata service's prefix watch (watch first, then read),
//! reloaded when the watch breaks. A miss falls back to a direct read, so a record created a
//! moment ago through another objectd is found.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use metadata_client::MetaClient;

use crate::error::Result;
use crate::records::{Versioned, decode, prefix_end};

/// One cached record: the stored bytes (for compare-and-set conditions) and the decoded value.
pub struct Cached<T> {
    pub raw: Arc<Vec<u8>>,
    pub rec: Arc<T>,
}

impl<T> Clone for Cached<T> {
    fn clone(&self) -> Self {
        Cached { raw: self.raw.clone(), rec: self.rec.clone() }
    }
}

struct Inner<T> {
    map: RwLock<HashMap<String, Cached<T>>>,
    prefix: String,
    meta: MetaClient,
}

/// Records under one prefix, by the rest of their key.
pub struct Cache<T> {
    inner: Arc<Inner<T>>,
    _t: PhantomData<T>,
}

impl<T> Clone for Cache<T> {
    fn clone(&self) -> Self {
        Cache { inner: self.inner.clone(), _t: PhantomData }
    }
}

impl<T: serde::de::DeserializeOwned + Versioned + Send + Sync + 'static> Cache<T> {
    /// Starts following `prefix`.
    pub fn follow(meta: MetaClient, prefix: &str) -> Self {
        let cache = Cache {
            inner: Arc::new(Inner { map: RwLock::new(HashMap::new()), prefix: prefix.to_string(), meta }),
            _t: PhantomData,
        };
        let weak = Arc::downgrade(&cache.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = inner.follow_once().await {
                    tracing::debug!(error = %e, prefix = %inner.prefix, "cache watch ended; re-reading");
                }
                drop(inner);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        cache
    }

    /// The record named `name`: from the cache, else read directly (and cached).
    pub async fn get(&self, name: &str) -> Result<Option<Cached<T>>> {
        if let Some(c) = self.inner.map.read().expect("cache lock").get(name) {
            return Ok(Some(c.clone()));
        }
        self.refresh(name).await
    }

    /// Reads `name` directly from the metadata service and updates the cache.
    pub async fn refresh(&self, name: &str) -> Result<Option<Cached<T>>> {
        let key = format!("{}{}", self.inner.prefix, name);
        match self.inner.meta.get(key.as_bytes()).await? {
            Some(kv) => {
                let rec: T = decode(&kv.key, &kv.value)?;
                let c = Cached { raw: Arc::new(kv.value), rec: Arc::new(rec) };
                self.inner.map.write().expect("cache lock").insert(name.to_string(), c.clone());
                Ok(Some(c))
            }
            None => {
                self.inner.map.write().expect("cache lock").remove(name);
                Ok(None)
            }
        }
    }

    /// Every cached record (for listings).
    pub fn all(&self) -> Vec<(String, Cached<T>)> {
        let mut v: Vec<_> =
            self.inner.map.read().expect("cache lock").iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

impl<T: serde::de::DeserializeOwned + Versioned> Inner<T> {
    async fn follow_once(&self) -> Result<()> {
        let stream = self.meta.watch(self.prefix.as_bytes()).await?;
        let start = self.prefix.as_bytes().to_vec();
        let end = prefix_end(&start);
        let mut fresh = HashMap::new();
        let mut from = start.clone();
        let mut revision = 0;
        loop {
            let page = self.meta.range(&from, &end, 1000).await?;
            revision = revision.max(page.revision);
            for kv in page.kvs {
                let name = String::from_utf8_lossy(&kv.key[start.len()..]).into_owned();
                match decode::<T>(&kv.key, &kv.value) {
                    Ok(rec) => {
                        fresh.insert(name, Cached { raw: Arc::new(kv.value), rec: Arc::new(rec) });
                    }
                    Err(e) => tracing::error!(error = %e, "skipping unreadable record"),
                }
            }
            match page.next_key {
                Some(k) => from = k,
                None => break,
            }
        }
        *self.map.write().expect("cache lock") = fresh;
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let ev = ev?;
            if ev.revision <= revision {
                continue;
            }
            let Some(kv) = ev.kv else { continue };
            let name = String::from_utf8_lossy(&kv.key[start.len().min(kv.key.len())..]).into_owned();
            let mut map = self.map.write().expect("cache lock");
            if ev.deleted {
                map.remove(&name);
            } else {
                match decode::<T>(&kv.key, &kv.value) {
                    Ok(rec) => {
                        map.insert(name, Cached { raw: Arc::new(kv.value), rec: Arc::new(rec) });
                    }
                    Err(e) => tracing::error!(error = %e, "skipping unreadable record"),
                }
            }
        }
        Ok(())
    }
}
