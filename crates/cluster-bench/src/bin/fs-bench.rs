//! fs-bench: the shared filesystem (fs-client mounted with FUSE over a storage pool of processes
//! on loopback, R=1) against ext4 on the same disk in the same run: 1 GiB sequential write and
//! read through the mount (median of three runs), 4 KiB random write and read (fio), and
//! creates, stats and unlinks per second on many files with the page cache dropped between
//! phases. The same jobs also run
//! on a file system held in memory behind the same FUSE set-up ("FUSE alone"): the ceiling for
//! any file system served this way on this machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use cluster::{ChunkClient, ClientConfig, Timeouts};
use cluster_bench::pool::Pool;
use cluster_bench::{Res, fresh_dir};
use metadata_client::MetaClient;

#[derive(Parser, Debug)]
#[command(about = "the shared filesystem vs ext4 on the same disk: fio and metadata operations")]
struct Args {
    /// Working directory (recreated, removed at the end).
    #[arg(long, default_value = "./data/fs-bench")]
    dir: PathBuf,
    /// Size of the sequential file, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: usize,
    /// Seconds each random fio job runs.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Files created, stat'ed and unlinked.
    #[arg(long, default_value_t = 20_000)]
    files: usize,
    /// Threads doing the metadata operations (each in its own directory).
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Runs of the sequential write and read per target; the median is reported.
    #[arg(long, default_value_t = 3)]
    seq_runs: usize,
    /// Only the sequential write and read, on ext4 and the filesystem (for working on the data
    /// path); the other figures print as 0.
    #[arg(long)]
    seq_only: bool,
    /// Only the creates, stats and unlinks, on ext4 and the filesystem (for working on the
    /// namespace); the other figures print as 0.
    #[arg(long, conflicts_with = "seq_only")]
    meta_only: bool,
}

/// The figures of one target.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    seq_write: f64,
    seq_read: f64,
    rand_write: f64,
    rand_read: f64,
    creates: f64,
    stats: f64,
    unlinks: f64,
}

fn main() {
    let mut args = Args::parse();
    // The client runs in this process: with the mount daemon's allocator (jemalloc, linked with
    // daemon-kit) and settings.
    daemon_kit::tune_allocator();
    if let Ok(d) = std::fs::create_dir_all(&args.dir).and_then(|_| std::fs::canonicalize(&args.dir)) {
        args.dir = d;
    }
    // One worker per core, as the mount daemon runs (daemon_kit::run_daemon).
    let out = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|rt| rt.block_on(run(&args)));
    if let Err(e) = out {
        eprintln!("fs-bench: {e}");
        std::process::exit(1);
    }
    let _ = std::fs::remove_dir_all(&args.dir);
}

fn drop_caches() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn fio(dir: &Path, name: &str, opts: &str, size_mib: usize, secs: Option<u64>) -> Res<(f64, f64)> {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=bench",
        &format!("--filename={}", dir.join("fio-file").display()),
        &format!("--size={size_mib}M"),
        "--ioengine=psync",
        "--randrepeat=0",
        "--output-format=json",
    ]);
    if let Some(s) = secs {
        cmd.args(["--time_based", &format!("--runtime={s}")]);
    }
    let out = cmd.args(opts.split(' ')).output().map_err(|e| format!("cannot run fio (apt install fio): {e}"))?;
    if !out.status.success() {
        return Err(format!("fio {name}: {}", String::from_utf8_lossy(&out.stderr).trim()).into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("fio {name} output: {e}"))?;
    let (mut bw, mut iops) = (0.0, 0.0);
    for job in v["jobs"].as_array().into_iter().flatten() {
        let side = if opts.contains("write") { &job["write"] } else { &job["read"] };
        bw += side["bw_bytes"].as_f64().unwrap_or(0.0);
        iops += side["iops"].as_f64().unwrap_or(0.0);
    }
    eprintln!("  {name:<24} {:>8.0} MB/s {:>9.0} IOPS", bw / 1e6, iops);
    Ok((bw, iops))
}

/// Creates, stats and unlinks `files` files with `threads` threads, each in its own directory;
/// operations per second of each phase.
fn metadata_ops(dir: &Path, files: usize, threads: usize) -> Res<(f64, f64, f64)> {
    let per = files / threads;
    for t in 0..threads {
        std::fs::create_dir_all(dir.join(format!("t{t}")))?;
    }
    let phase = |name: &str, op: fn(&Path) -> std::io::Result<()>| -> Res<f64> {
        drop_caches();
        let start = Instant::now();
        std::thread::scope(|s| -> Res<()> {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || -> std::io::Result<()> {
                        for i in 0..per {
                            op(&dir.join(format!("t{t}/f{i}")))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| "a worker panicked")??;
            }
            Ok(())
        })?;
        let rate = (per * threads) as f64 / start.elapsed().as_secs_f64();
        eprintln!("  {name:<24} {rate:>9.0} /s");
        Ok(rate)
    };
    let c = phase("create", |p| std::fs::File::create(p).map(|_| ()))?;
    let st = phase("stat", |p| std::fs::metadata(p).map(|_| ()))?;
    let u = phase("unlink", |p| std::fs::remove_file(p))?;
    Ok((c, st, u))
}

