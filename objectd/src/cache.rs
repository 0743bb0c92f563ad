//! Watched caches of the small, hot records every request needs (access keys, buckets): loaded
//! by a range scan, kept current by the metadata service's prefix watch (watch first, then read),
//! reloaded when the watch breaks. A miss falls back to a direct read, so a record created a
//! moment ago through another objectd is found. Every entry remembers the store revision it is
//! known at, so a direct read that raced a newer watch event (or a late event older than a direct
//! read) never puts an older state back: a revoked key stays revoked.

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

/// What the cache knows of one name, as of store revision `rev`: the record, or that it is gone.
struct Entry<T> {
    cached: Option<Cached<T>>,
    rev: u64,
}

impl<T> Entry<T> {
    /// Takes `cached` as of `rev` unless this entry already reflects a later revision.
    fn update(map: &mut HashMap<String, Entry<T>>, name: &str, cached: Option<Cached<T>>, rev: u64) {
        match map.get_mut(name) {
            Some(e) if e.rev >= rev => {}
            Some(e) => *e = Entry { cached, rev },
            // A name never seen needs no record of its absence.
            None if cached.is_none() => {}
            None => {
                map.insert(name.to_string(), Entry { cached, rev });
            }
        }
    }
}

struct Inner<T> {
    map: RwLock<HashMap<String, Entry<T>>>,
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
        if let Some(Entry { cached: Some(c), .. }) = self.inner.map.read().expect("cache lock").get(name) {
            return Ok(Some(c.clone()));
        }
        self.refresh(name).await
    }

    /// Reads `name` directly from the metadata service and updates the cache, unless the watch
    /// has meanwhile brought a later state, which is then the answer.
    pub async fn refresh(&self, name: &str) -> Result<Option<Cached<T>>> {
        let key = format!("{}{}", self.inner.prefix, name).into_bytes();
        let mut end = key.clone();
        end.push(0);
        let page = self.inner.meta.range(&key, &end, 1).await?;
        // `[key, key\0)` holds `key` alone.
        let cached = match page.kvs.into_iter().next() {
            Some(kv) => {
                let rec: T = decode(&kv.key, &kv.value)?;
                Some(Cached { raw: Arc::new(kv.value), rec: Arc::new(rec) })
            }
            None => None,
        };
        let mut map = self.inner.map.write().expect("cache lock");
        Entry::update(&mut map, name, cached.clone(), page.revision);
        Ok(match map.get(name) {
            Some(e) => e.cached.clone(),
            None => cached,
        })
    }

    /// Every cached record (for listings).
    pub fn all(&self) -> Vec<(String, Cached<T>)> {
        let mut v: Vec<_> = self
            .inner
            .map
            .read()
            .expect("cache lock")
            .iter()
            .filter_map(|(k, e)| e.cached.as_ref().map(|c| (k.clone(), c.clone())))
            .collect();
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
        // Events after the first page's read may be newer than some pages; each entry's own
        // revision sorts out the rest.
        let mut floor = None;
        loop {
            let page = self.meta.range(&from, &end, 1000).await?;
            floor.get_or_insert(page.revision);
            for kv in page.kvs {
                let name = String::from_utf8_lossy(&kv.key[start.len()..]).into_owned();
                match decode::<T>(&kv.key, &kv.value) {
                    Ok(rec) => {
                        fresh.insert(name, (Cached { raw: Arc::new(kv.value), rec: Arc::new(rec) }, page.revision));
                    }
                    Err(e) => tracing::error!(error = %e, "skipping unreadable record"),
                }
            }
            match page.next_key {
                Some(k) => from = k,
                None => break,
            }
        }
        *self.map.write().expect("cache lock") =
            fresh.into_iter().map(|(name, (c, rev))| (name, Entry { cached: Some(c), rev })).collect();
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let ev = ev?;
            if ev.revision <= floor.unwrap_or(0) {
                continue;
            }
            let Some(kv) = ev.kv else { continue };
            let name = String::from_utf8_lossy(&kv.key[start.len().min(kv.key.len())..]).into_owned();
            let cached = if ev.deleted {
                None
            } else {
                match decode::<T>(&kv.key, &kv.value) {
                    Ok(rec) => Some(Cached { raw: Arc::new(kv.value), rec: Arc::new(rec) }),
                    Err(e) => {
                        tracing::error!(error = %e, "skipping unreadable record");
                        continue;
                    }
                }
            };
            Entry::update(&mut self.map.write().expect("cache lock"), &name, cached, ev.revision);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: &str) -> Option<Cached<String>> {
        Some(Cached { raw: Arc::new(v.as_bytes().to_vec()), rec: Arc::new(v.to_string()) })
    }

    fn seen(map: &HashMap<String, Entry<String>>, name: &str) -> Option<String> {
        map.get(name).and_then(|e| e.cached.as_ref().map(|c| (*c.rec).clone()))
    }

    #[test]
    fn an_older_state_never_replaces_a_newer_one() {
        let mut map = HashMap::new();
        Entry::update(&mut map, "k", rec("granted"), 5);
        // A direct read that started before the change lands after its watch event.
        Entry::update(&mut map, "k", rec("revoked"), 9);
        Entry::update(&mut map, "k", rec("granted"), 7);
        assert_eq!(seen(&map, "k").as_deref(), Some("revoked"));
        // A deletion is remembered, so an older put read or replayed later cannot revive it.
        Entry::update(&mut map, "k", None, 12);
        Entry::update(&mut map, "k", rec("revoked"), 11);
        assert_eq!(seen(&map, "k"), None);
        Entry::update(&mut map, "k", rec("created again"), 15);
        assert_eq!(seen(&map, "k").as_deref(), Some("created again"));
    }

    #[test]
    fn absent_names_leave_no_entry() {
        let mut map: HashMap<String, Entry<String>> = HashMap::new();
        Entry::update(&mut map, "never-existed", None, 3);
        assert!(map.is_empty(), "reads of names that do not exist must not grow the cache");
    }
}
