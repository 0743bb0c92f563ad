//! `metadata-node`: the metadata daemon binary. Configuration errors and start-up failures are
//! one line on stderr and a non-zero exit.

use std::process::ExitCode;

use clap::Parser;
use metadata_service::{MetaArgs, MetaConfig};

/// A voter (or learner) of the replicated metadata store.
#[derive(Parser)]
#[command(name = "metadata-node", version, about)]
struct Cli {
    #[command(flatten)]
    meta: MetaArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon_kit::run_daemon("metadata-node", MetaConfig::load(&cli.meta), |c| c.log.clone(), metadata_service::run)
}
