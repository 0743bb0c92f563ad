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

// Keys and values are `serde_bytes`: bincode writes them exactly as a `Vec<u8>` (a u64 length,
// then the bytes), so logs and snapshots written before read the same, but decoding copies the
// bytes at once instead of visiting them one by one (it was most of a log entry's decode time).

/// A precondition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// The key exists.
    Exists(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key does not exist.
    Absent(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key exists with exactly this value.
    ValueEquals(#[serde(with = "serde_bytes")] Vec<u8>, #[serde(with = "serde_bytes")] Vec<u8>),
    /// The key's last modification has this revision (0: the key does not exist).
    ModRevisionEquals(#[serde(with = "serde_bytes")] Vec<u8>, u64),
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Set the key.
    Put(#[serde(with = "serde_bytes")] Vec<u8>, #[serde(with = "serde_bytes")] Vec<u8>),
    /// Remove the key.
    Delete(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// A replicated write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set one key.
    Put {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove one key.
    Delete {
        /// Key.
        #[serde(with = "serde_bytes")]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoding before keys and values were `serde_bytes`: plain `Vec<u8>` fields.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum OldOp {
        Put(Vec<u8>, Vec<u8>),
        Delete(Vec<u8>),
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum OldCondition {
        Exists(Vec<u8>),
        Absent(Vec<u8>),
        ValueEquals(Vec<u8>, Vec<u8>),
        ModRevisionEquals(Vec<u8>, u64),
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum OldCommand {
        Put { key: Vec<u8>, value: Vec<u8> },
        Delete { key: Vec<u8> },
        Txn { conditions: Vec<OldCondition>, ops: Vec<OldOp> },
        Batch(Vec<OldCommand>),
    }

    #[test]
    fn commands_encode_exactly_as_before_serde_bytes() {
        let value: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let new = Command::Batch(vec![
            Command::Put { key: b"k1".to_vec(), value: value.clone() },
            Command::Delete { key: b"k2".to_vec() },
            Command::Txn {
                conditions: vec![
                    Condition::Exists(b"a".to_vec()),
                    Condition::Absent(b"b".to_vec()),
                    Condition::ValueEquals(b"c".to_vec(), value.clone()),
                    Condition::ModRevisionEquals(b"d".to_vec(), 7),
                ],
                ops: vec![TxnOp::Put(b"e".to_vec(), value.clone()), TxnOp::Delete(b"f".to_vec())],
            },
        ]);
        let old = OldCommand::Batch(vec![
            OldCommand::Put { key: b"k1".to_vec(), value: value.clone() },
            OldCommand::Delete { key: b"k2".to_vec() },
            OldCommand::Txn {
                conditions: vec![
                    OldCondition::Exists(b"a".to_vec()),
                    OldCondition::Absent(b"b".to_vec()),
                    OldCondition::ValueEquals(b"c".to_vec(), value.clone()),
                    OldCondition::ModRevisionEquals(b"d".to_vec(), 7),
                ],
                ops: vec![OldOp::Put(b"e".to_vec(), value.clone()), OldOp::Delete(b"f".to_vec())],
            },
        ]);
        let bytes = encode(&old);
        assert_eq!(encode(&new), bytes, "same bytes on disk and on the wire");
        assert_eq!(decode::<Command>(&bytes).unwrap(), new, "entries written before decode the same");
    }
}
