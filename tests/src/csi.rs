//! CSI driver processes for tests: start a driver binary on a unix socket in a temp dir, wait
//! for `/healthz`, connect gRPC clients over the socket as the sidecars and the kubelet do, and
//! SIGKILL or restart it. Killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use crate::s3::tail;
use crate::{bin, free_port, http_get};

/// One running CSI driver process.
pub struct CsiProc {
    child: Option<Child>,
    binary: &'static str,
    args: Vec<String>,
    /// Its CSI socket.
    pub socket: PathBuf,
    /// `/metrics` and `/healthz` address.
    pub http: SocketAddr,
    log: PathBuf,
}

impl CsiProc {
    /// Starts `binary` (e.g. `csi-block`) with its socket at `dir/<name>.sock` and `args`, and
    /// waits until it is healthy.
    pub fn start(binary: &'static str, dir: &Path, name: &str, args: &[&str]) -> CsiProc {
        let socket = dir.join(format!("{name}.sock"));
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut all: Vec<String> =
            vec!["--endpoint".into(), format!("unix://{}", socket.display()), "--http-listen".into(), http.to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        let mut p = CsiProc { child: None, binary, args: all, socket, http, log: dir.join(format!("{name}.log")) };
        p.spawn();
        p.wait_healthy(Duration::from_secs(60));
        p
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.binary);
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let errf = logf.try_clone().expect("dup log file");
        let child = Command::new(bin(self.binary))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(errf)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary));
        self.child = Some(child);
    }

    fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((200, _)) = http_get(self.http, "/healthz") {
                return;
            }
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                self.child = None;
                panic!("{} exited with {st} before it was ready:\n{}", self.binary, tail(&self.log, 60));
            }
            assert!(
                Instant::now() < deadline,
                "{} not healthy after {within:?}:\n{}",
                self.binary,
                tail(&self.log, 60)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A gRPC channel over the socket.
    pub async fn channel(&self) -> Channel {
        csi_kit::connect_unix(&self.socket).await.expect("connect to the CSI socket")
    }

    /// SIGKILL (no clean shutdown), then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, start again with the same flags, wait until healthy.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_healthy(Duration::from_secs(60));
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CsiProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Unmounts (lazily) every mount under `dir` and detaches every loop device whose backing file
/// is under it — what a CSI node test leaves behind when it fails midway. Deepest first.
pub fn cleanup_mounts_under(dir: &Path) {
    let prefix = dir.to_string_lossy().to_string();
    if let Ok(out) = Command::new("losetup").arg("-a").output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains(&prefix)
                && let Some(dev) = line.split(':').next()
            {
                let _ = Command::new("losetup").args(["-d", dev]).output();
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(String::from)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).output();
    }
}
