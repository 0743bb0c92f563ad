//! Transactions: conditions, then puts and deletes, all or nothing.

use cairn_proto::meta::v1 as pb;

/// A transaction under construction.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    conditions: Vec<pb::Condition>,
    ops: Vec<pb::Op>,
}

fn cond(kind: pb::condition::Kind, key: &[u8]) -> pb::Condition {
    pb::Condition { key: key.to_vec(), kind: kind as i32, value: Vec::new(), mod_revision: 0 }
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Txn::default()
    }

    /// Requires `key` to exist.
    pub fn exists(mut self, key: &[u8]) -> Self {
        self.conditions.push(cond(pb::condition::Kind::Exists, key));
        self
    }

    /// Requires `key` to be absent.
    pub fn absent(mut self, key: &[u8]) -> Self {
        self.conditions.push(cond(pb::condition::Kind::Absent, key));
        self
    }

    /// Requires `key` to hold exactly `value`.
    pub fn value_equals(mut self, key: &[u8], value: &[u8]) -> Self {
        let mut c = cond(pb::condition::Kind::ValueEquals, key);
        c.value = value.to_vec();
        self.conditions.push(c);
        self
    }

    /// Requires `key`'s last change to have revision `rev` (0: the key is absent).
    pub fn mod_revision_equals(mut self, key: &[u8], rev: u64) -> Self {
        let mut c = cond(pb::condition::Kind::ModRevisionEquals, key);
        c.mod_revision = rev;
        self.conditions.push(c);
        self
    }

    /// Sets `key` when the conditions hold.
    pub fn put(mut self, key: &[u8], value: &[u8]) -> Self {
        self.ops.push(pb::Op { key: key.to_vec(), value: value.to_vec(), delete: false });
        self
    }

    /// Deletes `key` when the conditions hold.
    pub fn delete(mut self, key: &[u8]) -> Self {
        self.ops.push(pb::Op { key: key.to_vec(), value: Vec::new(), delete: true });
        self
    }

    /// Every key the transaction names, in its conditions and its operations.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.conditions.iter().map(|c| c.key.as_slice()).chain(self.ops.iter().map(|o| o.key.as_slice()))
    }

    /// The value each key holds once the transaction applied (`None`: deleted), in key order.
    /// Every key changed by one transaction carries the transaction's revision.
    pub fn writes(&self) -> std::collections::BTreeMap<&[u8], Option<&[u8]>> {
        self.ops.iter().map(|o| (o.key.as_slice(), (!o.delete).then_some(o.value.as_slice()))).collect()
    }

    pub(crate) fn into_request(self) -> pb::TxnRequest {
        pb::TxnRequest { conditions: self.conditions, ops: self.ops }
    }
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Every condition held and the ops were applied.
    pub succeeded: bool,
    /// Index of the first condition that failed.
    pub failed_condition: Option<usize>,
    /// Store revision after the transaction.
    pub revision: u64,
}

impl From<pb::TxnResponse> for TxnOutcome {
    fn from(r: pb::TxnResponse) -> Self {
        TxnOutcome {
            succeeded: r.succeeded,
            failed_condition: usize::try_from(r.failed_condition).ok(),
            revision: r.revision,
        }
    }
}
