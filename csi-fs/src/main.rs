//! `csi-fs`: the shared-filesystem CSI driver binary (and, as `csi-fs fs-mount <dir>`, a staged
//! volume's FUSE client process). Configuration errors are one line on stderr and exit code 2.

use std::process::ExitCode;

use clap::Parser;
use csi_fs::{CsiFsArgs, CsiFsConfig};

/// Serves the CSI Identity, Controller and Node services for shared (ReadWriteMany) filesystems.
#[derive(Parser)]
#[command(name = "csi-fs", version, about)]
struct Cli {
    #[command(flatten)]
    args: CsiFsArgs,
}

fn main() -> ExitCode {
    if let Some(code) = csi_fs::mount_process::main_if_requested() {
        return code;
    }
    let cli = Cli::parse();
    daemon_kit::run_daemon("csi-fs", CsiFsConfig::load(&cli.args), |c| c.log.clone(), csi_fs::run)
}
