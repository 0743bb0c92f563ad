//! chunk-bench: compares the chunk engine with the raw disk under it — sequential 4 MiB write and
//! read throughput (buffered and O_DIRECT), engine 4 MiB put/get throughput with 1 and 4 threads,
//! and durable 4 KiB puts per second with 1 and 16 writers (the group-commit factor). The two
//! headline ratios — ingest (8 writers) against raw write, 16 against 1 small-put writers — are
//! measured in `--rounds` back-to-back pairs and the median pair ratio is reported, because this
//! machine's disk speed drifts by tens of percent within a minute.

use std::error::Error;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chunk_engine::{AlignedBuf, ChunkEngine, ChunkHash, EngineConfig};
use clap::Parser;
use rand::RngCore;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

const MIB: usize = 1 << 20;
/// Block size of the raw tests and chunk size of the engine throughput tests.
const BLOCK: usize = 4 * MIB;
const SMALL: usize = 4096;
const WRITE_TARGET: f64 = 0.80;
const GROUP_COMMIT_TARGET: f64 = 10.0;
/// Concurrent puts of the ingest figure (a node takes puts from many clients at once).
const INGEST_WRITERS: usize = 8;

#[derive(Parser, Debug)]
#[command(about = "Raw-disk vs chunk-engine throughput benchmark")]
struct Args {
    /// Working directory (its `raw/` and `engine/` subdirectories are recreated and removed).
    #[arg(long, default_value = "./data/bench")]
    dir: PathBuf,
    /// Bytes per throughput test, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: usize,
    /// Duration of each 4 KiB put test, in seconds.
    #[arg(long, default_value_t = 3.0)]
    small_secs: f64,
    /// Back-to-back measurement pairs behind each headline ratio (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also print a one-line JSON summary.
    #[arg(long)]
    json: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("chunk-bench: {e}");
        std::process::exit(1);
    }
}

/// One measured figure: a label and a rate.
struct Row {
    key: &'static str,
    label: String,
    value: f64,
    unit: &'static str,
    /// Against which baseline the ratio is printed.
    base: Base,
}

#[derive(Clone, Copy, PartialEq)]
enum Base {
    None,
    RawWrite,
    RawRead,
}

fn run(args: &Args) -> Res<()> {
    if args.size_mib < 4 {
        return Err("--size-mib must be at least 4".into());
    }
    if args.small_secs <= 0.0 {
        return Err("--small-secs must be positive".into());
    }
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let raw_dir = args.dir.join("raw");
    let eng_dir = args.dir.join("engine");
    let total = (args.size_mib * MIB).next_multiple_of(BLOCK);
    let small = Duration::from_secs_f64(args.small_secs);
    let result = measure_all(&raw_dir, &eng_dir, total, small).and_then(|rows| {
        let pairs = Pairs::measure(&raw_dir, &eng_dir, total, small, args.rounds, &rows)?;
        Ok((rows, pairs))
    });
    cleanup(&args.dir, &[&raw_dir, &eng_dir]);
    let (rows, pairs) = result?;
    print_report(args, total, &rows, &pairs);
    Ok(())
}

/// The headline ratios, each from back-to-back pairs: (baseline, measured) per round.
struct Pairs {
    ingest: Vec<(f64, f64)>,
    group: Vec<(f64, f64)>,
    /// The disk's own group-commit ceiling per round: durable 4 KiB writes per second one at a
    /// time, and as 16 x 4 KiB per write (what a perfect group commit of 16 writers would issue).
    raw_group: Vec<(f64, f64)>,
}

