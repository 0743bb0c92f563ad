//! Metadata-node processes and network namespaces for partition tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{bin, free_port, http_get};

/// Addresses of one metadata node.
#[derive(Debug, Clone)]
pub struct MetaAddrs {
    /// Raft id.
    pub id: u64,
    /// Client API `host:port`.
    pub api: String,
    /// Raft peer `host:port`.
    pub peer: String,
    /// `/metrics` and `/healthz`.
    pub http: SocketAddr,
}

impl MetaAddrs {
    /// Free loopback ports for node `id`.
    pub fn loopback(id: u64) -> Self {
        MetaAddrs {
            id,
            api: format!("127.0.0.1:{}", free_port()),
            peer: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
        }
    }

    /// The `initial_members` entry for this node.
    pub fn member(&self) -> String {
        format!("{}={}/{}", self.id, self.api, self.peer)
    }
}

/// A metadata-node child process (optionally inside a network namespace).
pub struct MetaProc {
    child: Option<Child>,
    /// Its addresses.
    pub addrs: MetaAddrs,
    dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    netns: Option<String>,
}

impl MetaProc {
    /// Starts node `addrs.id` with data under `dir` and extra flags; does not wait.
    pub fn spawn(addrs: MetaAddrs, dir: &Path, args: &[String], netns: Option<&str>) -> MetaProc {
        let log = dir.with_extension("log");
        let mut p = MetaProc {
            child: None,
            addrs,
            dir: dir.to_path_buf(),
            log,
            args: args.to_vec(),
            netns: netns.map(str::to_string),
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("metadata-node"));
                c
            }
            None => Command::new(bin("metadata-node")),
        };
        cmd.args(["--id", &self.addrs.id.to_string()])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen", &self.addrs.api, "--peer-listen", &self.addrs.peer])
            .args(["--http-listen", &self.addrs.http.to_string()])
            .args(&self.args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(logf);
        self.child = Some(cmd.spawn().expect("spawn metadata-node"));
    }

    /// Starts it again after a kill, with the same data and addresses.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "node still running");
        self.start();
    }

    /// Waits until `/healthz` is 200 (a leader is known) — from the root namespace only.
    pub fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((200, _)) = http_get(self.addrs.http, "/healthz") {
                return;
            }
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                panic!("metadata-node {} exited with {st}:\n{}", self.addrs.id, self.log_text());
            }
            assert!(Instant::now() < deadline, "metadata-node {} not healthy:\n{}", self.addrs.id, self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        crate::terminate_child(self.child.take().expect("node running"), "metadata-node")
    }

    /// True while the process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for MetaProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `n` voters on loopback (ids 1..=n) and waits until all know a leader.
pub fn meta_cluster(n: u64, dir: &Path, extra: &[&str]) -> Vec<MetaProc> {
    let addrs: Vec<MetaAddrs> = (1..=n).map(MetaAddrs::loopback).collect();
    let members = addrs.iter().map(MetaAddrs::member).collect::<Vec<_>>().join(",");
    let mut args = vec!["--initial-members".to_string(), members];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut nodes: Vec<MetaProc> =
        addrs.into_iter().map(|a| MetaProc::spawn(a.clone(), &dir.join(format!("m{}", a.id)), &args, None)).collect();
    for n in &mut nodes {
        n.wait_healthy(Duration::from_secs(60));
    }
    nodes
}

static NS_SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace joined to the root namespace by veth pairs, removed on drop.
pub struct NetNs {
    /// The namespace name.
    pub name: String,
    links: Vec<String>,
}

/// One veth pair: the root side and the namespace side addresses.
pub struct Link {
    /// Root-namespace interface.
    pub host_if: String,
    /// Address on the root side.
    pub host_ip: String,
    /// Address inside the namespace.
    pub ns_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl NetNs {
    /// Creates a namespace with `links` veth pairs (10.213.x.1 on the root side, .2 inside).
    pub fn new(links: usize) -> (NetNs, Vec<Link>) {
        let seq = NS_SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = (std::process::id() % 10_000) * 10 + seq % 10;
        let name = format!("cairn-t{tag}");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let mut ns = NetNs { name: name.clone(), links: Vec::new() };
        let mut out = Vec::new();
        for i in 0..links {
            let host_if = format!("ct{tag}h{i}");
            let ns_if = format!("ct{tag}n{i}");
            let _ = Command::new("ip").args(["link", "del", &host_if]).output();
            let subnet = (tag as usize * 4 + i) % 250 + 1;
            let (host_ip, ns_ip) = (format!("10.213.{subnet}.1"), format!("10.213.{subnet}.2"));
            ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
            ns.links.push(host_if.clone());
            ip(&["link", "set", &ns_if, "netns", &name]);
            ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
            ip(&["link", "set", &host_if, "up"]);
            ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
            ip(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"]);
            out.push(Link { host_if, host_ip, ns_ip });
        }
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        (ns, out)
    }

    /// Cuts (`false`) or restores (`true`) a link.
    pub fn set_link(&self, link: &Link, up: bool) {
        ip(&["link", "set", &link.host_if, if up { "up" } else { "down" }]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
