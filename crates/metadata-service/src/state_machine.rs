//! The replicated state machine: one ordered keyspace with revisions, transactions, watch events
//! and snapshots, stored in a [`KvEngine`].
//!
//! Keys: `d` + user key → create revision (u64 LE), mod revision (u64 LE), value;
//! `s/applied` → bincode (last applied log id, membership, store revision).
//! Applies are written without fsync: the Raft log is durable and is replayed from the last
//! applied id after a crash. Before a snapshot is handed to openraft (which may then purge the
//! log) the engine is flushed, so the durable state never falls behind the purge point.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kv_engine::{KvEngine, KvError, KvSnapshot, WriteBatch, for_each_in_range, prefix_end};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::types::{
    Command, CommandResult, Condition, MetaNode, NodeId, StorageError, TxnOp, TypeConfig, decode, encode,
};

const DATA_PREFIX: &[u8] = b"d";
const APPLIED: &[u8] = b"s/applied";

/// A stored key with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// User key.
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
    /// Revision that created it.
    pub create_revision: u64,
    /// Revision of its last change.
    pub mod_revision: u64,
}

/// One change, as watchers see it.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// The key after the change (value empty when deleted).
    pub kv: KeyValue,
    /// The key was deleted.
    pub deleted: bool,
}

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = DATA_PREFIX.to_vec();
    k.extend_from_slice(key);
    k
}

fn encode_value(create: u64, modified: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + value.len());
    v.extend_from_slice(&create.to_le_bytes());
    v.extend_from_slice(&modified.to_le_bytes());
    v.extend_from_slice(value);
    v
}

fn decode_value(key: &[u8], v: &[u8]) -> Option<KeyValue> {
    if v.len() < 16 {
        return None;
    }
    Some(KeyValue {
        key: key.to_vec(),
        create_revision: u64::from_le_bytes(v[0..8].try_into().ok()?),
        mod_revision: u64::from_le_bytes(v[8..16].try_into().ok()?),
        value: v[16..].to_vec(),
    })
}

fn sm_err(e: impl ToString) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

fn snap_err(e: impl ToString) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::error(e.to_string())).into()
}

/// What `s/applied` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, MetaNode>,
    revision: u64,
}

/// The snapshot file and wire format.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, MetaNode>,
    revision: u64,
    /// Raw `d` entries (user key, stored value).
    data: Vec<(Vec<u8>, Vec<u8>)>,
}

/// State shared by the state machine, its snapshot builders and the readers.
pub struct Shared {
    kv: Arc<dyn KvEngine>,
    applied: Mutex<AppliedState>,
    /// Shared, not copied, with every watcher (each filters by its prefix).
    events: broadcast::Sender<Arc<WatchEvent>>,
    snapshot_path: PathBuf,
}

impl Shared {
    /// Reads one key from the applied state.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, KvError> {
        Ok(self.kv.get(&data_key(key))?.and_then(|v| decode_value(key, &v)))
    }

    /// Up to `limit` keys in `[start, end)` (no end: to the end of the keyspace).
    pub fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, KvError> {
        let end = match end {
            Some(e) => Some(data_key(e)),
            None => prefix_end(DATA_PREFIX),
        };
        Ok(self
            .kv
            .scan(&data_key(start), end.as_deref(), limit)?
            .into_iter()
            .filter_map(|(k, v)| decode_value(&k[DATA_PREFIX.len()..], &v))
            .collect())
    }

    /// The store revision.
    pub fn revision(&self) -> u64 {
        self.applied.lock().expect("applied lock").revision
    }

    /// Subscribes to changes applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.events.subscribe()
    }

    /// A point-in-time view of the user keyspace and the revision it holds. `s/applied` is
    /// written in the same batch as the keys each apply changes, so the view's own copy of it
    /// names exactly the revision the view holds, however applies interleave with taking it.
    pub fn backup_view(&self) -> Result<BackupView, KvError> {
        let view = self.kv.snapshot()?;
        let mut end = APPLIED.to_vec();
        end.push(0);
        let mut state = AppliedState::default();
        view.for_each(APPLIED, Some(&end), &mut |_, v| {
            state = decode(v).map_err(|e| KvError::Backend(format!("applied state is malformed: {e}")))?;
            Ok(())
        })?;
        Ok(BackupView { revision: state.revision, applied: state.last_applied, view })
    }
}

