//! `meta-bench`: committed single-key writes per second and linearizable reads per second
//! against 1 and 3 real `metadata-node` processes on loopback, with 1 and 32 concurrent clients
//! (and the Raft term changes each run saw: elections under load); with `--failover-kills N`,
//! the time from SIGKILLing the leader of a 3-voter group under load to the next acknowledged
//! commit, N times, restarting the killed voter between kills.

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
    /// Measure failover instead: SIGKILL the leader of a 3-voter group this many times.
    #[arg(long, default_value_t = 0)]
    failover_kills: u32,
    /// Clients committing while the failover is measured.
    #[arg(long, default_value_t = 16)]
    failover_clients: usize,
    /// More arguments for every `metadata-node` (space-separated), e.g. to compare
    /// `--heartbeat-ms 100 --election-timeout-ms 500` with the defaults.
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    node_args: String,
}

/// One `metadata-node` process, restartable on its data directory.
struct Voter {
    id: u64,
    api: String,
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Voter {
    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, then reap.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The group's processes; all are killed when dropped.
struct Nodes(Vec<Voter>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for v in &mut self.0 {
            v.kill9();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn start(voters: u64, dir: &Path, extra: &str) -> Result<(Nodes, Vec<String>), String> {
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
        let data = dir.join(format!("m{id}"));
        let args = [
            "--id",
            &id.to_string(),
            "--listen",
            api,
            "--peer-listen",
            peer,
            "--http-listen",
            http,
            "--data-dir",
            &data.to_string_lossy(),
            "--initial-members",
            &members,
            "--log",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(extra.split_whitespace().map(str::to_string))
        .collect();
        let mut v = Voter {
            id: *id,
            api: api.clone(),
            bin: bin.clone(),
            args,
            log: dir.join(format!("m{id}.log")),
            child: None,
        };
        v.spawn()?;
        nodes.0.push(v);
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

/// The current Raft term, as the leader reports it.
async fn term(c: &MetaClient) -> Result<u64, String> {
    c.status().await.map(|s| s.term).map_err(|e| format!("status: {e}"))
}

async fn run(args: Args) -> Result<(), String> {
    if args.failover_kills > 0 {
        return failover(&args).await;
    }
    let mut target = None;
    println!(
        "{:<8} {:>8} {:>16} {:>20} {:>14}",
        "voters", "clients", "commits/s", "linearizable reads/s", "term changes"
    );
    for &voters in &args.voters {
        let _ = std::fs::remove_dir_all(&args.dir);
        std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
        let (nodes, apis) = start(voters, &args.dir, &args.node_args)?;
        let c = MetaClient::new(&apis).map_err(|e| e.to_string())?;
        c.put(b"bench/read", b"value").await.map_err(|e| format!("cluster did not come up: {e}"))?;
        for &clients in &args.clients {
            let write: Arc<dyn Fn(MetaClient, u64) -> futures::future::BoxFuture<'static, bool> + Send + Sync> =
                Arc::new(|c, i| {
                    Box::pin(async move { c.put(format!("bench/w/{i:020}").as_bytes(), &[7u8; 64]).await.is_ok() })
                });
            let read: Arc<dyn Fn(MetaClient, u64) -> futures::future::BoxFuture<'static, bool> + Send + Sync> =
                Arc::new(|c, _| Box::pin(async move { c.get(b"bench/read").await.is_ok() }));
            let before = term(&c).await?;
            let w = measure(clients, args.secs, write, &apis).await?;
            let r = measure(clients, args.secs, read, &apis).await?;
            let changes = term(&c).await? - before;
            println!("{voters:<8} {clients:>8} {w:>16.0} {r:>20.0} {changes:>14}");
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

/// The leader's id, asking every running voter (a follower names the leader it follows).
async fn leader_of(c: &MetaClient) -> Result<(u64, u64), String> {
    let s = c.status().await.map_err(|e| format!("status: {e}"))?;
    Ok((s.leader_id, s.term))
}

/// Waits until the voter at `api` follows a leader and has applied `index`.
async fn wait_caught_up(api: &str, index: u64, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(s) = MetaClient::status_of(api).await
            && s.leader_id != 0
            && s.last_applied >= index
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("restarted voter {api} did not catch up within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Leader SIGKILLs under load: each kill's time to the next acknowledged commit of a client that
/// had the old leader cached, then a check that no acknowledged write was lost.
async fn failover(args: &Args) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let (mut nodes, apis) = start(3, &args.dir, &args.node_args)?;
    let c = MetaClient::new(&apis).map_err(|e| e.to_string())?;
    c.put(b"bench/read", b"value").await.map_err(|e| format!("cluster did not come up: {e}"))?;

    // Load: every client commits its own keys; acknowledged ones are checked at the end.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..args.failover_clients {
        let client = MetaClient::new(&apis).map_err(|e| e.to_string())?;
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), 0u64);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("bench/f/{w:04}/{i:012}");
                match client.put(key.as_bytes(), &[7u8; 64]).await {
                    Ok(_) => acked.push(key),
                    Err(_) => failed += 1,
                }
                i += 1;
            }
            (acked, failed)
        }));
    }

    println!(
        "{:<6} {:>10} {:>10} {:>6} {:>14} {:>16}",
        "kill", "old leader", "new leader", "terms", "to elected", "to next commit"
    );
    let mut times = Vec::new();
    for k in 1..=args.failover_kills {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (leader, term_before) = leader_of(&c).await?;
        let idx = nodes.0.iter().position(|v| v.id == leader).ok_or_else(|| format!("leader {leader} unknown"))?;
        // A client that has the leader cached, as every busy client has.
        let probe = MetaClient::new(&apis).map_err(|e| e.to_string())?;
        probe.put(b"bench/probe", b"before").await.map_err(|e| format!("probe: {e}"))?;
        let survivors: Vec<String> = nodes.0.iter().filter(|v| v.id != leader).map(|v| v.api.clone()).collect();
        let killed = Instant::now();
        nodes.0[idx].kill9();
        // When a survivor first reports itself leader (polled every 10 ms), apart from the client.
        let elected = tokio::spawn(async move {
            loop {
                for api in &survivors {
                    if let Ok(s) = MetaClient::status_of(api).await
                        && s.term > term_before
                        && s.leader_id == s.id
                    {
                        return killed.elapsed();
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        probe.put(b"bench/probe", format!("after kill {k}").as_bytes()).await.map_err(|e| format!("probe: {e}"))?;
        let took = killed.elapsed();
        let elected = tokio::time::timeout(Duration::from_secs(30), elected)
            .await
            .map_err(|_| "no survivor became leader".to_string())?
            .map_err(|e| e.to_string())?;
        let (new_leader, term_after) = leader_of(&c).await?;
        println!(
            "{k:<6} {leader:>10} {new_leader:>10} {:>6} {:>12.0}ms {:>14.0}ms",
            term_after - term_before,
            elected.as_secs_f64() * 1000.0,
            took.as_secs_f64() * 1000.0
        );
        times.push(took);
        let applied = c.status().await.map_err(|e| format!("status: {e}"))?.last_applied;
        nodes.0[idx].spawn()?;
        wait_caught_up(&nodes.0[idx].api, applied, Duration::from_secs(60)).await?;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut failed = 0;
    for t in load {
        let (a, f) = t.await.map_err(|e| e.to_string())?;
        acked.extend(a);
        failed += f;
    }
    // Every acknowledged write is there.
    let mut present = std::collections::HashSet::new();
    let (mut from, end) = (b"bench/f/".to_vec(), metadata_client::prefix_end(b"bench/f/"));
    loop {
        let page = c.range(&from, &end, 10_000).await.map_err(|e| format!("range: {e}"))?;
        present.extend(page.kvs.into_iter().map(|kv| kv.key));
        match page.next_key {
            Some(k) => from = k,
            None => break,
        }
    }
    let lost = acked.iter().filter(|k| !present.contains(k.as_bytes())).count();
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "median {:.0}ms over {} kills; {} writes acknowledged, {lost} lost; {failed} failed (not acknowledged)",
        median.as_secs_f64() * 1000.0,
        times.len(),
        acked.len()
    );
    if lost > 0 {
        return Err(format!("{lost} acknowledged writes are missing"));
    }
    Ok(())
}
