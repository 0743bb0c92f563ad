//! A volume's write journal as the volume sees it: where it is (its state record, made on the
//! first attach), moving it off a failed replica, and the journal's part in snapshots, clones
//! and deletion (unfolded records copied into a snapshot's blocks; the journal dropped).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use cluster::ChunkClient;
use cluster::journal::Journal;
use cluster::refs::{add_refs, remove_refs};
use futures::stream::{self, StreamExt, TryStreamExt};
use metadata_client::{MetaClient, Txn};

use crate::error::{EngineError, Result};
use crate::overlay::{self, Overlay};
use crate::record::{self, JournalState, journal_name};
use crate::{FLUSH_DEPTH, Volume, keys, lay};

/// Volume `id`'s journal state, made (on nodes the pool places it on) if the volume has none:
/// a volume made before journals existed, or never attached.
pub(crate) async fn attach_state(meta: &MetaClient, chunks: &ChunkClient, id: &str, generation: u64) -> Result<JournalState> {
    let key = keys::journal_key(id);
    loop {
        if let Some(kv) = meta.get(&key).await? {
            return JournalState::decode(&String::from_utf8_lossy(&key), &kv.value);
        }
        let nodes = chunks.journal_placement(id, &[]);
        if nodes.is_empty() {
            return Err(EngineError::Cluster(cluster::ClusterError::Unavailable(format!(
                "no storage node is up to hold the journal of {id}"
            ))));
        }
        let state = JournalState { name: journal_name(id, 1), nodes, folded: 0 };
        let gen_val = generation.to_string();
        let txn = Txn::new()
            .value_equals(&keys::generation_key(id), gen_val.as_bytes())
            .absent(&key)
            .put(&key, &state.encode());
        let out = meta.txn(txn).await?;
        if out.succeeded {
            return Ok(state);
        }
        if out.failed_condition == Some(0) {
            let current = crate::current_generation(meta, id).await?;
            return Err(EngineError::Fenced { volume: id.to_string(), generation, current });
        }
    }
}

impl Volume {
    /// Moves the journal to nodes that are up, after folding everything (so the new journal
    /// starts empty and nothing is copied): the rebuild of a journal replica that failed.
    pub async fn relocate_journal(&self) -> Result<()> {
        let _appends = self.flush_lock.lock().await;
        self.relocate.store(false, Ordering::Release);
        let failed: Vec<String> = self.failed_replicas.lock().expect("failed replicas lock").iter().cloned().collect();
        let cur = self.jstate.lock().await.clone();
        let bad = |n: &String| failed.contains(n) || !self.chunks.node_up(n);
        let nodes = self.chunks.journal_placement(&self.id, &failed);
        if !cur.nodes.iter().any(bad) || nodes.is_empty() {
            return Ok(());
        }
        if nodes.len() < self.journal.read().await.min_replicas() {
            // Nowhere to go yet: try again later.
            self.relocate.store(true, Ordering::Release);
            return Ok(());
        }
        self.fold_once().await?;
        let _folds = self.fold_lock.lock().await;
        let seq = self.state.lock().await.seq;
        let next = JournalState {
            name: journal_name(&self.id, record::incarnation(&cur.name) + 1),
            nodes,
            folded: cur.folded.max(seq),
        };
        let fresh = Journal::new(self.chunks.clone(), &next.name, next.nodes.clone(), self.generation);
        fresh.seal(next.folded).await.map_err(|e| self.journal_error(e))?;
        let txn = self.guarded().put(&keys::journal_key(&self.id), &next.encode());
        self.commit_txn(txn).await?;
        let old = std::mem::replace(&mut *self.journal.write().await, fresh);
        *self.jstate.lock().await = next.clone();
        self.failed_replicas.lock().expect("failed replicas lock").clear();
        tracing::info!(volume = %self.id, from = ?cur.nodes, to = ?next.nodes, journal = %next.name, "journal moved");
        tokio::spawn(async move {
            old.drop_all().await;
        });
        Ok(())
    }
}

