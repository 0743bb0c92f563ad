//! cluster-bench: a real storage pool (one metadata node and five storage nodes as processes on
//! loopback, all on this one disk) against the raw disk under it — replicated 4 MiB put
//! throughput with R=1 and R=3 against the limit raw / R, and the repair rate after a storage node
//! is SIGKILLed and declared out against the raw write (and against the disk reading and writing
//! at once, which is what a repair on one disk can reach). Each put phase also reports the CPU it
//! used. On the R=1 pool it also times small gets (64 KiB and 4 KiB chunks, 32 in flight): the
//! rate and CPU of the one storage-node round trip every uncached block read needs.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use cluster::{ChunkClient, ClientConfig, PutReport, Timeouts};
use metadata_client::MetaClient;
use rand::RngCore;

use cluster_bench::cpu::{CpuSample, CpuUse};
use cluster_bench::pool::{self, Pool};
use cluster_bench::{BLOCK, MIB, Res, fresh_dir, raw};

/// Storage nodes in each pool.
const NODES: usize = 5;
/// Puts in flight during the write test.
const PUTS_IN_FLIGHT: usize = 16;
/// Short timeouts, so that a killed node is out two seconds after its last heartbeat.
const TIMEOUTS: Timeouts = Timeouts { down_after: Duration::from_millis(1000), out_after: Duration::from_millis(2000) };
/// How often the repair test reads the survivors' metrics (the repair's start is known to
/// within one poll; the rate errs low by up to that much).
const POLL: Duration = Duration::from_millis(20);
/// Longest wait for the repair to finish.
const REPAIR_LIMIT: Duration = Duration::from_secs(600);
/// Gets in flight, and seconds, of each small-get phase.
const GETS_IN_FLIGHT: usize = 32;
const GET_SECS: u64 = 4;
/// Distinct chunks each small-get phase reads at random.
const GET_CHUNKS: usize = 2048;
const WRITE_TARGET: f64 = 0.80;
const REPAIR_TARGET: f64 = 0.50;

#[derive(Parser, Debug)]
#[command(about = "Replicated pool put throughput and repair rate vs the raw disk")]
struct Args {
    /// Working directory (its `raw/` and `pool-r*/` subdirectories are recreated and removed).
    #[arg(long, default_value = "./data/cluster-bench")]
    dir: PathBuf,
    /// Bytes of the raw write and of each pool write, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: usize,
    /// Also print a one-line JSON summary.
    #[arg(long)]
    json: bool,
}

fn main() {
    let args = Args::parse();
    daemon_kit::tune_allocator(); // as in every daemon (frontends included)
    let result = run(&args);
    let _ = fs::remove_dir(&args.dir); // only succeeds when empty
    if let Err(e) = result {
        eprintln!("cluster-bench: {e}");
        std::process::exit(1);
    }
}

/// What was measured.
struct Figures {
    /// Raw O_DIRECT write measured right before the R=1 write, the R=3 write and the repair:
    /// each ratio is against the baseline taken just before it (this disk drifts).
    raw: [f64; 3],
    put_r1: f64,
    put_r3: f64,
    /// Machine CPU use during the R=1 and the R=3 write.
    cpu: [CpuUse; 2],
    /// The disk reading and writing at once (GB/s each way), measured right after the repair.
    raw_copy: f64,
    repair: Repair,
    /// Small gets on the R=1 pool: (chunk size, gets/s, machine CPU meanwhile).
    gets: Vec<(usize, f64, CpuUse)>,
}

/// The repair after one node of the R=3 pool went out.
struct Repair {
    /// Bytes the survivors copied.
    bytes: u64,
    /// From the last poll before the first copy until the pool was quiet again.
    time: Duration,
    /// From the SIGKILL until the first copy was seen (detection: heartbeats stop, the node is
    /// down, then out).
    first_copy: Duration,
    /// Machine CPU use while copying.
    cpu: CpuUse,
}

