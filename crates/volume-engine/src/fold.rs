//! The fold: a volume's unfolded extents turned into content-hashed chunks (each touched
//! block's chunk read once, patched, put) and committed to the block map in large batches,
//! then the journal's folded point moved and the journal trimmed up to it.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use chunk_engine::ChunkHash;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::error::{EngineError, Result};
use crate::overlay::{self, Extents};
use crate::{BLOCKS_PER_TXN, FLUSH_DEPTH, FOLD_BATCH, TXNS_IN_FLIGHT, Volume, keys};

impl Volume {
    /// Folds every write made before this call into the block map (retrying transient
    /// failures, see [`Self::with_io_retry`]). Writes need not be flushed first: what a fold
    /// commits is durable without the journal.
    pub async fn fold(&self) -> Result<()> {
        self.retry.run("volume fold", EngineError::is_transient, || self.fold_once()).await
    }

    pub(crate) async fn fold_once(&self) -> Result<()> {
        self.fold_pass(false).await
    }

    /// One fold of everything unfolded. With `take_pending` (a flush of mostly whole blocks,
    /// such as a sequential stream) the writes not yet journaled are taken too: once the fold
    /// has committed they are durable in the map and need no journal record. If the fold
    /// fails they go back, in order, before any written since.
    pub(crate) async fn fold_pass(&self, take_pending: bool) -> Result<()> {
        let _one = self.fold_lock.lock().await;
        self.check_fence()?;
        let bs = self.geometry().await.block_size;
        // What is unfolded now, and the journal records it covers: every record given a seq so
        // far holds writes made before this point, all of them in the overlay.
        let (blocks, upto_stamp, upto_seq, taken) = {
            let mut st = self.state.lock().await;
            // Writes from now on are the next fold's.
            st.unfolded_since = None;
            let taken = if take_pending {
                st.pending_bytes = 0;
                std::mem::take(&mut st.pending)
            } else {
                Vec::new()
            };
            (st.overlay.snapshot(), st.stamp, st.seq, taken)
        };
        let out = async {
            let total = blocks.len();
            for batch in blocks.chunks(FOLD_BATCH) {
                self.fold_batch(batch.to_vec(), bs, upto_stamp).await?;
            }
            self.mark_folded(upto_seq).await?;
            tracing::debug!(volume = %self.id, blocks = total, upto_seq, taken = taken.len(), "folded");
            Ok(())
        }
        .await;
        if out.is_err() && !taken.is_empty() && !self.fenced.load(Ordering::Relaxed) {
            let mut st = self.state.lock().await;
            let mut back = taken;
            back.append(&mut st.pending);
            st.pending_bytes = back.iter().map(|o| o.encoded_len() as u64).sum();
            st.pending = back;
        }
        out
    }

    /// Folds one batch of blocks: their chunks put, the map committed, their folded extents
    /// dropped (readers see each group switch at once), then the chunks they replaced released.
    /// Writers waiting for room are woken.
    async fn fold_batch(&self, blocks: Vec<(u64, Extents)>, bs: u64, upto_stamp: u64) -> Result<()> {
        // Each batch is a batch of its own for releases: they vouch only for committed puts.
        let fold = self.folds.fetch_add(1, Ordering::AcqRel) + 1;
        let writer = cluster::Writer { id: self.writer, seq: fold };
        let built: Vec<(u64, Option<ChunkHash>, Option<Bytes>)> = stream::iter(blocks)
            .map(|(idx, ext)| async move {
                let data = self.folded_block(idx, bs, &ext).await?;
                match data {
                    None => Ok::<_, EngineError>((idx, None, None)),
                    Some(d) => {
                        let h = self.chunks.put_as(d.clone(), writer).await?.hash;
                        Ok((idx, Some(h), Some(d)))
                    }
                }
            })
            .buffered(FLUSH_DEPTH)
            .try_collect()
            .await?;
        // Groups touch disjoint blocks: their transactions go in parallel, so the metadata
        // service commits several in one Raft entry. Each group's blocks switch to their new
        // chunks, and drop the extents folded into them, at once for readers.
        let groups: Vec<Vec<(u64, Option<ChunkHash>)>> = built
            .iter()
            .map(|(i, h, _)| (*i, *h))
            .collect::<Vec<_>>()
            .chunks(BLOCKS_PER_TXN)
            .map(<[_]>::to_vec)
            .collect();
        let replaced: Vec<Vec<ChunkHash>> = stream::iter(groups)
            .map(|group| async move {
                let removed = self.commit_group(&group).await?;
                let mut st = self.state.lock().await;
                let mut map = self.map.write().await;
                for (idx, new) in &group {
                    match new {
                        Some(h) => map.insert(*idx, *h),
                        None => map.remove(idx),
                    };
                    st.overlay.remove_upto(*idx, upto_stamp);
                }
                Ok::<_, EngineError>(removed)
            })
            .buffer_unordered(TXNS_IN_FLIGHT)
            .try_collect()
            .await?;
        self.room.notify_waiters();
        // What was just written is what is read next (a database re-reads its pages).
        for (_, h, d) in &built {
            if let (Some(h), Some(d)) = (h, d) {
                self.cache.insert(*h, d.clone());
            }
        }
        // Every put of this batch is committed (and of earlier ones: one fold at a time), so
        // this writer vouches for its puts up to `fold`. Chunks the batch still maps are kept.
        let kept: HashSet<ChunkHash> = built.iter().filter_map(|(_, h, _)| *h).collect();
        let mut released: Vec<ChunkHash> = replaced.into_iter().flatten().filter(|h| !kept.contains(h)).collect();
        released.sort_unstable();
        released.dedup();
        if !released.is_empty() {
            let (chunks, id, writer) = (self.chunks.clone(), self.id.clone(), self.writer);
            tokio::spawn(async move {
                let deleted = chunks.release(&released, writer, fold).await;
                tracing::trace!(volume = %id, released = released.len(), deleted, "released replaced blocks");
            });
        }
        Ok(())
    }

    /// Block `idx` with `ext` laid over its committed chunk; None when it is all zeros (thin).
    async fn folded_block(&self, idx: u64, bs: u64, ext: &Extents) -> Result<Option<Bytes>> {
        let mut data = if overlay::covers_block(ext, bs) {
            vec![0u8; bs as usize]
        } else {
            // Only folds change the map, and this one holds the fold lock: the chunk stays.
            let hash = self.map.read().await.get(&idx).copied();
            match hash {
                None => vec![0u8; bs as usize],
                Some(h) => self.chunk_part(idx, &h, bs, 0, bs).await?.to_vec(),
            }
        };
        overlay::apply_extents(&mut data, ext);
        Ok(data.iter().any(|b| *b != 0).then(|| Bytes::from(data)))
    }

    /// Records that every journal record up to `seq` is folded, then trims the journal up to
    /// there (as far as appends have returned).
    async fn mark_folded(&self, seq: u64) -> Result<()> {
        let next = {
            let js = self.jstate.lock().await;
            if seq <= js.folded {
                return Ok(());
            }
            let mut next = js.clone();
            next.folded = seq;
            next
        };
        let txn = self.guarded().put(&keys::journal_key(&self.id), &next.encode());
        self.commit_txn(txn).await?;
        {
            let mut js = self.jstate.lock().await;
            if js.name == next.name {
                js.folded = js.folded.max(seq);
            }
        }
        let upto = seq.min(self.state.lock().await.appended);
        let journal = self.journal.read().await.clone();
        tokio::spawn(async move {
            journal.trim(upto).await;
        });
        Ok(())
    }
}
