//! ListSnapshots as both drivers answer it (one snapshot by id, or pages in id order filtered by
//! source volume, the last id seen the next page's token) and the CSI form of a snapshot.

use std::future::Future;

use cairn_proto::csi::v1::{ListSnapshotsRequest, ListSnapshotsResponse, Snapshot, list_snapshots_response};
use serde::de::DeserializeOwned;

use crate::error::{CsiError, invalid};
use crate::records::{RecordStore, Versioned};

/// A driver's snapshots as ListSnapshots reads them, in the CSI form.
pub trait SnapshotList: Sync {
    /// Whether `id` is a snapshot id this driver hands out (so a token ListSnapshots gave).
    fn is_snapshot_id(&self, id: &str) -> bool;
    /// The snapshot `id` (None: no such snapshot).
    fn find_snapshot(&self, id: &str) -> impl Future<Output = Result<Option<Snapshot>, CsiError>> + Send;
    /// Up to `max` snapshots after `after` (a snapshot id; empty: from the start) in id order,
    /// and whether more follow.
    fn snapshot_page(
        &self,
        after: &str,
        max: u32,
    ) -> impl Future<Output = Result<(Vec<Snapshot>, bool), CsiError>> + Send;
}

/// Where a driver keeps its snapshot records (type `T`) in a `RecordStore`, and their CSI form.
pub struct SnapshotLayout<T> {
    /// The key prefix of the records, each keyed by snapshot id.
    pub prefix: &'static str,
    /// A record's key from its id.
    pub key_of: fn(&str) -> Vec<u8>,
    /// Snapshot ids the driver hands out; any other is not looked up.
    pub is_id: fn(&str) -> bool,
    /// The CSI form of a record.
    pub to_csi: fn(&T) -> Snapshot,
}

/// The snapshots of `layout` in `store`.
pub struct StoredSnapshots<'a, T> {
    pub store: &'a RecordStore,
    pub layout: &'a SnapshotLayout<T>,
}

impl<T: Versioned + DeserializeOwned + Send + Sync> SnapshotList for StoredSnapshots<'_, T> {
    fn is_snapshot_id(&self, id: &str) -> bool {
        (self.layout.is_id)(id)
    }

    async fn find_snapshot(&self, id: &str) -> Result<Option<Snapshot>, CsiError> {
        if !self.is_snapshot_id(id) {
            return Ok(None);
        }
        let found: Option<(_, T)> = self.store.record(&(self.layout.key_of)(id)).await?;
        Ok(found.map(|(_, s)| (self.layout.to_csi)(&s)))
    }

    async fn snapshot_page(&self, after: &str, max: u32) -> Result<(Vec<Snapshot>, bool), CsiError> {
        let after_key = Some(after).filter(|a| !a.is_empty()).map(self.layout.key_of);
        let (recs, more) = self.store.page::<T>(self.layout.prefix, after_key, max).await?;
        Ok((recs.iter().map(self.layout.to_csi).collect(), more))
    }
}

/// A snapshot in the CSI form.
pub fn snapshot(id: &str, source_volume: &str, size_bytes: u64, created_unix_ms: u64, ready: bool) -> Snapshot {
    Snapshot {
        size_bytes: size_bytes as i64,
        snapshot_id: id.to_string(),
        source_volume_id: source_volume.to_string(),
        creation_time: Some(prost_types::Timestamp {
            seconds: (created_unix_ms / 1000) as i64,
            nanos: ((created_unix_ms % 1000) * 1_000_000) as i32,
        }),
        ready_to_use: ready,
        group_snapshot_id: String::new(),
    }
}

