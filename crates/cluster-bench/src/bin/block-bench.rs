//! block-bench: fio on a block volume staged by the real csi-block driver (ext4 on FUSE + loop
//! over the volume engine, chunks in a storage pool of processes on loopback), against the same
//! fio jobs on a plain file on the same disk in the same run: 1 MiB sequential write and read,
//! 4 KiB random write and read at queue depth 32, for R=1 (one storage node) and R=3 (four
//! storage nodes), then the rebuild rate of a lost replica (a storage node of the R=3 pool
//! SIGKILLed, declared out, its copies rebuilt on the others). It also runs the jobs on ext4 on
//! the same front end (FUSE file + loop device) over a volume held in memory: what the front end
//! alone reaches on this machine, the ceiling for any data path behind it.
//!
//! `--overwrite`: a sustained overwrite load instead — fio 4 KiB random writes (qd32) over a laid
//! out file on an R=1 volume for `--duration` seconds (600 by default), the storage node under
//! its default GC settings; every `--sample-secs` it prints the disk bytes the node's data
//! directory takes against the live bytes (the volume's mapped blocks), with the garbage figures
//! the node reports. The goal is a ratio of at most 1.5 at every sample.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use block_frontend::backend::MemBackend;
use block_frontend::fuse_file::FILE_NAME;
use block_frontend::fuse_loop::{loop_attach, loop_detach, mount_file};
use cairn_proto::csi::v1::controller_client::ControllerClient;
use cairn_proto::csi::v1::node_client::NodeClient;
use cairn_proto::csi::v1::volume_capability::access_mode::Mode;
use cairn_proto::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume};
use cairn_proto::csi::v1::*;
use clap::Parser;
use cluster::{ChunkClient, ClientConfig, Timeouts};
use cluster_bench::pool::{Pool, free_addr};
use cluster_bench::{MIB, Res, fresh_dir};
use metadata_client::MetaClient;

/// Short timeouts: a killed node is out two seconds after its last heartbeat.
const TIMEOUTS: Timeouts = Timeouts { down_after: Duration::from_millis(1000), out_after: Duration::from_millis(2000) };

/// How often the rebuild's end is checked; the time measured is late by at most this.
const HEALTH_POLL: Duration = Duration::from_millis(500);

#[derive(Parser, Debug)]
#[command(about = "fio on a csi-block volume vs fio on a plain file, R=1 and R=3, and the rebuild rate")]
struct Args {
    /// Working directory (recreated, removed at the end).
    #[arg(long, default_value = "./data/block-bench")]
    dir: PathBuf,
    /// Size of fio's file, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: usize,
    /// Seconds each fio job runs.
    #[arg(long, default_value_t = 15)]
    secs: u64,
    /// Block size of the volumes (the StorageClass parameter `blockSize`).
    #[arg(long, default_value = "65536")]
    block_size: String,
    /// Only the rebuild: the raw sequential write, the R=3 volume filled by the sequential write
    /// job, a storage node killed, the rebuild rate (for working on the repair path).
    #[arg(long)]
    rebuild_only: bool,
    /// Only the sustained overwrite load: disk bytes against live bytes over time.
    #[arg(long)]
    overwrite: bool,
    /// Seconds the overwrite load runs.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Seconds between samples of the overwrite load.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// An extra storage-node argument for the overwrite load (repeatable), e.g.
    /// `--node-arg=--pool-gc-window-secs=10`: what a shorter writers' window would give (safe
    /// here only because the volume engine commits its references within seconds of its puts).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// Caps the overwrite load's fio at this many writes per second (0: unlimited).
    #[arg(long, default_value_t = 0)]
    rate_iops: u64,
}

/// What a volume run does once the volume is staged.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RunMode {
    /// fio's jobs.
    Jobs,
    /// fio's jobs, then a storage node killed and the rebuild timed.
    Rebuild,
    /// The sustained overwrite load (`--overwrite`).
    Overwrite,
}

/// One fio job: name, fio arguments.
const JOBS: [(&str, &str); 5] = [
    ("seq write 1M qd16", "--rw=write --bs=1M --iodepth=16 --end_fsync=1"),
    ("seq read 1M qd16", "--rw=read --bs=1M --iodepth=16"),
    ("rand write 4K qd32", "--rw=randwrite --bs=4k --iodepth=32 --end_fsync=1"),
    ("rand read 4K qd32", "--rw=randread --bs=4k --iodepth=32"),
    ("sync write 4K qd1", "--rw=randwrite --bs=4k --iodepth=1 --fdatasync=1"),
];
/// The job whose figure is a latency: a 4 KiB write and its fdatasync, one at a time.
const SYNC_JOB: usize = 4;