impl Pairs {
    /// Per round: a raw O_DIRECT write then an engine ingest with [`INGEST_WRITERS`] (against
    /// the better of that raw write and the buffered one); 4 KiB puts with 1 then 16 writers.
    fn measure(
        raw_dir: &Path,
        eng_dir: &Path,
        total: usize,
        small: Duration,
        rounds: usize,
        rows: &[Row],
    ) -> Res<Pairs> {
        let buffered = value(rows, "raw_write_buffered");
        let file = raw_dir.join("raw.dat");
        let mut p = Pairs { ingest: Vec::new(), group: Vec::new(), raw_group: Vec::new() };
        for round in 1..=rounds {
            eprintln!(
                "round {round}/{rounds}: raw write vs {INGEST_WRITERS}-writer ingest, 1 vs 16 small-put writers ..."
            );
            let raw = gbps(total, raw_write(&file, total, true)?).max(buffered);
            fs::remove_file(&file)?;
            let (d, _) = engine_puts(eng_dir, total / BLOCK, INGEST_WRITERS)?;
            p.ingest.push((raw, gbps(total, d)));
            let one = small_puts(eng_dir, 1, small)?;
            let many = small_puts(eng_dir, 16, small)?;
            p.group.push((one, many));
            let raw_one = raw_synced_writes(&file, SMALL, small / 2)?;
            let raw_many = raw_synced_writes(&file, 16 * SMALL, small / 2)? * 16.0;
            fs::remove_file(&file)?;
            p.raw_group.push((raw_one, raw_many));
        }
        Ok(p)
    }
}

/// The median of `measured / baseline` over the pairs.
fn median_ratio(pairs: &[(f64, f64)]) -> f64 {
    let mut r: Vec<f64> = pairs.iter().map(|(base, m)| m / base).collect();
    r.sort_by(f64::total_cmp);
    r[r.len() / 2]
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

impl Row {
    fn new(key: &'static str, label: &str, value: f64, unit: &'static str, base: Base) -> Self {
        Row { key, label: label.to_string(), value, unit, base }
    }

    /// A throughput row: `bytes` moved in `d`, in GB/s.
    fn gbps(key: &'static str, label: &str, bytes: usize, d: Duration, base: Base) -> Self {
        Row::new(key, label, gbps(bytes, d), "GB/s", base)
    }
}

fn measure_all(raw_dir: &Path, eng_dir: &Path, total: usize, small: Duration) -> Res<Vec<Row>> {
    let mut rows = raw_tests(raw_dir, total)?;
    rows.extend(engine_large_tests(eng_dir, total)?);
    rows.extend(engine_small_tests(eng_dir, small)?);
    Ok(rows)
}

fn raw_tests(raw_dir: &Path, total: usize) -> Res<Vec<Row>> {
    eprintln!("raw disk: {} MiB sequential in 4 MiB blocks ...", total / MIB);
    fresh_dir(raw_dir)?;
    let file = raw_dir.join("raw.dat");
    let mut rows = Vec::new();
    for (direct, wkey, wlabel, rkey, rlabel) in [
        (
            false,
            "raw_write_buffered",
            "raw write, buffered + fdatasync",
            "raw_read_buffered",
            "raw read, buffered (cache dropped)",
        ),
        (true, "raw_write_direct", "raw write, O_DIRECT + fdatasync", "raw_read_direct", "raw read, O_DIRECT"),
    ] {
        let d = raw_write(&file, total, direct)?;
        rows.push(Row::gbps(wkey, wlabel, total, d, Base::None));
        let d = raw_read(&file, total, direct)?;
        rows.push(Row::gbps(rkey, rlabel, total, d, Base::None));
        fs::remove_file(&file)?;
    }
    Ok(rows)
}

fn engine_large_tests(eng_dir: &Path, total: usize) -> Res<Vec<Row>> {
    eprintln!("engine: 4 MiB puts and gets ...");
    let n = total / BLOCK;
    let mut rows = Vec::new();
    let (d, _) = engine_puts(eng_dir, n, 1)?;
    rows.push(Row::gbps("engine_put_4m_t1", "engine put 4 MiB, 1 writer", total, d, Base::RawWrite));
    let (d, stored) = engine_puts(eng_dir, n, 4)?;
    rows.push(Row::gbps("engine_put_4m_t4", "engine put 4 MiB, 4 writers", total, d, Base::RawWrite));
    for (threads, key, label) in [
        (1, "engine_get_4m_t1", "engine get+verify 4 MiB, 1 reader"),
        (4, "engine_get_4m_t4", "engine get+verify 4 MiB, 4 readers"),
    ] {
        let engine = ChunkEngine::open(EngineConfig::new(eng_dir))?;
        drop_dir_cache(&eng_dir.join("segments"))?;
        let d = engine_gets(&engine, &stored, threads)?;
        rows.push(Row::gbps(key, label, total, d, Base::RawRead));
    }
    Ok(rows)
}

fn engine_small_tests(eng_dir: &Path, small: Duration) -> Res<Vec<Row>> {
    eprintln!("engine: durable 4 KiB puts, {:.1} s each ...", small.as_secs_f64());
    let one = small_puts(eng_dir, 1, small)?;
    let many = small_puts(eng_dir, 16, small)?;
    Ok(vec![
        Row::new("small_put_t1", "engine put 4 KiB, 1 writer", one, "puts/s", Base::None),
        Row::new("small_put_t16", "engine put 4 KiB, 16 writers", many, "puts/s", Base::None),
    ])
}

// ---------------------------------------------------------------------------------------------
// Raw disk

/// A buffer aligned for O_DIRECT (the engine's), filled with random bytes.
fn random_block(len: usize) -> AlignedBuf {
    let mut buf = AlignedBuf::zeroed(len);
    rand::thread_rng().fill_bytes(buf.as_mut_slice());
    buf
}

fn open_raw(path: &Path, write: bool, direct: bool) -> Res<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    if write {
        o.write(true).create(true).truncate(true);
    }
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path).map_err(|e| format!("open {}: {e}", path.display()).into())
}