/// Answers ListSnapshots from `snapshots`, at most `page_max` entries a page.
pub async fn list(
    snapshots: &impl SnapshotList,
    r: &ListSnapshotsRequest,
    page_max: u32,
) -> Result<ListSnapshotsResponse, CsiError> {
    if r.max_entries < 0 {
        return Err(invalid("max_entries must not be negative"));
    }
    let wanted = |s: &Snapshot| r.source_volume_id.is_empty() || s.source_volume_id == r.source_volume_id;
    let entry = |s: Snapshot| list_snapshots_response::Entry { snapshot: Some(s) };
    if !r.snapshot_id.is_empty() {
        let found = snapshots.find_snapshot(&r.snapshot_id).await?;
        let entries = found.filter(wanted).map(entry).into_iter().collect();
        return Ok(ListSnapshotsResponse { entries, next_token: String::new() });
    }
    if !r.starting_token.is_empty() && !snapshots.is_snapshot_id(&r.starting_token) {
        return Err(CsiError::Aborted(format!(
            "starting_token {:?} is not a token ListSnapshots gave",
            r.starting_token
        )));
    }
    let max = if r.max_entries == 0 { page_max } else { (r.max_entries as u32).min(page_max) };
    // Filtering by source reads on until a page is full or the snapshots end.
    let (mut entries, mut after) = (Vec::new(), r.starting_token.clone());
    loop {
        let (recs, more) = snapshots.snapshot_page(&after, max).await?;
        let last_page = !more || recs.is_empty();
        for s in recs {
            if entries.len() as u32 == max {
                return Ok(ListSnapshotsResponse { entries, next_token: after });
            }
            after = s.snapshot_id.clone();
            if wanted(&s) {
                entries.push(entry(s));
            }
        }
        if last_page {
            return Ok(ListSnapshotsResponse { entries, next_token: String::new() });
        }
        if entries.len() as u32 == max {
            return Ok(ListSnapshotsResponse { entries, next_token: after });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshots `snap-0`..`snap-<n>`, the even ones of volume `a`, the odd ones of `b`.
    struct Fake(u32);

    impl SnapshotList for Fake {
        fn is_snapshot_id(&self, id: &str) -> bool {
            id.starts_with("snap-")
        }
        async fn find_snapshot(&self, id: &str) -> Result<Option<Snapshot>, CsiError> {
            Ok(self.all().into_iter().find(|s| s.snapshot_id == id))
        }
        async fn snapshot_page(&self, after: &str, max: u32) -> Result<(Vec<Snapshot>, bool), CsiError> {
            let rest: Vec<Snapshot> = self.all().into_iter().filter(|s| s.snapshot_id.as_str() > after).collect();
            let more = rest.len() > max as usize;
            Ok((rest.into_iter().take(max as usize).collect(), more))
        }
    }

    impl Fake {
        fn all(&self) -> Vec<Snapshot> {
            (0..self.0).map(|i| snapshot(&format!("snap-{i:03}"), ["a", "b"][i as usize % 2], 1, 1500, true)).collect()
        }
    }

    fn req(source: &str, token: &str, max: i32) -> ListSnapshotsRequest {
        ListSnapshotsRequest {
            source_volume_id: source.into(),
            starting_token: token.into(),
            max_entries: max,
            ..Default::default()
        }
    }

    async fn all_pages(f: &Fake, source: &str, max: i32) -> Vec<String> {
        let (mut ids, mut token) = (Vec::new(), String::new());
        loop {
            let page = list(f, &req(source, &token, max), 4).await.unwrap();
            assert!(page.entries.len() <= 4);
            ids.extend(page.entries.into_iter().map(|e| e.snapshot.unwrap().snapshot_id));
            if page.next_token.is_empty() {
                return ids;
            }
            token = page.next_token;
        }
    }

    #[tokio::test]
    async fn pages_filters_and_tokens() {
        let f = Fake(11);
        let every: Vec<String> = f.all().into_iter().map(|s| s.snapshot_id).collect();
        assert_eq!(all_pages(&f, "", 0).await, every);
        assert_eq!(all_pages(&f, "", 3).await, every);
        let of_b: Vec<String> = every.iter().skip(1).step_by(2).cloned().collect();
        assert_eq!(all_pages(&f, "b", 2).await, of_b);
        assert_eq!(all_pages(&f, "c", 0).await, Vec::<String>::new());
        let one = list(&f, &ListSnapshotsRequest { snapshot_id: "snap-003".into(), ..req("", "", 0) }, 4).await;
        assert_eq!(one.unwrap().entries.len(), 1);
        let other = list(&f, &ListSnapshotsRequest { snapshot_id: "snap-003".into(), ..req("a", "", 0) }, 4).await;
        assert!(other.unwrap().entries.is_empty());
        assert_eq!(list(&f, &req("", "x", 0), 4).await.unwrap_err().code(), tonic::Code::Aborted);
        assert_eq!(list(&f, &req("", "", -1), 4).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        let s = snapshot("s", "v", 2, 1500, false);
        let t = s.creation_time.unwrap();
        assert_eq!((t.seconds, t.nanos, s.size_bytes, s.ready_to_use), (1, 500_000_000, 2, false));
    }
}