/// Lays the journal records of volume `from` that are not folded yet onto the blocks of `to`
/// (a snapshot or clone whose block map was just copied from `from`, which is frozen): the
/// writes `from`'s attachment acknowledged but has not folded. Returns the blocks written.
pub async fn copy_journal(meta: &MetaClient, chunks: &ChunkClient, from: &str, to: &str, block_size: u64) -> Result<u64> {
    let key = keys::journal_key(from);
    let Some(kv) = meta.get(&key).await? else { return Ok(0) };
    let state = JournalState::decode(&String::from_utf8_lossy(&key), &kv.value)?;
    // Read, not sealed: the attachment keeps writing.
    let journal = Journal::new(chunks.clone(), &state.name, state.nodes.clone(), 0);
    let entries = journal.read(state.folded).await.map_err(EngineError::Cluster)?;
    let mut ov = Overlay::default();
    let mut stamp = 0;
    for e in &entries {
        for op in record::decode(&e.payload)? {
            stamp += 1;
            lay(&mut ov, block_size, &op, stamp);
        }
    }
    if ov.is_empty() {
        return Ok(0);
    }
    let written: Vec<u64> = stream::iter(ov.snapshot())
        .map(|(idx, ext)| async move {
            let k = keys::map_key(to, idx);
            let old = match meta.get(&k).await? {
                Some(kv) => Some((keys::map_entry(&keys::map_prefix(to), &kv.key, &kv.value)?.1, kv.mod_revision)),
                None => None,
            };
            let mut data = if overlay::covers_block(&ext, block_size) {
                vec![0u8; block_size as usize]
            } else {
                match &old {
                    Some((h, _)) => chunks.get(h).await?.to_vec(),
                    None => vec![0u8; block_size as usize],
                }
            };
            if data.len() as u64 != block_size {
                return Err(EngineError::Corrupt(format!("block {idx} of {to} is {} bytes", data.len())));
            }
            overlay::apply_extents(&mut data, &ext);
            let owner = keys::owner(to, idx);
            let mut txn = match &old {
                Some((h, rev)) => remove_refs(Txn::new().mod_revision_equals(&k, *rev), &[*h], &owner),
                None => Txn::new().absent(&k),
            };
            txn = if data.iter().any(|b| *b != 0) {
                let h = chunks.put(Bytes::from(data)).await?.hash;
                add_refs(txn.put(&k, h.to_string().as_bytes()), &[h], &owner)
            } else {
                txn.delete(&k)
            };
            if !meta.txn(txn).await?.succeeded {
                return Err(EngineError::Invalid(format!("{to} changed while the journal of {from} was copied")));
            }
            Ok::<_, EngineError>(idx)
        })
        .buffer_unordered(FLUSH_DEPTH)
        .try_collect()
        .await?;
    Ok(written.len() as u64)
}

/// Copies volume (or snapshot) `from` into `to`, crash-consistently: freezes `from` (folds of
/// an attachment wait), copies its block map, lays its unfolded journal records over the copy,
/// thaws. Returns the blocks copied from the map.
pub async fn snapshot_blocks(meta: &MetaClient, chunks: &ChunkClient, from: &str, to: &str, block_size: u64) -> Result<u64> {
    crate::freeze(meta, from).await?;
    let copied = async {
        let n = crate::copy_map(meta, from, to).await?;
        copy_journal(meta, chunks, from, to, block_size).await?;
        Ok::<_, EngineError>(n)
    }
    .await;
    let thawed = crate::thaw(meta, from).await;
    let n = copied?;
    thawed?;
    Ok(n)
}

/// Removes volume `id`'s journal from its nodes and its state record (the volume is gone).
pub async fn delete_journal(meta: &MetaClient, chunks: &ChunkClient, id: &str) -> Result<()> {
    let key = keys::journal_key(id);
    let Some(kv) = meta.get(&key).await? else { return Ok(()) };
    let state = JournalState::decode(&String::from_utf8_lossy(&key), &kv.value)?;
    Journal::new(chunks.clone(), &state.name, state.nodes, u64::MAX).drop_all().await;
    meta.delete(&key).await?;
    Ok(())
}
