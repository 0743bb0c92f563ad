//! Request limits and their InvalidArgument messages.

use cairn_proto::meta::v1 as pb;

use crate::MetaError;
use crate::types::{Command, Condition, TxnOp};

/// Longest key accepted.
pub const MAX_KEY: usize = 4096;
/// Largest value accepted.
pub const MAX_VALUE: usize = 1 << 20;
/// Most conditions, and most ops, in one transaction.
pub const MAX_TXN_ITEMS: usize = 256;
/// Most transactions in one `TxnBatch`.
pub const MAX_BATCH_TXNS: usize = 256;

fn bad(m: String) -> MetaError {
    MetaError::InvalidArgument(m)
}

/// A key must be 1..=MAX_KEY bytes.
pub fn key(k: &[u8], what: &str) -> Result<(), MetaError> {
    if k.is_empty() {
        return Err(bad(format!("{what} must not be empty")));
    }
    if k.len() > MAX_KEY {
        return Err(bad(format!("{what} is {} bytes; the limit is {MAX_KEY}", k.len())));
    }
    Ok(())
}

/// A value must be at most MAX_VALUE bytes.
pub fn value(v: &[u8], what: &str) -> Result<(), MetaError> {
    if v.len() > MAX_VALUE {
        return Err(bad(format!("{what} is {} bytes; the limit is {MAX_VALUE}", v.len())));
    }
    Ok(())
}

/// Turns a wire transaction into a command, refusing anything malformed.
pub fn txn(req: pb::TxnRequest) -> Result<Command, MetaError> {
    if req.conditions.len() > MAX_TXN_ITEMS || req.ops.len() > MAX_TXN_ITEMS {
        return Err(bad(format!(
            "transaction has {} conditions and {} ops; the limit is {MAX_TXN_ITEMS} each",
            req.conditions.len(),
            req.ops.len()
        )));
    }
    if req.conditions.is_empty() && req.ops.is_empty() {
        return Err(bad("transaction has neither conditions nor ops".into()));
    }
    let mut conditions = Vec::with_capacity(req.conditions.len());
    for (i, c) in req.conditions.into_iter().enumerate() {
        key(&c.key, &format!("condition {i} key"))?;
        let kind = pb::condition::Kind::try_from(c.kind)
            .map_err(|_| bad(format!("condition {i} has unknown kind {}", c.kind)))?;
        conditions.push(match kind {
            pb::condition::Kind::Exists => Condition::Exists(c.key),
            pb::condition::Kind::Absent => Condition::Absent(c.key),
            pb::condition::Kind::ValueEquals => {
                value(&c.value, &format!("condition {i} value"))?;
                Condition::ValueEquals(c.key, c.value)
            }
            pb::condition::Kind::ModRevisionEquals => Condition::ModRevisionEquals(c.key, c.mod_revision),
        });
    }
    let mut ops = Vec::with_capacity(req.ops.len());
    for (i, o) in req.ops.into_iter().enumerate() {
        key(&o.key, &format!("op {i} key"))?;
        if o.delete {
            if !o.value.is_empty() {
                return Err(bad(format!("op {i} deletes but also carries a value")));
            }
            ops.push(TxnOp::Delete(o.key));
        } else {
            value(&o.value, &format!("op {i} value"))?;
            ops.push(TxnOp::Put(o.key, o.value));
        }
    }
    Ok(Command::Txn { conditions, ops })
}

/// Turns a wire batch of transactions into one `Batch` command, refusing it whole if any
/// transaction is malformed.
pub fn txn_batch(req: pb::TxnBatchRequest) -> Result<Command, MetaError> {
    if req.txns.is_empty() || req.txns.len() > MAX_BATCH_TXNS {
        return Err(bad(format!(
            "a transaction batch holds {} transactions; it must hold 1 to {MAX_BATCH_TXNS}",
            req.txns.len()
        )));
    }
    let cmds = req
        .txns
        .into_iter()
        .enumerate()
        .map(|(i, t)| txn(t).map_err(|e| bad(format!("transaction {i} of the batch: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Command::Batch(cmds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_transactions_are_refused() {
        let cond = |kind: i32, key: &[u8]| pb::Condition { key: key.to_vec(), kind, value: vec![], mod_revision: 0 };
        let op = |key: &[u8]| pb::Op { key: key.to_vec(), value: b"v".to_vec(), delete: false };
        assert!(txn(pb::TxnRequest { conditions: vec![], ops: vec![] }).is_err());
        assert!(
            txn(pb::TxnRequest { conditions: vec![cond(9, b"k")], ops: vec![] })
                .unwrap_err()
                .to_string()
                .contains("unknown kind")
        );
        assert!(txn(pb::TxnRequest { conditions: vec![cond(0, b"")], ops: vec![] }).is_err());
        assert!(txn(pb::TxnRequest { conditions: vec![], ops: vec![op(b""); 1] }).is_err());
        assert!(txn(pb::TxnRequest { conditions: vec![], ops: vec![op(b"k"); MAX_TXN_ITEMS + 1] }).is_err());
        let del_with_value = pb::Op { key: b"k".to_vec(), value: b"x".to_vec(), delete: true };
        assert!(txn(pb::TxnRequest { conditions: vec![], ops: vec![del_with_value] }).is_err());
        assert!(txn(pb::TxnRequest { conditions: vec![cond(1, b"k")], ops: vec![op(b"k")] }).is_ok());
        assert!(key(&vec![1; MAX_KEY + 1], "key").is_err());
        assert!(value(&vec![1; MAX_VALUE + 1], "value").is_err());
    }
}
