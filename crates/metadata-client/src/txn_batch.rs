//! Transactions waiting at once travel together: one `TxnBatch` call carries every transaction
//! queued while the calls in flight were busy, and the service commits them in one Raft entry.
//! A transaction alone goes as a plain `Txn` call, as before. No standing task: a caller that
//! gets a free slot starts a call with what is queued (its own transaction included or not),
//! which hands out the answers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_proto::meta::v1 as pb;
use cairn_proto::meta::v1::kv_client::KvClient;
use tokio::sync::{Semaphore, oneshot};

use crate::{MetaClient, MetaClientError, Retry, TxnOutcome};

/// Most transactions in one call (the service's limit).
const MAX_BATCH: usize = 256;
/// Calls carrying transactions in flight at once; transactions arriving meanwhile wait and go
/// together in the next call. fs-bench creates and unlinks (8 threads, four runs each): one
/// call at a time ~4,580 and ~4,830/s, two ~4,300 and ~4,460/s, every transaction its own call
/// ~4,310 and ~4,280/s.
const CALLS_IN_FLIGHT: usize = 1;

type Answer = Result<TxnOutcome, MetaClientError>;

struct Queued {
    /// Tells the caller's own transaction from the others'.
    id: u64,
    req: pb::TxnRequest,
    reply: oneshot::Sender<Answer>,
}

/// The transactions waiting to be sent, and the call slots.
pub(crate) struct TxnQueue {
    waiting: Mutex<Vec<Queued>>,
    next_id: AtomicU64,
    slots: Arc<Semaphore>,
    /// The service answered UNIMPLEMENTED to a batch (an older version): send one by one.
    no_batches: AtomicBool,
}

impl Default for TxnQueue {
    fn default() -> Self {
        TxnQueue {
            waiting: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(CALLS_IN_FLIGHT)),
            no_batches: AtomicBool::new(false),
        }
    }
}

impl TxnQueue {
    /// The next call's transactions: the oldest waiting, without those whose callers went away
    /// (an S3 request whose client hung up, a call past its deadline). Such a caller was told
    /// its transaction may not have been applied and may have gone on to write what must come
    /// after it: sent later, it would undo that.
    fn take_batch(&self) -> Vec<Queued> {
        let mut w = self.waiting.lock().expect("txn queue lock");
        w.retain(|q| !q.reply.is_closed());
        let n = w.len().min(MAX_BATCH);
        w.drain(..n).collect()
    }
}

impl MetaClient {
    /// Queues `req` and returns its outcome; when a call slot is free, sends what is queued.
    pub(crate) async fn txn_queued(&self, req: pb::TxnRequest) -> Answer {
        let q = &self.inner.txns;
        let (reply, mut rx) = oneshot::channel();
        let id = q.next_id.fetch_add(1, Ordering::Relaxed);
        q.waiting.lock().expect("txn queue lock").push(Queued { id, req, reply });
        loop {
            tokio::select! {
                biased;
                answer = &mut rx => return answer.unwrap_or_else(|_| Err(abandoned())),
                slot = q.slots.clone().acquire_owned() => {
                    let Ok(slot) = slot else { return Err(abandoned()) };
                    let mut batch = q.take_batch();
                    if batch.is_empty() {
                        // Ours was taken by a call in flight: its answer comes from there.
                        drop(slot);
                        return rx.await.unwrap_or_else(|_| Err(abandoned()));
                    }
                    if batch.len() == 1 && batch[0].id == id
                        && let Some(mine) = batch.pop()
                    {
                        // Alone: sent from here, as a plain call.
                        let answer = self.txn_one(mine.req).await;
                        drop(slot);
                        return answer;
                    }
                    // A task of its own: the others' answers do not depend on this caller
                    // staying (an S3 request whose client went away is dropped mid-call).
                    let client = self.clone();
                    tokio::spawn(async move {
                        client.send(batch).await;
                        drop(slot);
                    });
                }
            }
        }
    }

    /// Sends `batch` (one call, or one per transaction where batches cannot go) and hands out
    /// the answers.
    async fn send(&self, batch: Vec<Queued>) {
        if batch.len() == 1 || self.inner.txns.no_batches.load(Ordering::Relaxed) {
            return self.send_singly(batch).await;
        }
        let req = pb::TxnBatchRequest { txns: batch.iter().map(|q| q.req.clone()).collect() };
        let res = self.call(Retry::IfNotApplied, |ch| async { KvClient::new(ch).txn_batch(req.clone()).await }).await;
        let results = match res {
            Ok(r) => r.into_inner().results,
            // Nothing was applied: a malformed transaction refuses the whole batch (each one
            // alone finds which), and a service without batches takes them one by one.
            Err(e @ (MetaClientError::InvalidArgument(_) | MetaClientError::Unimplemented(_))) => {
                if matches!(e, MetaClientError::Unimplemented(_)) {
                    self.inner.txns.no_batches.store(true, Ordering::Relaxed);
                }
                return self.send_singly(batch).await;
            }
            Err(e) => return batch.into_iter().for_each(|q| drop(q.reply.send(Err(e.clone())))),
        };
        if results.len() != batch.len() {
            // Applied, but the answers cannot be matched to the transactions.
            let e = MetaClientError::Indeterminate(format!(
                "a batch of {} transactions was answered with {} results",
                batch.len(),
                results.len()
            ));
            return batch.into_iter().for_each(|q| drop(q.reply.send(Err(e.clone()))));
        }
        for (q, r) in batch.into_iter().zip(results) {
            let _ = q.reply.send(Ok(TxnOutcome::from(r)));
        }
    }

    /// Sends each of `batch` as its own `Txn` call, all at once.
    async fn send_singly(&self, batch: Vec<Queued>) {
        let calls = batch.into_iter().map(|q| async move {
            let _ = q.reply.send(self.txn_one(q.req).await);
        });
        futures::future::join_all(calls).await;
    }

    /// One transaction, one `Txn` call.
    async fn txn_one(&self, req: pb::TxnRequest) -> Answer {
        let r = self.call(Retry::IfNotApplied, |ch| async { KvClient::new(ch).txn(req.clone()).await }).await?;
        Ok(TxnOutcome::from(r.into_inner()))
    }
}

/// The call carrying a transaction was dropped before it answered (its caller was cancelled):
/// the transaction may or may not have been applied.
fn abandoned() -> MetaClientError {
    MetaClientError::Indeterminate("the call carrying this transaction was cancelled".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_transactions_are_not_sent() {
        let q = TxnQueue::default();
        let mut keep = Vec::new();
        for id in 0..4u64 {
            let (reply, rx) = oneshot::channel();
            q.waiting.lock().unwrap().push(Queued { id, req: pb::TxnRequest::default(), reply });
            if id == 1 || id == 3 {
                drop(rx); // its caller was cancelled
            } else {
                keep.push(rx);
            }
        }
        let ids: Vec<u64> = q.take_batch().iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![0, 2]);
        assert!(q.take_batch().is_empty());
    }
}
