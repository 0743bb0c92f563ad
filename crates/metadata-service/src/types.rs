//! The Raft type configuration and the commands the state machine applies.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Where a metadata node listens: the client API and the Raft peer endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaNode {
    /// Client API address (host:port).
    pub api_addr: String,
    /// Raft peer address (host:port).
    pub peer_addr: String,
}

impl fmt::Display for MetaNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "api={} peer={}", self.api_addr, self.peer_addr)
    }
}

/// A precondition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// The key exists.
    Exists(Vec<u8>),
    /// The key does not exist.
    Absent(Vec<u8>),
    /// The key exists with exactly this value.
    ValueEquals(Vec<u8>, Vec<u8>),
    /// The key's last modification has this revision (0: the key does not exist).
    ModRevisionEquals(Vec<u8>, u64),
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Set the key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove the key.
    Delete(Vec<u8>),
}

/// A replicated write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set one key.
    Put {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// Remove one key.
    Delete {
        /// Key.
        key: Vec<u8>,
    },
    /// Conditions, then writes, all or nothing.
    Txn {
        /// Checked in order.
        conditions: Vec<Condition>,
        /// Applied in order when every condition holds.
        ops: Vec<TxnOp>,
    },
    /// Several independent commands proposed together (one log entry, one fsync), applied in
    /// order; each has its own result.
    Batch(Vec<Command>),
}

/// What applying a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Store revision after the command.
    pub revision: u64,
    /// Transaction: all conditions held and the ops were applied.
    pub succeeded: bool,
    /// Transaction: index of the first condition that failed.
    pub failed_condition: Option<u32>,
    /// Delete: the key existed.
    pub deleted: bool,
    /// Batch: one result per command, in order.
    pub batch: Vec<CommandResult>,
}

openraft::declare_raft_types!(
    /// Openraft types of the metadata service.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = MetaNode,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A node id.
pub type NodeId = u64;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<NodeId>;

/// Encodes a value with bincode (the peer wire and on-disk encoding of openraft types).
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("bincode serialization of an in-memory value")
}

/// Decodes a bincode value.
pub fn decode<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(b)
}
