//! Test harness: find the built binaries, pick free ports, start daemons as child processes,
//! wait until they are healthy, and kill them (SIGKILL or SIGTERM). Every process is killed
//! when its handle drops, so a failing test leaves nothing running.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use node_client::NodeClient;
use rand::RngCore;

pub mod csi;
pub mod daemon;
pub mod fsx;
pub mod lifecycle;
pub mod local;
pub mod meta;
pub mod pages;
pub mod pool;
pub mod s3;

/// Path of a workspace binary: `$CAIRN_BIN_DIR/<name>`, or next to the test's target directory.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("CAIRN_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
        }
    };
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: build the binaries first (`cargo build --workspace --bins`)", p.display());
    p
}

/// A port nobody listens on right now, never one this test process was handed before (the
/// kernel may offer a just-released port again, and two daemons would then share it).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().expect("port list lock");
    loop {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind port 0").local_addr().expect("local addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// `len` random bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// A minimal HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// Flips one byte of a storage node's segment files, 10 bytes into the first place `needle`
/// occurs (panics if it occurs nowhere), and syncs the file.
pub fn flip_byte(dir: &Path, needle: &[u8]) {
    use std::os::unix::fs::FileExt;
    for ent in std::fs::read_dir(dir.join("segments")).expect("segments dir") {
        let path = ent.expect("dir entry").path();
        let bytes = std::fs::read(&path).expect("read segment");
        if let Some(pos) = bytes.windows(needle.len()).position(|w| w == needle) {
            let f = std::fs::OpenOptions::new().write(true).open(&path).expect("open segment");
            f.write_all_at(&[bytes[pos + 10] ^ 0x55], (pos + 10) as u64).expect("write");
            f.sync_all().expect("sync");
            return;
        }
    }
    panic!("data not found in {}", dir.display());
}

/// Bytes used by the files under `dir`.
pub fn du(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let m = e.metadata().expect("metadata");
            total += if m.is_dir() { du(&e.path()) } else { m.len() };
        }
    }
    total
}

/// A storage-node child process.
pub struct NodeProc {
    child: Option<Child>,
    /// gRPC endpoint (`http://127.0.0.1:port`).
    pub grpc: String,
    /// `/metrics` and `/healthz` address.
    pub http: SocketAddr,
    /// Its data directory.
    pub dir: PathBuf,
    log: PathBuf,
    /// Its full command line after the binary (kept for restarts on the same ports).
    args: Vec<String>,
}

impl NodeProc {
    fn spawn(dir: &Path, extra: &[&str]) -> NodeProc {
        let (gp, hp) = (free_port(), free_port());
        let log = dir.with_extension(format!("{gp}.log"));
        let mut args: Vec<String> = vec!["--data-dir".into(), dir.to_string_lossy().into()];
        args.extend(["--listen".into(), format!("127.0.0.1:{gp}"), "--http-listen".into(), format!("127.0.0.1:{hp}")]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut n = NodeProc {
            child: None,
            grpc: format!("http://127.0.0.1:{gp}"),
            http: format!("127.0.0.1:{hp}").parse().expect("addr"),
            dir: dir.to_path_buf(),
            log,
            args,
        };
        n.launch();
        n
    }

    fn launch(&mut self) {
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(bin("storage-node"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn storage-node");
        self.child = Some(child);
    }

    /// Starts it again after a kill, on the same data and ports, and waits until it is healthy.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "storage node still running");
        self.launch();
        self.wait_healthy();
    }

    /// Starts a node on `dir` and waits until `/healthz` answers 200.
    pub fn start(dir: &Path, extra: &[&str]) -> NodeProc {
        let mut n = NodeProc::spawn(dir, extra);
        n.wait_healthy();
        n
    }

    fn wait_healthy(&mut self) {
        let n = self;
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok((200, _)) = http_get(n.http, "/healthz") {
                return;
            }
            if let Some(st) = n.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                panic!("storage-node exited with {st} before it was ready:\n{}", n.log_text());
            }
            assert!(Instant::now() < deadline, "storage-node not healthy after 180 s:\n{}", n.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a node expected to refuse to start; returns its exit status and stderr.
    pub fn start_expecting_failure(dir: &Path, extra: &[&str]) -> (ExitStatus, String) {
        let mut n = NodeProc::spawn(dir, extra);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = n.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                n.child = None;
                return (st, n.log_text());
            }
            assert!(Instant::now() < deadline, "storage-node kept running:\n{}", n.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the node wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A connected client.
    pub async fn client(&self) -> NodeClient {
        NodeClient::connect(&self.grpc).await.expect("connect to storage node")
    }

    /// Sends `sig` (e.g. SIGSTOP, SIGCONT) to the running node.
    pub fn signal(&self, sig: i32) {
        let c = self.child.as_ref().expect("node running");
        // SAFETY: sending a signal to our own child's pid.
        unsafe { libc::kill(c.id() as i32, sig) };
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the exit (at most 60 s, then SIGKILL and panic).
    pub fn terminate(&mut self) -> ExitStatus {
        terminate_child(self.child.take().expect("node running"), "storage-node")
    }
}

/// Sends SIGTERM to `child` and waits up to 60 s for it to exit (then SIGKILL and panic).
pub fn terminate_child(mut c: Child, what: &str) -> ExitStatus {
    // SAFETY: sending a signal to our own child's pid.
    unsafe {
        libc::kill(c.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = c.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            panic!("{what} ignored SIGTERM for 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.log);
    }
}