/// Sequential write of `total` bytes in 4 MiB blocks, timed including the final fdatasync.
fn raw_write(path: &Path, total: usize, direct: bool) -> Res<Duration> {
    let buf = random_block(BLOCK);
    let mut f = open_raw(path, true, direct)?;
    let start = Instant::now();
    for _ in 0..total / BLOCK {
        f.write_all(buf.as_ref())?;
    }
    f.sync_data()?;
    Ok(start.elapsed())
}

/// Writes of `len` bytes, each followed by fdatasync, for `dur`, into a file whose blocks are
/// already written (so each sync flushes data only, as the engine's zero-filled small lane does);
/// returns writes per second.
fn raw_synced_writes(path: &Path, len: usize, dur: Duration) -> Res<f64> {
    const SPAN: usize = 64 * MIB;
    let mut f = open_raw(path, true, false)?;
    let zeros = vec![0u8; MIB];
    for _ in 0..SPAN / MIB {
        f.write_all(&zeros)?;
    }
    f.sync_all()?;
    let buf = random_vec(len);
    let (start, mut off, mut n) = (Instant::now(), 0usize, 0u64);
    while start.elapsed() < dur {
        std::os::unix::fs::FileExt::write_all_at(&f, &buf, off as u64)?;
        f.sync_data()?;
        off = (off + len) % (SPAN - len);
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Sequential read of `total` bytes in 4 MiB blocks, after dropping the file's page cache.
fn raw_read(path: &Path, total: usize, direct: bool) -> Res<Duration> {
    drop_file_cache(path)?;
    let mut buf = random_block(BLOCK);
    let mut f = open_raw(path, false, direct)?;
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        f.read_exact(buf.as_mut_slice())?;
        done += BLOCK;
    }
    let d = start.elapsed();
    std::hint::black_box(buf.as_ref()[0]);
    Ok(d)
}

/// Fsyncs `path` and asks the kernel to drop its (now clean) cached pages.
fn drop_file_cache(path: &Path) -> Res<()> {
    let f = File::open(path)?;
    f.sync_all()?;
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(format!("posix_fadvise {}: {}", path.display(), std::io::Error::from_raw_os_error(rc)).into());
    }
    Ok(())
}

