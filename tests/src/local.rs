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
    /// Its command-line arguments (kept, so that a restart listens where the first start did).
    args: Vec<String>,
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
        LocalSystem::start_with(root, &[])
    }

    /// Starts it as the README does: from `root` as its working directory, with `--data ./data`.
    pub fn start_relative(root: &Path) -> LocalSystem {
        LocalSystem::start_inner(root, "./data", &[])
    }

    /// [`start`](Self::start) with more flags (e.g. the aging knobs `--snapshot-logs`).
    pub fn start_with(root: &Path, extra: &[&str]) -> LocalSystem {
        LocalSystem::start_inner(root, &root.join("data").to_string_lossy(), extra)
    }

    fn start_inner(root: &Path, data_arg: &str, extra: &[&str]) -> LocalSystem {
        let data = root.join("data");
        let addr = || format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = vec!["--data".into(), data_arg.into()];
        for flag in [
            "--node-listen",
            "--node-http",
            "--meta-listen",
            "--meta-peer",
            "--meta-http",
            "--s3-listen",
            "--s3-http",
            "--csi-block-http",
            "--csi-fs-http",
        ] {
            args.push(flag.into());
            args.push(addr());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut sys = LocalSystem { child: None, args, root: root.to_path_buf(), data, env: HashMap::new() };
        sys.launch();
        sys
    }

    /// Starts the process with the kept arguments and waits up to 90 s for `local.env`.
    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("cairn-local.log"))
            .expect("log file");
        let child = Command::new(bin("cairn-local"))
            .args(&self.args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start cairn-local");
        self.child = Some(child);
        let sys = self;
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
    }

    /// SIGKILLs it (its per-volume children live on, as they would after a crash of the node
    /// plugin alone).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A crash of the whole node: SIGKILLs it and every process it started (per-volume data
    /// paths and FUSE clients), then takes away their mounts and loop devices under the root, as
    /// a reboot would.
    pub fn crash(&mut self) {
        self.kill9();
        crate::csi::kill_processes_under(&self.root);
        crate::csi::cleanup_mounts_under(&self.root);
    }

    /// Starts it again after [`kill9`](Self::kill9) or [`crash`](Self::crash), on the same
    /// data and addresses, and waits for `local.env`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "cairn-local still running");
        let _ = std::fs::remove_file(self.data.join("local.env")); // a killed one leaves it behind
        self.launch();
    }

    /// The value of `key` in `local.env` (panics naming it when missing).
    pub fn var(&self, key: &str) -> &str {
        self.env.get(key).unwrap_or_else(|| panic!("local.env lacks {key}: {:?}", self.env.keys()))
    }

    /// The address given to one of its listen flags (`--meta-http`, `--node-http`, ...).
    pub fn addr(&self, flag: &str) -> std::net::SocketAddr {
        let i = self.args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("no {flag} flag"));
        self.args[i + 1].parse().expect("a socket address")
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
