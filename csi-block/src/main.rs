//! `csi-block`: the block CSI driver binary. Configuration errors are one line on stderr and exit code 2.

use std::process::ExitCode;

use clap::Parser;
use csi_block::{CsiBlockArgs, CsiBlockConfig};

/// Serves the CSI Identity, Controller and Node services for replicated block volumes.
#[derive(Parser)]
#[command(name = "csi-block", version, about)]
struct Cli {
    #[command(flatten)]
    args: CsiBlockArgs,
}

fn main() -> ExitCode {
    if let Some(code) = csi_block::datapath::main_if_requested() {
        return code;
    }
    let cli = Cli::parse();
    daemon_kit::run_daemon("csi-block", CsiBlockConfig::load(&cli.args), |c| c.log.clone(), csi_block::run)
}