fn drop_dir_cache(dir: &Path) -> Res<()> {
    for ent in fs::read_dir(dir)? {
        let path = ent?.path();
        if path.is_file() {
            drop_file_cache(&path)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Engine

/// Writes `counter` into the first 8 bytes, making the buffer's content unique per put.
fn stamp(buf: &mut [u8], counter: u64) {
    buf[..8].copy_from_slice(&counter.to_le_bytes());
}

fn fresh_engine(dir: &Path) -> Res<Arc<ChunkEngine>> {
    fresh_dir(dir)?;
    Ok(ChunkEngine::open(EngineConfig::new(dir))?)
}

/// Puts `n` unique 4 MiB chunks with `threads` writers on a fresh engine; returns the time and
/// the (counter, hash) of every chunk. Each writer owns one random buffer and stamps a global
/// counter into it before each put, so no data is generated inside the timed loop.
fn engine_puts(dir: &Path, n: usize, threads: usize) -> Res<(Duration, Vec<(u64, ChunkHash)>)> {
    let engine = fresh_engine(dir)?;
    let mut bufs: Vec<Vec<u8>> = (0..threads).map(|_| random_vec(BLOCK)).collect();
    let next = AtomicU64::new(0);
    let start = Instant::now();
    let parts = std::thread::scope(|s| {
        let handles: Vec<_> = bufs
            .iter_mut()
            .map(|buf| {
                let (engine, next) = (&engine, &next);
                s.spawn(move || -> Res<Vec<(u64, ChunkHash)>> {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n as u64 {
                            return Ok(out);
                        }
                        stamp(buf, i);
                        out.push((i, engine.put(buf)?.hash));
                    }
                })
            })
            .collect();
        handles.into_iter().map(join).collect::<Res<Vec<_>>>()
    })?;
    let d = start.elapsed();
    engine.close();
    Ok((d, parts.into_iter().flatten().collect()))
}

/// Gets every chunk with `threads` readers. The engine verifies each chunk's blake3 hash; the
/// bench also checks the length and the stamped counter.
fn engine_gets(engine: &ChunkEngine, chunks: &[(u64, ChunkHash)], threads: usize) -> Res<Duration> {
    let next = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let next = &next;
                s.spawn(move || -> Res<()> {
                    while let Some((i, hash)) = chunks.get(next.fetch_add(1, Ordering::Relaxed) as usize) {
                        let data = engine.get(hash)?;
                        if data.len() != BLOCK || data[..8] != i.to_le_bytes() {
                            return Err(format!("chunk {hash} came back with the wrong content").into());
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(join)
    })?;
    Ok(start.elapsed())
}

/// Durable 4 KiB puts of unique chunks by `threads` writers for `dur`; returns puts per second.
fn small_puts(dir: &Path, threads: usize, dur: Duration) -> Res<f64> {
    let engine = fresh_engine(dir)?;
    let next = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + dur;
    let count: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (engine, next) = (&engine, &next);
                let mut buf = random_vec(SMALL);
                s.spawn(move || -> Res<u64> {
                    let mut done = 0;
                    while Instant::now() < deadline {
                        stamp(&mut buf, next.fetch_add(1, Ordering::Relaxed));
                        engine.put(&buf)?;
                        done += 1;
                    }
                    Ok(done)
                })
            })
            .collect();
        handles.into_iter().map(join).sum::<Res<u64>>()
    })?;
    let secs = start.elapsed().as_secs_f64();
    let st = engine.stats();
    eprintln!(
        "  {threads} writer(s): {} group commits, {:.1} puts per commit, {:.0} us per commit \
         (segment sync {:.0} us, index write {:.0} us)",
        st.commit_batches,
        st.commit_ops as f64 / st.commit_batches.max(1) as f64,
        secs * 1e6 / st.commit_batches.max(1) as f64,
        st.segment_sync_micros as f64 / st.commit_batches.max(1) as f64,
        st.index_write_micros as f64 / st.commit_batches.max(1) as f64,
    );
    engine.close();
    Ok(count as f64 / secs)
}

fn join<T>(h: std::thread::ScopedJoinHandle<'_, Res<T>>) -> Res<T> {
    h.join().map_err(|_| "benchmark thread panicked")?
}

fn random_vec(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

// ---------------------------------------------------------------------------------------------
// Directories

fn fresh_dir(dir: &Path) -> Res<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("remove {}: {e}", dir.display()).into()),
    }
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()).into())
}

/// Removes the working subdirectories, and `root` too when that leaves it empty.
fn cleanup(root: &Path, dirs: &[&Path]) {
    for d in dirs {
        if let Err(e) = fs::remove_dir_all(d)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("chunk-bench: warning: could not remove {}: {e}", d.display());
        }
    }
    let _ = fs::remove_dir(root); // only succeeds when empty
}

