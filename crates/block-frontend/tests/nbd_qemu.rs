//! The NBD server against real clients: qemu-io and qemu-img over a Unix socket and over TCP,
//! with the export held in a [`MemBackend`] whose contents are checked byte for byte.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use block_frontend::backend::MemBackend;
use block_frontend::nbd::{Export, Listener, serve};
use tokio::net::{TcpListener, UnixListener};
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const MIB: usize = 1 << 20;
const KIB: usize = 1 << 10;
const SIZE: usize = 64 * MIB;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("cairn-nbd-qemu-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether qemu-io and qemu-img are installed. Missing, the test fails when `CI` is set and is
/// skipped (with a line saying so) otherwise.
fn have_qemu() -> bool {
    let missing: Vec<&str> =
        ["/usr/bin/qemu-io", "/usr/bin/qemu-img"].into_iter().filter(|p| !Path::new(p).exists()).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{missing:?} not installed (CI is set: failing instead of skipping)");
    eprintln!("SKIPPED nbd_qemu: {missing:?} not installed (install qemu-utils; with CI set this test fails)");
    false
}

/// A running server and how to stop it.
struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    fn start<L: Listener + 'static>(listener: L, mem: Arc<MemBackend>) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, Export::new("vol", mem, false), async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("serve did not return").unwrap();
    }
}

/// Runs a qemu tool; it must exit 0 without reporting a failure. Returns its output.
async fn run(tool: &str, args: &[&str]) -> String {
    let child = Command::new(tool).args(args).stdin(Stdio::null()).kill_on_drop(true).output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .unwrap_or_else(|_| panic!("{tool} {args:?} timed out"))
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{tool} {args:?} exited with {}:\n{text}", out.status);
    let lower = text.to_lowercase();
    assert!(!lower.contains("fail") && !lower.contains("error"), "{tool} {args:?} reported a problem:\n{text}");
    text
}

/// qemu-io on `uri` with each command as one `-c`.
async fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let mut args = vec!["-f", "raw", uri];
    for c in commands {
        args.extend(["-c", c]);
    }
    run("qemu-io", &args).await
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(at) = got.iter().zip(want).position(|(g, w)| g != w) {
        panic!("{what}: first difference at byte {at}: {:#04x}, want {:#04x}", got[at], want[at]);
    }
}

/// Deterministic noise, with every third MiB left zero.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i / MIB) % 3 == 2 { 0 } else { x as u8 }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_and_qemu_img_over_unix_socket() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new();
    let socket = dir.0.join("nbd.sock");
    let mem = Arc::new(MemBackend::new(SIZE));
    let server = Server::start(UnixListener::bind(&socket).unwrap(), mem.clone());
    let socket = socket.to_str().unwrap();
    let named = format!("nbd+unix:///vol?socket={socket}");
    let default = format!("nbd+unix:///?socket={socket}");

    let out = qemu_io(
        &named,
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "write -z 1M 1M",
            "read -P 0 1M 1M",
            "write -P 0x5a 2M 128k",
            "discard 2M 64k",
            "read -P 0 2M 64k",
            "read -P 0x5a 2112k 64k",
            "write -f -P 0x33 3M 4k",
            "aio_write -P 0x11 4M 256k",
            "aio_write -P 0x22 5M 256k",
            "aio_write -P 0x44 6M 256k",
            "aio_flush",
            "read -P 0x11 4M 256k",
            "read -P 0x22 5M 256k",
            "read -P 0x44 6M 256k",
            "write -P 0x77 1000 333",
            "read -P 0x77 1000 333",
            "read -P 0xab 1333 1024",
            "flush",
        ],
    )
    .await;
    assert_eq!(out.matches("read ").count(), 9, "qemu-io output:\n{out}");
    let mut want = vec![0u8; SIZE];
    want[..MIB].fill(0xab);
    want[1000..1333].fill(0x77);
    want[2 * MIB + 64 * KIB..2 * MIB + 128 * KIB].fill(0x5a);
    want[3 * MIB..3 * MIB + 4 * KIB].fill(0x33);
    want[4 * MIB..4 * MIB + 256 * KIB].fill(0x11);
    want[5 * MIB..5 * MIB + 256 * KIB].fill(0x22);
    want[6 * MIB..6 * MIB + 256 * KIB].fill(0x44);
    assert_same(&mem.contents(), &want, "export after qemu-io");
    assert!(mem.flushes() > 0, "qemu-io flush never reached the backend");

    let info = run("qemu-img", &["info", "-f", "raw", "--output=json", &default]).await;
    assert!(info.contains(&format!("\"virtual-size\": {SIZE}")), "qemu-img info:\n{info}");

    // Export → file.
    let out = dir.0.join("out.raw");
    run("qemu-img", &["convert", "-f", "raw", "-O", "raw", &default, out.to_str().unwrap()]).await;
    assert_same(&std::fs::read(&out).unwrap(), &want, "qemu-img convert from the export");

    // File → export (qemu-img writes in parallel, zero runs as write-zeroes).
    let src = dir.0.join("src.raw");
    let data = noise(SIZE);
    std::fs::write(&src, &data).unwrap();
    run("qemu-img", &["convert", "-n", "-f", "raw", "-O", "raw", src.to_str().unwrap(), &named]).await;
    assert_same(&mem.contents(), &data, "qemu-img convert into the export");

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_over_tcp() {
    if !have_qemu() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("nbd://{}/vol", listener.local_addr().unwrap());
    let mem = Arc::new(MemBackend::new(SIZE));
    let server = Server::start(listener, mem.clone());

    qemu_io(&uri, &["write -P 0xc3 8M 2M", "read -P 0xc3 8M 2M", "write -z 9M 4k", "read -P 0 9M 4k", "flush"]).await;
    let mut want = vec![0u8; SIZE];
    want[8 * MIB..10 * MIB].fill(0xc3);
    want[9 * MIB..9 * MIB + 4 * KIB].fill(0);
    assert_same(&mem.contents(), &want, "export after qemu-io over TCP");

    server.shutdown().await;
}
