//! The metadata client: talks to any metadata node, finds and follows the leader, retries on
//! leader changes and transient errors with backoff, and returns typed errors. Callers never see
//! "not leader".

mod error;
mod txn;
mod txn_batch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::meta::v1 as pb;
use cairn_proto::meta::v1::admin_client::AdminClient;
use cairn_proto::meta::v1::kv_client::KvClient;
use futures::Stream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

pub use cairn_proto::meta::v1::{KeyValue, Member, StatusResponse};
pub use error::MetaClientError;
pub use txn::{Txn, TxnOutcome};

/// Header carrying the leader's API address on a "not leader" answer.
const LEADER_HEADER: &str = "x-cairn-leader";

/// The end of the key range holding every key that starts with `prefix`, for [`MetaClient::range`]
/// (empty when no such end exists: a prefix of 0xff bytes runs to the end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// How long and how often to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Give up after this long.
    pub deadline: Duration,
    /// First pause between attempts.
    pub initial_backoff: Duration,
    /// Longest pause between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            deadline: Duration::from_secs(20),
            initial_backoff: Duration::from_millis(50),
            // While a new leader is elected, a longer pause only adds to the failover a caller
            // sees (300 ms added up to ~0.5 s); a retry is a cheap refused call.
            max_backoff: Duration::from_millis(100),
        }
    }
}

/// One page of a range scan.
#[derive(Debug, Clone, Default)]
pub struct RangePage {
    /// Pairs in key order.
    pub kvs: Vec<KeyValue>,
    /// Where the next page starts; `None` when the range is exhausted.
    pub next_key: Option<Vec<u8>>,
    /// Store revision of the read.
    pub revision: u64,
}

struct Inner {
    endpoints: Vec<String>,
    leader: Mutex<Option<String>>,
    channels: Mutex<HashMap<String, Channel>>,
    policy: RetryPolicy,
    tls: Option<ClientTlsConfig>,
    txns: txn_batch::TxnQueue,
}

/// A client of the metadata service; cheap to clone.
#[derive(Clone)]
pub struct MetaClient {
    inner: Arc<Inner>,
}

/// Whether a failed call may be sent again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Safe to repeat whatever happened (reads, puts, deletes).
    Always,
    /// Only when the request surely was not applied (transactions).
    IfNotApplied,
}

fn normalize(addr: &str) -> String {
    if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") }
}

impl MetaClient {
    /// A client for the metadata nodes at `endpoints` (`host:port`, `http://host:port`, or
    /// `unix:///path` for a node's unix socket on this machine).
    /// Connects lazily: no I/O happens until the first call.
    pub fn new(endpoints: &[impl AsRef<str>]) -> Result<Self, MetaClientError> {
        Self::with_policy(endpoints, RetryPolicy::default())
    }

    /// As [`new`](Self::new) with another retry policy. Uses this process's TLS identity when one
    /// is installed (see `mtls::install_client_identity`).
    pub fn with_policy(endpoints: &[impl AsRef<str>], policy: RetryPolicy) -> Result<Self, MetaClientError> {
        Self::with_tls(endpoints, policy, mtls::process_client_config())
    }

