//! CSI plumbing shared by the block and filesystem drivers: the one error type with the gRPC
//! codes the CSI spec names, `unix://` endpoints, the socket server and client, the
//! per-volume in-flight guard that answers ABORTED to concurrent calls, the node plugins'
//! per-volume child processes (`child`), the Identity service (`identity`), the capability and
//! capacity checks (`params`) and ListSnapshots paging (`snapshots`).

pub mod child;
pub mod endpoint;
pub mod error;
pub mod guard;
pub mod identity;
pub mod mount;
pub mod params;
pub mod records;
pub mod server;
pub mod snapshots;
#[cfg(feature = "testing")]
pub mod testing;

pub use endpoint::socket_path;
pub use error::{CsiError, Result};
pub use guard::{InFlight, InFlightGuard};
pub use records::{Created, RecordStore, Versioned};
pub use server::{connect_unix, rpc};