/// A point-in-time view of the user keyspace, for a backup: taking it is instant, and applying
/// goes on while it is read.
pub struct BackupView {
    /// Store revision of the view: every write up to it, none after.
    pub revision: u64,
    /// Last log id applied to the view.
    pub applied: Option<LogId<NodeId>>,
    view: Box<dyn KvSnapshot>,
}

impl BackupView {
    /// Visits every user key with its value and revisions, in key order, as of the view; stops
    /// at the first error `visit` returns.
    pub fn for_each(&self, mut visit: impl FnMut(KeyValue) -> Result<(), KvError>) -> Result<(), KvError> {
        self.view.for_each(DATA_PREFIX, prefix_end(DATA_PREFIX).as_deref(), &mut |k, v| {
            let key = &k[DATA_PREFIX.len()..];
            let kv = decode_value(key, v)
                .ok_or_else(|| KvError::Backend(format!("stored value of key {key:?} is malformed")))?;
            visit(kv)
        })
    }
}

/// The openraft state machine.
pub struct StateMachine {
    shared: Arc<Shared>,
}

impl StateMachine {
    /// Opens the state machine over `kv`; snapshots are kept at `snapshot_path`.
    pub fn open(kv: Arc<dyn KvEngine>, snapshot_path: PathBuf) -> Result<Self, StorageError> {
        let applied = match kv.get(APPLIED).map_err(sm_err)? {
            Some(v) => decode(&v).map_err(sm_err)?,
            None => AppliedState::default(),
        };
        let (events, _) = broadcast::channel(4096);
        Ok(StateMachine { shared: Arc::new(Shared { kv, applied: Mutex::new(applied), events, snapshot_path }) })
    }

    /// The handle readers use.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

/// Applies commands against the committed state plus the batch being built.
struct Applier<'a> {
    kv: &'a dyn KvEngine,
    overlay: HashMap<Vec<u8>, Option<KeyValue>>,
    batch: WriteBatch,
    events: Vec<WatchEvent>,
    revision: u64,
}

impl Applier<'_> {
    fn lookup(&self, key: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        if let Some(kv) = self.overlay.get(key) {
            return Ok(kv.clone());
        }
        Ok(self.kv.get(&data_key(key)).map_err(sm_err)?.and_then(|v| decode_value(key, &v)))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>, rev: u64) -> Result<(), StorageError> {
        let create = self.lookup(&key)?.map_or(rev, |kv| kv.create_revision);
        self.batch.put(data_key(&key), encode_value(create, rev, &value));
        let kv = KeyValue { key: key.clone(), value, create_revision: create, mod_revision: rev };
        self.overlay.insert(key, Some(kv.clone()));
        self.events.push(WatchEvent { kv, deleted: false });
        Ok(())
    }

    fn delete(&mut self, key: Vec<u8>, rev: u64) -> Result<bool, StorageError> {
        let Some(old) = self.lookup(&key)? else { return Ok(false) };
        self.batch.delete(data_key(&key));
        self.overlay.insert(key.clone(), None);
        self.events.push(WatchEvent {
            kv: KeyValue { key, value: Vec::new(), create_revision: old.create_revision, mod_revision: rev },
            deleted: true,
        });
        Ok(true)
    }

    fn holds(&self, c: &Condition) -> Result<bool, StorageError> {
        Ok(match c {
            Condition::Exists(k) => self.lookup(k)?.is_some(),
            Condition::Absent(k) => self.lookup(k)?.is_none(),
            Condition::ValueEquals(k, v) => self.lookup(k)?.is_some_and(|kv| kv.value == *v),
            Condition::ModRevisionEquals(k, r) => self.lookup(k)?.map_or(0, |kv| kv.mod_revision) == *r,
        })
    }

    fn exec(&mut self, cmd: Command) -> Result<CommandResult, StorageError> {
        Ok(match cmd {
            Command::Batch(cmds) => {
                let batch = cmds.into_iter().map(|c| self.exec(c)).collect::<Result<Vec<_>, _>>()?;
                CommandResult { revision: self.revision, succeeded: true, batch, ..Default::default() }
            }
            Command::Put { key, value } => {
                self.revision += 1;
                self.put(key, value, self.revision)?;
                CommandResult { revision: self.revision, succeeded: true, ..Default::default() }
            }
            Command::Delete { key } => {
                let deleted = self.delete(key, self.revision + 1)?;
                if deleted {
                    self.revision += 1;
                }
                CommandResult { revision: self.revision, succeeded: true, deleted, ..Default::default() }
            }
            Command::Txn { conditions, ops } => {
                for (i, c) in conditions.iter().enumerate() {
                    if !self.holds(c)? {
                        return Ok(CommandResult {
                            revision: self.revision,
                            succeeded: false,
                            failed_condition: Some(i as u32),
                            ..Default::default()
                        });
                    }
                }
                if !ops.is_empty() {
                    self.revision += 1;
                }
                let rev = self.revision;
                for op in ops {
                    match op {
                        TxnOp::Put(k, v) => self.put(k, v, rev)?,
                        TxnOp::Delete(k) => {
                            self.delete(k, rev)?;
                        }
                    }
                }
                CommandResult { revision: rev, succeeded: true, ..Default::default() }
            }
        })
    }
}

