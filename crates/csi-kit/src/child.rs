//! The per-volume child process of a node plugin (csi-block's data path, csi-fs's mount process):
//! `<exe> <subcommand> <dir>` in its own process group, so a plugin restart or crash leaves
//! mounted volumes working. This module owns what every such child shares: the files of its
//! directory (`spec.json`, `ready`, `error`, `staged.json`, the log), the subcommand dispatch in
//! `main`, the child's reports (`ready` with its pid; `error` as `CODE<TAB>message`, the code word
//! a CSI error code), and the plugin's side: start it and wait until it serves, tell whether it
//! serves or is still the process of a pid, SIGTERM it and wait, and the versioned `staged.json`
//! records written atomically and loaded at plugin start. What a child serves is its driver's.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CsiError;
use crate::mount;
use crate::records::{Versioned, decode};

/// How long a child may take to start serving (reach the metadata service, open, mount).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping child may take to flush and unmount.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the plugin looks at a starting or stopping child.
const POLL: Duration = Duration::from_millis(20);

/// One kind of child: how it is started and named, and where it serves.
#[derive(Debug)]
pub struct ChildKind {
    /// The first argument that runs it (`<exe> <subcommand> <dir>`).
    pub subcommand: &'static str,
    /// Its name in its own log lines and startup errors (`csi-block volume-server`).
    pub name: &'static str,
    /// What messages call it ("the data path").
    pub noun: &'static str,
    /// Its log file in the volume's directory.
    pub log: &'static str,
    /// Its FUSE mount point in the volume's directory.
    pub mount: &'static str,
    /// What under the mount point answers while it serves ("": the mount point itself).
    pub probe: &'static str,
}

/// What a child serves: written by the plugin to `<dir>/spec.json`, read by the child.
pub trait ChildSpec: Serialize + DeserializeOwned + Versioned {
    /// The child's log filter.
    fn log_filter(&self) -> String;
}

impl ChildKind {
    /// The directory of a child at `path`.
    pub fn dir(&'static self, path: impl Into<PathBuf>) -> ChildDir {
        ChildDir { kind: self, path: path.into() }
    }

    /// A volume's directory under the plugin's state directory.
    pub fn volume_dir(&'static self, state_dir: &Path, id: &str) -> ChildDir {
        self.dir(state_dir.join("volumes").join(id))
    }

    /// Runs the child if this process was started as one (`<exe> <subcommand> <dir>`): `serve`
    /// with the spec read from the directory, until it returns. Every binary that may host the
    /// node plugin calls this first in `main`.
    pub fn main_if_requested<S, F, Fut>(&'static self, serve: F) -> Option<ExitCode>
    where
        S: ChildSpec,
        F: FnOnce(S, ChildDir, daemon_kit::ShutdownSignal) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let mut args = std::env::args_os().skip(1);
        if args.next()? != self.subcommand {
            return None;
        }
        let (d, spec) = match args.next() {
            Some(dir) => {
                let d = self.dir(dir);
                let spec = d.load_spec::<S>();
                (d, spec)
            }
            None => (self.dir(""), Err(format!("usage: {} <volume directory>", self.subcommand))),
        };
        Some(daemon_kit::run_daemon(self.name, spec, S::log_filter, |s, shutdown| serve(s, d, shutdown)))
    }

    /// The stages recorded under `state_dir`, by volume id (the directory's name); unreadable
    /// records and records of another format are logged and skipped.
    pub fn load_all<T: DeserializeOwned + Versioned>(&'static self, state_dir: &Path) -> HashMap<String, T> {
        let mut out = HashMap::new();
        let Ok(rd) = std::fs::read_dir(state_dir.join("volumes")) else { return out };
        for e in rd.flatten() {
            let path = self.dir(e.path()).staged();
            let Ok(text) = std::fs::read(&path) else { continue };
            match decode::<T>(path.as_os_str().as_bytes(), &text) {
                Ok(s) => {
                    out.insert(e.file_name().to_string_lossy().into_owned(), s);
                }
                Err(e) => tracing::warn!(error = %e, "staged state ignored"),
            }
        }
        out
    }
}

