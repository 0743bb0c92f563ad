//! The lifecycle harness's writers and checks: a filesystem writer (whole-file replacement by
//! write, fsync, rename, fsync of the directory; unlinks) and a block writer (4 KiB records
//! written with O_DIRECT at slots across a raw device, then fdatasync), each keeping a ledger of
//! what it began and what was acknowledged, so that after a crash every slot or file can be
//! checked: it must hold the last acknowledged state or one begun after it (an operation the
//! crash cut off), never anything else, never a mix. The writers run in threads of the test
//! process (which no test kills) and ride through outages: an error ends their session with
//! the volume, and they look for it again (by a sentinel file or a block device at the path)
//! after a pause — never writing to whatever lies under a mount that is gone.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

/// What a check found: acknowledged writes so far, and how many checked items were lost (an
/// acknowledged state gone), wrong (a state never written, or a mix) or partial (cut short).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Writes acknowledged (fsync returned) since the writer started.
    pub acked: u64,
    /// Items checked.
    pub checked: u64,
    /// Items whose acknowledged state is gone.
    pub lost: u64,
    /// Items holding a state never written, or a torn mix.
    pub wrong: u64,
    /// Items cut short.
    pub partial: u64,
}

impl Tally {
    /// Adds another check's counts.
    pub fn add(&mut self, o: Tally) {
        self.acked += o.acked;
        self.checked += o.checked;
        self.lost += o.lost;
        self.wrong += o.wrong;
        self.partial += o.partial;
    }

    /// Nothing lost, wrong or partial.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.wrong == 0 && self.partial == 0
    }
}

/// One item's ledger: the state acknowledged (or seen by a check) last, and states begun since.
#[derive(Debug, Clone, Default)]
pub struct Entry<S> {
    settled: Option<S>,
    begun: Vec<S>,
}

impl<S: Clone + PartialEq> Entry<S> {
    fn allows(&self, s: &S, initial: &S) -> bool {
        self.settled.as_ref().unwrap_or(initial) == s || self.begun.contains(s)
    }
    fn settle(&mut self, s: S) {
        self.settled = Some(s);
        self.begun.clear();
    }
}

/// Pause handshake between the test and a writer thread.
#[derive(Default)]
struct Control {
    stop: AtomicBool,
    pause: AtomicBool,
    idle: AtomicBool,
    acked: AtomicU64,
    sessions: AtomicU64,
    /// Why sessions ended (the first few).
    errors: Mutex<Vec<String>>,
}

/// A writer thread, paused for checks and stopped at the end.
pub struct Writer<L> {
    ctl: Arc<Control>,
    ledger: Arc<Mutex<L>>,
    thread: Option<JoinHandle<()>>,
}