fn measure(dir: &Path, args: &Args) -> Res<Figures> {
    if args.meta_only {
        let (creates, stats, unlinks) = metadata_ops(&dir.join("meta"), args.files, args.threads)?;
        return Ok(Figures { creates, stats, unlinks, ..Default::default() });
    }
    // Sequential figures swing between runs on this virtual disk (ext4's write from ~400 to
    // ~2,700 MB/s minutes apart): each target's are the median of `seq_runs` fresh runs.
    let (mut writes, mut reads) = (Vec::new(), Vec::new());
    for _ in 0..args.seq_runs.max(1) {
        let _ = std::fs::remove_file(dir.join("fio-file"));
        writes.push(fio(dir, "seq write 1M", "--rw=write --bs=1M --end_fsync=1", args.size_mib, None)?.0);
        drop_caches();
        reads.push(fio(dir, "seq read 1M", "--rw=read --bs=1M", args.size_mib, None)?.0);
    }
    let (seq_write, seq_read) = (median(writes), median(reads));
    if args.seq_only {
        let _ = std::fs::remove_file(dir.join("fio-file"));
        return Ok(Figures { seq_write, seq_read, ..Default::default() });
    }
    let small = args.size_mib.min(256);
    let rand_write =
        fio(dir, "rand write 4K x4", "--rw=randwrite --bs=4k --numjobs=4 --fsync=32", small, Some(args.secs))?.1;
    drop_caches();
    let rand_read = fio(dir, "rand read 4K x4", "--rw=randread --bs=4k --numjobs=4", small, Some(args.secs))?.1;
    let _ = std::fs::remove_file(dir.join("fio-file"));
    let (creates, stats, unlinks) = metadata_ops(&dir.join("meta"), args.files, args.threads)?;
    let f = Figures { seq_write, seq_read, rand_write, rand_read, creates, stats, unlinks };
    Ok(f)
}

/// The middle value (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The jobs on `memfs`, a file system held in memory by this process, served as the client serves.
async fn fuse_alone(args: &Args) -> Res<Figures> {
    let mem_at = args.dir.join("memfs");
    let _mem_guard = MountGuard(mem_at.clone());
    let mem_mount = cluster_bench::memfs::mount(&mem_at).await?;
    eprintln!("FUSE alone (a file system in memory, served as the client serves):");
    let alone = tokio::task::block_in_place(|| measure(&mem_at, args))?;
    mem_mount.unmount().await?;
    Ok(alone)
}

/// Unmounts what the bench left under `dir`, even when it fails.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

async fn run(args: &Args) -> Res<()> {
    fresh_dir(&args.dir)?;
    let ext4 = args.dir.join("ext4");
    std::fs::create_dir_all(&ext4)?;
    eprintln!("ext4 on the same disk ({}):", ext4.display());
    let base = tokio::task::block_in_place(|| measure(&ext4, args))?;
    std::fs::remove_dir_all(&ext4)?;

    let t = Timeouts { down_after: Duration::from_secs(10), out_after: Duration::from_secs(600) };
    let pool = Pool::start(&args.dir.join("pool"), 1, 1, &t).await?;
    let meta = MetaClient::new(&[&pool.meta_api])?;
    let chunks =
        ChunkClient::new(meta.clone(), ClientConfig { replicas: 1, min_replicas: 1, ..Default::default() }).await?;
    chunks.wait_for_up(1, Duration::from_secs(60)).await?;
    fs_meta::filesystem::create(&meta, "fs-bench", 1 << 40).await?;
    let at = args.dir.join("mnt");
    let _guard = MountGuard(at.clone());
    let opts = fs_client::ClientOptions {
        // As csi-fs mounts by default.
        read_cache_bytes: 64 << 20,
        fs_id: "fs-bench".into(),
        client_id: "bench".into(),
        node: "bench".into(),
        read_only: false,
        io_timeout: std::time::Duration::ZERO,
    };
    // FUSE alone: the same jobs on a file system held in memory by this process.
    let alone = if args.seq_only { Figures::default() } else { fuse_alone(args).await? };

    let mounted = fs_client::mount(meta, chunks, opts, &at).await?;
    eprintln!("the shared filesystem (FUSE, R=1, one storage node):");
    let fs = tokio::task::block_in_place(|| measure(&at, args))?;
    mounted.unmount().await?;
    drop(pool);

    println!("\nfs-bench: shared filesystem vs ext4 on the same disk, same run");
    println!("{:<24} {:>12} {:>12} {:>7} {:>12} {:>7}", "figure", "ext4", "FUSE alone", "ratio", "cairnfs", "ratio");
    let rows = [
        ("seq write 1 MiB (MB/s)", base.seq_write / 1e6, alone.seq_write / 1e6, fs.seq_write / 1e6, "goal ≥ 0.7"),
        ("seq read 1 MiB (MB/s)", base.seq_read / 1e6, alone.seq_read / 1e6, fs.seq_read / 1e6, "goal ≥ 0.7"),
        ("rand write 4 KiB (IOPS)", base.rand_write, alone.rand_write, fs.rand_write, ""),
        ("rand read 4 KiB (IOPS)", base.rand_read, alone.rand_read, fs.rand_read, ""),
        ("creates (/s)", base.creates, alone.creates, fs.creates, "goal ≥ 10,000/s"),
        ("stats (/s)", base.stats, alone.stats, fs.stats, ""),
        ("unlinks (/s)", base.unlinks, alone.unlinks, fs.unlinks, ""),
    ];
    for (name, b, a, f, goal) in rows {
        let (ra, rf) = (a / b.max(1e-9), f / b.max(1e-9));
        println!("{name:<24} {b:>12.0} {a:>12.0} {ra:>7.2} {f:>12.0} {rf:>7.2}  {goal}");
    }
    Ok(())
}