/// A job's result: bytes per second, operations per second, and the median write latency
/// plus the median fdatasync latency (µs; what one write + fdatasync waits).
#[derive(Debug, Clone, Copy, Default)]
struct Fio {
    bw: f64,
    iops: f64,
    p50_us: f64,
    /// Core-µs the whole machine spent per operation (fio, the kernel and every daemon).
    cpu_us: f64,
}

/// CPU time the machine has spent busy so far, in seconds (from /proc/stat).
fn busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 = cpu.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).take(7).map(|(_, v)| v).sum();
    busy / 100.0
}

fn main() {
    let mut args = Args::parse();
    // Absolute and canonical: it names unix sockets and mount points (found again by path).
    if let Ok(d) = std::fs::create_dir_all(&args.dir).and_then(|_| std::fs::canonicalize(&args.dir)) {
        args.dir = d;
    }
    if let Err(e) = tokio::runtime::Runtime::new().map_err(Into::into).and_then(|rt| rt.block_on(run(&args))) {
        eprintln!("block-bench: {e}");
        std::process::exit(1);
    }
    let _ = std::fs::remove_dir_all(&args.dir);
}

/// Runs fio's jobs on `file` (laid out by the first one).
fn fio_all(file: &Path, args: &Args) -> Res<Vec<Fio>> {
    let jobs = if args.rebuild_only { &JOBS[..1] } else { &JOBS[..] };
    jobs.iter().map(|(name, opts)| fio(file, name, opts, args)).collect()
}

fn fio(file: &Path, name: &str, opts: &str, args: &Args) -> Res<Fio> {
    let (busy0, t0) = (busy_secs(), std::time::Instant::now());
    let out = Command::new("fio")
        .args([
            "--name=bench",
            &format!("--filename={}", file.display()),
            &format!("--size={}M", args.size_mib),
            "--direct=1",
            "--ioengine=libaio",
            "--time_based",
            &format!("--runtime={}", args.secs),
            "--ramp_time=1",
            "--randrepeat=0",
            "--output-format=json",
        ])
        .args(opts.split(' '))
        .output()
        .map_err(|e| format!("cannot run fio (apt install fio): {e}"))?;
    if !out.status.success() {
        return Err(format!("fio {name}: {}", String::from_utf8_lossy(&out.stderr).trim()).into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("fio {name} output: {e}"))?;
    let job = &v["jobs"][0];
    let side = if opts.contains("write") { &job["write"] } else { &job["read"] };
    let cores = (busy_secs() - busy0) / t0.elapsed().as_secs_f64();
    let p50 = |lat: &serde_json::Value| lat["percentile"]["50.000000"].as_f64().unwrap_or(0.0) / 1e3;
    let f = Fio {
        bw: side["bw_bytes"].as_f64().unwrap_or(0.0),
        iops: side["iops"].as_f64().unwrap_or(0.0),
        p50_us: p50(&side["clat_ns"]) + p50(&job["sync"]["lat_ns"]),
        cpu_us: 0.0,
    };
    let f = Fio { cpu_us: if f.iops > 0.0 { cores * 1e6 / f.iops } else { 0.0 }, ..f };
    eprintln!(
        "  {name:<20} {:>8.0} MB/s {:>9.0} IOPS {:>8.0} us p50 (write + fdatasync) {:>6.1} core-us/op",
        f.bw / 1e6,
        f.iops,
        f.p50_us,
        f.cpu_us
    );
    Ok(f)
}

/// Unmounts and detaches what a bench volume left under `dir`, even when the bench fails.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let prefix = self.0.to_string_lossy().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> =
            mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&prefix)).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(p).output();
        }
        if let Ok(out) = Command::new("losetup").arg("-a").output() {
            for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&prefix)) {
                if let Some(dev) = line.split(':').next() {
                    let _ = Command::new("losetup").args(["-d", dev]).output();
                }
            }
        }
    }
}

