//! What every Cairn daemon shares: logging setup, shutdown signals, free-port binding and the
//! HTTP endpoint serving Prometheus `/metrics` and `/healthz`.

mod http;
pub mod metrics;
mod signals;

pub use http::{HttpError, HttpState, serve_http};
pub use signals::{ShutdownSignal, shutdown_signal};

/// Cairn's own crates and binaries, as `tracing` names their targets.
const OUR_TARGETS: &[&str] = &[
    "block_frontend",
    "cairn",
    "cairn_cli",
    "cairn_local",
    "cairn_proto",
    "chunk_engine",
    "cluster",
    "csi_block",
    "csi_fs",
    "csi_kit",
    "daemon_kit",
    "format_version",
    "fs_client",
    "fs_meta",
    "kv_engine",
    "local_allinone",
    "metadata_client",
    "metadata_node",
    "metadata_service",
    "mtls",
    "node_client",
    "objectd",
    "placement",
    "storage_node",
    "volume_engine",
];

/// The filter a log setting stands for. `info` (the default) means our crates at info and
/// dependencies (hyper, h2, tonic, openraft, s3s, ...) at warn, so a console shows what Cairn
/// does rather than its libraries' chatter; `debug`, `trace` and any filter with directives
/// (`storage_node=debug,info`) mean exactly what they say.
pub fn log_filter(filter: &str) -> String {
    let f = filter.trim();
    if f.eq_ignore_ascii_case("info") {
        let ours: Vec<String> = OUR_TARGETS.iter().map(|t| format!("{t}=info")).collect();
        format!("warn,{}", ours.join(","))
    } else {
        f.to_string()
    }
}

/// Initialises `tracing` logs on stderr. `filter` uses `RUST_LOG` syntax (e.g. `info`,
/// `storage_node=debug`), read as [`log_filter`] says; `RUST_LOG`, when set, wins as it is.
/// Safe to call twice.
pub fn init_tracing(filter: &str) {
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(filter)));
    let _ = tracing_subscriber::fmt().with_env_filter(env).with_target(true).with_writer(std::io::stderr).try_init();
}

/// Every binary that links daemon-kit allocates through jemalloc.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Tunes glibc's malloc, which still serves what C and C++ code allocates (RocksDB): freed
/// memory is kept instead of being handed back to the kernel at once (allocations up to 32 MiB
/// come from the heap, up to 256 MiB of free heap is kept, in one arena; per-thread arenas unmap
/// a whole heap the moment it empties, and the next buffer faults in fresh pages again). Rust
/// allocations go to jemalloc (above). Called by [`run_daemon`]; a no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Raises this process's soft limit of open files to its hard limit: a storage node keeps each
/// segment file open (about 16,000 per TB of 64 MiB segments), more than the usual soft limit
/// of 1,024. Called by [`run_daemon`]; what it cannot raise stays as it was.
pub fn raise_open_files_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The whole `main` of a daemon: a configuration error is one line on stderr and exit code 2;
/// otherwise logging starts, `run` serves until SIGTERM/SIGINT, and a failure is one line and
/// exit code 1.
pub fn run_daemon<C, E1, E2, F>(
    name: &str,
    config: Result<C, E1>,
    log_filter: impl FnOnce(&C) -> String,
    run: impl FnOnce(C, signals::ShutdownSignal) -> F,
) -> std::process::ExitCode
where
    E1: std::fmt::Display,
    E2: std::fmt::Display,
    F: std::future::Future<Output = Result<(), E2>>,
{
    let cfg = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_tracing(&log_filter(&cfg));
    tune_allocator();
    raise_open_files_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg, shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Reads a daemon's TOML config file; the error is one line naming the file (and, for unknown or
/// mistyped keys, the key).
pub fn read_toml_file<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config file {}: {}", path.display(), e.message()))
}

/// Binds a unix socket for a gRPC service served without TLS: a stale socket from an earlier
/// run is replaced (anything else at `path` is an error), and the socket is made mode 0600, so
/// only this user's processes may connect. Returns the accepted connections as a stream.
pub fn bind_unix(path: &std::path::Path) -> Result<tokio_stream::wrappers::UnixListenerStream, String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let fail = |what: &str, e: std::io::Error| format!("unix socket {}: {what}: {e}", path.display());
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(format!("unix socket {}: something else is there", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| fail("remove stale socket", e))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail("create directory", e))?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| fail("bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| fail("chmod 0600", e))?;
    Ok(tokio_stream::wrappers::UnixListenerStream::new(listener))
}

/// Checks a configured unix socket path: absolute and short enough for `sun_path` (108 bytes
/// with the terminating NUL). The error names `setting`.
pub fn check_unix_path(setting: &str, path: &std::path::Path) -> Result<(), String> {
    if !path.is_absolute() || path.as_os_str().len() > 107 {
        return Err(format!("{setting} must be an absolute path of at most 107 bytes, got {}", path.display()));
    }
    Ok(())
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never a torn
/// one: a temp file beside it (mode `mode`), fsync, rename, fsync the directory.
pub fn write_file_atomic(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_quiets_dependencies_only() {
        let f = log_filter("info");
        assert!(f.starts_with("warn,"), "{f}");
        for t in ["objectd=info", "storage_node=info", "cairn_local=info", "metadata_service=info"] {
            assert!(f.split(',').any(|d| d == t), "{t} missing from {f}");
        }
        assert!(tracing_subscriber::EnvFilter::try_new(&f).is_ok(), "{f}");
        assert_eq!(log_filter(" INFO "), f);
        for exact in ["debug", "trace", "warn", "storage_node=debug,info"] {
            assert_eq!(log_filter(exact), exact);
        }
    }
}
