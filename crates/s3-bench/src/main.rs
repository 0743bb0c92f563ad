//! s3-bench: S3 throughput and small-object operations per second against an S3 endpoint
//! (objectd), each beside the machine's own limit measured in the same run — raw disk sequential
//! write and read (O_DIRECT), one core's MD5 (the ETag every PUT computes) and blake3.
//!
//! Against the endpoint it creates a bucket `bench-<random>`, PUTs and GETs `--objects` objects of
//! `--size-mib` MiB with one stream and with `--streams` streams, then `--small-ops` 4 KiB PUTs and
//! GETs of those keys with `--clients` concurrent clients (p50/p99 latency), and deletes all it
//! wrote. Every GET body is checked (length and blake3 of what was PUT), so a wrong answer cannot
//! look fast; every object's content is unique at every 4 KiB, so the pool's dedup cannot either.
//! It prints the figures, their baselines and ratios, and the goals marked met or missed.

mod baseline;
mod cpu;
mod s3;
mod sigv4;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use rand::RngCore;

use crate::baseline::{Disk, mbps};
use crate::s3::S3;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MIB: usize = 1 << 20;
const SMALL: usize = 4096;
/// Content is stamped with the object's tag every this many bytes (see [`stamp`]).
const STAMP_EVERY: usize = 4096;

/// Set into a phase's work counter on the first error: the other request loops stop.
const STOP: usize = usize::MAX / 2;

/// The goals.
const GOAL_PUT_VS_MD5: f64 = 0.6;
const GOAL_GET_VS_DISK: f64 = 0.5;
const GOAL_SMALL_PUT: f64 = 3000.0;
const GOAL_SMALL_GET: f64 = 5000.0;

#[derive(Parser, Debug)]
#[command(
    name = "s3-bench",
    about = "S3 PUT/GET throughput and 4 KiB operations per second against an S3 endpoint, beside this machine's raw disk, MD5 and blake3"
)]
struct Args {
    /// S3 endpoint, http://host:port (path-style requests).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    endpoint: Option<String>,
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    access_key: Option<String>,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
    /// Directory for the raw disk test (on the disk under the storage node); its file is removed.
    #[arg(long, default_value = "./data/s3-bench")]
    dir: PathBuf,
    /// Size of each large object, in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: usize,
    /// Large objects per throughput test.
    #[arg(long, default_value_t = 8)]
    objects: usize,
    /// Concurrent streams of the multi-stream throughput tests.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// 4 KiB objects PUT (and then GET).
    #[arg(long, default_value_t = 20_000)]
    small_ops: usize,
    /// Concurrent clients of the 4 KiB tests, each its own request loop.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Bytes of the raw disk test, in MiB.
    #[arg(long, default_value_t = 1024)]
    raw_mib: usize,
    /// Seconds of each single-core hash measurement.
    #[arg(long, default_value_t = 2.0)]
    hash_secs: f64,
}

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => fail(&one_line(&e.render().to_string())),
    };
    if let Err(e) = run(&args) {
        fail(&one_line(&e.to_string()));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("s3-bench: {msg}");
    std::process::exit(1);
}

/// Clap's multi-line errors (and any other) as one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Endpoint, access key and secret, from the flags or the environment.
struct Target {
    endpoint: String,
    access_key: String,
    secret_key: String,
}

fn target(args: &Args) -> Res<Target> {
    let need = |v: &Option<String>, what: &str, flag: &str, env: &str| -> Res<String> {
        v.clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("no {what}: pass {flag} or set {env} (e.g. `set -a; . data/local.env`)").into())
    };
    Ok(Target {
        endpoint: need(&args.endpoint, "endpoint", "--endpoint", "AWS_ENDPOINT_URL")?,
        access_key: need(&args.access_key, "access key", "--access-key", "AWS_ACCESS_KEY_ID")?,
        secret_key: need(&args.secret_key, "secret key", "--secret-key", "AWS_SECRET_ACCESS_KEY")?,
    })
}