    /// As [`with_policy`](Self::with_policy) with the given TLS client config (None: plaintext).
    pub fn with_tls(
        endpoints: &[impl AsRef<str>],
        policy: RetryPolicy,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self, MetaClientError> {
        let endpoints: Vec<String> =
            endpoints.iter().map(|e| e.as_ref().trim()).filter(|e| !e.is_empty()).map(normalize).collect();
        if endpoints.is_empty() {
            return Err(MetaClientError::InvalidArgument("no metadata endpoint given".into()));
        }
        for e in endpoints.iter().filter(|e| mtls::unix_path(e).is_none()) {
            Endpoint::from_shared(e.clone())
                .map_err(|err| MetaClientError::InvalidArgument(format!("bad metadata endpoint {e}: {err}")))?;
        }
        Ok(MetaClient {
            inner: Arc::new(Inner {
                endpoints,
                leader: Mutex::new(None),
                channels: Mutex::new(HashMap::new()),
                policy,
                tls,
                txns: txn_batch::TxnQueue::default(),
            }),
        })
    }

    fn channel(&self, ep: &str) -> Result<Channel, MetaClientError> {
        let mut chans = self.inner.channels.lock().expect("channels lock");
        if let Some(c) = chans.get(ep) {
            return Ok(c.clone());
        }
        let c = mtls::connect_lazy(ep, self.inner.tls.as_ref(), |e| {
            e.connect_timeout(Duration::from_secs(1)).timeout(Duration::from_secs(10))
        })
        .map_err(|e| MetaClientError::InvalidArgument(format!("metadata endpoint: {e}")))?;
        chans.insert(ep.to_string(), c.clone());
        Ok(c)
    }

    /// Runs `f` against the leader (or any node), following redirects and retrying.
    async fn call<T, F, Fut>(&self, retry: Retry, f: F) -> Result<T, MetaClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let policy = self.inner.policy;
        let deadline = Instant::now() + policy.deadline;
        let mut backoff = policy.initial_backoff;
        let mut rotate = 0usize;
        let mut last_error: String;
        loop {
            let ep = match self.inner.leader.lock().expect("leader lock").clone() {
                Some(l) => l,
                None => self.inner.endpoints[rotate % self.inner.endpoints.len()].clone(),
            };
            let mut redirected = false;
            match f(self.channel(&ep)?).await {
                Ok(v) => {
                    *self.inner.leader.lock().expect("leader lock") = Some(ep);
                    return Ok(v);
                }
                Err(s) => {
                    last_error = format!("{ep}: {}", s.message());
                    match s.code() {
                        Code::InvalidArgument => return Err(MetaClientError::InvalidArgument(s.message().into())),
                        Code::Aborted => return Err(MetaClientError::Aborted(s.message().into())),
                        Code::Unimplemented => return Err(MetaClientError::Unimplemented(s.message().into())),
                        Code::DeadlineExceeded | Code::Cancelled | Code::Unknown if retry == Retry::IfNotApplied => {
                            *self.inner.leader.lock().expect("leader lock") = None;
                            return Err(MetaClientError::Indeterminate(last_error));
                        }
                        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                            let hint = s.metadata().get(LEADER_HEADER).and_then(|v| v.to_str().ok()).map(normalize);
                            let mut leader = self.inner.leader.lock().expect("leader lock");
                            match hint {
                                Some(h) if h != ep => {
                                    *leader = Some(h);
                                    redirected = true;
                                }
                                _ => {
                                    *leader = None;
                                    rotate += 1;
                                }
                            }
                        }
                        _ => return Err(MetaClientError::Internal(last_error)),
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(MetaClientError::Unavailable { waited: policy.deadline, last_error });
            }
            if !redirected {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(policy.max_backoff);
            }
        }
    }

    /// Reads a key (linearizable).
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaClientError> {
        Ok(self.get_with(key, false).await?.0)
    }

    /// Reads a key from whichever node answers, without asking the leader (may be stale).
    pub async fn get_serializable(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaClientError> {
        Ok(self.get_with(key, true).await?.0)
    }

    /// Reads a key (linearizable) and the store revision the read was served at: a key found
    /// absent was absent at that revision, which a cache of absences needs.
    pub async fn get_at(&self, key: &[u8]) -> Result<(Option<KeyValue>, u64), MetaClientError> {
        self.get_with(key, false).await
    }

    async fn get_with(&self, key: &[u8], serializable: bool) -> Result<(Option<KeyValue>, u64), MetaClientError> {
        let req = pb::GetRequest { key: key.to_vec(), serializable };
        let r = self.call(Retry::Always, |ch| async { KvClient::new(ch).get(req.clone()).await }).await?.into_inner();
        Ok((r.kv, r.revision))
    }

    /// Sets a key; returns the store revision of the write.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, MetaClientError> {
        let req = pb::PutRequest { key: key.to_vec(), value: value.to_vec() };
        let r = self.call(Retry::Always, |ch| async { KvClient::new(ch).put(req.clone()).await }).await?;
        Ok(r.into_inner().revision)
    }

    /// Removes a key; returns whether it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, MetaClientError> {
        let req = pb::DeleteRequest { key: key.to_vec() };
        let r = self.call(Retry::Always, |ch| async { KvClient::new(ch).delete(req.clone()).await }).await?;
        Ok(r.into_inner().deleted)
    }

