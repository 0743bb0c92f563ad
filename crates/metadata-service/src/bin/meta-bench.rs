//! `meta-bench`: committed single-key writes per second and linearizable reads per second
//! against 1 and 3 real `metadata-node` processes on loopback, with 1 and 32 concurrent clients.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use metadata_client::MetaClient;

/// Benchmark the metadata service.
#[derive(Parser)]
struct Args {
    /// Working directory (removed and recreated).
    #[arg(long, default_value = "./data/meta-bench")]
    dir: PathBuf,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Concurrent clients to measure with, each its own connection.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 32])]
    clients: Vec<usize>,
    /// Voters of the groups to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 3])]
    voters: Vec<u64>,
}

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn start(voters: u64, dir: &Path) -> Result<(Nodes, Vec<String>), String> {
    let bin = std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("metadata-node");
    if !bin.exists() {
        return Err(format!("{} not found: build it first (cargo build --release --bins)", bin.display()));
    }
    let addrs: Vec<(u64, String, String, String)> = (1..=voters)
        .map(|id| {
            (
                id,
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
            )
        })
        .collect();
    let members = addrs.iter().map(|(id, api, peer, _)| format!("{id}={api}/{peer}")).collect::<Vec<_>>().join(",");
    let mut nodes = Nodes(Vec::new());
    for (id, api, peer, http) in &addrs {
        let log = std::fs::File::create(dir.join(format!("m{id}.log"))).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .args(["--id", &id.to_string(), "--listen", api, "--peer-listen", peer, "--http-listen", http])
            .arg("--data-dir")
            .arg(dir.join(format!("m{id}")))
            .args(["--initial-members", &members, "--log", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        nodes.0.push(child);
    }
    Ok((nodes, addrs.into_iter().map(|a| a.1).collect()))
}

async fn measure(
    clients: usize,
    secs: u64,
    op: Arc<dyn Fn(MetaClient, u64) -> futures::future::BoxFuture<'static, bool> + Send + Sync>,
    apis: &[String],
) -> Result<f64, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..clients as u64 {
        // Each client is its own process in a real pool: its own connection.
        let c = MetaClient::new(apis).map_err(|e| e.to_string())?;
        let (stop, done, op) = (stop.clone(), done.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if op(c.clone(), w * 1_000_000_000 + i).await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meta-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut target = None;
    println!("{:<8} {:>8} {:>16} {:>20}", "voters", "clients", "commits/s", "linearizable reads/s");
    for &voters in &args.voters {
        let _ = std::fs::remove_dir_all(&args.dir);
        std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
        let (nodes, apis) = start(voters, &args.dir)?;
        let c = MetaClient::new(&apis).map_err(|e| e.to_string())?;
        c.put(b"bench/read", b"value").await.map_err(|e| format!("cluster did not come up: {e}"))?;
        for &clients in &args.clients {
            let write: Arc<dyn Fn(MetaClient, u64) -> futures::future::BoxFuture<'static, bool> + Send + Sync> =
                Arc::new(|c, i| {
                    Box::pin(async move { c.put(format!("bench/w/{i:020}").as_bytes(), &[7u8; 64]).await.is_ok() })
                });
            let read: Arc<dyn Fn(MetaClient, u64) -> futures::future::BoxFuture<'static, bool> + Send + Sync> =
                Arc::new(|c, _| Box::pin(async move { c.get(b"bench/read").await.is_ok() }));
            let w = measure(clients, args.secs, write, &apis).await?;
            let r = measure(clients, args.secs, read, &apis).await?;
            println!("{voters:<8} {clients:>8} {w:>16.0} {r:>20.0}");
            if voters == 3 && clients == 32 {
                target = Some(w);
            }
        }
        drop(nodes);
    }
    match target {
        Some(t) => println!("3 voters, 32 clients: {t:.0} commits/s (target >= 5000)"),
        None => println!("3 voters, 32 clients: not measured in this run (target >= 5000 commits/s)"),
    }
    Ok(())
}
