//! The local all-in-one (`cairn-local`) for tests: started on free loopback ports with its data
//! in `<root>/data` (and room beside it, e.g. for a kubelet's directories), waited for until it
//! writes `local.env`, whose variables it hands back. When dropped — test failures included —
//! it is SIGKILLed with every process it started (per-volume data paths and FUSE clients) and
//! every mount and loop device under `<root>` is removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bin, free_port};

/// A running `cairn-local`.
pub struct LocalSystem {
    child: Option<Child>,
    /// The directory everything lives under.
    pub root: PathBuf,
    /// Its data directory (`<root>/data`).
    pub data: PathBuf,
    /// What it wrote to `local.env`.
    pub env: HashMap<String, String>,
}

impl LocalSystem {
    /// Starts `cairn-local --data <root>/data` on free ports (output in `<root>/cairn-local.log`)
    /// and waits up to 90 s for `local.env`.
    pub fn start(root: &Path) -> LocalSystem {
        let data = root.join("data");
        let addr = || format!("127.0.0.1:{}", free_port());
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(root.join("cairn-local.log")).expect("log file");
        let child = Command::new(bin("cairn-local"))
            .arg("--data")
            .arg(&data)
            .args(["--node-listen", &addr(), "--node-http", &addr()])
            .args(["--meta-listen", &addr(), "--meta-peer", &addr(), "--meta-http", &addr()])
            .args(["--s3-listen", &addr(), "--s3-http", &addr(), "--csi-block-http", &addr()])
            .args(["--csi-fs-http", &addr()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start cairn-local");
        let mut sys = LocalSystem { child: Some(child), root: root.to_path_buf(), data, env: HashMap::new() };
        let env_path = sys.data.join("local.env");
        let deadline = Instant::now() + Duration::from_secs(90);
        while !env_path.exists() {
            if let Some(st) = sys.child.as_mut().expect("running").try_wait().expect("try_wait") {
                panic!("cairn-local exited with {st}:\n{}", sys.log());
            }
            assert!(Instant::now() < deadline, "no local.env after 90 s:\n{}", sys.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        sys.env = std::fs::read_to_string(&env_path)
            .expect("read local.env")
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        sys
    }

    /// The value of `key` in `local.env` (panics naming it when missing).
    pub fn var(&self, key: &str) -> &str {
        self.env.get(key).unwrap_or_else(|| panic!("local.env lacks {key}: {:?}", self.env.keys()))
    }

    /// The path of a `unix://` endpoint in `local.env` (`CSI_BLOCK_ENDPOINT`, ...).
    pub fn socket(&self, key: &str) -> PathBuf {
        PathBuf::from(self.var(key).strip_prefix("unix://").expect("a unix:// endpoint"))
    }

    /// The last lines of its output.
    pub fn log(&self) -> String {
        crate::s3::tail(&self.root.join("cairn-local.log"), 60)
    }

    /// SIGTERM: it must exit 0 within 30 s and take `local.env` with it.
    pub fn stop(&mut self) {
        let mut c = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let st = loop {
            if let Some(st) = c.try_wait().expect("try_wait") {
                break st;
            }
            assert!(Instant::now() < deadline, "cairn-local ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(st.success(), "cairn-local stopped with {st}:\n{}", self.log());
        assert!(!self.data.join("local.env").exists(), "local.env outlived cairn-local");
    }
}

impl Drop for LocalSystem {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        crate::csi::kill_processes_under(&self.root);
        crate::csi::cleanup_mounts_under(&self.root);
    }
}