/// Runs a system tool to completion; its stderr becomes the error.
fn tool(name: &str, args: &[&str]) -> Res<()> {
    let out = Command::new(name).args(args).output().map_err(|e| format!("cannot run {name}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{name} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()).into());
    }
    Ok(())
}

/// The front end alone: the volume file served from memory by this process (on its own runtime,
/// set up as the data path's: the same FUSE options), attached with a loop device in direct-I/O
/// mode, ext4 on it, the same fio jobs. No hashing, no network, no disk behind it.
fn memory_run(args: &Args) -> Res<Vec<Fio>> {
    let dir = args.dir.join("memory");
    let _mounts = MountGuard(dir.clone());
    let rt = tokio::runtime::Runtime::new()?;
    let size = args.size_mib * MIB * 2 + (1 << 30);
    let mem = Arc::new(MemBackend::new(size));
    let fuse_dir = dir.join("fuse");
    let mount = rt.block_on(mount_file(mem, &fuse_dir))?;
    let file = fuse_dir.join(FILE_NAME);
    let device = rt.block_on(loop_attach(&file))?;
    let dev = device.to_string_lossy().to_string();
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging)?;
    let st = staging.to_string_lossy().to_string();
    eprintln!("front end alone: ext4 on {dev} over a FUSE file held in memory:");
    let figures = tool("mkfs.ext4", &["-q", "-F", &dev])
        .and_then(|_| tool("mount", &[&dev, &st]))
        .and_then(|_| fio_all(&staging.join("fio.dat"), args));
    let _ = tool("umount", &[&st]);
    rt.block_on(loop_detach(&file, Some(&device)))?;
    rt.block_on(mount.unmount())?;
    figures
}

fn mount_cap() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Mount(MountVolume { fs_type: "ext4".into(), ..Default::default() })),
    }
}

