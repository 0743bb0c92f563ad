//! The S3 stack for objectd tests: one metadata node, one storage node (R=1) and `objectd` on
//! free loopback ports, access keys made with the operator CLI, and the Python (boto3) suites
//! under `tests/s3/` run against it. Everything is killed when the stack drops, panics included.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chunk_engine::ChunkHash;
use cluster::refs::REFS_PREFIX;
use metadata_client::MetaClient;

use crate::daemon::Daemon;
use crate::meta::{MetaProc, meta_cluster};
use crate::{NodeProc, bin, free_port};

/// The workspace root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// A Python interpreter with boto3 and the aws CLI (`<python> -m awscli`), from
/// `scripts/s3-tools.sh` (which also installs rclone). Run once per test process; panics when
/// the tools cannot be had — the S3 tests never skip silently.
pub fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let script = repo_root().join("scripts/s3-tools.sh");
        let out = Command::new("bash")
            .arg(&script)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} failed ({}): the S3 tests need Python with boto3 + awscli and rclone\nstdout: {stdout}\nstderr: {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let py = stdout.lines().last().map(str::trim).unwrap_or_default();
        assert!(
            !py.is_empty() && Path::new(py).exists(),
            "{} printed no usable interpreter path: {stdout:?}",
            script.display()
        );
        PathBuf::from(py)
    })
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One metadata node, one storage node and objectd, on free loopback ports in a temp dir.
pub struct S3Stack {
    // Drop order: objectd first, then the storage node, the metadata node, the directory.
    objectd: Daemon,
    /// The storage node.
    pub node: NodeProc,
    /// The metadata node(s).
    pub meta: Vec<MetaProc>,
    /// Metadata client API (`host:port`).
    pub meta_api: String,
    /// objectd's S3 endpoint (`http://127.0.0.1:PORT`).
    pub endpoint: String,
    /// objectd's `/metrics` and `/healthz` address.
    pub http: SocketAddr,
    /// The stack's temp dir (deleted on drop).
    pub dir: tempfile::TempDir,
}

impl S3Stack {
    /// Starts the stack with objectd's default flags.
    pub fn start() -> S3Stack {
        S3Stack::start_with(&[])
    }

    /// Starts the stack; `objectd_extra` is appended to objectd's flags (e.g. `--mpu-expiry-secs`).
    pub fn start_with(objectd_extra: &[&str]) -> S3Stack {
        S3Stack::start_with_node(objectd_extra, &[])
    }

    /// [`start_with`](Self::start_with), and `node_extra` appended to the storage node's flags.
    pub fn start_with_node(objectd_extra: &[&str], node_extra: &[&str]) -> S3Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = meta_cluster(1, dir.path(), &[]);
        let meta_api = meta[0].addrs.api.clone();
        let mut node_args = vec!["--meta", &meta_api, "--node-id", "n1", "--replicas", "1", "--heartbeat-ms", "200"];
        node_args.extend_from_slice(node_extra);
        let node = NodeProc::start(&dir.path().join("n1"), &node_args);
        let (port, hport) = (free_port(), free_port());
        let http: SocketAddr = format!("127.0.0.1:{hport}").parse().expect("addr");
        let mut args: Vec<String> = vec![
            "--meta".into(),
            meta_api.clone(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--http-listen".into(),
            http.to_string(),
            "--region".into(),
            "us-east-1".into(),
            "--domain".into(),
            "localhost".into(),
        ];
        if !objectd_extra.contains(&"--log") {
            args.extend(["--log".into(), "info".into()]);
        }
        args.extend(objectd_extra.iter().map(|s| s.to_string()));
        let objectd = Daemon::start("objectd", args, dir.path().join("objectd.log"), http);
        S3Stack { objectd, node, meta, meta_api, endpoint: format!("http://127.0.0.1:{port}"), http, dir }
    }

    /// Every chunk the storage node holds: hex → length.
    pub async fn node_chunks(&self) -> BTreeMap<String, u64> {
        let c = self.node.client().await;
        let mut out = BTreeMap::new();
        let mut after: Option<ChunkHash> = None;
        loop {
            let page = c.list(after.as_ref(), 1000).await.expect("list chunks");
            for ch in &page.chunks {
                let h = ChunkHash(ch.hash.as_slice().try_into().expect("32-byte hash"));
                out.insert(h.to_string(), u64::from(ch.length));
            }
            if page.next_after.is_empty() {
                return out;
            }
            after = Some(ChunkHash(page.next_after.as_slice().try_into().expect("32-byte hash")));
        }
    }

