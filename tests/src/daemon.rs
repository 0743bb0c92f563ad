//! A daemon under test that answers `/healthz`: started with its flags and stdout/stderr
//! appended to a log file, waited for, SIGKILLed and restarted with the same flags, killed when
//! dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::s3::tail;
use crate::{bin, http_get};

/// One daemon process (objectd, csi-block, ...).
pub struct Daemon {
    child: Option<Child>,
    binary: &'static str,
    args: Vec<String>,
    /// Its log (stdout and stderr, across restarts).
    pub log: PathBuf,
    /// `/metrics` and `/healthz` address.
    pub http: SocketAddr,
}

impl Daemon {
    /// Starts `binary` with `args` and waits until `/healthz` at `http` answers 200.
    pub fn start(binary: &'static str, args: Vec<String>, log: PathBuf, http: SocketAddr) -> Daemon {
        let mut d = Daemon { child: None, binary, args, log, http };
        d.spawn();
        d.wait_healthy(Duration::from_secs(60));
        d
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

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}