impl Repair {
    fn gbps(&self) -> f64 {
        self.bytes as f64 / self.time.as_secs_f64() / 1e9
    }
}

fn run(args: &Args) -> Res<()> {
    if args.size_mib < 4 {
        return Err("--size-mib must be at least 4".into());
    }
    let total = (args.size_mib * MIB).next_multiple_of(BLOCK);
    // Pools are started inside `block_on`, on the main thread (see `Pool::spawn`).
    let figures = tokio::runtime::Runtime::new()?.block_on(pools(args, total))?;
    print_report(args, total, &figures);
    Ok(())
}

/// Sequential O_DIRECT write of `total` bytes under `dir`, in GB/s.
fn raw_write(dir: &Path, total: usize) -> Res<f64> {
    eprintln!("raw disk: {} MiB sequential O_DIRECT writes in 4 MiB blocks ...", total / MIB);
    let raw_dir = dir.join("raw");
    fresh_dir(&raw_dir)?;
    let d = raw::direct_write(&raw_dir.join("raw.dat"), total);
    let _ = fs::remove_dir_all(&raw_dir);
    Ok(gbps(total as u64, d?))
}

/// The disk copying `total` bytes to itself (see [`raw::direct_copy`]), in GB/s each way.
fn raw_copy(dir: &Path, total: usize) -> Res<f64> {
    eprintln!(
        "raw disk: {} MiB O_DIRECT read and write at once, {} streams each way ...",
        total / MIB,
        raw::COPY_STREAMS
    );
    let raw_dir = dir.join("raw");
    fresh_dir(&raw_dir)?;
    let copied = raw::direct_copy(&raw_dir, total);
    let _ = fs::remove_dir_all(&raw_dir);
    let (d, bytes) = copied?;
    Ok(gbps(bytes as u64, d))
}

/// The R=1 write, then the R=3 write and the repair, each on a fresh pool and each right after
/// a raw-disk baseline.
async fn pools(args: &Args, total: usize) -> Res<Figures> {
    let chunks = unique_chunks(total / BLOCK, BLOCK);
    let raw1 = raw_write(&args.dir, total)?;
    let (pool, client) = start_pool(&args.dir.join("pool-r1"), 1, total).await?;
    let (d, _, cpu1) = write(&client, &chunks).await?;
    let put_r1 = gbps(total as u64, d);
    let mut gets = Vec::new();
    for size in [64 << 10, 4 << 10] {
        let (rate, cpu) = small_gets(&client, size).await?;
        gets.push((size, rate, cpu));
    }
    drop((client, pool));
    let raw3 = raw_write(&args.dir, total)?;
    let (mut pool, client) = start_pool(&args.dir.join("pool-r3"), 3, total).await?;
    let (d, reports, cpu3) = write(&client, &chunks).await?;
    drop(chunks);
    let put_r3 = gbps(total as u64, d);
    let raw_repair = raw_write(&args.dir, total)?;
    let repair = measure_repair(&mut pool, &reports).await?;
    drop(client);
    drop(pool);
    let raw_copy = raw_copy(&args.dir, total)?;
    Ok(Figures { raw: [raw1, raw3, raw_repair], put_r1, put_r3, cpu: [cpu1, cpu3], raw_copy, repair, gets })
}