/// Builds a snapshot from a point-in-time view of the state taken when openraft asked for the
/// builder: taking the view is instant, so applying goes on while the copy is read, encoded and
/// written on a blocking thread.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    view: Option<(AppliedState, Box<dyn KvSnapshot>)>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (state, view) =
            self.view.take().ok_or_else(|| snap_err("no view of the state to build a snapshot from"))?;
        // The view reflects state at least up to the snapshot point; make that durable before
        // openraft may purge the log behind it.
        self.shared.kv.flush().map_err(snap_err)?;
        let path = self.shared.snapshot_path.clone();
        let (meta, bytes) = tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
            let mut data = Vec::new();
            view.for_each(DATA_PREFIX, prefix_end(DATA_PREFIX).as_deref(), &mut |k, v| {
                data.push((k[DATA_PREFIX.len()..].to_vec(), v.to_vec()));
                Ok(())
            })
            .map_err(snap_err)?;
            let file = SnapshotFile {
                meta: SnapshotMeta {
                    last_log_id: state.last_applied,
                    last_membership: state.membership.clone(),
                    snapshot_id: format!(
                        "{}-{}",
                        state.last_applied.map_or(0, |l| l.index),
                        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
                    ),
                },
                revision: state.revision,
                data,
            };
            let bytes = encode(&file);
            write_snapshot_file(&path, &bytes)?;
            tracing::info!(index = ?file.meta.last_log_id.map(|l| l.index), keys = file.data.len(), "snapshot built");
            Ok((file.meta, bytes))
        })
        .await
        .map_err(snap_err)??;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

