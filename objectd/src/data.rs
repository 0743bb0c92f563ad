//! Object bytes in the pool: an upload is streamed into chunks (never held whole) while its MD5
//! and any requested checksums are computed; a download streams a byte range back from the
//! chunks, reading a few ahead.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use s3s::S3ErrorCode;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Md5};
use s3s::dto::StreamingBlob;
use tokio::task::JoinHandle;

use crate::error::{ObjectdError, Result, s3err};
use crate::records::{ChunkRef, ObjectRecord};
use crate::store::{Acked, Store};

/// What a broken request body means for the client: s3s's signature and payload-hash checks
/// fail inside the body stream, everything else is a body that ended short.
fn body_error(e: &(dyn std::error::Error + 'static)) -> ObjectdError {
    if let Some(s3) = e.downcast_ref::<s3s::S3Error>() {
        return ObjectdError::S3(s3s::S3Error::with_message(s3.code().clone(), s3.message().unwrap_or("").to_string()));
    }
    let text = e.to_string();
    tracing::debug!(error = %text, "request body failed");
    if text.contains("SignatureMismatch") {
        s3err(
            S3ErrorCode::SignatureDoesNotMatch,
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        )
    } else if text.contains("Sha256Mismatch") {
        let mut e = s3s::S3Error::with_message(
            S3ErrorCode::Custom("XAmzContentSHA256Mismatch".into()),
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        );
        e.set_status_code(http::StatusCode::BAD_REQUEST);
        ObjectdError::S3(e)
    } else if text.contains("FormatError") || text.contains("TooLarge") || text.contains("TooMany") {
        s3err(S3ErrorCode::InvalidRequest, "The aws-chunked request body is malformed.")
    } else {
        s3err(
            S3ErrorCode::IncompleteBody,
            "You did not provide the number of bytes specified by the Content-Length HTTP header.",
        )
    }
}

/// Bodies past this size are hashed (MD5 and checksums) on a thread of their own, beside the
/// task that receives them: one stream's MD5 is its ceiling, so it must not also wait for the
/// network. Smaller bodies are hashed in place (no thread hop for small objects).
const HASH_THREAD_AFTER: u64 = 1 << 20;

type HashState = (Md5, ChecksumHasher);

enum Hashing {
    Here(Box<HashState>),
    Thread(tokio::sync::mpsc::Sender<Bytes>, JoinHandle<HashState>),
    Done,
}

impl Hashing {
    async fn update(&mut self, frame: &Bytes, size: u64) -> Result<()> {
        if let Hashing::Here(st) = self {
            st.0.update(frame);
            st.1.update(frame);
            if size > HASH_THREAD_AFTER {
                let Hashing::Here(st) = std::mem::replace(self, Hashing::Done) else { unreachable!() };
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(256);
                let task = tokio::task::spawn_blocking(move || {
                    let mut st = *st;
                    while let Some(b) = rx.blocking_recv() {
                        st.0.update(&b);
                        st.1.update(&b);
                    }
                    st
                });
                *self = Hashing::Thread(tx, task);
            }
            return Ok(());
        }
        if let Hashing::Thread(tx, _) = self
            && tx.send(frame.clone()).await.is_err()
        {
            return Err(ObjectdError::Serve("hashing thread ended early".into()));
        }
        Ok(())
    }

    async fn finish(self) -> Result<HashState> {
        match self {
            Hashing::Here(st) => Ok(*st),
            Hashing::Thread(tx, task) => {
                drop(tx);
                task.await.map_err(|e| ObjectdError::Serve(format!("hashing thread: {e}")))
            }
            Hashing::Done => Err(ObjectdError::Serve("hashing state lost".into())),
        }
    }
}

/// The largest single PUT (S3's limit).
pub const MAX_PUT: u64 = 5 << 30;

/// What an upload stored.
pub struct Ingested {
    pub size: u64,
    pub md5: [u8; 16],
    pub chunks: Vec<ChunkRef>,
    pub acked: Acked,
    /// The whole body, when it is small enough to live in the metadata record.
    pub inline: Option<Vec<u8>>,
    /// Checksums computed over the body (finalised by the caller once trailers are known).
    pub hasher: ChecksumHasher,
}

type PutTask = JoinHandle<std::result::Result<(chunk_engine::ChunkHash, std::time::Instant), cluster::ClusterError>>;

/// Streams `body` into chunks of the configured size, `put_depth` puts in flight. Bodies of at
/// most `inline_max` bytes are returned inline instead when `allow_inline`. Fails with
/// EntityTooLarge past `max`, IncompleteBody when the stream breaks or ends short of
/// `expected`.
pub async fn ingest(
    store: &Store,
    body: Option<StreamingBlob>,
    expected: Option<u64>,
    hasher: ChecksumHasher,
    allow_inline: bool,
    max: u64,
) -> Result<Ingested> {
    if let Some(n) = expected
        && n > max
    {
        return Err(s3err(
            S3ErrorCode::EntityTooLarge,
            format!("Your proposed upload exceeds the maximum allowed size of {max} bytes"),
        ));
    }
    let chunk = store.cfg.chunk_size;
    let mut hashing = Hashing::Here(Box::new((Md5::default(), hasher)));
    let mut size = 0u64;
    let mut buf = BytesMut::new();
    let mut inflight: VecDeque<PutTask> = VecDeque::new();
    let mut chunks: Vec<ChunkRef> = Vec::new();
    let mut acked: Acked = Vec::new();
    let mut lens: VecDeque<u64> = VecDeque::new();
    let finish =
        |t: std::result::Result<_, tokio::task::JoinError>| -> Result<(chunk_engine::ChunkHash, std::time::Instant)> {
            match t {
                Ok(r) => Ok(r?),
                Err(e) => Err(ObjectdError::Serve(format!("chunk put task: {e}"))),
            }
        };
    if let Some(mut body) = body {
        while let Some(frame) = body.next().await {
            let frame = frame.map_err(|e| body_error(&*e))?;
            size += frame.len() as u64;
            if size > max {
                return Err(s3err(
                    S3ErrorCode::EntityTooLarge,
                    format!("Your proposed upload exceeds the maximum allowed size of {max} bytes"),
                ));
            }
            hashing.update(&frame, size).await?;
            if buf.is_empty() && frame.len() >= chunk {
                // Large frames go out without a copy where they line up.
                let mut frame = frame;
                while frame.len() >= chunk {
                    let piece = frame.split_to(chunk);
                    spawn_put(store, piece, &mut inflight, &mut lens);
                }
                buf.extend_from_slice(&frame);
            } else {
                // Room for the rest of this chunk, or of the body when it ends sooner: a 4 KiB
                // PUT must not allocate (and fault in) a whole chunk's buffer.
                let still_due = expected.map_or(u64::MAX, |n| n.saturating_sub(size - frame.len() as u64));
                let want = (buf.len() as u64).saturating_add(still_due).min(chunk as u64) as usize;
                if buf.capacity() < want {
                    buf.reserve(want - buf.len());
                }
                let mut rest: &[u8] = &frame;
                while !rest.is_empty() {
                    let take = (chunk - buf.len()).min(rest.len());
                    buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if buf.len() == chunk {
                        let piece = buf.split().freeze();
                        spawn_put(store, piece, &mut inflight, &mut lens);
                    }
                }
            }
            while inflight.len() >= store.cfg.put_depth {
                let t = inflight.pop_front().expect("non-empty");
                let (h, at) = finish(t.await)?;
                chunks.push(ChunkRef { h: h.to_hex(), n: lens.pop_front().unwrap_or(0) });
                acked.push((h, at));
            }
        }
    }
    if let Some(n) = expected
        && n != size
    {
        return Err(s3err(
            S3ErrorCode::IncompleteBody,
            "You did not provide the number of bytes specified by the Content-Length HTTP header.",
        ));
    }
    let mut inline = None;
    if !buf.is_empty() {
        if allow_inline && inflight.is_empty() && chunks.is_empty() && buf.len() <= store.cfg.inline_max {
            inline = Some(buf.to_vec());
        } else {
            spawn_put(store, buf.split().freeze(), &mut inflight, &mut lens);
        }
    }
    while let Some(t) = inflight.pop_front() {
        let (h, at) = finish(t.await)?;
        chunks.push(ChunkRef { h: h.to_hex(), n: lens.pop_front().unwrap_or(0) });
        acked.push((h, at));
    }
    let (md5, hasher) = hashing.finish().await?;
    let md5: [u8; 16] = md5.finalize();
    Ok(Ingested { size, md5, chunks, acked, inline, hasher })
}

fn spawn_put(store: &Store, piece: Bytes, inflight: &mut VecDeque<PutTask>, lens: &mut VecDeque<u64>) {
    let client = store.chunks.clone();
    lens.push_back(piece.len() as u64);
    inflight.push_back(tokio::spawn(async move {
        let r = client.put(piece).await?;
        Ok((r.hash, r.acked_at))
    }));
}

/// The bytes `range` of `rec` as a stream, `depth` chunk reads ahead. A chunk of which less
/// than half is wanted is read in part (a ranged, verified read), the others whole.
pub fn read_range(store: &Store, rec: &ObjectRecord, range: Range<u64>) -> Result<StreamingBlob> {
    if rec.inline.is_some() || rec.chunks.is_empty() {
        let data = Bytes::from(rec.inline.clone().unwrap_or_default());
        let end = (range.end as usize).min(data.len());
        let start = (range.start as usize).min(end);
        let piece = data.slice(start..end);
        return Ok(StreamingBlob::wrap(futures::stream::once(async move { Ok::<_, std::io::Error>(piece) })));
    }
    let mut parts = Vec::new();
    let mut off = 0u64;
    for c in &rec.chunks {
        let (s, e) = (off, off + c.n);
        off = e;
        if e <= range.start || s >= range.end {
            continue;
        }
        let a = range.start.max(s) - s;
        let b = range.end.min(e) - s;
        parts.push((c.hash()?, a as usize, b as usize, c.n));
    }
    let client = store.chunks.clone();
    let depth = store.cfg.get_depth;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
    let stream = futures::stream::iter(parts)
        .map(move |(h, a, b, n)| {
            let client = client.clone();
            async move {
                if (b - a) as u64 * 2 < n {
                    // A small part of the chunk (a Range GET): read and verify about that part.
                    let part = client
                        .get_range(&h, a as u64, (b - a) as u64)
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    if part.len() != b - a {
                        return Err(std::io::Error::other(format!(
                            "chunk {h} is shorter than the object says ({n} bytes)"
                        )));
                    }
                    return Ok(part);
                }
                let data = client.get(&h).await.map_err(|e| std::io::Error::other(e.to_string()))?;
                if data.len() as u64 != n {
                    return Err(std::io::Error::other(format!(
                        "chunk {h} has {} bytes, the object says {n}",
                        data.len()
                    )));
                }
                Ok::<_, std::io::Error>(data.slice(a..b))
            }
        })
        .buffered(depth)
        .inspect_err(|e| tracing::error!(error = %e, "object read failed mid-stream"));
    // The reads run in their own task (the response body must be Sync); a client that goes
    // away drops the receiver and stops them.
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    let rx = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Ok(StreamingBlob::wrap(rx))
}