    /// One page of keys in `[start, end)` (`end` empty: to the end), linearizable.
    pub async fn range(&self, start: &[u8], end: &[u8], limit: u32) -> Result<RangePage, MetaClientError> {
        self.range_with(start, end, limit, false).await
    }

    /// As [`range`](Self::range), served by whichever node answers (may be stale).
    pub async fn range_serializable(&self, start: &[u8], end: &[u8], limit: u32) -> Result<RangePage, MetaClientError> {
        self.range_with(start, end, limit, true).await
    }

    async fn range_with(
        &self,
        start: &[u8],
        end: &[u8],
        limit: u32,
        serializable: bool,
    ) -> Result<RangePage, MetaClientError> {
        let req = pb::RangeRequest { start: start.to_vec(), end: end.to_vec(), limit, serializable };
        let r = self.call(Retry::Always, |ch| async { KvClient::new(ch).range(req.clone()).await }).await?.into_inner();
        Ok(RangePage {
            kvs: r.kvs,
            next_key: if r.next_key.is_empty() { None } else { Some(r.next_key) },
            revision: r.revision,
        })
    }

    /// Runs a transaction. Retried only when it surely was not applied; otherwise an
    /// [`MetaClientError::Indeterminate`] tells the caller to re-read. Transactions of this
    /// client waiting at the same time are sent together (see `txn_batch`); each still applies
    /// or fails on its own.
    pub async fn txn(&self, txn: Txn) -> Result<TxnOutcome, MetaClientError> {
        self.txn_queued(txn.into_request()).await
    }

    /// Changes under `prefix` from now on. The stream ends with [`MetaClientError::Aborted`] if
    /// the watcher falls behind, or with Unavailable if the node goes away: re-read and re-watch.
    pub async fn watch(
        &self,
        prefix: &[u8],
    ) -> Result<impl Stream<Item = Result<pb::WatchEvent, MetaClientError>> + use<>, MetaClientError> {
        use futures::StreamExt;
        let req = pb::WatchRequest { prefix: prefix.to_vec() };
        let stream =
            self.call(Retry::Always, |ch| async { KvClient::new(ch).watch(req.clone()).await }).await?.into_inner();
        Ok(stream.map(|r| {
            r.map_err(|s| match s.code() {
                Code::Aborted => MetaClientError::Aborted(s.message().into()),
                _ => MetaClientError::Unavailable { waited: Duration::ZERO, last_error: s.message().into() },
            })
        }))
    }

    /// A consistent copy of the whole keyspace, read from one point-in-time view on the leader:
    /// it holds every write acknowledged before the call. Finding the leader is retried as for
    /// other calls; the copy itself is not (a broken stream fails [`Backup::next_batch`]).
    pub async fn backup(&self) -> Result<Backup, MetaClientError> {
        use futures::StreamExt;
        let mut stream = self
            .call(Retry::Always, |ch| async { KvClient::new(ch).backup(pb::BackupRequest {}).await })
            .await?
            .into_inner();
        let first = match stream.next().await {
            Some(Ok(first)) => first,
            Some(Err(s)) => return Err(backup_error(s)),
            None => return Err(MetaClientError::Internal("backup stream ended before its header".into())),
        };
        let header = first
            .header
            .ok_or_else(|| MetaClientError::Internal("backup stream did not start with a header".into()))?;
        Ok(Backup {
            revision: header.revision,
            applied_index: header.applied_index,
            stream,
            pending: Some(first),
            keys: 0,
            done: false,
        })
    }

