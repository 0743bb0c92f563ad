//! Probe (root): does I/O to the host disk stall while a loop device's FUSE back end holds its
//! writes? A FUSE file over memory whose writes and flushes wait while a gate is closed, a loop
//! device on it (direct I/O, as the data path), a writer doing an O_DIRECT write + fdatasync on
//! the device; meanwhile the probe times an fdatasync of a file in the given directory (the
//! host disk) and a spawn of `/bin/true`, with the gate open and closed.
//!
//! `cargo run -p block-frontend --example stall_probe -- /var/tmp/stall-probe`

use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use block_frontend::backend::{BlockBackend, BlockError, MemBackend};
use block_frontend::fuse_loop::{loop_attach, loop_detach, mount_file};

struct Gated {
    mem: MemBackend,
    closed: AtomicBool,
}

impl Gated {
    async fn wait(&self) {
        while self.closed.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl BlockBackend for Gated {
    fn name(&self) -> String {
        "probe".into()
    }
    async fn size(&self) -> u64 {
        self.mem.size().await
    }
    async fn allocated(&self) -> u64 {
        self.mem.allocated().await
    }
    async fn grow(&self, size: u64) -> Result<(), BlockError> {
        self.mem.grow(size).await
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, BlockError> {
        self.mem.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        self.wait().await;
        self.mem.write(offset, data).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.wait().await;
        self.mem.write_zeroes(offset, len).await
    }
    async fn flush(&self) -> Result<(), BlockError> {
        self.wait().await;
        self.mem.flush().await
    }
}

fn host_fsync(dir: &std::path::Path, n: u32) -> Duration {
    let t = Instant::now();
    let mut f = std::fs::File::create(dir.join(format!("host-{n}"))).expect("create");
    f.write_all(&[n as u8; 8192]).expect("write");
    f.sync_data().expect("fdatasync");
    t.elapsed()
}

fn spawn_true() -> Duration {
    let t = Instant::now();
    std::process::Command::new("/bin/true").status().expect("spawn");
    t.elapsed()
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/var/tmp/stall-probe".into()));
    std::fs::create_dir_all(&dir).expect("dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let backend = Arc::new(Gated { mem: MemBackend::new(256 << 20), closed: AtomicBool::new(false) });
    let fuse_dir = dir.join("fuse");
    let mount = rt.block_on(mount_file(backend.clone(), &fuse_dir)).expect("mount");
    let file = fuse_dir.join("volume");
    let device = rt.block_on(loop_attach(&file)).expect("loop");
    println!("loop device {} over {}", device.display(), file.display());
    println!("gate open:   host fsync {:?}, spawn {:?}", host_fsync(&dir, 0), spawn_true());
    backend.closed.store(true, Ordering::SeqCst);
    let dev = device.clone();
    let writer = std::thread::spawn(move || {
        let f = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&dev).expect("open");
        let buf = vec![7u8; 1 << 20];
        let at = buf.as_ptr().align_offset(4096);
        let t = Instant::now();
        let w = f.write_at(&buf[at..at + 65536], 0).map(|_| ());
        let s = f.sync_data();
        (t.elapsed(), w, s)
    });
    std::thread::sleep(Duration::from_secs(2));
    for n in 1..=3 {
        println!("gate closed: host fsync {:?}, spawn {:?}", host_fsync(&dir, n), spawn_true());
    }
    std::thread::sleep(Duration::from_secs(5));
    backend.closed.store(false, Ordering::SeqCst);
    println!("writer done: {:?}", writer.join().expect("writer"));
    println!("gate open:   host fsync {:?}, spawn {:?}", host_fsync(&dir, 9), spawn_true());
    rt.block_on(loop_detach(&file, Some(&device))).expect("detach");
    rt.block_on(mount.unmount()).expect("unmount");
}
