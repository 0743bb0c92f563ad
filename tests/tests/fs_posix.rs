//! The shared filesystem client (fs-client over fs-meta and the pool) mounted for real with FUSE,
//! twice — two clients of one filesystem, as on two nodes — against a real metadata node and
//! storage node: a POSIX conformance run of our own, what one client closes the other sees
//! (close-to-open), random operations checked against a model file (fsx style) through both
//! mounts, and the quota. Needs root (FUSE mounts with allow_other); CI is root.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::os::unix::prelude::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster::{ChunkClient, ClientConfig};
use fs_client::{ClientOptions, Mounted};
use integration_tests::NodeProc;
use integration_tests::csi::cleanup_mounts_under;
use integration_tests::meta::{MetaProc, meta_cluster};
use metadata_client::MetaClient;
use rand::{Rng, SeedableRng};

/// Unmounts whatever the test left mounted, even when it fails.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        cleanup_mounts_under(&self.0);
    }
}

struct Stack {
    rt: tokio::runtime::Runtime,
    meta: MetaClient,
    pool: ChunkClient,
    node: NodeProc,
    _meta: Vec<MetaProc>,
    dir: tempfile::TempDir,
}

fn start() -> Stack {
    start_with(&[])
}

/// A stack whose storage node also gets `node_args`.
fn start_with(node_args: &[&str]) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let meta_procs = meta_cluster(1, dir.path(), &[]);
    let api = meta_procs[0].addrs.api.clone();
    let mut args = vec!["--meta", &api, "--node-id", "n1", "--replicas", "1", "--heartbeat-ms", "200"];
    args.extend_from_slice(node_args);
    let node = NodeProc::start(&dir.path().join("n1"), &args);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let meta = MetaClient::new(&[api]).unwrap();
    let pool = rt.block_on(async {
        let c = ChunkClient::new(meta.clone(), ClientConfig { replicas: 1, min_replicas: 1, ..Default::default() })
            .await
            .unwrap();
        c.wait_for_up(1, Duration::from_secs(30)).await.unwrap();
        c
    });
    Stack { rt, meta, pool, node, _meta: meta_procs, dir }
}

impl Stack {
    fn mount(&self, fs: &str, name: &str) -> (Mounted, PathBuf) {
        self.mount_with_cache(fs, name, 0)
    }

    fn mount_with_cache(&self, fs: &str, name: &str, read_cache_bytes: u64) -> (Mounted, PathBuf) {
        let at = self.dir.path().join(name);
        let opts = ClientOptions {
            fs_id: fs.into(),
            client_id: name.into(),
            node: name.into(),
            read_only: false,
            io_timeout: std::time::Duration::ZERO,
            read_cache_bytes,
        };
        let m = self.rt.block_on(fs_client::mount(self.meta.clone(), self.pool.clone(), opts, &at)).unwrap();
        (m, at)
    }
}