/// Puts `GET_CHUNKS` distinct chunks of `size` bytes, then gets them at random, `GETS_IN_FLIGHT`
/// at a time, for `GET_SECS`: gets per second and the machine's CPU use meanwhile.
async fn small_gets(client: &ChunkClient, size: usize) -> Res<(f64, CpuUse)> {
    eprintln!("pool R=1: gets of {} KiB chunks, {GETS_IN_FLIGHT} in flight, {GET_SECS} s ...", size >> 10);
    let mut hashes = Vec::with_capacity(GET_CHUNKS);
    for chunk in unique_chunks(GET_CHUNKS, size) {
        hashes.push(client.put(chunk).await?.hash);
    }
    let hashes = Arc::new(hashes);
    let done = Arc::new(AtomicUsize::new(0));
    let cpu_before = CpuSample::now();
    let start = Instant::now();
    let until = start + Duration::from_secs(GET_SECS);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..GETS_IN_FLIGHT {
        let (client, hashes, done) = (client.clone(), hashes.clone(), done.clone());
        tasks.spawn(async move {
            let mut i = t.wrapping_mul(7919);
            while Instant::now() < until {
                i = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let data = client.get(&hashes[(i >> 17) % hashes.len()]).await?;
                if data.len() != size {
                    return Err(cluster::ClusterError::Unavailable(format!("got {} bytes", data.len())));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let d = start.elapsed();
    let cpu = CpuSample::between(cpu_before.as_ref(), CpuSample::now().as_ref());
    Ok((done.load(Ordering::Relaxed) as f64 / d.as_secs_f64(), cpu))
}

/// `n` distinct chunks of `size` bytes, made before any timing (a frontend has its data in
/// memory): one random buffer with a counter stamped into the first 8 bytes of each copy.
fn unique_chunks(n: usize, size: usize) -> Vec<Bytes> {
    let mut base = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut base);
    (0..n)
        .map(|i| {
            let mut chunk = BytesMut::from(&base[..]);
            chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
            chunk.freeze()
        })
        .collect()
}

/// A fresh pool keeping `r` copies and a client of it, once every storage node is up.
async fn start_pool(dir: &Path, r: usize, total: usize) -> Res<(Pool, ChunkClient)> {
    eprintln!("pool R={r}: {NODES} storage nodes, {} MiB in 4 MiB puts, {PUTS_IN_FLIGHT} in flight ...", total / MIB);
    let mut pool = Pool::start(dir, NODES, r, &TIMEOUTS).await?;
    let cfg = ClientConfig {
        replicas: r,
        min_replicas: r,
        timeouts: TIMEOUTS,
        rpc_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    };
    let client = ChunkClient::new(MetaClient::new(&[&pool.meta_api])?, cfg).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = client.wait_for_up(NODES, Duration::from_secs(1)).await {
        pool.check()?;
        if Instant::now() > deadline {
            return Err(e.into());
        }
    }
    Ok((pool, client))
}

/// Puts `chunks`, `PUTS_IN_FLIGHT` at a time; also returns the machine's CPU use meanwhile.
async fn write(client: &ChunkClient, chunks: &[Bytes]) -> Res<(Duration, Vec<PutReport>, CpuUse)> {
    let n = chunks.len();
    let chunks = Arc::new(chunks.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = CpuSample::now();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..PUTS_IN_FLIGHT {
        let (client, next, chunks) = (client.clone(), next.clone(), chunks.clone());
        tasks.spawn(async move {
            let mut reports = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, cluster::ClusterError>(reports);
                }
                reports.push(client.put(chunks[i].clone()).await?);
            }
        });
    }
    let mut reports = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        reports.extend(r??);
    }
    let d = start.elapsed();
    let cpu = CpuSample::between(cpu_before.as_ref(), CpuSample::now().as_ref());
    if let Some(r) = reports.iter().find(|r| r.under_replicated) {
        return Err(format!("chunk {} was stored under-replicated on {:?}", r.hash, r.stored_on).into());
    }
    Ok((d, reports, cpu))
}

/// SIGKILLs the first storage node and times the survivors' repair: from the last poll that saw
/// no copy yet (the node is declared out, by the survivors' own node map, some seconds after the
/// kill) until every copy it held is made again (their `repair_copied_bytes` grew by that much),
/// nothing is pending and no pass runs, seen on two polls in a row. The bench's own client may
/// see the node out later than the survivors do, so its view does not start the clock.
async fn measure_repair(pool: &mut Pool, reports: &[PutReport]) -> Res<Repair> {
    let victim = pool.nodes[0].id.clone();
    let survivors: Vec<_> = pool.nodes[1..].iter().map(|n| n.http).collect();
    let lost = reports.iter().filter(|r| r.stored_on.contains(&victim)).count() as u64;
    let expected = lost * BLOCK as u64;
    let copied_before = Totals::scrape(&survivors).await?.copied;
    eprintln!("repair: SIGKILL {victim} ({lost} chunks), timing the survivors' copies ...");
    pool.kill_node(0);
    let killed = Instant::now();
    let mut idle_until = Duration::ZERO;
    let mut cpu_at_start = CpuSample::now();
    let mut first_copy = None;
    let mut quiet_since = None;
    let mut cpu_at_quiet = None;
    loop {
        pool.check()?;
        let Totals { copied, pending, active } = Totals::scrape(&survivors).await?;
        let copied = copied.saturating_sub(copied_before);
        let at = killed.elapsed();
        if copied == 0 {
            idle_until = at;
            cpu_at_start = CpuSample::now();
        } else if first_copy.is_none() {
            first_copy = Some(at);
        }
        if copied >= expected && pending == 0 && active == 0 {
            match quiet_since {
                Some(quiet) => {
                    return Ok(Repair {
                        bytes: copied,
                        time: quiet - idle_until,
                        first_copy: first_copy.unwrap_or(quiet),
                        cpu: CpuSample::between(cpu_at_start.as_ref(), cpu_at_quiet.as_ref()),
                    });
                }
                None => {
                    quiet_since = Some(at);
                    cpu_at_quiet = CpuSample::now();
                }
            }
        } else {
            quiet_since = None;
        }
        if at > REPAIR_LIMIT {
            return Err(format!(
                "repair not done after {REPAIR_LIMIT:?}: {} of {} MiB copied, {pending} chunks pending, {active} passes running",
                copied / MIB as u64,
                expected / MIB as u64
            )
            .into());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The survivors' repair figures, summed.
struct Totals {
    copied: u64,
    pending: u64,
    active: u64,
}

impl Totals {
    async fn scrape(addrs: &[SocketAddr]) -> Res<Totals> {
        let mut t = Totals { copied: 0, pending: 0, active: 0 };
        for a in addrs {
            let m = pool::scrape(*a).await?;
            let get = |name: &str| m.get(name).copied().unwrap_or(0.0) as u64;
            t.copied += get("cairn_node_repair_copied_bytes_total");
            t.pending += get("cairn_node_repair_pending_chunks");
            t.active += get("cairn_node_repair_active");
        }
        Ok(t)
    }
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn print_report(args: &Args, total: usize, f: &Figures) {
    let r1 = f.put_r1 / f.raw[0];
    let r3 = f.put_r3 / (f.raw[1] / 3.0);
    let rep = f.repair.gbps() / f.raw[2];
    println!();
    println!("cluster-bench  dir={}  size={} MiB  nodes={NODES}", args.dir.display(), total / MIB);
    println!("{:<40} {:>12} {:<7} {:>22}", "test", "result", "unit", "ratio");
    println!("{}", "-".repeat(84));
    let row = |label: &str, value: f64, unit: &str, ratio: String| {
        println!("{label:<40} {value:>12.3} {unit:<7} {ratio:>22}");
    };
    // CPU: busy cores during a write, its cost per GB the client put, and the cores that cost
    // would take at the target rate.
    let busy_row = |cpu: &CpuUse| {
        row(
            &format!("  CPU busy (of {} cores)", cpu.cores),
            cpu.busy_cores,
            "cores",
            format!("steal {:.2}", cpu.steal_cores),
        );
    };
    let cpu_rows = |cpu: &CpuUse, rate: f64, target_rate: f64| {
        if cpu.cores == 0 {
            return;
        }
        let per_gb = cpu.busy_cores / rate;
        busy_row(cpu);
        row("  CPU per GB put", per_gb, "core-s", String::new());
        row(&format!("  CPU needed at target {target_rate:.3} GB/s"), per_gb * target_rate, "cores", String::new());
    };
    row("raw write, O_DIRECT + fdatasync", f.raw[0], "GB/s", String::new());
    row(&format!("pool put 4 MiB x{PUTS_IN_FLIGHT}, R=1"), f.put_r1, "GB/s", format!("{r1:.2} x raw / 1"));
    cpu_rows(&f.cpu[0], f.put_r1, WRITE_TARGET * f.raw[0]);
    for (size, rate, cpu) in &f.gets {
        row(&format!("pool get {} KiB x{GETS_IN_FLIGHT}, R=1", size >> 10), *rate, "gets/s", String::new());
        if cpu.cores > 0 {
            busy_row(cpu);
            row("  CPU per get", cpu.busy_cores / rate * 1e6, "core-us", String::new());
        }
    }
    row("raw write, O_DIRECT + fdatasync", f.raw[1], "GB/s", String::new());
    row(&format!("pool put 4 MiB x{PUTS_IN_FLIGHT}, R=3"), f.put_r3, "GB/s", format!("{r3:.2} x raw / 3"));
    cpu_rows(&f.cpu[1], f.put_r3, WRITE_TARGET * f.raw[1] / 3.0);
    row("raw write, O_DIRECT + fdatasync", f.raw[2], "GB/s", String::new());
    row("repair after SIGKILL, R=3", f.repair.gbps(), "GB/s", format!("{rep:.2} x raw write"));
    row("  copied", f.repair.bytes as f64 / MIB as f64, "MiB", String::new());
    if f.repair.cpu.cores > 0 {
        busy_row(&f.repair.cpu);
    }
    row("  copying time", f.repair.time.as_secs_f64(), "s", String::new());
    row("  from SIGKILL to first copy", f.repair.first_copy.as_secs_f64(), "s", String::new());
    row(
        "raw copy, O_DIRECT read + write at once",
        f.raw_copy,
        "GB/s",
        format!("repair {:.2} x this", f.repair.gbps() / f.raw_copy),
    );
    println!("{}", "-".repeat(84));
    println!();
    let mark = |ok: bool| if ok { "OK" } else { "MISS" };
    for (what, v, target) in [
        ("put R=1 / (raw / 1)", r1, WRITE_TARGET),
        ("put R=3 / (raw / 3)", r3, WRITE_TARGET),
        ("repair / raw write", rep, REPAIR_TARGET),
    ] {
        println!("{what} = {v:.2} (target >= {target:.2}) {}", mark(v >= target));
    }
    if args.json {
        let j = serde_json::json!({
            "size_mib": total / MIB,
            "raw_write_direct_gbps": f.raw,
            "put_r1_gbps": f.put_r1,
            "put_r1_ratio": r1,
            "put_r3_gbps": f.put_r3,
            "put_r3_ratio": r3,
            "put_cpu_busy_cores": [f.cpu[0].busy_cores, f.cpu[1].busy_cores],
            "put_cpu_steal_cores": [f.cpu[0].steal_cores, f.cpu[1].steal_cores],
            "repair_gbps": f.repair.gbps(),
            "repair_ratio": rep,
            "raw_copy_gbps": f.raw_copy,
            "repair_copied_bytes": f.repair.bytes,
            "repair_secs": f.repair.time.as_secs_f64(),
            "repair_first_copy_secs": f.repair.first_copy.as_secs_f64(),
            "gets": f.gets.iter().map(|(size, rate, cpu)| serde_json::json!({
                "chunk_bytes": size, "gets_per_s": rate, "cpu_busy_cores": cpu.busy_cores,
            })).collect::<Vec<_>>(),
        });
        println!("{j}");
    }
}
