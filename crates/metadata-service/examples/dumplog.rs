//! Diagnostic: prints the Raft log entries (index, and keys touched) that mention a substring.
use kv_engine::{KvEngine, RocksEngine};
use metadata_service::types::{Command, TxnOp, TypeConfig, decode};
use openraft::Entry;
use openraft::EntryPayload;

fn keys(c: &Command, out: &mut Vec<String>) {
    match c {
        Command::Put { key, .. } => out.push(format!("put {}", String::from_utf8_lossy(key))),
        Command::Delete { key } => out.push(format!("del {}", String::from_utf8_lossy(key))),
        Command::Txn { ops, .. } => {
            for o in ops {
                match o {
                    TxnOp::Put(k, _) => out.push(format!("put {}", String::from_utf8_lossy(k))),
                    TxnOp::Delete(k) => out.push(format!("del {}", String::from_utf8_lossy(k))),
                }
            }
        }
        Command::Batch(cs) => cs.iter().for_each(|c| keys(c, out)),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kv = RocksEngine::open(std::path::Path::new(&args[1])).expect("open");
    let pat = &args[2];
    let all = kv.scan(b"l", Some(b"m"), usize::MAX).expect("scan");
    println!("{} entries, first {:?} last {:?}", all.len(), all.first().map(|(k, _)| k.clone()), all.last().map(|(k, _)| k.clone()));
    for (_, v) in all {
        let e: Entry<TypeConfig> = decode(&v).expect("decode");
        if let EntryPayload::Normal(c) = &e.payload {
            let mut ks = Vec::new();
            keys(c, &mut ks);
            let hit: Vec<&String> = ks.iter().filter(|k| k.contains(pat.as_str())).collect();
            if !hit.is_empty() {
                println!("{} {:?}", e.log_id, hit);
            }
        } else {
            println!("{} {:?}", e.log_id, e.payload);
        }
    }
}