fn write_snapshot_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), StorageError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(snap_err)?;
    f.write_all(bytes).map_err(snap_err)?;
    f.sync_all().map_err(snap_err)?;
    std::fs::rename(&tmp, path).map_err(snap_err)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(snap_err)?;
    }
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, MetaNode>), StorageError> {
        let a = self.shared.applied.lock().expect("applied lock");
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.shared.applied.lock().expect("applied lock").clone();
        let mut ap = Applier {
            kv: &*self.shared.kv,
            overlay: HashMap::new(),
            batch: WriteBatch::new(),
            events: Vec::new(),
            revision: state.revision,
        };
        let mut results = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => results.push(CommandResult { revision: ap.revision, ..Default::default() }),
                EntryPayload::Normal(cmd) => results.push(ap.exec(cmd)?),
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m);
                    results.push(CommandResult { revision: ap.revision, ..Default::default() });
                }
            }
        }
        state.revision = ap.revision;
        let Applier { mut batch, events, .. } = ap;
        batch.put(APPLIED.to_vec(), encode(&state));
        self.shared.kv.write(batch, false).map_err(sm_err)?;
        *self.shared.applied.lock().expect("applied lock") = state;
        for ev in events {
            let _ = self.shared.events.send(Arc::new(ev));
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Between two applies: the applied state and the keyspace agree.
        let state = self.shared.applied.lock().expect("applied lock").clone();
        let view = match self.shared.kv.snapshot() {
            Ok(v) => Some((state, v)),
            Err(e) => {
                tracing::error!(error = %e, "cannot take a view of the state for a snapshot");
                None
            }
        };
        SnapshotBuilder { shared: self.shared.clone(), view }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, MetaNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let file: SnapshotFile = decode(&bytes).map_err(snap_err)?;
        let kv = &*self.shared.kv;
        let mut batch = WriteBatch::new();
        for_each_in_range(kv, DATA_PREFIX, prefix_end(DATA_PREFIX).as_deref(), 4096, |k, _| {
            batch.delete(k.to_vec());
            Ok(())
        })
        .map_err(sm_err)?;
        for (k, v) in &file.data {
            batch.put(data_key(k), v.clone());
        }
        let state = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            revision: file.revision,
        };
        batch.put(APPLIED.to_vec(), encode(&state));
        kv.write(batch, true).map_err(sm_err)?;
        write_snapshot_file(&self.shared.snapshot_path, &bytes)?;
        *self.shared.applied.lock().expect("applied lock") = state;
        tracing::info!(index = ?meta.last_log_id.map(|l| l.index), keys = file.data.len(), "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let bytes = match std::fs::read(&self.shared.snapshot_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(snap_err(e)),
        };
        let file: SnapshotFile = decode(&bytes).map_err(snap_err)?;
        Ok(Some(Snapshot { meta: file.meta, snapshot: Box::new(Cursor::new(bytes)) }))
    }
}

#[cfg(test)]
mod tests {
    use kv_engine::MemEngine;
    use openraft::{CommittedLeaderId, Entry};

    use super::*;

    fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(cmd) }
    }

    fn put(key: &str, value: &[u8]) -> Command {
        Command::Put { key: key.as_bytes().to_vec(), value: value.to_vec() }
    }

    fn pairs(view: &BackupView) -> Vec<(Vec<u8>, Vec<u8>, u64, u64)> {
        let mut out = Vec::new();
        view.for_each(|kv| {
            out.push((kv.key, kv.value, kv.create_revision, kv.mod_revision));
            Ok(())
        })
        .unwrap();
        out
    }

    #[tokio::test]
    async fn backup_view_holds_exactly_the_state_when_taken() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(Arc::new(MemEngine::new()), dir.path().join("snapshot.bin")).unwrap();
        let shared = sm.shared();
        let empty = shared.backup_view().unwrap();
        assert_eq!((empty.revision, empty.applied), (0, None));
        sm.apply([entry(1, put("a", b"1")), entry(2, put("b", &[0, 255, 10])), entry(3, put("a", b"2"))])
            .await
            .unwrap();
        let view = shared.backup_view().unwrap();
        sm.apply([entry(4, put("c", b"3")), entry(5, Command::Delete { key: b"b".to_vec() })]).await.unwrap();
        assert_eq!((view.revision, view.applied.map(|l| l.index)), (3, Some(3)));
        assert_eq!(pairs(&view), vec![(b"a".to_vec(), b"2".to_vec(), 1, 3), (b"b".to_vec(), vec![0, 255, 10], 2, 2)]);
        let now = shared.backup_view().unwrap();
        assert_eq!(now.revision, 5);
        assert_eq!(pairs(&now).iter().map(|p| p.0.clone()).collect::<Vec<_>>(), vec![b"a".to_vec(), b"c".to_vec()]);
    }
}
