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
    let cfg = match MetaConfig::load(&cli.meta) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("metadata-node: {e}");
            return ExitCode::from(2);
        }
    };
    daemon_kit::init_tracing(&cfg.log);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("metadata-node: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(metadata_service::run(cfg, daemon_kit::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metadata-node: {e}");
            ExitCode::FAILURE
        }
    }
}