    /// Runs `cairn --meta <api> <args>`; panics unless it succeeds; returns stdout.
    pub fn cairn(&self, args: &[&str]) -> String {
        let out = Command::new(bin("cairn"))
            .args(["--meta", &self.meta_api])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run cairn");
        assert!(
            out.status.success(),
            "cairn {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cairn s3 key create --name NAME ARGS...` → (access key id, secret). The command must
    /// print exactly `AWS_ACCESS_KEY_ID=...` and `AWS_SECRET_ACCESS_KEY=...`.
    pub fn create_key(&self, name: &str, args: &[&str]) -> (String, String) {
        let mut all = vec!["s3", "key", "create", "--name", name];
        all.extend_from_slice(args);
        let out = self.cairn(&all);
        let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 2, "`cairn s3 key create` must print exactly two lines, got {out:?}");
        let id = lines[0].strip_prefix("AWS_ACCESS_KEY_ID=").unwrap_or_else(|| panic!("first line: {out:?}"));
        let secret = lines[1].strip_prefix("AWS_SECRET_ACCESS_KEY=").unwrap_or_else(|| panic!("second line: {out:?}"));
        assert!(!id.is_empty() && !secret.is_empty(), "empty key id or secret: {out:?}");
        (id.to_string(), secret.to_string())
    }

    /// SIGKILL objectd (no clean shutdown).
    pub fn kill9_objectd(&mut self) {
        self.objectd.kill9();
    }

    /// Starts objectd again with the same flags and waits for `/healthz`.
    pub fn restart_objectd(&mut self) {
        self.objectd.restart();
    }

    /// Path of objectd's log (stdout and stderr, across restarts).
    pub fn objectd_log_path(&self) -> &Path {
        &self.objectd.log
    }

    /// Everything objectd logged so far.
    pub fn objectd_log(&self) -> String {
        self.objectd.log_text()
    }

    /// The environment a Python suite needs: endpoint, keys, region, and the CLI's whereabouts.
    pub fn py_env(&self, key: &(String, String)) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), key.0.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), key.1.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
            ("CAIRN_META".into(), self.meta_api.clone()),
            ("CAIRN_BIN".into(), bin("cairn").display().to_string()),
            ("CAIRN_S3_METRICS_URL".into(), format!("http://{}/metrics", self.http)),
        ]
    }

    /// Starts `tests/s3/<script>.py ARGS` with [`py_env`](Self::py_env) plus `extra`; its
    /// stdout and stderr go to files in the stack's directory.
    pub fn spawn_py(&self, key: &(String, String), script: &str, args: &[&str], extra: &[(&str, &str)]) -> PyRun {
        let path = repo_root().join("tests/s3").join(format!("{script}.py"));
        assert!(path.exists(), "{} is missing", path.display());
        let tag = format!("{script}-{}", free_port());
        let (out, err) = (self.dir.path().join(format!("{tag}.out")), self.dir.path().join(format!("{tag}.err")));
        let child = Command::new(python())
            .arg(&path)
            .args(args)
            .current_dir(repo_root())
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .envs(self.py_env(key))
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python().display()));
        PyRun { child: Some(child), done: None, what: format!("{script}.py {}", args.join(" ")), out, err }
    }

    /// Runs `tests/s3/<script>.py ARGS` to the end (at most 10 minutes) and asserts exit 0; on
    /// failure panics with its output and the tail of objectd's log. Returns its stdout.
    pub fn run_py(&self, key: &(String, String), script: &str, args: &[&str], extra: &[(&str, &str)]) -> String {
        self.try_run_py(key, script, args, extra, Duration::from_secs(600)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `tests/s3/<script>.py ARGS` to the end (at most `limit`): its stdout when it exits 0,
    /// else a report with its output and the tail of objectd's log (so a test can check more
    /// things before it fails).
    pub fn try_run_py(
        &self,
        key: &(String, String),
        script: &str,
        args: &[&str],
        extra: &[(&str, &str)],
        limit: Duration,
    ) -> Result<String, String> {
        let mut run = self.spawn_py(key, script, args, extra);
        let status = run.wait(limit);
        let (out, err) = (run.stdout(), run.stderr());
        match status {
            Some(st) if st.success() => {
                eprintln!("--- {} ---\n{err}{out}", run.what);
                Ok(out)
            }
            st => Err(format!(
                "{} {}\n--- stdout ---\n{out}\n--- stderr ---\n{err}\n--- objectd log (tail) ---\n{}",
                run.what,
                match st {
                    Some(st) => format!("failed: {st}"),
                    None => format!("did not finish within {limit:?} (killed)"),
                },
                tail(&self.objectd.log, 80)
            )),
        }
    }
}

/// A running Python script (killed on drop).
pub struct PyRun {
    child: Option<Child>,
    done: Option<std::process::ExitStatus>,
    /// Script and arguments, for messages.
    pub what: String,
    out: PathBuf,
    err: PathBuf,
}

impl PyRun {
    /// Its exit status if it has exited (does not wait).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.done.is_none()
            && let Some(c) = self.child.as_mut()
            && let Some(st) = c.try_wait().expect("try_wait")
        {
            self.done = Some(st);
            self.child = None;
        }
        self.done
    }

    /// Waits for the exit, at most `limit` (then kills it and returns None).
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            if Instant::now() > deadline {
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for PyRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Distinct chunk hashes (hex) named by any `cluster/refs/<chunk hex>/<owner>` key.
pub async fn referenced_chunks(meta: &MetaClient) -> BTreeSet<String> {
    let start = REFS_PREFIX.as_bytes().to_vec();
    let mut end = start.clone();
    *end.last_mut().expect("non-empty prefix") += 1;
    let mut out = BTreeSet::new();
    let mut from = start;
    loop {
        let page = meta.range(&from, &end, 1000).await.expect("scan references");
        for kv in &page.kvs {
            let key = String::from_utf8_lossy(&kv.key);
            let rest = key.strip_prefix(REFS_PREFIX).expect("reference key under the prefix");
            let (hex, owner) = rest.split_once('/').unwrap_or_else(|| panic!("malformed reference key {key}"));
            assert!(!owner.is_empty(), "reference without an owner: {key}");
            out.insert(hex.to_string());
        }
        match page.next_key {
            Some(k) => from = k,
            None => return out,
        }
    }
}
