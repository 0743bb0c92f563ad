//! `cairn-local`: every part built so far (a storage node joined to a single-voter metadata
//! group, objectd serving S3 with a first access key, the csi-block and csi-fs drivers'
//! controller and node services on unix sockets, mutual TLS with a CA of its own) in one
//! process, on embedded defaults, with its data under one directory. While it runs it keeps
//! `<data>/local.env` (KEY=value lines) so that `set -a; . data/local.env` points clients at it;
//! the file is removed on clean shutdown.

mod env_file;
mod first_key;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use metadata_service::MetaConfig;
use storage_node::NodeConfig;

/// Run Cairn locally in one process.
#[derive(Parser)]
#[command(name = "cairn-local", version, about)]
struct Cli {
    /// Where all data lives.
    #[arg(long, env = "CAIRN_DATA", default_value = "./data")]
    data: PathBuf,
    /// Storage node gRPC address.
    #[arg(long, env = "CAIRN_LOCAL_NODE_LISTEN", default_value = "127.0.0.1:7700")]
    node_listen: SocketAddr,
    /// Storage node /metrics address.
    #[arg(long, env = "CAIRN_LOCAL_NODE_HTTP", default_value = "127.0.0.1:7701")]
    node_http: SocketAddr,
    /// Metadata service API address.
    #[arg(long, env = "CAIRN_LOCAL_META_LISTEN", default_value = "127.0.0.1:7710")]
    meta_listen: SocketAddr,
    /// Metadata Raft peer address.
    #[arg(long, env = "CAIRN_LOCAL_META_PEER", default_value = "127.0.0.1:7711")]
    meta_peer: SocketAddr,
    /// Metadata /metrics address.
    #[arg(long, env = "CAIRN_LOCAL_META_HTTP", default_value = "127.0.0.1:7712")]
    meta_http: SocketAddr,
    /// S3 endpoint (objectd) address.
    #[arg(long, env = "CAIRN_LOCAL_S3_LISTEN", default_value = "127.0.0.1:7780")]
    s3_listen: SocketAddr,
    /// objectd /metrics address.
    #[arg(long, env = "CAIRN_LOCAL_S3_HTTP", default_value = "127.0.0.1:7781")]
    s3_http: SocketAddr,
    /// csi-block /metrics address.
    #[arg(long, env = "CAIRN_LOCAL_CSI_BLOCK_HTTP", default_value = "127.0.0.1:7790")]
    csi_block_http: SocketAddr,
    /// csi-fs /metrics address.
    #[arg(long, env = "CAIRN_LOCAL_CSI_FS_HTTP", default_value = "127.0.0.1:7791")]
    csi_fs_http: SocketAddr,
    /// Log filter.
    #[arg(long, env = "CAIRN_LOG", default_value = "info")]
    log: String,
    /// Metadata: log entries between snapshots (each followed by a log purge). Lower it to age
    /// a system quickly (the lifecycle tests do).
    #[arg(long, env = "CAIRN_LOCAL_SNAPSHOT_LOGS", default_value_t = MetaConfig::default().snapshot_logs)]
    snapshot_logs: u64,
    /// Storage node: segment file size in bytes (smaller: segments seal and are collected sooner).
    #[arg(long, env = "CAIRN_LOCAL_SEGMENT_SIZE", default_value_t = NodeConfig::default().segment_size)]
    segment_size: u64,
    /// Storage node: seconds between segment GC passes (0: off).
    #[arg(long, env = "CAIRN_LOCAL_GC_INTERVAL_SECS", default_value_t = NodeConfig::default().gc_interval_secs)]
    gc_interval_secs: u64,
    /// Storage node: seconds between scrubs (0: off).
    #[arg(long, env = "CAIRN_LOCAL_SCRUB_INTERVAL_SECS", default_value_t = NodeConfig::default().scrub_interval_secs)]
    scrub_interval_secs: u64,
}