fn run(args: &Args) -> Res<()> {
    let t = target(args)?;
    if args.size_mib == 0 || args.objects == 0 || args.streams == 0 || args.clients == 0 || args.small_ops == 0 {
        return Err("--size-mib, --objects, --streams, --clients and --small-ops must be at least 1".into());
    }
    if args.raw_mib < 4 {
        return Err("--raw-mib must be at least 4".into());
    }
    if args.hash_secs.is_nan() || args.hash_secs <= 0.0 {
        return Err("--hash-secs must be positive".into());
    }
    let s3 = S3::new(&t.endpoint, &t.access_key, &t.secret_key, &args.region, args.clients.max(args.streams) * 2)?;

    eprintln!("raw disk: {} MiB sequential in 4 MiB blocks in {} ...", args.raw_mib, args.dir.display());
    let disk = baseline::disk(&args.dir, args.raw_mib * MIB);
    let _ = std::fs::remove_dir(&args.dir); // only when empty
    let disk = disk?;
    eprintln!("one core: MD5 and blake3, {:.1} s each ...", args.hash_secs);
    let md5 = baseline::md5_mbps(Duration::from_secs_f64(args.hash_secs));
    let blake3 = baseline::blake3_mbps(Duration::from_secs_f64(args.hash_secs));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let s3 = Arc::new(s3);
    let res = rt.block_on(s3_tests(s3.clone(), args))?;
    report(args, &s3, &disk, md5, blake3, &res);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The S3 tests

/// One timed phase.
struct Phase {
    /// Requests made.
    ops: usize,
    bytes: usize,
    elapsed: Duration,
    /// Each request's time, sorted.
    latencies: Vec<Duration>,
    cpu: cpu::Use,
}

impl Phase {
    fn mbps(&self) -> f64 {
        mbps(self.bytes, self.elapsed)
    }

    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile latency (nearest rank).
    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
}

struct Results {
    bucket: String,
    put1: Phase,
    put_n: Phase,
    get1: Phase,
    get_n: Phase,
    small_put: Phase,
    small_get: Phase,
    delete: Phase,
}

/// What has been written so far, for the cleanup.
#[derive(Default)]
struct Written {
    large: Vec<String>,
    small: usize,
}

async fn s3_tests(s3: Arc<S3>, args: &Args) -> Res<Results> {
    let bucket = format!("bench-{:08x}", rand::random::<u32>());
    eprintln!("S3 {}: creating bucket {bucket} ...", s3.endpoint());
    s3.create_bucket(&bucket).await?;
    let mut written = Written::default();
    let outcome = measure(&s3, &bucket, args, &mut written).await;
    eprintln!("S3: deleting what the bench wrote ...");
    let mut keys = written.large.clone();
    keys.extend((0..written.small).map(small_key));
    let cleanup = delete_all(&s3, &bucket, keys, args.clients).await;
    match (outcome, cleanup) {
        (Ok(m), Ok(delete)) => {
            let [put1, put_n, get1, get_n, small_put, small_get] = m;
            Ok(Results { bucket, put1, put_n, get1, get_n, small_put, small_get, delete })
        }
        (Ok(_), Err(e)) => Err(format!("cleanup: {e}").into()),
        (Err(e), cleanup) => {
            if let Err(c) = cleanup {
                eprintln!("s3-bench: warning: bucket {bucket} not fully deleted: {}", one_line(&c.to_string()));
            }
            Err(e)
        }
    }
}

async fn measure(s3: &Arc<S3>, bucket: &str, args: &Args, written: &mut Written) -> Res<[Phase; 6]> {
    let size = args.size_mib * MIB;
    let n = args.objects;
    let mut base = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut base);
    let base = Bytes::from(base);
    // Set 1 goes through one stream, set 2 through several; distinct keys (even with
    // `--streams 1`), distinct tags, distinct content.
    let keys1: Vec<String> = (0..n).map(|i| format!("large/one-stream/{i:05}")).collect();
    let keys2: Vec<String> = (0..n).map(|i| format!("large/{}-streams/{i:05}", args.streams)).collect();
    let tags1: Vec<u64> = (0..n as u64).map(|i| (1 << 32) | i).collect();
    let tags2: Vec<u64> = (0..n as u64).map(|i| (2 << 32) | i).collect();
    eprintln!("S3: hashing the {} large objects' expected content ...", 2 * n);
    let hashes1 = expected_hashes(&base, &tags1);
    let hashes2 = expected_hashes(&base, &tags2);

    written.large.extend(keys1.iter().cloned());
    eprintln!("S3: PUT {n} x {} MiB, 1 stream ...", args.size_mib);
    let put1 = put_large(s3, bucket, &keys1, &tags1, &base, 1).await?;
    written.large.extend(keys2.iter().cloned());
    eprintln!("S3: PUT {n} x {} MiB, {} streams ...", args.size_mib, args.streams);
    let put_n = put_large(s3, bucket, &keys2, &tags2, &base, args.streams).await?;
    drop(base);
    eprintln!("S3: GET {n} x {} MiB, 1 stream ...", args.size_mib);
    let get1 = get_large(s3, bucket, &keys1, &hashes1, size, 1).await?;
    eprintln!("S3: GET {n} x {} MiB, {} streams ...", args.size_mib, args.streams);
    let get_n = get_large(s3, bucket, &keys2, &hashes2, size, args.streams).await?;

    let mut small = vec![0u8; SMALL];
    rand::thread_rng().fill_bytes(&mut small);
    let small = Bytes::from(small);
    written.small = args.small_ops;
    eprintln!("S3: PUT {} x 4 KiB, {} clients ...", args.small_ops, args.clients);
    let small_put = small_ops(s3, bucket, &small, args.small_ops, args.clients, SmallOp::Put).await?;
    eprintln!("S3: GET {} x 4 KiB, {} clients ...", args.small_ops, args.clients);
    let small_get = small_ops(s3, bucket, &small, args.small_ops, args.clients, SmallOp::Get).await?;
    Ok([put1, put_n, get1, get_n, small_put, small_get])
}