    /// Status of the node at `endpoint` (no redirect, no retry).
    pub async fn status_of(endpoint: &str) -> Result<StatusResponse, MetaClientError> {
        let c = MetaClient::with_policy(&[endpoint], RetryPolicy { deadline: Duration::ZERO, ..Default::default() })?;
        let r = c.call(Retry::Always, |ch| async { AdminClient::new(ch).status(pb::StatusRequest {}).await }).await?;
        Ok(r.into_inner())
    }

    /// Status of the leader.
    pub async fn status(&self) -> Result<StatusResponse, MetaClientError> {
        let r =
            self.call(Retry::Always, |ch| async { AdminClient::new(ch).status(pb::StatusRequest {}).await }).await?;
        Ok(r.into_inner())
    }

    /// Adds a voter (as learner first, until it caught up).
    pub async fn add_voter(&self, id: u64, api_addr: &str, peer_addr: &str) -> Result<Vec<Member>, MetaClientError> {
        let req = pb::AddVoterRequest {
            member: Some(Member { id, api_addr: api_addr.to_string(), peer_addr: peer_addr.to_string() }),
        };
        let r =
            self.call(Retry::IfNotApplied, |ch| async { AdminClient::new(ch).add_voter(req.clone()).await }).await?;
        Ok(r.into_inner().voters)
    }

    /// Removes a voter.
    pub async fn remove_voter(&self, id: u64) -> Result<Vec<Member>, MetaClientError> {
        let req = pb::RemoveVoterRequest { id };
        let r = self.call(Retry::IfNotApplied, |ch| async { AdminClient::new(ch).remove_voter(req).await }).await?;
        Ok(r.into_inner().voters)
    }
}

/// An error status in the middle of a backup stream (not retried: the caller starts over).
fn backup_error(s: Status) -> MetaClientError {
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            MetaClientError::Unavailable { waited: Duration::ZERO, last_error: s.message().into() }
        }
        _ => MetaClientError::Internal(s.message().into()),
    }
}

/// A backup being received (see [`MetaClient::backup`]).
pub struct Backup {
    /// Store revision of the copy: every write up to it, none after.
    pub revision: u64,
    /// Raft log index last applied to the copy.
    pub applied_index: u64,
    stream: tonic::Streaming<pb::BackupChunk>,
    pending: Option<pb::BackupChunk>,
    keys: u64,
    done: bool,
}

impl Backup {
    /// The next pairs, in key order (about 1 MiB of them); `None` once every pair arrived and
    /// their count matched the server's end marker. A stream cut off before that end marker is
    /// an error, never a short copy.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<KeyValue>>, MetaClientError> {
        use futures::StreamExt;
        if self.done {
            return Ok(None);
        }
        let chunk = match self.pending.take() {
            Some(c) => c,
            None => match self.stream.next().await {
                Some(Ok(c)) => c,
                Some(Err(s)) => return Err(backup_error(s)),
                None => {
                    return Err(MetaClientError::Unavailable {
                        waited: Duration::ZERO,
                        last_error: format!("backup stream cut off after {} keys", self.keys),
                    });
                }
            },
        };
        self.keys += chunk.kvs.len() as u64;
        if let Some(end) = chunk.end {
            if end.keys != self.keys {
                return Err(MetaClientError::Internal(format!(
                    "backup stream carried {} keys but its end marker says {}",
                    self.keys, end.keys
                )));
            }
            self.done = true;
        }
        Ok(Some(chunk.kvs))
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_bounds_exactly_the_prefix() {
        assert_eq!(prefix_end(b"s3/o/b/"), b"s3/o/b0".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), Vec::<u8>::new());
        assert!(prefix_end(b"vol/map/x/").as_slice() > b"vol/map/x/ffffffffffffffff".as_slice());
    }
}
