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
    let cfg = match NodeConfig::load(&cli.node) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("storage-node: {e}");
            return ExitCode::from(2);
        }
    };
    daemon_kit::init_tracing(&cfg.log);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("storage-node: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(storage_node::run(cfg, daemon_kit::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storage-node: {e}");
            ExitCode::FAILURE
        }
    }
}