/// Writes `tag` every [`STAMP_EVERY`] bytes: every 4 KiB of every object differs from every
/// other object's, so no chunk of one object can dedup against another's, whatever the chunking.
fn stamp(buf: &mut [u8], tag: u64) {
    let t = tag.to_le_bytes();
    for off in (0..buf.len()).step_by(STAMP_EVERY) {
        let end = (off + t.len()).min(buf.len());
        buf[off..end].copy_from_slice(&t[..end - off]);
    }
}

/// blake3 of `base` stamped with each tag (computed before the timed phases).
fn expected_hashes(base: &[u8], tags: &[u64]) -> Vec<blake3::Hash> {
    let mut scratch = base.to_vec();
    tags.iter()
        .map(|&tag| {
            stamp(&mut scratch, tag);
            blake3::Hasher::new().update_rayon(&scratch).finalize()
        })
        .collect()
}

/// Runs `jobs` requests with `loops` concurrent request loops, job `i` being `op(state, i)`:
/// each loop starts with its own `init()` state, which every request takes and gives back
/// (with the time the request itself took, untimed preparation left out). The first error
/// stops every loop. `bytes` turns the number of requests into bytes moved.
async fn request_loops<St, F, Fut>(
    loops: usize,
    jobs: usize,
    init: impl Fn() -> St,
    op: F,
    bytes: impl Fn(usize) -> usize,
) -> Res<Phase>
where
    St: Send + 'static,
    F: Fn(St, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Res<(St, Duration)>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start_line = Arc::new(tokio::sync::Barrier::new(loops + 1));
    let mut tasks = Vec::new();
    for _ in 0..loops {
        let (op, next, start_line, mut state) = (op.clone(), next.clone(), start_line.clone(), init());
        tasks.push(tokio::spawn(async move {
            start_line.wait().await;
            let mut lat = Vec::with_capacity(jobs / loops + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return Res::Ok(lat);
                }
                match op(state, i).await {
                    Ok((s, took)) => {
                        state = s;
                        lat.push(took);
                    }
                    Err(e) => {
                        next.store(STOP, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
        }));
    }
    timed(start_line, tasks, bytes).await
}

/// PUTs `keys[i]` = `base` stamped with `tags[i]`, with `streams` concurrent request loops. Each
/// loop owns one buffer, stamps it in place before each PUT and takes it back after, so nothing
/// is allocated or copied inside the timed part.
async fn put_large(
    s3: &Arc<S3>,
    bucket: &str,
    keys: &[String],
    tags: &[u64],
    base: &Bytes,
    streams: usize,
) -> Res<Phase> {
    let jobs: Arc<Vec<(String, u64)>> = Arc::new(keys.iter().cloned().zip(tags.iter().copied()).collect());
    let (s3, bucket, size) = (s3.clone(), Arc::<str>::from(bucket), base.len());
    let op = move |mut buf: BytesMut, i: usize| {
        let (s3, bucket, jobs) = (s3.clone(), bucket.clone(), jobs.clone());
        async move {
            let (key, tag) = &jobs[i];
            stamp(&mut buf, *tag);
            let body = buf.freeze();
            let t0 = Instant::now();
            s3.put(&bucket, key, body.clone()).await?;
            let took = t0.elapsed();
            // The request has dropped its reference once the whole body was sent.
            Ok((body.try_into_mut().unwrap_or_else(|b| BytesMut::from(&b[..])), took))
        }
    };
    request_loops(streams, keys.len(), || BytesMut::from(&base[..]), op, |n| n * size).await
}

/// GETs every key with `streams` concurrent request loops, checking each body.
async fn get_large(
    s3: &Arc<S3>,
    bucket: &str,
    keys: &[String],
    hashes: &[blake3::Hash],
    size: usize,
    streams: usize,
) -> Res<Phase> {
    let jobs: Arc<Vec<(String, blake3::Hash)>> = Arc::new(keys.iter().cloned().zip(hashes.iter().copied()).collect());
    let (s3, bucket) = (s3.clone(), Arc::<str>::from(bucket));
    let op = move |(), i: usize| {
        let (s3, bucket, jobs) = (s3.clone(), bucket.clone(), jobs.clone());
        async move {
            let (key, hash) = &jobs[i];
            let t0 = Instant::now();
            s3.get_verify(&bucket, key, size as u64, *hash).await?;
            Ok(((), t0.elapsed()))
        }
    };
    request_loops(streams, keys.len(), || (), op, |n| n * size).await
}

#[derive(Clone, Copy, PartialEq)]
enum SmallOp {
    Put,
    Get,
}

fn small_key(i: usize) -> String {
    format!("small/{i:06}")
}

/// `n` 4 KiB PUTs (or GETs, each checked) of `small/<i>` = `base` stamped with `i`, by `clients`
/// concurrent request loops.
async fn small_ops(s3: &Arc<S3>, bucket: &str, base: &Bytes, n: usize, clients: usize, kind: SmallOp) -> Res<Phase> {
    let (s3, bucket) = (s3.clone(), Arc::<str>::from(bucket));
    let op = move |mut buf: Vec<u8>, i: usize| {
        let (s3, bucket) = (s3.clone(), bucket.clone());
        async move {
            stamp(&mut buf, i as u64);
            let key = small_key(i);
            let took = match kind {
                SmallOp::Put => {
                    let body = Bytes::copy_from_slice(&buf);
                    let t0 = Instant::now();
                    s3.put(&bucket, &key, body).await?;
                    t0.elapsed()
                }
                SmallOp::Get => {
                    let hash = blake3::hash(&buf);
                    let t0 = Instant::now();
                    s3.get_verify(&bucket, &key, SMALL as u64, hash).await?;
                    t0.elapsed()
                }
            };
            Ok((buf, took))
        }
    };
    request_loops(clients, n, || base.to_vec(), op, |n| n * SMALL).await
}

/// DELETEs every key, then the bucket, with `clients` concurrent request loops.
async fn delete_all(s3: &Arc<S3>, bucket: &str, keys: Vec<String>, clients: usize) -> Res<Phase> {
    let (jobs, keys) = (keys.len(), Arc::new(keys));
    let (s3c, bucket_c) = (s3.clone(), Arc::<str>::from(bucket));
    let op = move |(), i: usize| {
        let (s3, bucket, keys) = (s3c.clone(), bucket_c.clone(), keys.clone());
        async move {
            let t0 = Instant::now();
            s3.delete(&bucket, &keys[i]).await?;
            Ok(((), t0.elapsed()))
        }
    };
    let phase = request_loops(clients, jobs, || (), op, |_| 0).await?;
    s3.delete_bucket(bucket).await?;
    Ok(phase)
}

/// Releases the loops waiting at `start_line` and times them until all have finished; the first
/// error (if any) is the result. `bytes` turns the number of requests into bytes moved.
async fn timed(
    start_line: Arc<tokio::sync::Barrier>,
    tasks: Vec<tokio::task::JoinHandle<Res<Vec<Duration>>>>,
    bytes: impl Fn(usize) -> usize,
) -> Res<Phase> {
    start_line.wait().await;
    let cpu0 = cpu::Sample::now();
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(l)) => latencies.extend(l),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(format!("request loop failed: {e}").into());
            }
        }
    }
    let elapsed = start.elapsed();
    let cpu = cpu0.used();
    if let Some(e) = first_err {
        return Err(e);
    }
    latencies.sort();
    Ok(Phase { ops: latencies.len(), bytes: bytes(latencies.len()), elapsed, latencies, cpu })
}