/// A client releases the chunks its commits replaced (an overwrite, a truncate, the last
/// unlink): the node deletes them at once, with no pool-GC round at all, except a chunk another
/// file still holds. (A client vouches only for its own puts: what another client put within
/// the write window waits for a round.) A second client that read the file before the overwrite and still has it
/// open reads on without an error (it reads the blocks as they are now).
#[test]
fn replaced_and_unlinked_file_blocks_are_released_at_once() {
    if not_root() {
        return;
    }
    let s = start_with(&["--pool-gc-interval-secs", "0", "--pool-gc-window-secs", "600"]);
    let _rt = s.rt.enter();
    let _guard = MountGuard(s.dir.path().to_path_buf());
    s.rt.block_on(fs_meta::filesystem::create(&s.meta, "fs-rel", 256 << 20)).unwrap();
    let (ma, a) = s.mount("fs-rel", "a");
    let (mb, b) = s.mount("fs-rel", "b");
    const BS: usize = 1 << 20;
    let blocks = |d: &[u8]| -> Vec<chunk_engine::ChunkHash> { d.chunks(BS).map(chunk_engine::ChunkHash::of).collect() };
    let present = |hs: &[chunk_engine::ChunkHash]| -> usize {
        s.rt.block_on(async { s.node.client().await.has(hs).await.unwrap() })
            .iter()
            .filter(|c| c.present && c.refs > 0)
            .count()
    };
    let gone_soon = |hs: &[chunk_engine::ChunkHash], what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = present(hs);
            if left == 0 {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {left} of {} chunks still on the node", hs.len());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(27);
    let mut random = |n: usize| -> Vec<u8> {
        let mut v = vec![0u8; n];
        rng.fill(&mut v[..]);
        v
    };

    let first = random(6 * BS);
    fs::write(a.join("f"), &first).unwrap();
    // Another file holds block 2's contents (deduplicated: a reference of its own).
    fs::write(a.join("other"), &first[2 * BS..3 * BS]).unwrap();
    let old = blocks(&first);
    assert_eq!(present(&old), 6);
    // b opens the file and reads its last block (so it holds the block map as it was); it keeps
    // the file open.
    let held = File::open(b.join("f")).unwrap();
    let mut buf = vec![0u8; BS];
    held.read_exact_at(&mut buf, 5 * BS as u64).unwrap();
    assert!(buf == first[5 * BS..]);

    // An overwrite of everything: the old chunks leave at once, but block 2's stays.
    let second = random(6 * BS);
    fs::write(a.join("f"), &second).unwrap();
    let replaced: Vec<_> = old.iter().copied().filter(|h| *h != old[2]).collect();
    gone_soon(&replaced, "overwritten blocks");
    assert_eq!(present(&old[2..3]), 1, "a chunk another file holds was deleted");
    // b reads on through its open handle, with the map it read before: a block whose old chunk
    // is gone reads as it is now, with no error (block 1 by itself, then 2.. with read-ahead).
    held.read_exact_at(&mut buf, BS as u64).unwrap();
    assert!(buf == second[BS..2 * BS], "block 1, whose old chunk is gone, reads as it is now");
    for i in 2..5 {
        held.read_exact_at(&mut buf, (i * BS) as u64).unwrap();
        assert!(
            buf == first[i * BS..(i + 1) * BS] || buf == second[i * BS..(i + 1) * BS],
            "block {i} read through the handle b kept open is neither version"
        );
    }
    drop(held);
    assert!(fs::read(b.join("f")).unwrap() == second, "b reopens and reads the new contents");

    // A truncate releases the blocks past the new end and the old tail block.
    let now = blocks(&second);
    let f = OpenOptions::new().write(true).open(a.join("f")).unwrap();
    f.set_len(2 * BS as u64 + 100).unwrap();
    drop(f);
    gone_soon(&now[2..], "truncated blocks");
    assert_eq!(present(&now[..2]), 2, "blocks before the new end stay");

    // The last unlink releases the rest. (Through the client that wrote them: another client
    // cannot vouch for a's puts, and chunks put within the write window wait for a round.)
    fs::remove_file(a.join("f")).unwrap();
    gone_soon(&now[..2], "an unlinked file's blocks");
    assert_eq!(present(&old[2..3]), 1, "the other file's chunk stays");
    assert!(fs::read(a.join("other")).unwrap() == first[2 * BS..3 * BS]);
    let (_, metrics) = integration_tests::http_get(s.node.http, "/metrics").unwrap();
    assert!(metrics.contains("cairn_node_pool_gc_deleted_chunks_total 0"), "no pool-GC round ran");
    s.rt.block_on(async {
        mb.unmount().await.unwrap();
        ma.unmount().await.unwrap();
    });
}

/// Random small reads of a large file read about what they ask for from the pool (ranged reads
/// of the chunks, verified by their 4 KiB group CVs), not a whole 1 MiB chunk each; every read
/// returns the right bytes, through a second client as through the writer. A mount with a read
/// cache serves a file it read before from memory.
#[test]
fn random_small_reads_read_parts_of_chunks() {
    if not_root() {
        return;
    }
    let s = start();
    let _rt = s.rt.enter();
    let _guard = MountGuard(s.dir.path().to_path_buf());
    s.rt.block_on(fs_meta::filesystem::create(&s.meta, "fs-range", 256 << 20)).unwrap();
    let (ma, a) = s.mount("fs-range", "a");
    let (mb, b) = s.mount("fs-range", "b");
    const MIB: usize = 1 << 20;
    let mut rng = rand::rngs::StdRng::seed_from_u64(28);
    let mut data = vec![0u8; 32 * MIB + 12_345];
    rng.fill(&mut data[..]);
    fs::write(a.join("big"), &data).unwrap();
    let served = || -> f64 {
        let (_, m) = integration_tests::http_get(s.node.http, "/metrics").unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("cairn_node_chunk_get_bytes_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let before = served();
    let f = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(b.join("big")).unwrap();
    const READS: usize = 300;
    let mut buf = AlignedPage::default();
    for _ in 0..READS {
        let off = rng.gen_range(0..data.len() / 4096) * 4096;
        let n = f.read_at(&mut buf.0, off as u64).unwrap();
        let want = &data[off..(off + 4096).min(data.len())];
        assert_eq!(n, want.len());
        assert!(&buf.0[..n] == want, "4 KiB at {off}");
    }
    drop(f);
    let read = served() - before;
    // Each chunk is read whole once on the node (its group CVs are computed), then 8 KiB or
    // less per read, and now and then a few blocks whole when reads happen to fall on blocks in
    // a row; whole-chunk reads would be ~1 MiB per read, over 200 MiB here.
    let bound = (64 * MIB) as f64;
    eprintln!("{READS} random 4 KiB reads of a 32 MiB file: {:.1} MiB from the node", read / MIB as f64);

    assert!(read < bound, "{read} bytes read from the node for {READS} reads of 4 KiB (bound {bound})");
    // Reads that cross blocks and the file's short last block, through both clients.
    for (off, len) in [(MIB - 100, 300), (32 * MIB, 12_345), (32 * MIB + 12_000, 1000), (5 * MIB + 7, 2 * MIB)] {
        for mnt in [&a, &b] {
            let g = File::open(mnt.join("big")).unwrap();
            let mut out = vec![0u8; len];
            let n = g.read_at(&mut out, off as u64).unwrap();
            let want = &data[off..(off + len).min(data.len())];
            assert!(n <= want.len() && out[..n] == want[..n], "{len} bytes at {off}");
        }
    }
    // A mount with a read cache: a file read once is then read at random from memory, across
    // closes (the cache is the mount's, not the open file's).
    let (mc, c) = s.mount_with_cache("fs-range", "c", 64 << 20);
    let small = &data[..16 * MIB];
    fs::write(a.join("small"), small).unwrap();
    assert!(fs::read(c.join("small")).unwrap() == small);
    let before = served();
    let f = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(c.join("small")).unwrap();
    for _ in 0..100 {
        let off = rng.gen_range(0..small.len() / 4096) * 4096;
        assert_eq!(f.read_at(&mut buf.0, off as u64).unwrap(), 4096);
        assert!(buf.0[..] == small[off..off + 4096], "cached 4 KiB at {off}");
    }
    drop(f);
    assert_eq!(served() - before, 0.0, "random reads of a file read before went to the node");
    let stats = mc.client().read_cache_stats();
    assert!(stats.hits >= 50 && stats.bytes >= 16 * MIB as u64, "{stats:?}");
    s.rt.block_on(async {
        mc.unmount().await.unwrap();
        mb.unmount().await.unwrap();
        ma.unmount().await.unwrap();
    });
}

/// A 4 KiB buffer aligned for O_DIRECT.
#[repr(align(4096))]
struct AlignedPage([u8; 4096]);

impl Default for AlignedPage {
    fn default() -> Self {
        AlignedPage([0; 4096])
    }
}

fn not_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root: FUSE tests must not be skipped there");
        eprintln!("skipped: FUSE mounts need root");
        return true;
    }
    false
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

fn set_xattr(p: &Path, name: &str, value: &[u8], flags: i32) -> std::io::Result<()> {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::setxattr(cpath(p).as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn get_xattr(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::getxattr(cpath(p).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn list_xattr(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string and a buffer of the given length.
    let r = unsafe { libc::listxattr(cpath(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf.truncate(r as usize);
    buf.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// Runs a shell command as uid/gid 65534 (nobody); returns whether it succeeded.
/// What the other client's bare stat shows once the watch has told it of a change. Such a stat is
/// answered from the client's watch-kept cache, which trails another client's commit by the watch's
/// delivery (well under a millisecond idle, more on a loaded machine); the promise is close-to-open,
/// so a stat without an open is given up to 5 s to agree. A cache that never learns fails.
fn seen<T: PartialEq + std::fmt::Debug>(want: T, what: &str, mut get: impl FnMut() -> T) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = get();
        if got == want || std::time::Instant::now() > deadline {
            assert_eq!(got, want, "{what}");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn as_nobody(cmd: &str) -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", cmd])
        .status()
        .unwrap()
        .success()
}

#[test]
fn shared_filesystem_posix_and_two_clients() {
    if not_root() {
        return;
    }
    let s = start();
    // Mount handles must drop inside the runtime, also when the test fails.
    let _rt = s.rt.enter();
    let _guard = MountGuard(s.dir.path().to_path_buf());
    s.rt.block_on(fs_meta::filesystem::create(&s.meta, "fs-test", 64 << 20)).unwrap();
    let (ma, a) = s.mount("fs-test", "a");
    let (mb, b) = s.mount("fs-test", "b");

    // Files and directories; what one client closed the other reads.
    fs::create_dir(a.join("d1")).unwrap();
    fs::write(a.join("d1/hello"), b"hello from a").unwrap();
    assert_eq!(fs::read(b.join("d1/hello")).unwrap(), b"hello from a");
    let st = fs::metadata(b.join("d1/hello")).unwrap();
    assert_eq!(st.len(), 12);
    assert_eq!(fs::metadata(a.join("d1")).unwrap().nlink(), 2);
    fs::create_dir(a.join("d1/sub")).unwrap();
    seen(3, "a subdirectory counts a link of its parent", || fs::metadata(b.join("d1")).unwrap().nlink());
    assert_eq!(errno_of(&fs::create_dir(b.join("d1")).unwrap_err()), libc::EEXIST);
    assert_eq!(errno_of(&fs::remove_dir(b.join("d1")).unwrap_err()), libc::ENOTEMPTY);
    assert_eq!(errno_of(&fs::read(a.join("nope")).unwrap_err()), libc::ENOENT);
    // A missing name is cached as missing; the watch drops that when another client makes it.
    assert!(!b.join("d1/later").exists());
    assert!(!b.join("d1/later").exists(), "asked twice: the second answer is the cached absence");
    fs::write(a.join("d1/later"), b"made by a").unwrap();
    seen(true, "a name made by the other client appears", || b.join("d1/later").exists());
    assert_eq!(fs::read(b.join("d1/later")).unwrap(), b"made by a");
    fs::remove_file(b.join("d1/later")).unwrap();
    seen(false, "and its removal is seen too", || a.join("d1/later").exists());
    let mut names: Vec<String> =
        fs::read_dir(b.join("d1")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["hello", "sub"]);

    // Names longer than 255 bytes.
    let long = "x".repeat(256);
    assert_eq!(errno_of(&File::create(a.join(&long)).unwrap_err()), libc::ENAMETOOLONG);
    File::create(a.join("x".repeat(255))).unwrap();
    fs::remove_file(a.join("x".repeat(255))).unwrap();

    // O_EXCL, O_APPEND, appends seen across clients.
    let excl = OpenOptions::new().write(true).create_new(true).open(a.join("d1/hello"));
    assert_eq!(errno_of(&excl.unwrap_err()), libc::EEXIST);
    {
        let mut f = OpenOptions::new().append(true).open(b.join("d1/hello")).unwrap();
        f.write_all(b", appended by b").unwrap();
    }
    assert_eq!(fs::read(a.join("d1/hello")).unwrap(), b"hello from a, appended by b");

    // Symlinks and hard links.
    symlink("d1/hello", a.join("ln")).unwrap();
    assert_eq!(fs::read_link(b.join("ln")).unwrap(), Path::new("d1/hello"));
    assert_eq!(fs::read(b.join("ln")).unwrap(), b"hello from a, appended by b");
    fs::hard_link(a.join("d1/hello"), a.join("hard")).unwrap();
    seen(2, "link count after a hard link", || fs::metadata(b.join("d1/hello")).unwrap().nlink());
    assert_eq!(fs::metadata(b.join("hard")).unwrap().ino(), fs::metadata(b.join("d1/hello")).unwrap().ino());
    fs::remove_file(a.join("hard")).unwrap();
    seen(1, "link count after its unlink", || fs::metadata(b.join("d1/hello")).unwrap().nlink());
    assert_eq!(errno_of(&fs::hard_link(a.join("d1"), a.join("dlink")).unwrap_err()), libc::EPERM);

    // Rename: across directories, replacing (atomically), a directory into its own subtree.
    fs::write(a.join("d1/sub/old"), b"old").unwrap();
    fs::write(a.join("new"), b"new").unwrap();
    fs::rename(a.join("new"), a.join("d1/sub/old")).unwrap();
    assert_eq!(fs::read(b.join("d1/sub/old")).unwrap(), b"new");
    seen(false, "the renamed name is gone", || b.join("new").exists());
    fs::create_dir(a.join("d2")).unwrap();
    fs::rename(a.join("d1/sub"), a.join("d2/moved")).unwrap();
    assert_eq!(fs::read(b.join("d2/moved/old")).unwrap(), b"new");
    seen(2, "the old parent lost a subdirectory", || fs::metadata(b.join("d1")).unwrap().nlink());
    seen(3, "the new parent gained one", || fs::metadata(b.join("d2")).unwrap().nlink());
    assert_eq!(errno_of(&fs::rename(a.join("d2"), a.join("d2/moved/inside")).unwrap_err()), libc::EINVAL);
    fs::create_dir(a.join("empty")).unwrap();
    fs::rename(a.join("d1"), a.join("empty")).unwrap(); // a directory replaces an empty one
    seen(true, "a directory replaced an empty one", || b.join("empty/hello").exists());
    assert_eq!(errno_of(&fs::rename(a.join("empty"), a.join("d2")).unwrap_err()), libc::ENOTEMPTY);
    assert_eq!(errno_of(&fs::rename(a.join("ln"), a.join("d2")).unwrap_err()), libc::EISDIR);

    // Unlink of an open file: the open handle keeps reading it.
    fs::write(a.join("open-unlinked"), vec![7u8; 300_000]).unwrap();
    {
        let mut f = File::open(a.join("open-unlinked")).unwrap();
        fs::remove_file(a.join("open-unlinked")).unwrap();
        seen(false, "an unlinked open file is gone from the namespace", || b.join("open-unlinked").exists());
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, vec![7u8; 300_000]);
    }

    // Modes, owners, permission checks (the kernel's, on our attributes).
    fs::write(a.join("private"), b"secret").unwrap();
    fs::set_permissions(a.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
    seen(0o600, "chmod seen across", || fs::metadata(b.join("private")).unwrap().mode() & 0o7777);
    let p = b.join("private");
    assert!(!as_nobody(&format!("cat {} > /dev/null", p.display())), "nobody must not read a 0600 root file");
    std::os::unix::fs::chown(a.join("private"), Some(65534), Some(65534)).unwrap();
    seen(65534, "chown seen across", || fs::metadata(b.join("private")).unwrap().uid());
    assert!(as_nobody(&format!("cat {} > /dev/null", p.display())), "the owner reads it");
    assert!(as_nobody(&format!("echo hi > {}/by-nobody", b.display())), "the root directory is 0777");
    assert_eq!(fs::metadata(a.join("by-nobody")).unwrap().uid(), 65534);
    fs::create_dir(a.join("locked")).unwrap();
    fs::set_permissions(a.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    assert!(!as_nobody(&format!("touch {}/locked/x", b.display())));

    // Timestamps: explicit times are kept; a write moves mtime; noatime.
    let f = File::options().write(true).open(a.join("private")).unwrap();
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).unwrap();
    drop(f);
    seen((1_000_000_000, 1_000_000_000), "explicit times kept", || {
        let m = fs::metadata(b.join("private")).unwrap();
        (m.mtime(), m.atime())
    });
    fs::write(a.join("private"), b"changed").unwrap();
    seen(true, "a write moves mtime", || fs::metadata(b.join("private")).unwrap().mtime() > 1_000_000_000);

    // Truncate and sparse files: holes read as zeros, growing never uncovers old bytes.
    {
        let f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(a.join("sparse")).unwrap();
        f.write_all_at(b"tail", 5 << 20).unwrap();
        f.sync_all().unwrap();
        assert_eq!(f.metadata().unwrap().len(), (5 << 20) + 4);
        f.write_all_at(&[9u8; 3000], 100).unwrap();
        f.set_len(1000).unwrap();
        f.set_len(4000).unwrap();
    }
    let got = fs::read(b.join("sparse")).unwrap();
    assert_eq!(got.len(), 4000);
    assert!(got[..100].iter().all(|x| *x == 0));
    assert!(got[100..1000].iter().all(|x| *x == 9));
    assert!(got[1000..].iter().all(|x| *x == 0), "bytes cut by truncate come back as zeros");

    // fallocate: size grows (thin); punching a hole zeroes.
    let st = Command::new("fallocate").args(["-l", "2M"]).arg(a.join("falloc")).status().unwrap();
    assert!(st.success());
    seen(2 << 20, "fallocate grows the size", || fs::metadata(b.join("falloc")).unwrap().len());
    fs::write(a.join("punch"), vec![5u8; 200_000]).unwrap();
    let st = Command::new("fallocate").args(["-p", "-o", "1000", "-l", "5000"]).arg(a.join("punch")).status().unwrap();
    assert!(st.success());
    let got = fs::read(b.join("punch")).unwrap();
    assert_eq!(got.len(), 200_000);
    assert!(got[1000..6000].iter().all(|x| *x == 0) && got[6000..].iter().all(|x| *x == 5) && got[999] == 5);

    // Extended attributes.
    set_xattr(&a.join("private"), "user.color", b"blue", 0).unwrap();
    assert_eq!(get_xattr(&b.join("private"), "user.color").unwrap(), b"blue");
    assert_eq!(
        errno_of(&set_xattr(&a.join("private"), "user.color", b"red", libc::XATTR_CREATE).unwrap_err()),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(&set_xattr(&a.join("private"), "user.none", b"x", libc::XATTR_REPLACE).unwrap_err()),
        libc::ENODATA
    );
    assert!(list_xattr(&b.join("private")).contains(&"user.color".to_string()));
    assert_eq!(errno_of(&get_xattr(&b.join("private"), "user.none").unwrap_err()), libc::ENODATA);
    // Removing an inode takes its attributes with it; one that never had any needs no look.
    fs::write(a.join("tagged"), b"").unwrap();
    set_xattr(&a.join("tagged"), "user.tag", b"1", 0).unwrap();
    fs::write(a.join("untagged"), b"").unwrap();
    fs::create_dir(a.join("tagged-dir")).unwrap();
    set_xattr(&a.join("tagged-dir"), "user.tag", b"2", 0).unwrap();
    let inos: Vec<u64> =
        ["tagged", "untagged", "tagged-dir"].iter().map(|n| fs::metadata(a.join(n)).unwrap().ino()).collect();
    fs::remove_file(b.join("tagged")).unwrap();
    fs::remove_file(a.join("untagged")).unwrap();
    fs::remove_dir(a.join("tagged-dir")).unwrap();
    for ino in inos {
        let prefix = fs_meta::keys::xattrs("fs-test", ino);
        let left = s.rt.block_on(s.meta.range(&prefix, &metadata_client::prefix_end(&prefix), 10)).unwrap();
        assert!(left.kvs.is_empty(), "attributes of inode {ino} outlived it");
    }

    // Advisory locks hold across clients: flock, and fcntl byte ranges.
    fs::write(a.join("lockme"), b"x").unwrap();
    let flock_n = |p: &Path| Command::new("flock").args(["-n", "-x"]).arg(p).arg("true").status().unwrap().success();
    {
        let held = File::open(a.join("lockme")).unwrap();
        // SAFETY: flock on an open descriptor.
        assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) }, 0);
        assert!(!flock_n(&b.join("lockme")), "an flock held through one client blocks the other");
        drop(held);
        // Closing the holder releases it (through the kernel's asynchronous RELEASE).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !flock_n(&b.join("lockme")) {
            assert!(std::time::Instant::now() < deadline, "closing the holder never released the flock");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    {
        let fa = OpenOptions::new().read(true).write(true).open(a.join("lockme")).unwrap();
        let fb = OpenOptions::new().read(true).write(true).open(b.join("lockme")).unwrap();
        let lock = |f: &File, kind: i32, start: i64, len: i64, cmd: i32| {
            // SAFETY: an all-zero flock struct is valid; fcntl gets a valid descriptor.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = kind as i16;
            fl.l_whence = libc::SEEK_SET as i16;
            fl.l_start = start;
            fl.l_len = len;
            // SAFETY: valid descriptor and struct.
            let r = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(f), cmd, &mut fl) };
            (r, std::io::Error::last_os_error().raw_os_error().unwrap_or(0), fl.l_type as i32)
        };
        // The `flock` command's lock is released by the kernel's asynchronous RELEASE after the
        // command exits (and flock and fcntl locks share one table here): wait for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while lock(&fa, libc::F_WRLCK, 0, 100, libc::F_SETLK).0 != 0 {
            assert!(std::time::Instant::now() < deadline, "the released flock never went away");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (r, e, _) = lock(&fb, libc::F_WRLCK, 50, 10, libc::F_SETLK);
        assert!(r == -1 && (e == libc::EAGAIN || e == libc::EACCES), "conflicting range: {r} {e}");
        assert_eq!(lock(&fb, libc::F_RDLCK, 50, 10, libc::F_GETLK).2, libc::F_WRLCK);
        assert_eq!(lock(&fb, libc::F_WRLCK, 200, 100, libc::F_SETLK).0, 0, "a disjoint range is free");
        assert_eq!(lock(&fa, libc::F_UNLCK, 0, 100, libc::F_SETLK).0, 0);
        assert_eq!(lock(&fb, libc::F_WRLCK, 50, 10, libc::F_SETLK).0, 0, "unlocked by its holder");
        // Closing any descriptor of the holding process releases its fcntl locks on the file
        // (POSIX), even one opened after the lock was taken.
        assert_eq!(lock(&fb, libc::F_UNLCK, 0, 0, libc::F_SETLK).0, 0);
        assert_eq!(lock(&fa, libc::F_WRLCK, 0, 10, libc::F_SETLK).0, 0);
        let (r, _, _) = lock(&fb, libc::F_WRLCK, 0, 10, libc::F_SETLK);
        assert_eq!(r, -1, "the holder's range is taken");
        drop(File::open(a.join("lockme")).unwrap());
        assert_eq!(lock(&fb, libc::F_WRLCK, 0, 10, libc::F_SETLK).0, 0, "closing a descriptor released the fcntl lock");
    }

    // fsync'd data is in the metadata service and the pool: a third client, mounted after,
    // reads it.
    {
        let mut f = File::create(a.join("synced")).unwrap();
        f.write_all(&vec![3u8; 1_500_000]).unwrap();
        f.sync_all().unwrap();
        let (mc, c) = s.mount("fs-test", "c");
        assert_eq!(fs::read(c.join("synced")).unwrap(), vec![3u8; 1_500_000]);
        s.rt.block_on(mc.unmount()).unwrap();
    }

    // statfs reports the quota; writes past it fail with EDQUOT; raising it lifts the limit.
    // SAFETY: statvfs fills the struct it is given.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and struct.
    assert_eq!(unsafe { libc::statvfs(cpath(&a).as_ptr(), &mut sv) }, 0);
    assert_eq!(sv.f_blocks * sv.f_frsize, 64 << 20);
    // Clients add their inode counts to the usage record every second.
    std::thread::sleep(Duration::from_millis(1500));
    let used = s.rt.block_on(fs_meta::filesystem::usage(&s.meta, "fs-test")).unwrap();
    assert!(used.bytes > 3 << 20 && used.inodes > 10, "{used:?}");
    let big = vec![1u8; 1 << 20];
    let mut f = File::create(a.join("fill")).unwrap();
    let mut err = None;
    for _ in 0..80 {
        if let Err(e) = f.write_all(&big).and_then(|_| f.sync_all()) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("writes past the quota must fail");
    assert_eq!(errno_of(&err), libc::EDQUOT, "{err}");
    drop(f);
    // Growing a file by truncation past the quota is refused too: by the client early, and by
    // the namespace itself (the check in the truncate's transaction).
    let sparse = File::create(a.join("sparse")).unwrap();
    let grown = sparse.set_len(1 << 30).unwrap_err();
    assert_eq!(errno_of(&grown), libc::EDQUOT, "{grown}");
    let ino = sparse.metadata().unwrap().ino();
    let grown = s.rt.block_on(async {
        fs_meta::Namespace::open(s.meta.clone(), "fs-test").await.unwrap().truncate(ino, 1 << 30, None).await
    });
    assert!(matches!(grown, Err(fs_meta::FsError::Quota { .. })), "{grown:?}");
    drop(sparse);
    fs::remove_file(a.join("sparse")).unwrap();
    s.rt.block_on(fs_meta::filesystem::set_quota(&s.meta, "fs-test", 256 << 20)).unwrap();
    std::thread::sleep(Duration::from_millis(600)); // the client's quota reading expires
    let mut f = OpenOptions::new().append(true).open(a.join("fill")).unwrap();
    f.write_all(&big).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::remove_file(a.join("fill")).unwrap();

    // fsx through one client, checked through the other (CAIRN_FSX_OPS for long runs).
    let ops = std::env::var("CAIRN_FSX_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let o = integration_tests::fsx::FsxOptions { seed: 0xC0FFEE, ops, ..Default::default() };
    integration_tests::fsx::fsx(&a, &b, "fsx-file", o).unwrap();

    s.rt.block_on(ma.unmount()).unwrap();
    s.rt.block_on(mb.unmount()).unwrap();
    let clients = s.rt.block_on(fs_meta::filesystem::clients(&s.meta, "fs-test")).unwrap();
    assert!(clients.is_empty(), "{clients:?}");
    // Deleting the filesystem releases every key and chunk reference.
    s.rt.block_on(fs_meta::filesystem::delete(&s.meta, "fs-test")).unwrap();
    let left = s.rt.block_on(s.meta.range(b"fs/", b"fs0", 10)).unwrap();
    assert!(left.kvs.is_empty(), "{:?}", left.kvs.first().map(|k| String::from_utf8_lossy(&k.key).into_owned()));
    let refs = s.rt.block_on(s.meta.range(b"cluster/refs/", b"cluster/refs0", 100_000)).unwrap();
    assert!(!refs.kvs.iter().any(|kv| String::from_utf8_lossy(&kv.key).contains("/fs:fs-test:")));
}