/// A pool of `nodes` storage nodes keeping `r` copies, csi-block on it, one ext4 volume staged:
/// fio's figures on it (and, with `rebuild`, the rebuild rate afterwards).
async fn volume_run(args: &Args, r: usize, nodes: usize, mode: RunMode) -> Res<(Vec<Fio>, Option<(u64, Duration)>)> {
    let rebuild = mode == RunMode::Rebuild;
    let dir = args.dir.join(format!("pool-r{r}"));
    let extra: Vec<&str> =
        if mode == RunMode::Overwrite { args.node_args.iter().map(String::as_str).collect() } else { vec![] };
    let mut pool = Pool::start_with(&dir, nodes, r, &TIMEOUTS, &extra).await?;
    let _mounts = MountGuard(dir.clone());
    let socket = dir.join("csi.sock");
    let state = dir.join("csi-state");
    let http = free_addr();
    let meta_api = pool.meta_api.clone();
    #[rustfmt::skip]
    let csi_args = ["--endpoint", &format!("unix://{}", socket.display()), "--meta", &meta_api,
        "--node-id", "bench", "--state-dir", &state.to_string_lossy(), "--default-replicas", &r.to_string(),
        "--http-listen", &http, "--log", "warn"];
    pool.spawn("csi-block", "csi-block", &csi_args)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let channel = loop {
        pool.check()?;
        if socket.exists()
            && let Ok(c) = csi_kit::connect_unix(&socket).await
        {
            break c;
        }
        if Instant::now() > deadline {
            return Err("csi-block did not serve within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (mut c, mut n) = (ControllerClient::new(channel.clone()), NodeClient::new(channel));
    let size = (args.size_mib * MIB) as i64 * 2 + (1 << 30);
    let params: std::collections::HashMap<String, String> =
        [("replicas".into(), r.to_string()), ("blockSize".into(), args.block_size.clone())].into();
    let create = CreateVolumeRequest {
        name: format!("bench-r{r}"),
        capacity_range: Some(CapacityRange { required_bytes: size, limit_bytes: 0 }),
        volume_capabilities: vec![mount_cap()],
        parameters: params,
        ..Default::default()
    };
    // The storage nodes join the node map within a heartbeat or two.
    let vol = loop {
        match c.create_volume(create.clone()).await {
            Ok(v) => break v.into_inner().volume.ok_or("no volume")?.volume_id,
            Err(e) if Instant::now() < deadline => {
                if e.code() != tonic::Code::ResourceExhausted && e.code() != tonic::Code::Unavailable {
                    return Err(format!("CreateVolume: {e}").into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("CreateVolume: {e}").into()),
        }
    };
    let ctx = c
        .controller_publish_volume(ControllerPublishVolumeRequest {
            volume_id: vol.clone(),
            node_id: "bench".into(),
            volume_capability: Some(mount_cap()),
            ..Default::default()
        })
        .await?
        .into_inner()
        .publish_context;
    let staging = dir.join("staging");
    n.node_stage_volume(NodeStageVolumeRequest {
        volume_id: vol.clone(),
        publish_context: ctx,
        staging_target_path: staging.to_string_lossy().into(),
        volume_capability: Some(mount_cap()),
        ..Default::default()
    })
    .await?;
    eprintln!("R={r}: volume {vol} ({} blocks) staged, ext4, {nodes} storage node(s):", args.block_size);
    let figures = if mode == RunMode::Overwrite {
        overwrite_load(args, &pool, &dir, &vol, &staging.join("fio.dat"), r).await?
    } else {
        fio_all(&staging.join("fio.dat"), args)?
    };
    let mut rebuilt = None;
    if rebuild {
        // Everything flushed; a storage node dies; time its copies' rebuild once it is out.
        let _ = std::fs::File::open(staging.join("fio.dat")).and_then(|f| f.sync_all());
        let meta = MetaClient::new(&[pool.meta_api.as_str()])?;
        let chunks = ChunkClient::new(meta.clone(), ClientConfig::default()).await?;
        let before = volume_engine::replica_health(&meta, &chunks, &vol).await?;
        pool.kill_node(0);
        let killed = Instant::now();
        let mut started = None;
        let lost = loop {
            let h = volume_engine::replica_health(&meta, &chunks, &vol).await?;
            if h.degraded() && started.is_none() && killed.elapsed() >= TIMEOUTS.out_after {
                started = Some((Instant::now(), h.missing_copies));
            }
            if let Some((t, missing)) = started
                && !h.degraded()
            {
                break Some((missing, t.elapsed()));
            }
            if killed.elapsed() > Duration::from_secs(900) {
                return Err(format!("rebuild not done after 900 s: {h:?}").into());
            }
            if started.is_none() && killed.elapsed() > TIMEOUTS.out_after + Duration::from_secs(5) && !h.degraded() {
                break None; // the node held nothing of this volume
            }
            // Each check asks every storage node about every chunk of the volume: checked more
            // often, it would take CPU from the rebuild it measures (every 50 ms they took a sixth of it).
            tokio::time::sleep(HEALTH_POLL).await;
        };
        if let Some((missing, took)) = lost {
            let bs: u64 = args.block_size.parse()?;
            rebuilt = Some((missing * bs, took));
            eprintln!(
                "  rebuild: {missing} of {} chunk copies lost, rebuilt in {took:.2?} after the node was out",
                before.chunks * r as u64
            );
        }
    }
    n.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: vol.clone(),
        staging_target_path: staging.to_string_lossy().into(),
    })
    .await?;
    Ok((figures, rebuilt))
}

async fn run(args: &Args) -> Res<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (FUSE, loop devices, mounts)".into());
    }
    fresh_dir(&args.dir)?;
    if args.overwrite {
        volume_run(args, 1, 1, RunMode::Overwrite).await?;
        return Ok(());
    }
    eprintln!("raw: a plain file on the same disk ({}):", args.dir.display());
    let raw_dir = args.dir.join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    let raw = fio_all(&raw_dir.join("fio.dat"), args)?;
    std::fs::remove_dir_all(&raw_dir)?;
    if args.rebuild_only {
        let (_, rebuilt) = volume_run(args, 3, 4, RunMode::Rebuild).await?;
        return report_rebuild(rebuilt, &raw[0]);
    }
    // On a thread of its own: the FUSE server runs on a runtime that thread owns.
    let mem = std::thread::scope(|s| s.spawn(|| memory_run(args)).join()).map_err(|_| "the memory run panicked")??;
    let (r1, _) = volume_run(args, 1, 1, RunMode::Jobs).await?;
    let (r3, rebuilt) = volume_run(args, 3, 4, RunMode::Rebuild).await?;

    let mut rows: BTreeMap<usize, String> = BTreeMap::new();
    for (i, (name, _)) in JOBS.iter().enumerate() {
        let random = name.starts_with("rand");
        let val = |f: &Fio| if i == SYNC_JOB { f.p50_us } else if random { f.iops } else { f.bw / 1e6 };
        let unit = if i == SYNC_JOB { "us p50" } else if random { "IOPS" } else { "MB/s" };
        rows.insert(
            i,
            format!(
                "{name:<20} raw {:>8.0} {unit} | front end alone {:>8.0} ({:.2}x) | R=1 {:>8.0} ({:.2}x) | R=3 {:>8.0} ({:.2}x raw, {:.2}x raw/3)",
                val(&raw[i]),
                val(&mem[i]),
                val(&mem[i]) / val(&raw[i]),
                val(&r1[i]),
                val(&r1[i]) / val(&raw[i]),
                val(&r3[i]),
                val(&r3[i]) / val(&raw[i]),
                val(&r3[i]) / (val(&raw[i]) / 3.0)
            ),
        );
    }
    println!(
        "\nblock-bench: fio {} MiB file, {} s per job, volume block size {}",
        args.size_mib, args.secs, args.block_size
    );
    for row in rows.values() {
        println!("{row}");
    }
    let ratio = |v: &[Fio], i: usize, iops: bool| if iops { v[i].iops / raw[i].iops } else { v[i].bw / raw[i].bw };
    // Each goal, and what the front end alone reaches on the same measure.
    let goal = |name: &str, got: f64, want: f64, alone: f64| {
        let verdict = if got >= want { "met" } else { "MISSED" };
        println!("goal {name:<44} {got:>5.2} (>= {want:.2}) {verdict:<6} front end alone {alone:.2}");
    };
    println!(
        "CPU per 4K op (core-us, whole machine): rand write raw {:.1} / R=1 {:.1} / R=3 {:.1}; rand read raw {:.1} / R=1 {:.1} / R=3 {:.1}",
        raw[2].cpu_us, r1[2].cpu_us, r3[2].cpu_us, raw[3].cpu_us, r1[3].cpu_us, r3[3].cpu_us
    );
    // Issue 28's goals.
    goal("R=1 rand read IOPS / raw", ratio(&r1, 3, true), 0.3, ratio(&mem, 3, true));
    goal("R=1 rand write IOPS / raw", ratio(&r1, 2, true), 0.2, ratio(&mem, 2, true));
    goal("R=1 seq write / raw", ratio(&r1, 0, false), 0.3, ratio(&mem, 0, false));
    goal("R=1 seq read / raw", ratio(&r1, 1, false), 0.5, ratio(&mem, 1, false));
    goal("R=3 rand write IOPS / R=1's", r3[2].iops / r1[2].iops, 0.5, 1.0);
    let lat = |v: &[Fio]| v[SYNC_JOB].p50_us / raw[SYNC_JOB].p50_us;
    let verdict = if lat(&r1) <= 3.0 { "met" } else { "MISSED" };
    println!(
        "goal {:<44} {:>5.2} (<= 3.00) {verdict:<6} front end alone {:.2}; R=3 {:.2}",
        "R=1 4K write + fdatasync p50 / raw's",
        lat(&r1),
        lat(&mem),
        lat(&r3)
    );
    report_rebuild(rebuilt, &raw[0])
}

/// Prints the rebuild rate and its ratio to the raw sequential write.
fn report_rebuild(rebuilt: Option<(u64, Duration)>, raw_write: &Fio) -> Res<()> {
    match rebuilt {
        Some((bytes, took)) => {
            let rate = bytes as f64 / took.as_secs_f64();
            println!("rebuild: {:.0} MiB in {took:.2?} = {:.0} MB/s", bytes as f64 / MIB as f64, rate / 1e6);
            println!(
                "goal {:<44} {:>5.2} (>= 0.50) {}",
                "rebuild rate / raw seq write",
                rate / raw_write.bw,
                if rate / raw_write.bw >= 0.5 { "met" } else { "MISSED" }
            );
        }
        None => println!("rebuild: the killed node held none of the volume's chunks"),
    }
    Ok(())
}

/// Bytes the files under `dir` take on disk (allocated blocks, sparse holes excluded).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Blocks volume `vol`'s map names (each one chunk of live data).
async fn mapped_blocks(meta: &MetaClient, vol: &str) -> Res<u64> {
    let prefix = volume_engine::keys::map_prefix(vol);
    let end = volume_engine::keys::prefix_end(&prefix);
    let (mut from, mut n) = (prefix, 0u64);
    loop {
        let page = meta.range(&from, &end, 10_000).await?;
        n += page.kvs.len() as u64;
        match page.next_key {
            Some(k) => from = k,
            None => return Ok(n),
        }
    }
}

/// The sustained overwrite load: lays out `file`, runs 4 KiB random writes on it for
/// `--duration` seconds and samples disk against live bytes every `--sample-secs`.
async fn overwrite_load(args: &Args, pool: &Pool, dir: &Path, vol: &str, file: &Path, r: usize) -> Res<Vec<Fio>> {
    let layout = fio(
        file,
        "layout 1M",
        "--rw=write --bs=1M --iodepth=16 --end_fsync=1 --time_based=0 --runtime=86400 --ramp_time=0",
        args,
    )?;
    eprintln!("  laid out {} MiB at {:.0} MB/s", args.size_mib, layout.bw / 1e6);
    let meta = MetaClient::new(&[pool.meta_api.as_str()])?;
    let block: u64 = args.block_size.parse()?;
    let mut child = Command::new("fio")
        .args(["--name=overwrite", "--ioengine=libaio", "--direct=1", "--rw=randwrite", "--bs=4k", "--iodepth=32"])
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--size={}M", args.size_mib))
        .args(["--time_based=1", &format!("--runtime={}", args.duration), "--output-format=json"])
        .args((args.rate_iops > 0).then(|| format!("--rate_iops={}", args.rate_iops)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run fio (apt install fio): {e}"))?;
    let started = Instant::now();
    println!(
        "{:>6} {:>10} {:>10} {:>6} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12}",
        "t(s)", "disk MB", "live MB", "ratio", "segs MB", "dead MB", "held MB", "released MB", "poolgc MB", "seggc MB"
    );
    let mut worst: f64 = 0.0;
    let mut samples = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(args.sample_secs)).await;
        let done = child.try_wait()?.is_some();
        let disk: u64 = pool.nodes.iter().map(|n| disk_bytes(&dir.join(&n.id))).sum();
        let live = mapped_blocks(&meta, vol).await? * block * r as u64;
        let mut m: BTreeMap<&str, f64> = BTreeMap::new();
        for n in &pool.nodes {
            for (k, v) in cluster_bench::pool::scrape(n.http).await? {
                for name in [
                    "cairn_node_used_bytes",
                    "cairn_node_dead_bytes",
                    "cairn_node_pool_gc_held_bytes",
                    "cairn_node_pool_gc_deleted_bytes_total",
                    "cairn_node_gc_reclaimed_bytes_total",
                    "cairn_node_released_bytes_total",
                ] {
                    if k == name {
                        *m.entry(name).or_default() += v;
                    }
                }
            }
        }
        let ratio = if live > 0 { disk as f64 / live as f64 } else { 0.0 };
        worst = worst.max(ratio);
        samples += 1;
        let mb = |name: &str| m.get(name).copied().unwrap_or(0.0) / 1e6;
        println!(
            "{:>6.0} {:>10.0} {:>10.0} {:>6.2} {:>10.0} {:>10.0} {:>10.0} {:>12.0} {:>12.0} {:>12.0}",
            started.elapsed().as_secs_f64(),
            disk as f64 / 1e6,
            live as f64 / 1e6,
            ratio,
            mb("cairn_node_used_bytes"),
            mb("cairn_node_dead_bytes"),
            mb("cairn_node_pool_gc_held_bytes"),
            mb("cairn_node_released_bytes_total"),
            mb("cairn_node_pool_gc_deleted_bytes_total"),
            mb("cairn_node_gc_reclaimed_bytes_total"),
        );
        if done {
            break;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("fio overwrite: {}", String::from_utf8_lossy(&out.stderr).trim()).into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("fio output: {e}"))?;
    let w = &v["jobs"][0]["write"];
    let iops = w["iops"].as_f64().unwrap_or(0.0);
    println!(
        "overwrite: {} s of 4 KiB random writes at {iops:.0} IOPS over {} MiB, {samples} samples: worst disk/live {worst:.2} (goal <= 1.50: {})",
        args.duration,
        args.size_mib,
        if worst <= 1.5 { "met" } else { "NOT met" }
    );
    Ok(vec![Fio { bw: w["bw_bytes"].as_f64().unwrap_or(0.0), iops, ..Fio::default() }])
}
