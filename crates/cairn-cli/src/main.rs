//! `cairn`, the operator CLI. Every error is one readable line on stderr and a non-zero exit.

mod backup_file;
mod chunk_store;
mod chunks;
mod cluster;
mod fs;
mod manifest;
mod meta;
mod node;
mod progress;
mod s3;
mod volume;

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Operate a Cairn storage cluster.
#[derive(Parser)]
#[command(name = "cairn", version, about)]
struct Cli {
    /// Storage node gRPC endpoint.
    #[arg(long, global = true, env = "CAIRN_NODE", default_value = "http://127.0.0.1:7700")]
    node: String,
    /// Metadata service endpoints (comma-separated).
    #[arg(long, global = true, env = "CAIRN_META", default_value = "http://127.0.0.1:7710")]
    meta: String,
    /// Cluster CA certificate (PEM), when the cluster uses mutual TLS.
    #[arg(long, global = true, env = "CAIRN_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) signed by the cluster CA.
    #[arg(long, global = true, env = "CAIRN_TLS_CERT")]
    tls_cert: Option<std::path::PathBuf>,
    /// Client private key (PEM).
    #[arg(long, global = true, env = "CAIRN_TLS_KEY")]
    tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store files as chunks and read them back by manifest.
    #[command(subcommand)]
    Chunk(chunks::ChunkCmd),
    /// Inspect and maintain a storage node; drain, undrain or remove it from the pool.
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// The storage pool: node states, under-replicated chunks, repair progress.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Read and write metadata keys; inspect and change the metadata group.
    #[command(subcommand)]
    Meta(meta::MetaCmd),
    /// The object store: access keys and buckets.
    #[command(subcommand)]
    S3(s3::S3Cmd),
    /// Block volumes (csi-block): list them and their snapshots, replica health, rebuild progress.
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Shared filesystems (csi-fs): quota, usage, origin and the clients that have them mounted.
    #[command(subcommand)]
    Fs(fs::FsCmd),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let chunk_meta = chunk_meta(&matches);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let tls = mtls::TlsFiles { ca: cli.tls_ca.clone(), cert: cli.tls_cert.clone(), key: cli.tls_key.clone() };
    if let Err(e) = mtls::install_client_identity(&tls) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        match cli.cmd {
            Command::Chunk(c) => chunks::run(&cli.node, chunk_meta.then_some(cli.meta.as_str()), c).await,
            Command::Node(c) => node::run(&cli.node, &cli.meta, c).await,
            Command::Cluster(c) => cluster::run(&cli.meta, c).await,
            Command::Meta(c) => meta::run(&cli.meta, c).await,
            Command::S3(c) => s3::run(&cli.meta, c).await,
            Command::Volume(c) => volume::run(&cli.meta, c).await,
            Command::Fs(c) => fs::run(&cli.meta, c).await,
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Whether `cairn chunk` uses the pool: when a metadata endpoint is given (`--meta` or
/// `CAIRN_META`), unless `--node` is given on the command line and `--meta` is not (a standalone
/// node, even with `CAIRN_META` set).
fn chunk_meta(m: &clap::ArgMatches) -> bool {
    let (meta, node) = (m.value_source("meta"), m.value_source("node"));
    match meta {
        Some(ValueSource::CommandLine) => true,
        Some(ValueSource::EnvVariable) => node != Some(ValueSource::CommandLine),
        _ => false,
    }
}

/// The error and its causes joined on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}