// ---------------------------------------------------------------------------------------------
// Report

fn value(rows: &[Row], key: &str) -> f64 {
    rows.iter().find(|r| r.key == key).map_or(f64::NAN, |r| r.value)
}

fn print_report(args: &Args, total: usize, rows: &[Row], pairs: &Pairs) {
    let best_write = value(rows, "raw_write_buffered").max(value(rows, "raw_write_direct"));
    let best_read = value(rows, "raw_read_buffered").max(value(rows, "raw_read_direct"));
    let ingest = median_ratio(&pairs.ingest);
    let group = median_ratio(&pairs.group);

    println!();
    println!("chunk-bench  dir={}  size={} MiB  small={:.1}s", args.dir.display(), total / MIB, args.small_secs);
    println!("{:<40} {:>12} {:<7} {:>22}", "test", "result", "unit", "ratio");
    println!("{}", "-".repeat(84));
    for r in rows {
        let ratio = match r.base {
            Base::None => String::new(),
            Base::RawWrite => format!("{:.2} x best raw write", r.value / best_write),
            Base::RawRead => format!("{:.2} x best raw read", r.value / best_read),
        };
        let val = if r.unit == "GB/s" { format!("{:.3}", r.value) } else { format!("{:.0}", r.value) };
        println!("{:<40} {:>12} {:<7} {:>22}", r.label, val, r.unit, ratio);
    }
    println!("{}", "-".repeat(84));
    println!("{:<40} {:>12.3} GB/s", "best raw write", best_write);
    println!("{:<40} {:>12.3} GB/s", "best raw read", best_read);
    println!();
    println!("back-to-back pairs (the ratios below are their medians):");
    for (i, ((raw, eng), (one, many))) in pairs.ingest.iter().zip(&pairs.group).enumerate() {
        println!(
            "  round {}: raw write {raw:.3} GB/s, ingest x{INGEST_WRITERS} {eng:.3} GB/s = {:.2}; 4 KiB puts x1 {one:.0}/s, x16 {many:.0}/s = {:.1}",
            i + 1,
            eng / raw,
            many / one
        );
        if let Some((r1, r16)) = pairs.raw_group.get(i) {
            println!(
                "           raw disk: 4 KiB write+fdatasync {r1:.0}/s; 64 KiB write+fdatasync = {r16:.0} 4 KiB/s = {:.1} x (a perfect group commit of 16)",
                r16 / r1
            );
        }
    }
    println!();
    let mark = |ok: bool| if ok { "OK" } else { "MISS" };
    println!(
        "ingest 4MiB x{INGEST_WRITERS} / best raw write = {ingest:.2} (target >= {WRITE_TARGET:.2}) {}",
        mark(ingest >= WRITE_TARGET)
    );
    println!(
        "4KiB puts 16 writers / 1 writer = {group:.1} (target >= {GROUP_COMMIT_TARGET:.0}) {}",
        mark(group >= GROUP_COMMIT_TARGET)
    );
    println!(
        "  the disk's own ceiling for that ratio (16 x 4 KiB per fdatasync vs 4 KiB per fdatasync, zero CPU cost): {:.1}",
        median_ratio(&pairs.raw_group)
    );
    if args.json {
        let mut m = serde_json::Map::new();
        for r in rows {
            m.insert(r.key.into(), serde_json::json!(r.value));
        }
        m.insert("best_raw_write_gbps".into(), serde_json::json!(best_write));
        m.insert("best_raw_read_gbps".into(), serde_json::json!(best_read));
        m.insert("ingest_ratio".into(), serde_json::json!(ingest));
        m.insert("group_commit_factor".into(), serde_json::json!(group));
        m.insert("ingest_pairs".into(), serde_json::json!(pairs.ingest));
        m.insert("group_commit_pairs".into(), serde_json::json!(pairs.group));
        m.insert("raw_group_commit_pairs".into(), serde_json::json!(pairs.raw_group));
        m.insert("size_mib".into(), serde_json::json!(total / MIB));
        println!("{}", serde_json::Value::Object(m));
    }
}