// ---------------------------------------------------------------------------------------------
// Report

fn report(args: &Args, s3: &S3, disk: &Disk, md5: f64, blake3: f64, r: &Results) {
    let mode = if disk.direct { "O_DIRECT" } else { "buffered (O_DIRECT refused)" };
    println!();
    println!(
        "s3-bench  endpoint={}  bucket={}  objects={} x {} MiB  small={} x 4 KiB  (MB = 10^6 bytes)",
        s3.endpoint(),
        r.bucket,
        args.objects,
        args.size_mib,
        args.small_ops
    );
    println!();
    println!("machine baselines, measured in this run (dir {}):", args.dir.display());
    let raw_mib = disk.bytes / MIB;
    println!(
        "  {:<62} {:>9.1} MB/s",
        format!("raw disk write, {mode} 4 MiB blocks + fdatasync, {raw_mib} MiB"),
        disk.write_mbps
    );
    println!("  {:<62} {:>9.1} MB/s", format!("raw disk read, {mode} 4 MiB blocks, {raw_mib} MiB"), disk.read_mbps);
    println!("  {:<62} {:>9.1} MB/s", "MD5, one core (md-5 crate, 64 KiB pieces)", md5);
    println!("  {:<62} {:>9.1} MB/s", "blake3, one core (64 KiB pieces)", blake3);
    println!();

    let mut goals: Vec<bool> = Vec::new();
    let mut mark = |ok: bool| {
        goals.push(ok);
        if ok { "met" } else { "MISSED" }
    };
    let head = format!(
        "{:<30} {:>15} {:>9} {:>9}  {:<16} {:>6}  {:<10} {}",
        "figure", "result", "p50", "p99", "baseline", "ratio", "goal", "status"
    );
    println!("{head}");
    println!("{}", "-".repeat(head.len() + 2));
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let big = |label: String,
               p: &Phase,
               base: &[(&str, f64, Option<f64>)],
               mark: &mut dyn FnMut(bool) -> &'static str| {
        for (j, (name, value, goal)) in base.iter().enumerate() {
            let ratio = p.mbps() / value;
            let (g, s) = match goal {
                Some(g) => (format!(">= {g:.2}"), mark(ratio >= *g).to_string()),
                None => (String::new(), String::new()),
            };
            if j == 0 {
                row(format!(
                    "{:<30} {:>15} {:>9} {:>9}  {:<16} {:>6.2}  {:<10} {}",
                    label,
                    format!("{:.1} MB/s", p.mbps()),
                    ms(p.pct(50.0)),
                    ms(p.pct(99.0)),
                    name,
                    ratio,
                    g,
                    s
                ));
            } else {
                row(format!("{:<30} {:>15} {:>9} {:>9}  {:<16} {:>6.2}  {:<10} {}", "", "", "", "", name, ratio, g, s));
            }
        }
    };
    let sz = args.size_mib;
    big(
        format!("PUT {sz} MiB, 1 stream"),
        &r.put1,
        &[("one-core MD5", md5, Some(GOAL_PUT_VS_MD5)), ("raw disk write", disk.write_mbps, None)],
        &mut mark,
    );
    big(
        format!("PUT {sz} MiB, {} streams", args.streams),
        &r.put_n,
        &[("raw disk write", disk.write_mbps, None)],
        &mut mark,
    );
    big(
        format!("GET {sz} MiB, 1 stream"),
        &r.get1,
        &[("raw disk read", disk.read_mbps, Some(GOAL_GET_VS_DISK))],
        &mut mark,
    );
    big(
        format!("GET {sz} MiB, {} streams", args.streams),
        &r.get_n,
        &[("raw disk read", disk.read_mbps, Some(GOAL_GET_VS_DISK))],
        &mut mark,
    );
    let small = |label: String, p: &Phase, goal: Option<f64>, mark: &mut dyn FnMut(bool) -> &'static str| {
        let ops = p.ops_per_sec();
        let (g, s) = match goal {
            Some(g) => (format!(">= {g:.0}/s"), mark(ops >= g).to_string()),
            None => (String::new(), String::new()),
        };
        row(format!(
            "{:<30} {:>15} {:>9} {:>9}  {:<16} {:>6}  {:<10} {}",
            label,
            format!("{ops:.0} ops/s"),
            ms(p.pct(50.0)),
            ms(p.pct(99.0)),
            "",
            "",
            g,
            s
        ));
    };
    let c = args.clients;
    small(format!("PUT 4 KiB, {c} clients"), &r.small_put, Some(GOAL_SMALL_PUT), &mut mark);
    small(format!("GET 4 KiB, {c} clients"), &r.small_get, Some(GOAL_SMALL_GET), &mut mark);
    small(format!("DELETE, {c} clients"), &r.delete, None, &mut mark);
    println!("{}", "-".repeat(head.len() + 2));
    println!(
        "latencies are per request (a whole object for the large rows); every GET body was checked; \
         DELETE removed all {} objects",
        r.delete.ops
    );
    println!();
    println!("CPU during each phase (the bench shares this machine with the server):");
    for (label, p) in [
        ("PUT large, 1 stream", &r.put1),
        ("PUT large, streams", &r.put_n),
        ("GET large, 1 stream", &r.get1),
        ("GET large, streams", &r.get_n),
        ("PUT 4 KiB", &r.small_put),
        ("GET 4 KiB", &r.small_get),
    ] {
        println!("  {:<22} {:>7.2} s  {}", label, p.elapsed.as_secs_f64(), p.cpu.describe());
    }
    println!();
    let met = goals.iter().filter(|g| **g).count();
    println!(
        "goals: {met} of {} met  (single PUT stream >= {GOAL_PUT_VS_MD5} x one-core MD5; GET >= {GOAL_GET_VS_DISK} x raw disk read, \
         1 and {} streams; 4 KiB PUT >= {GOAL_SMALL_PUT:.0}/s; 4 KiB GET >= {GOAL_SMALL_GET:.0}/s)",
        goals.len(),
        args.streams
    );
}