fn main() -> ExitCode {
    // The node plugins in this process start each staged filesystem's FUSE client as
    // `cairn-local fs-mount` and each block volume's data path as `cairn-local volume-server`.
    if let Some(code) = csi_fs::mount_process::main_if_requested() {
        return code;
    }
    if let Some(code) = csi_block::datapath::main_if_requested() {
        return code;
    }
    let mut cli = Cli::parse();
    daemon_kit::init_tracing(&cli.log);
    // Every path it hands out (local.env, the lines it prints) is absolute, so that clients
    // find them from any directory.
    match std::fs::create_dir_all(&cli.data).and_then(|()| std::fs::canonicalize(&cli.data)) {
        Ok(d) => cli.data = d,
        Err(e) => {
            eprintln!("cairn-local: data directory {}: {e}", cli.data.display());
            return ExitCode::FAILURE;
        }
    }
    daemon_kit::tune_allocator();
    // Only members get in: a CA of its own (made at first start), one certificate for the
    // daemons in this process and one for clients (named in local.env).
    let tls = mtls::LocalCa::open_or_create(&cli.data.join("tls"))
        .and_then(|ca| Ok((ca.member("local")?, ca.member("client")?)));
    let (member, client) = match tls {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cairn-local: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The parts in this process reach each other on unix sockets (mode 0600) in the data
    // directory: no TLS or TCP between them. The TCP listeners (mutual TLS) stay for clients.
    // A data directory too deep for a socket path falls back to TCP.
    let sock =
        |name: &str| std::fs::canonicalize(&cli.data).map(|d| d.join(name)).ok().filter(|p| p.as_os_str().len() <= 107);
    let (node_sock, meta_sock) = (sock("node.sock"), sock("meta.sock"));
    let (csi_block_sock, csi_fs_sock) = (sock("csi-block.sock"), sock("csi-fs.sock"));
    if node_sock.is_none() || meta_sock.is_none() {
        tracing::warn!(data = %cli.data.display(), "data directory path too long for unix sockets; the parts talk over TCP");
    }
    let via = |s: &Option<PathBuf>, tcp: SocketAddr| match s {
        Some(p) => format!("unix://{}", p.display()),
        None => tcp.to_string(),
    };
    let (advertise, meta_addr) = (via(&node_sock, cli.node_listen), via(&meta_sock, cli.meta_listen));
    let node = NodeConfig {
        data_dir: cli.data.join("node"),
        listen: cli.node_listen,
        http_listen: cli.node_http,
        log: cli.log.clone(),
        meta: vec![meta_addr.clone()],
        node_id: "local-1".into(),
        advertise,
        unix_socket: node_sock,
        host: "local".into(),
        replicas: 1,
        segment_size: cli.segment_size,
        gc_interval_secs: cli.gc_interval_secs,
        scrub_interval_secs: cli.scrub_interval_secs,
        tls_ca: member.ca.clone(),
        tls_cert: member.cert.clone(),
        tls_key: member.key.clone(),
        ..NodeConfig::default()
    };
    if let Err(e) = node.validate() {
        eprintln!("cairn-local: {e}");
        return ExitCode::from(2);
    }
    // A single-voter metadata group, embedded.
    let meta = MetaConfig {
        id: 1,
        data_dir: cli.data.join("meta"),
        listen: cli.meta_listen,
        peer_listen: cli.meta_peer,
        http_listen: cli.meta_http,
        unix_socket: meta_sock,
        snapshot_logs: cli.snapshot_logs,
        log: cli.log.clone(),
        tls_ca: member.ca.clone(),
        tls_cert: member.cert.clone(),
        tls_key: member.key.clone(),
        ..MetaConfig::default()
    };
    if let Err(e) = meta.validate() {
        eprintln!("cairn-local: {e}");
        return ExitCode::from(2);
    }
    // The block CSI driver, controller and node "local-1" in one: its socket is what a CSI
    // client (or the sidecars) connects to. It needs a unix socket path that fits.
    let csi_block = csi_block_sock.as_ref().map(|p| csi_block::CsiBlockConfig {
        endpoint: format!("unix://{}", p.display()),
        meta: vec![meta_addr.clone()],
        controller: true,
        node_id: Some("local-1".into()),
        default_replicas: 1,
        state_dir: p.parent().map(|d| d.join("csi-block")).unwrap_or_default(),
        http_listen: cli.csi_block_http,
        log: cli.log.clone(),
        tls_ca: member.ca.clone(),
        tls_cert: member.cert.clone(),
        tls_key: member.key.clone(),
        ..csi_block::CsiBlockConfig::default()
    });
    if let Some(Err(e)) = csi_block.as_ref().map(csi_block::CsiBlockConfig::validate) {
        eprintln!("cairn-local: {e}");
        return ExitCode::from(2);
    }
    // The shared-filesystem CSI driver the same way: controller and node "local-1", each staged
    // filesystem mounted by a FUSE client process of its own (this binary, `fs-mount`).
    let csi_fs = csi_fs_sock.as_ref().map(|p| csi_fs::CsiFsConfig {
        endpoint: format!("unix://{}", p.display()),
        meta: vec![meta_addr.clone()],
        controller: true,
        node_id: Some("local-1".into()),
        state_dir: p.parent().map(|d| d.join("csi-fs")).unwrap_or_default(),
        http_listen: cli.csi_fs_http,
        log: cli.log.clone(),
        tls_ca: member.ca.clone(),
        tls_cert: member.cert.clone(),
        tls_key: member.key.clone(),
        ..csi_fs::CsiFsConfig::default()
    });
    if let Some(Err(e)) = csi_fs.as_ref().map(csi_fs::CsiFsConfig::validate) {
        eprintln!("cairn-local: {e}");
        return ExitCode::from(2);
    }
    let s3 = objectd::ObjectdConfig {
        meta: vec![meta_addr],
        listen: cli.s3_listen,
        http_listen: cli.s3_http,
        log: cli.log.clone(),
        tls_ca: member.ca.clone(),
        tls_cert: member.cert.clone(),
        tls_key: member.key.clone(),
        ..objectd::ObjectdConfig::default()
    };
    if let Err(e) = s3.validate() {
        eprintln!("cairn-local: {e}");
        return ExitCode::from(2);
    }
    let key = match first_key::open_or_create(&cli.data) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("cairn-local: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn-local: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let env = env_file::LocalEnv::new(&cli.data);
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let mut vars = vec![
        ("CAIRN_NODE".to_string(), cli.node_listen.to_string()),
        ("CAIRN_NODE_METRICS_URL".to_string(), format!("http://{}/metrics", cli.node_http)),
        ("CAIRN_META".to_string(), cli.meta_listen.to_string()),
        ("CAIRN_META_METRICS_URL".to_string(), format!("http://{}/metrics", cli.meta_http)),
        ("CAIRN_TLS_CA".to_string(), path(&client.ca)),
        ("CAIRN_TLS_CERT".to_string(), path(&client.cert)),
        ("CAIRN_TLS_KEY".to_string(), path(&client.key)),
        ("CAIRN_DATA".to_string(), cli.data.display().to_string()),
        ("AWS_ENDPOINT_URL".to_string(), format!("http://{}", cli.s3_listen)),
        ("AWS_ACCESS_KEY_ID".to_string(), key.id.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), key.secret.clone()),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
        ("AWS_DEFAULT_REGION".to_string(), "us-east-1".to_string()),
        ("CAIRN_S3_METRICS_URL".to_string(), format!("http://{}/metrics", cli.s3_http)),
    ];
    if let Some(c) = &csi_block {
        vars.push(("CSI_BLOCK_ENDPOINT".to_string(), c.endpoint.clone()));
        vars.push(("CAIRN_CSI_BLOCK_METRICS_URL".to_string(), format!("http://{}/metrics", cli.csi_block_http)));
    }
    if let Some(c) = &csi_fs {
        vars.push(("CSI_FS_ENDPOINT".to_string(), c.endpoint.clone()));
        vars.push(("CAIRN_CSI_FS_METRICS_URL".to_string(), format!("http://{}/metrics", cli.csi_fs_http)));
    }
    let res = rt.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut node_task = tokio::spawn(storage_node::run(node, stopped(stop_rx.clone())));
        let mut meta_task = tokio::spawn(metadata_service::run(meta, stopped(stop_rx.clone())));
        let mut s3_task = tokio::spawn(objectd::run(s3, stopped(stop_rx.clone())));
        let csi_block_on = csi_block.is_some();
        let csi_fs_on = csi_fs.is_some();
        let fs_stop = stop_rx.clone();
        let mut csi_fs_task = tokio::spawn(async move {
            match csi_fs {
                Some(c) => csi_fs::run(c, stopped(fs_stop)).await,
                None => {
                    tracing::warn!("data directory path too long for a unix socket; csi-fs is not started");
                    stopped(fs_stop).await;
                    Ok(())
                }
            }
        });
        let mut csi_block_task = tokio::spawn(async move {
            match csi_block {
                Some(c) => csi_block::run(c, stopped(stop_rx)).await,
                None => {
                    tracing::warn!("data directory path too long for a unix socket; csi-block is not started");
                    stopped(stop_rx).await;
                    Ok(())
                }
            }
        });
        let publish = async {
            if wait_ready(cli.node_http).await
                && wait_ready(cli.meta_http).await
                && wait_healthy(cli.s3_http).await
                && (!csi_block_on || wait_healthy(cli.csi_block_http).await)
                && (!csi_fs_on || wait_healthy(cli.csi_fs_http).await)
            {
                if let Err(e) = first_key::register(&cli.meta_listen.to_string(), &key).await {
                    tracing::error!(error = %e, "cannot store the first S3 access key");
                }
                let pid = std::process::id();
                let mut lines = vec![
                    format!("cairn-local: running as pid {pid}, data in {}", cli.data.display()),
                    format!(
                        "  S3 (objectd)       http://{:<28} metrics http://{}/metrics  access key {} (secret in {})",
                        cli.s3_listen,
                        cli.s3_http,
                        key.id,
                        env.path().display()
                    ),
                    format!("  metadata service   {:<35} metrics http://{}/metrics", cli.meta_listen, cli.meta_http),
                    format!("  storage node       {:<35} metrics http://{}/metrics", cli.node_listen, cli.node_http),
                ];
                if let Some(p) = &csi_block_sock {
                    let ep = format!("unix://{}", p.display());
                    lines.push(format!(
                        "  csi-block          {ep:<35} metrics http://{}/metrics  (controller + node local-1)",
                        cli.csi_block_http
                    ));
                }
                if let Some(p) = &csi_fs_sock {
                    let ep = format!("unix://{}", p.display());
                    lines.push(format!(
                        "  csi-fs             {ep:<35} metrics http://{}/metrics  (controller + node local-1)",
                        cli.csi_fs_http
                    ));
                }
                lines.push(format!("  clients: set -a; . {}; set +a", env.path().display()));
                lines.push(format!(
                    "  stop: Ctrl-C or kill -TERM {pid} (data stays in {} for the next start)",
                    cli.data.display()
                ));
                println!("{}", lines.join("\n"));
                match env.write(&vars) {
                    Ok(()) => tracing::info!("local system ready; run `set -a; . {}` to use it", env.path().display()),
                    Err(e) => tracing::error!(error = %e, "cannot write local.env"),
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            r = &mut node_task => return flatten(r.map(|r| r.map_err(|e| e.to_string()))),
            r = &mut meta_task => return flatten(r.map(|r| r.map_err(|e| e.to_string()))),
            r = &mut s3_task => return flatten(r.map(|r| r.map_err(|e| e.to_string()))),
            r = &mut csi_block_task => return flatten(r),
            r = &mut csi_fs_task => return flatten(r),
            _ = daemon_kit::shutdown_signal() => {}
            _ = publish => {}
        }
        let _ = stop_tx.send(true);
        let (n, m, o, b, f) = tokio::join!(node_task, meta_task, s3_task, csi_block_task, csi_fs_task);
        flatten(b)?;
        flatten(f)?;
        flatten(o.map(|r| r.map_err(|e| e.to_string())))?;
        flatten(n.map(|r| r.map_err(|e| e.to_string())))?;
        flatten(m.map(|r| r.map_err(|e| e.to_string())))
    });
    env.remove();
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-local: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_ready(http: SocketAddr) -> bool {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(http).await.is_ok() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// Waits until `/healthz` at `http` answers 200 (objectd is connected to the pool).
async fn wait_healthy(http: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..300 {
        if let Ok(mut c) = tokio::net::TcpStream::connect(http).await {
            let _ = c.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n").await;
            let mut buf = Vec::new();
            let _ = c.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200") {
                return true;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn flatten(r: Result<Result<(), String>, tokio::task::JoinError>) -> Result<(), String> {
    match r {
        Ok(r) => r,
        Err(e) => Err(format!("task failed: {e}")),
    }
}