/// Writes a record as pretty JSON, atomically (temp file, fsync, rename, fsync the directory).
fn write_record<T: Serialize>(path: &Path, rec: &T) -> std::io::Result<()> {
    daemon_kit::write_file_atomic(path, &serde_json::to_vec_pretty(rec).expect("serializes"), 0o600)
}

/// Whether `path` answers (a path on a FUSE mount whose server died answers ENOTCONN). Asked
/// with statvfs, which the kernel always sends to the server: a stat may be answered from the
/// kernel's attribute cache after the server is gone.
pub async fn alive(path: &Path) -> bool {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || mount::statvfs(&p).is_ok()).await.unwrap_or(false)
}

/// The code word of an error, as the error file carries it.
fn code_word(e: &CsiError) -> &'static str {
    match e {
        CsiError::NotFound(_) => "NOT_FOUND",
        CsiError::FailedPrecondition(_) => "FAILED_PRECONDITION",
        // A metadata failure is transient, like an unreachable pool.
        CsiError::Unavailable(_) | CsiError::Meta(_) => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

/// The CSI error an error file's `CODE<TAB>message` stands for.
fn parse_error(text: &str) -> CsiError {
    let (code, msg) = text.split_once('\t').unwrap_or(("INTERNAL", text));
    let msg = msg.trim().to_string();
    match code {
        "NOT_FOUND" => CsiError::NotFound(msg),
        "FAILED_PRECONDITION" => CsiError::FailedPrecondition(msg),
        "UNAVAILABLE" => CsiError::Unavailable(msg),
        _ => CsiError::Internal(msg),
    }
}

/// The directory of one volume's child (`<state_dir>/volumes/<id>`) and its files.
#[derive(Debug, Clone)]
pub struct ChildDir {
    kind: &'static ChildKind,
    path: PathBuf,
}

impl ChildDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// What the child serves ([`ChildSpec`]).
    pub fn spec(&self) -> PathBuf {
        self.path.join("spec.json")
    }
    /// Written by the child (with its pid) once it serves.
    pub fn ready(&self) -> PathBuf {
        self.path.join("ready")
    }
    /// Written by the child when it could not start: `CODE<TAB>message`.
    pub fn error(&self) -> PathBuf {
        self.path.join("error")
    }
    /// The plugin's record of the stage.
    pub fn staged(&self) -> PathBuf {
        self.path.join("staged.json")
    }
    pub fn log(&self) -> PathBuf {
        self.path.join(self.kind.log)
    }
    /// The child's FUSE mount point.
    pub fn mount_point(&self) -> PathBuf {
        self.path.join(self.kind.mount)
    }

    /// Plugin side: writes the spec the child reads (atomically).
    pub fn store_spec<S: ChildSpec>(&self, spec: &S) -> std::io::Result<()> {
        write_record(&self.spec(), spec)
    }

    /// Reads the spec, refusing newer format versions.
    pub fn load_spec<S: ChildSpec>(&self) -> Result<S, String> {
        let path = self.spec();
        let text = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        decode(path.as_os_str().as_bytes(), &text).map_err(|e| e.to_string())
    }

    /// Child side: awaits `starting` (everything the child does before it can serve); its
    /// failure is left in the error file for the plugin and returned as the child's error.
    pub async fn report<T>(&self, starting: impl Future<Output = Result<T, CsiError>>) -> Result<T, String> {
        let _ = std::fs::remove_file(self.error());
        starting.await.map_err(|e| {
            let _ = daemon_kit::write_file_atomic(&self.error(), format!("{}\t{e}", code_word(&e)).as_bytes(), 0o600);
            e.to_string()
        })
    }

    /// Child side: tells the plugin it serves (the ready file, with this process's pid).
    pub fn set_ready(&self) -> Result<(), String> {
        daemon_kit::write_file_atomic(&self.ready(), std::process::id().to_string().as_bytes(), 0o644)
            .map_err(|e| format!("cannot write {}: {e}", self.ready().display()))
    }

    /// Child side: no longer serving.
    pub fn clear_ready(&self) {
        let _ = std::fs::remove_file(self.ready());
    }

    /// Plugin side: starts the child to serve `spec` (this program with the kind's subcommand)
    /// and waits until it serves; returns its pid. A child that exits first answers with the
    /// error it left.
    pub async fn start<S: ChildSpec>(&self, spec: &S) -> Result<u32, CsiError> {
        let exe = std::env::current_exe().map_err(|e| CsiError::Internal(format!("find this program: {e}")))?;
        self.start_with(&exe, spec, START_TIMEOUT).await
    }

    async fn start_with<S: ChildSpec>(&self, exe: &Path, spec: &S, timeout: Duration) -> Result<u32, CsiError> {
        let io = |what: &str, e: std::io::Error| CsiError::Internal(format!("{what}: {e}"));
        std::fs::create_dir_all(&self.path).map_err(|e| io("create the volume directory", e))?;
        let _ = std::fs::remove_file(self.ready());
        let _ = std::fs::remove_file(self.error());
        self.store_spec(spec).map_err(|e| io("write the spec", e))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log());
        let log = log.map_err(|e| io("open the log", e))?;
        let out = log.try_clone().map_err(|e| io("open the log", e))?;
        let child = tokio::process::Command::new(exe)
            .arg(self.kind.subcommand)
            .arg(&self.path)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(log)
            // Its own process group: signals to the plugin's group (a restart) do not reach it.
            .process_group(0)
            .spawn()
            .map_err(|e| io(&format!("start {}", self.kind.noun), e))?;
        self.wait_ready(child, timeout).await
    }

    /// Waits until `child` (its pid in the ready file) serves; a child that exits first answers
    /// with the error it left, one that takes longer than `timeout` is killed.
    async fn wait_ready(&self, mut child: tokio::process::Child, timeout: Duration) -> Result<u32, CsiError> {
        let noun = self.kind.noun;
        let pid = child.id().unwrap_or(0);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ready = std::fs::read_to_string(self.ready()).is_ok_and(|t| t.trim() == pid.to_string());
            if ready && self.serving().await {
                return Ok(pid);
            }
            if let Ok(Some(status)) = child.try_wait() {
                let tail = self.log_tail();
                return Err(self
                    .read_error()
                    .unwrap_or_else(|| CsiError::Internal(format!("{noun} exited ({status}): {tail}"))));
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                let _ = mount::unmount_lazy(&self.mount_point()).await;
                let (at, tail) = (self.path.display(), self.log_tail());
                return Err(CsiError::Unavailable(format!("{noun} in {at} did not start within {timeout:?}: {tail}")));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The error a child left, as the CSI error the plugin answers with.
    pub fn read_error(&self) -> Option<CsiError> {
        std::fs::read_to_string(self.error()).ok().map(|t| parse_error(&t))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        text.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// Whether the child serves: its FUSE mount is there and answers (a mount whose process
    /// died answers ENOTCONN).
    pub async fn serving(&self) -> bool {
        let mnt = self.mount_point();
        let probe = if self.kind.probe.is_empty() { mnt.clone() } else { mnt.join(self.kind.probe) };
        mount::is_mountpoint(&mnt) && alive(&probe).await
    }

    /// Whether `pid` is this directory's child (not a reused pid, not a zombie).
    pub fn is_child(&self, pid: u32) -> bool {
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        args.get(1) == Some(&self.kind.subcommand.as_bytes()) && args.get(2) == Some(&self.path.as_os_str().as_bytes())
    }

    /// Plugin side: ends the child `pid` (SIGTERM: it flushes and unmounts) and waits until it
    /// is gone and its mount with it. A child that died leaves a dead mount, which is unmounted
    /// lazily; one that does not stop in time is killed.
    pub async fn stop(&self, pid: u32) -> Result<(), CsiError> {
        self.stop_within(pid, STOP_TIMEOUT).await
    }

    async fn stop_within(&self, pid: u32, timeout: Duration) -> Result<(), CsiError> {
        let mnt = self.mount_point();
        if self.is_child(pid) {
            // SAFETY: kill has no memory-safety preconditions; the pid was checked to be ours.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while (self.is_child(pid) || mount::is_mountpoint(&mnt)) && tokio::time::Instant::now() < deadline {
            if !self.is_child(pid) {
                // Died without unmounting: the mount is dead, take it away.
                let _ = mount::unmount_lazy(&mnt).await;
            }
            tokio::time::sleep(POLL).await;
        }
        if self.is_child(pid) {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = mount::unmount_lazy(&mnt).await;
            return Err(CsiError::Internal(format!("{} (pid {pid}) did not stop within {timeout:?}", self.kind.noun)));
        }
        Ok(())
    }

    /// Plugin side: records the stage `s` (atomically).
    pub fn store_staged<T: Serialize>(&self, s: &T) -> Result<(), CsiError> {
        write_record(&self.staged(), s).map_err(|e| CsiError::Internal(format!("cannot record the staged volume: {e}")))
    }

    /// Plugin side: forgets a stage (its child must be gone): the record, and unless `keep_log`
    /// (a dead child being replaced: its log tells why) the whole directory — never while
    /// something is still mounted in it.
    pub fn forget(&self, keep_log: bool) {
        let _ = std::fs::remove_file(self.staged());
        if !keep_log && !mount::is_mountpoint(&self.mount_point()) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!("csi-kit-child-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A spec and a staged record at once.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        version: u32,
        id: String,
    }

    impl Versioned for Rec {
        const FORMAT: u32 = 1;
        fn format_version(&self) -> u32 {
            self.version
        }
    }

    impl ChildSpec for Rec {
        fn log_filter(&self) -> String {
            "info".into()
        }
    }

    fn rec() -> Rec {
        Rec { version: 1, id: "vol-1".into() }
    }

    /// A kind whose "subcommand" is a shell script, so `sh` runs it as `sh <script> <dir>` and
    /// its command line looks like a child's.
    fn script_kind(at: &Path, script: &str) -> &'static ChildKind {
        let path = at.join("child.sh");
        std::fs::write(&path, script).unwrap();
        let subcommand: &'static str = Box::leak(path.to_string_lossy().into_owned().into_boxed_str());
        Box::leak(Box::new(ChildKind {
            subcommand,
            name: "test child",
            noun: "the test child",
            log: "child.log",
            mount: "mnt",
            probe: "",
        }))
    }

    #[tokio::test]
    async fn error_files_carry_the_code() {
        let e = CsiError::NotFound("volume v does not exist".into());
        let back = parse_error(&format!("{}\t{e}", code_word(&e)));
        assert_eq!((back.code(), back.to_string()), (tonic::Code::NotFound, e.to_string()));
        assert_eq!(parse_error("UNAVAILABLE\tpool down\n").code(), tonic::Code::Unavailable);
        assert_eq!(parse_error("garbage").code(), tonic::Code::Internal);
        let meta = CsiError::Meta(metadata_client::MetaClientError::Internal("no leader".into()));
        assert_eq!(code_word(&meta), "UNAVAILABLE");
        assert_eq!(code_word(&CsiError::Aborted("busy".into())), "INTERNAL");

        // What the child reports is what the plugin reads.
        let s = Scratch::new("report");
        let d = script_kind(&s.0, "").dir(&s.0);
        assert!(d.read_error().is_none());
        let failed: Result<(), _> = d.report(async { Err(CsiError::FailedPrecondition("superseded".into())) }).await;
        assert_eq!(failed.unwrap_err(), "superseded");
        let read = d.read_error().unwrap();
        assert_eq!((read.code(), read.to_string()), (tonic::Code::FailedPrecondition, "superseded".into()));
        assert_eq!(d.report(async { Ok(7) }).await, Ok(7));
        assert!(d.read_error().is_none(), "a new start clears the old error");
    }

    #[test]
    fn staged_records_are_kept_reloaded_and_other_versions_refused() {
        let s = Scratch::new("staged");
        let kind = script_kind(&s.0, "");
        let d = kind.volume_dir(&s.0, "vol-1");
        std::fs::create_dir_all(d.path()).unwrap();
        d.store_staged(&rec()).unwrap();
        for (id, text) in [("vol-junk", "{not json"), ("vol-new", r#"{"version":2,"id":"vol-new"}"#)] {
            let d = kind.volume_dir(&s.0, id);
            std::fs::create_dir_all(d.path()).unwrap();
            std::fs::write(d.staged(), text).unwrap();
        }
        let all: HashMap<String, Rec> = kind.load_all(&s.0);
        assert_eq!(all.len(), 1);
        assert_eq!(all.get("vol-1"), Some(&rec()));
        d.forget(false);
        assert!(!d.path().exists());
        kind.volume_dir(&s.0, "vol-new").forget(true);
        assert!(kind.volume_dir(&s.0, "vol-new").path().exists(), "the log is kept");
        assert!(kind.load_all::<Rec>(&s.0).is_empty());
    }

    #[test]
    fn specs_round_trip_and_refuse_other_versions() {
        let s = Scratch::new("spec");
        let d = script_kind(&s.0, "").dir(&s.0);
        write_record(&d.spec(), &rec()).unwrap();
        assert_eq!(d.load_spec::<Rec>().unwrap(), rec());
        std::fs::write(d.spec(), r#"{"version":9,"id":"vol-1"}"#).unwrap();
        assert!(d.load_spec::<Rec>().unwrap_err().contains("format version 9"));
        let missing = script_kind(&s.0, "").dir("/no/such/dir");
        assert!(missing.load_spec::<Rec>().unwrap_err().contains("cannot read"));
    }

    #[tokio::test]
    async fn a_child_that_dies_before_ready_answers_with_its_error() {
        let s = Scratch::new("dies");
        let sh = Path::new("/bin/sh");
        let kind = script_kind(&s.0, "printf 'FAILED_PRECONDITION\\tsuperseded' > \"$1/error\"; exit 3\n");
        let e = kind.dir(s.0.join("vol")).start_with(sh, &rec(), Duration::from_secs(30)).await.unwrap_err();
        assert_eq!((e.code(), e.to_string()), (tonic::Code::FailedPrecondition, "superseded".into()));
        let kind = script_kind(&s.0, "echo cannot open the volume >&2; exit 1\n");
        let e = kind.dir(s.0.join("vol")).start_with(sh, &rec(), Duration::from_secs(30)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        assert!(e.to_string().contains("the test child exited") && e.to_string().contains("cannot open"), "{e}");
    }

    #[tokio::test]
    async fn a_child_that_never_serves_times_out_and_is_killed() {
        let s = Scratch::new("slow");
        // Ready, but its mount never comes: not serving.
        let d = script_kind(&s.0, "echo $$ > \"$1/ready\"; exec sleep 30\n").dir(s.0.join("vol"));
        let started = std::time::Instant::now();
        let e = d.start_with(Path::new("/bin/sh"), &rec(), Duration::from_millis(300)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.to_string().contains("the test child in") && e.to_string().contains("did not start"), "{e}");
        let pid: u32 = std::fs::read_to_string(d.ready()).unwrap().trim().parse().unwrap();
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "killed and reaped");
    }

    #[tokio::test]
    async fn stop_terms_the_child_and_waits() {
        let s = Scratch::new("stop");
        let kind = script_kind(&s.0, "trap 'exit 0' TERM; : > \"$1/ready\"; while :; do sleep 0.02; done\n");
        let d = kind.volume_dir(&s.0, "vol-1");
        std::fs::create_dir_all(d.path()).unwrap();
        let mut child = std::process::Command::new("/bin/sh").arg(kind.subcommand).arg(d.path()).spawn().unwrap();
        let pid = child.id();
        // Once the script has its trap.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !d.ready().exists() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(d.is_child(pid));
        assert!(!d.is_child(std::process::id()));
        assert!(!kind.dir(&s.0).is_child(pid), "another directory's child");
        d.stop_within(pid, Duration::from_secs(10)).await.unwrap();
        assert!(child.wait().unwrap().success(), "ended by SIGTERM's trap");
        assert!(!d.is_child(pid));
    }
}