/// Prints one table row without trailing blanks.
fn row(line: String) {
    println!("{}", line.trim_end());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_make_every_block_unique() {
        let mut a = vec![7u8; 3 * STAMP_EVERY + 5];
        let mut b = a.clone();
        stamp(&mut a, 1);
        stamp(&mut b, 2);
        for (x, y) in a.chunks(STAMP_EVERY).zip(b.chunks(STAMP_EVERY)) {
            assert_ne!(x, y);
        }
        // stamping again with another tag gives the same bytes as stamping a fresh copy
        let mut c = a.clone();
        stamp(&mut c, 2);
        assert_eq!(c, b);
    }

    #[test]
    fn percentiles() {
        let p = Phase {
            ops: 100,
            bytes: 0,
            elapsed: Duration::from_secs(1),
            latencies: (1..=100).map(Duration::from_millis).collect(),
            cpu: cpu::Use::default(),
        };
        assert_eq!(p.pct(50.0), Duration::from_millis(50));
        assert_eq!(p.pct(99.0), Duration::from_millis(99));
        assert_eq!(p.ops_per_sec(), 100.0);
    }

    #[test]
    fn errors_are_one_line() {
        assert_eq!(
            one_line("error: bad value\n\nUsage: s3-bench\n\nFor more information, try '--help'.\n"),
            "bad value"
        );
    }
}
