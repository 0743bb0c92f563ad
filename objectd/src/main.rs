//! `objectd`: the S3 daemon binary. Configuration errors are one line on stderr and exit code 2.

use std::process::ExitCode;

use clap::Parser;
use objectd::{ObjectdArgs, ObjectdConfig};

/// Serves the S3 API over the pool.
#[derive(Parser)]
#[command(name = "objectd", version, about)]
struct Cli {
    #[command(flatten)]
    args: ObjectdArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon_kit::run_daemon("objectd", ObjectdConfig::load(&cli.args), |c| c.log.clone(), objectd::run)
}
