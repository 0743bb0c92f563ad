//! A throwaway storage pool on loopback: one `metadata-node` and N `storage-node` child processes
//! (the release binaries next to this executable), and any others a bench adds, killed and their
//! directory removed on drop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::Timeouts;
use metadata_client::MetaClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Res;

/// Milliseconds between a storage node's heartbeats.
const HEARTBEAT_MS: &str = "200";

/// One child process.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    killed: bool,
}

/// A storage node of the pool.
pub struct Node {
    /// Its id in the node map.
    pub id: String,
    /// Its `/metrics` address.
    pub http: SocketAddr,
}

/// The running pool. `nodes[i]` is `procs[i + 1]`; `procs[0]` is the metadata node.
pub struct Pool {
    dir: PathBuf,
    /// The metadata service's client endpoint.
    pub meta_api: String,
    /// The storage nodes.
    pub nodes: Vec<Node>,
    procs: Vec<Proc>,
}

impl Pool {
    /// Starts a metadata node and `n` storage nodes keeping `replicas` copies, with data under
    /// `dir` (recreated), and waits until the metadata service answers.
    pub async fn start(dir: &Path, n: usize, replicas: usize, t: &Timeouts) -> Res<Pool> {
        Pool::start_with(dir, n, replicas, t, &[]).await
    }

    /// [`Pool::start`] with `extra` arguments for every storage node.
    pub async fn start_with(dir: &Path, n: usize, replicas: usize, t: &Timeouts, extra: &[&str]) -> Res<Pool> {
        crate::fresh_dir(dir)?;
        let mut pool = Pool { dir: dir.to_path_buf(), meta_api: free_addr(), nodes: Vec::new(), procs: Vec::new() };
        let (api, peer, http) = (pool.meta_api.clone(), free_addr(), free_addr());
        let meta_dir = dir.join("meta").display().to_string();
        let members = format!("1={api}/{peer}");
        #[rustfmt::skip]
        let args = ["--id", "1", "--listen", &api, "--peer-listen", &peer, "--http-listen", &http,
            "--data-dir", &meta_dir, "--initial-members", &members, "--log", "warn"];
        pool.spawn("metadata-node", "meta", &args)?;
        let meta = MetaClient::new(&[&api])?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while meta.get(b"cluster-bench/ping").await.is_err() {
            pool.check()?;
            if Instant::now() > deadline {
                return Err("the metadata node did not answer within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (down, out) = (t.down_after.as_millis().to_string(), t.out_after.as_millis().to_string());
        let replicas = replicas.to_string();
        for i in 1..=n {
            let id = format!("n{i}");
            let (listen, http) = (free_addr(), free_addr());
            let data = dir.join(&id).display().to_string();
            // Repair passes start within a second of a membership change (what the benches time);
            // periodic passes over every chunk would only take CPU from what is measured.
            #[rustfmt::skip]
            let args = ["--meta", &api, "--node-id", &id, "--host", &id, "--heartbeat-ms", HEARTBEAT_MS,
                "--down-after-ms", &down, "--out-after-ms", &out, "--repair-interval-secs", "3600",
                "--repair-rate-mib", "0", "--replicas", &replicas, "--listen", &listen, "--http-listen", &http,
                "--data-dir", &data, "--log", "warn"];
            let args: Vec<&str> = args.iter().chain(extra).copied().collect();
            pool.spawn("storage-node", &id, &args)?;
            pool.nodes.push(Node { id, http: http.parse()? });
        }
        Ok(pool)
    }

    /// Starts `bin` (a release binary next to this one) as process `name`, logging to `<dir>/<name>.log`.
    pub fn spawn(&mut self, bin: &str, name: &str, args: &[&str]) -> Res<()> {
        let path = std::env::current_exe()?.with_file_name(bin);
        if !path.exists() {
            return Err(format!("{} not found: build it first (cargo build --release --bins)", path.display()).into());
        }
        let log = self.dir.join(format!("{name}.log"));
        let mut cmd = Command::new(&path);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log)?);
        // Children die with the bench even when it is SIGKILLed and no Drop runs. The signal follows
        // the spawning thread: pools are started from the main thread (inside `block_on`).
        // SAFETY: prctl is async-signal-safe and touches only the child's own settings.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", path.display()))?;
        self.procs.push(Proc { name: name.to_string(), child, log, killed: false });
        Ok(())
    }

    /// Fails when a process that should run has exited, with the end of its log.
    pub fn check(&mut self) -> Res<()> {
        for p in self.procs.iter_mut().filter(|p| !p.killed) {
            if let Some(status) = p.child.try_wait()? {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!("{} exited ({status}): {}", p.name, tail.join(" | ")).into());
            }
        }
        Ok(())
    }

    /// SIGKILLs storage node `i`.
    pub fn kill_node(&mut self, i: usize) {
        let p = &mut self.procs[i + 1];
        let _ = p.child.kill();
        let _ = p.child.wait();
        p.killed = true;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cluster-bench: warning: could not remove {}: {e}", self.dir.display());
        }
    }
}

/// A free loopback address, never the same one twice in this process.
pub fn free_addr() -> String {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().expect("port list lock");
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(0, |a| a.port());
        if port != 0 && !given.contains(&port) {
            given.push(port);
            return format!("127.0.0.1:{port}");
        }
    }
}

/// The unlabelled series of a Prometheus `/metrics` page at `addr`, by name.
pub async fn scrape(addr: SocketAddr) -> Res<HashMap<String, f64>> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut page = String::new();
        s.read_to_string(&mut page).await?;
        Ok::<_, std::io::Error>(page)
    };
    let page = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| format!("GET http://{addr}/metrics timed out"))?
        .map_err(|e| format!("GET http://{addr}/metrics: {e}"))?;
    let body = page.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(name, v)| Some((name.to_string(), v.trim().parse().ok()?)))
        .collect())
}