impl<L> Writer<L> {
    /// Stops between operations and waits (up to `within`) until the thread is idle.
    pub fn pause(&self, within: Duration) {
        self.ctl.pause.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + within;
        while !self.ctl.idle.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the writer did not pause within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets it go on.
    pub fn resume(&self) {
        self.ctl.idle.store(false, Ordering::SeqCst);
        self.ctl.pause.store(false, Ordering::SeqCst);
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> u64 {
        self.ctl.acked.load(Ordering::SeqCst)
    }

    /// Sessions it opened with the volume (1 + the outages it rode through).
    pub fn sessions(&self) -> u64 {
        self.ctl.sessions.load(Ordering::SeqCst)
    }

    /// Why its sessions with the volume ended so far (the first 32).
    pub fn errors(&self) -> Vec<String> {
        self.ctl.errors.lock().expect("errors").clone()
    }

    /// Waits until it has acknowledged `more` writes beyond what it had (up to `within`).
    pub fn wait_for_acks(&self, more: u64, within: Duration) {
        let want = self.acked() + more;
        let deadline = Instant::now() + within;
        while self.acked() < want {
            assert!(
                Instant::now() < deadline,
                "the writer acknowledged {} of {want} writes in {within:?}",
                self.acked()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl<L> Drop for Writer<L> {
    fn drop(&mut self) {
        self.ctl.stop.store(true, Ordering::SeqCst);
        self.ctl.pause.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread's loop: waits while paused, runs `step` (Ok: go on; Err: the session ended —
/// sleep and start another).
fn spawn_loop<L: Send + 'static>(
    ledger: Arc<Mutex<L>>,
    mut step: impl FnMut(&Mutex<L>, &Control) -> Result<(), String> + Send + 'static,
) -> Writer<L> {
    let ctl = Arc::new(Control::default());
    let (c, l) = (ctl.clone(), ledger.clone());
    let thread = std::thread::spawn(move || {
        while !c.stop.load(Ordering::SeqCst) {
            if c.pause.load(Ordering::SeqCst) {
                c.idle.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            if let Err(e) = step(&l, &c) {
                let mut errors = c.errors.lock().expect("errors");
                if errors.len() < 32 {
                    errors.push(e);
                }
                drop(errors);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        c.idle.store(true, Ordering::SeqCst);
    });
    Writer { ctl, ledger, thread: Some(thread) }
}

fn cstr(name: &str) -> CString {
    CString::new(name).expect("no NUL in names")
}

fn errno(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// The name of the file every filesystem writer's volume holds at its root: a directory without
/// it is not the volume (the mount is gone and the directory beneath shows).
pub const SENTINEL: &str = ".cairn-lifecycle";

/// Filesystem ledger: file name → content hashes (None: absent).
pub type FsLedger = HashMap<String, Entry<Option<[u8; 32]>>>;

/// Starts a filesystem writer on the volume mounted at `dir` (which must hold [`SENTINEL`]),
/// over `files` files: each step replaces one file whole (write a temporary file, fsync it,
/// rename it over the file, fsync the directory) or removes it (unlink, fsync the directory),
/// all relative to a directory handle opened at the start of the session, so a mount that goes
/// away fails the session instead of writing beneath it.
pub fn fs_writer(dir: &Path, files: usize, seed: u64) -> Writer<FsLedger> {
    let dir = dir.to_path_buf();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut session: Option<OwnedFd> = None;
    spawn_loop(Arc::new(Mutex::new(FsLedger::new())), move |ledger, ctl| {
        let d = match &session {
            Some(d) => d.as_raw_fd(),
            None => {
                let p = CString::new(dir.as_os_str().as_bytes()).expect("path");
                // SAFETY: a valid C string; the fd is owned below.
                let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(errno("open dir"));
                }
                // SAFETY: fd was just opened and is ours.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: valid fd, C string and out pointer.
                if unsafe { libc::fstatat(fd, cstr(SENTINEL).as_ptr(), &mut st, 0) } != 0 {
                    return Err("no sentinel: the volume is not mounted there".into());
                }
                session = Some(owned);
                ctl.sessions.fetch_add(1, Ordering::SeqCst);
                fd
            }
        };
        let i = rng.gen_range(0..files);
        let name = format!("f{i}");
        let remove = rng.gen_ratio(1, 6);
        let content: Option<Vec<u8>> = (!remove).then(|| {
            let n = *[0usize, 1, 777, 4096, 65_536, 200_000].get(rng.gen_range(0..6)).expect("in range");
            let mut v = vec![0u8; n];
            rng.fill(&mut v[..]);
            v
        });
        let state = content.as_ref().map(|c| *blake3::hash(c).as_bytes());
        ledger.lock().expect("ledger").entry(name.clone()).or_default().begun.push(state);
        let res = (|| -> Result<(), String> {
            // SAFETY (all calls below): valid fds and C strings.
            match &content {
                Some(c) => {
                    let tmp = cstr(&format!("{name}.tmp"));
                    let fd = unsafe {
                        libc::openat(
                            d,
                            tmp.as_ptr(),
                            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                            0o644,
                        )
                    };
                    if fd < 0 {
                        return Err(errno("create"));
                    }
                    let f = unsafe { std::fs::File::from_raw_fd(fd) };
                    f.write_all_at(c, 0).map_err(|e| format!("write: {e}"))?;
                    f.sync_all().map_err(|e| format!("fsync: {e}"))?;
                    drop(f);
                    if unsafe { libc::renameat(d, tmp.as_ptr(), d, cstr(&name).as_ptr()) } != 0 {
                        return Err(errno("rename"));
                    }
                }
                None => {
                    if unsafe { libc::unlinkat(d, cstr(&name).as_ptr(), 0) } != 0
                        && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
                    {
                        return Err(errno("unlink"));
                    }
                }
            }
            if unsafe { libc::fsync(d) } != 0 {
                return Err(errno("fsync dir"));
            }
            Ok(())
        })();
        match res {
            Ok(()) => {
                ledger.lock().expect("ledger").get_mut(&name).expect("begun").settle(state);
                ctl.acked.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                session = None;
                Err(e)
            }
        }
    })
}

impl Writer<FsLedger> {
    /// Checks every file the writer touched, in the volume mounted at `dir` (paused first).
    pub fn check_files(&self, dir: &Path) -> Tally {
        let mut ledger = self.ledger.lock().expect("ledger");
        let mut t = Tally { acked: self.acked(), ..Default::default() };
        assert!(dir.join(SENTINEL).exists(), "{} is not the volume (no sentinel)", dir.display());
        for (name, e) in ledger.iter_mut() {
            t.checked += 1;
            let got = match std::fs::read(dir.join(name)) {
                Ok(b) => Some(*blake3::hash(&b).as_bytes()),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(err) => panic!("cannot read {name}: {err}"),
            };
            if e.allows(&got, &None) {
                e.settle(got);
            } else if got.is_none() {
                eprintln!("fs {name}: LOST (acknowledged {:?})", e.settled.map(|s| s.map(hex8)));
                t.lost += 1;
            } else {
                eprintln!("fs {name}: WRONG content {:?}", got.map(hex8));
                t.wrong += 1;
            }
        }
        t
    }
}

fn hex8(h: [u8; 32]) -> String {
    h[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes per block record.
pub const RECORD: usize = 4096;
const MAGIC: &[u8; 8] = b"CAIRNBLK";

/// Block ledger: slot → sequence numbers (0: never written, zeros).
pub type BlockLedger = Vec<Entry<u64>>;

/// The record for `slot` at `seq`: magic, slot, seq, then bytes drawn from both.
pub fn block_record(slot: u64, seq: u64) -> Vec<u8> {
    let mut v = vec![0u8; RECORD];
    v[..8].copy_from_slice(MAGIC);
    v[8..16].copy_from_slice(&slot.to_le_bytes());
    v[16..24].copy_from_slice(&seq.to_le_bytes());
    let mut r = rand::rngs::StdRng::seed_from_u64(slot << 32 ^ seq);
    r.fill(&mut v[24..]);
    v
}

/// A 4 KiB-aligned buffer for O_DIRECT.
struct Aligned(Vec<u8>, usize);

impl Aligned {
    fn new() -> Self {
        let v = vec![0u8; RECORD * 2];
        let off = v.as_ptr().align_offset(RECORD);
        Aligned(v, off)
    }
    fn buf(&mut self) -> &mut [u8] {
        &mut self.0[self.1..self.1 + RECORD]
    }
}

/// Starts a block writer on the raw block device published at `path`: each step writes 1–8
/// records (O_DIRECT) at random slots of `slots` spread `stride` bytes apart, then fdatasyncs;
/// only then are they acknowledged. A session is an open block device (a path that holds no
/// block device — the publication is gone — ends it before anything is written).
pub fn block_writer(path: &Path, slots: u64, stride: u64, seed: u64) -> Writer<BlockLedger> {
    let path: PathBuf = path.to_path_buf();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut session: Option<std::fs::File> = None;
    let mut seq = 0u64;
    let mut buf = Aligned::new();
    let ledger = Arc::new(Mutex::new(vec![Entry::default(); slots as usize]));
    spawn_loop(ledger, move |ledger, ctl| {
        if session.is_none() {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .map_err(|e| format!("open: {e}"))?;
            if !f.metadata().map_err(|e| e.to_string())?.file_type().is_block_device() {
                return Err("not a block device: the publication is gone".into());
            }
            session = Some(f);
            ctl.sessions.fetch_add(1, Ordering::SeqCst);
        }
        let f = session.as_ref().expect("session");
        let n = rng.gen_range(1..=8);
        let mut wrote = Vec::new();
        let mut res = Ok(());
        for _ in 0..n {
            let slot = rng.gen_range(0..slots);
            seq += 1;
            ledger.lock().expect("ledger")[slot as usize].begun.push(seq);
            buf.buf().copy_from_slice(&block_record(slot, seq));
            if let Err(e) = f.write_all_at(buf.buf(), slot * stride) {
                res = Err(format!("write: {e}"));
                break;
            }
            wrote.push((slot, seq));
        }
        if res.is_ok() {
            res = f.sync_data().map_err(|e| format!("fdatasync: {e}"));
        }
        match res {
            Ok(()) => {
                let mut l = ledger.lock().expect("ledger");
                // A slot written twice in one step: the later write is the acknowledged state.
                for (slot, s) in wrote {
                    let e = &mut l[slot as usize];
                    if e.settled.is_none_or(|old| old < s) {
                        e.settle(s);
                    }
                }
                ctl.acked.fetch_add(n, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                session = None;
                Err(e)
            }
        }
    })
}

impl Writer<BlockLedger> {
    /// Reads every slot back from the device at `path` (paused first) and checks it.
    pub fn check_slots(&self, path: &Path, stride: u64) -> Tally {
        let mut ledger = self.ledger.lock().expect("ledger");
        let mut t = Tally { acked: self.acked(), ..Default::default() };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        assert!(f.metadata().unwrap().file_type().is_block_device(), "{} is no block device", path.display());
        let mut buf = Aligned::new();
        for (slot, e) in ledger.iter_mut().enumerate() {
            let slot = slot as u64;
            t.checked += 1;
            f.read_exact_at(buf.buf(), slot * stride).unwrap_or_else(|e| panic!("read slot {slot}: {e}"));
            let b = buf.buf();
            let seq = if b.iter().all(|x| *x == 0) {
                Some(0)
            } else if &b[..8] == MAGIC && b[8..16] == slot.to_le_bytes() {
                let s = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
                (b == &block_record(slot, s)[..]).then_some(s)
            } else {
                None
            };
            match seq {
                Some(s) if e.allows(&s, &0) => e.settle(s),
                Some(0) => {
                    eprintln!("block slot {slot}: LOST (zeros; acknowledged seq {:?})", e.settled);
                    t.lost += 1;
                }
                Some(s) => {
                    eprintln!("block slot {slot}: WRONG seq {s} (acknowledged {:?}, begun {:?})", e.settled, e.begun);
                    if e.settled.is_some_and(|a| s < a) { t.lost += 1 } else { t.wrong += 1 }
                }
                None => {
                    eprintln!("block slot {slot}: WRONG: torn or foreign bytes");
                    t.wrong += 1;
                }
            }
        }
        t
    }
}
