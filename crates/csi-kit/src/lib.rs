//! CSI plumbing shared by the block and filesystem drivers: the one error type with the gRPC
//! codes the CSI spec names, `unix://` endpoints, the socket server and client, and the
//! per-volume in-flight guard that answers ABORTED to concurrent calls.

pub mod endpoint;
pub mod error;
pub mod guard;
pub mod mount;
pub mod records;
pub mod server;

pub use endpoint::socket_path;
pub use error::{CsiError, Result};
pub use guard::{InFlight, InFlightGuard};
pub use records::{Created, RecordStore, Versioned};
pub use server::{connect_unix, rpc};
