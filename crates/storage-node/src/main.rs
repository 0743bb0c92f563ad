//! `storage-node`: the daemon binary. Configuration errors and start-up refusals are one line on
//! stderr and a non-zero exit.

use std::process::ExitCode;

use clap::Parser;
use storage_node::{NodeArgs, NodeConfig};

/// Serves one data directory's chunks over gRPC.
#[derive(Parser)]
#[command(name = "storage-node", version, about)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon_kit::run_daemon("storage-node", NodeConfig::load(&cli.node), |c| c.log.clone(), storage_node::run)
}
