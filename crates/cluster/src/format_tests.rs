//! Every record this crate keeps in the metadata service, encoded and decoded with the type and
//! function its reader uses (proptest), the bytes earlier releases wrote, and newer versions
//! refused in one line.

use proptest::prelude::*;

use crate::gc::{self, GC_RECORD_VERSION, GcEpoch, GcSweep};
use crate::nodemap::{AdminState, NODE_RECORD_VERSION, NodeRecord};
use crate::settings::SETTINGS_VERSION;
use crate::{PoolSettings, RepairProgress, UnderReplicated};

fn s() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

proptest! {
    #[test]
    fn gc_records_round_trip(epoch: u64, window: u64, started: u64, node in s(), n: [u64; 7]) {
        let e = GcEpoch { epoch, write_window_ms: window, started_unix_ms: started };
        prop_assert_eq!(gc::decode::<GcEpoch>("k", &gc::encode(&e)).unwrap(), e);
        let w = GcSweep {
            node, examined: n[0], deleted: n[1], deleted_bytes: n[2], held: n[4], held_bytes: n[5],
            duration_ms: n[6], finished_unix_ms: n[3],
        };
        prop_assert_eq!(gc::decode::<GcSweep>("k", &gc::encode(&w)).unwrap(), w);
    }

    #[test]
    fn repair_progress_round_trips(node in s(), n: [u64; 13], active: bool, rate: u32) {
        let p = RepairProgress {
            node, passes: n[0], active, pass_total: n[1], pass_scanned: n[2], pending_chunks: n[3],
            pending_bytes: n[4], under_replicated: n[5], copied_chunks: n[6], copied_bytes: n[7],
            dropped_chunks: n[8], healed_chunks: n[9], errors: n[10], rate_bytes_per_sec: f64::from(rate) / 4.0,
            started_unix_ms: n[11], updated_unix_ms: n[12],
        };
        // Rates are whole or quarter bytes per second here: serde_json's default float parsing
        // may differ in the last bit for arbitrary f64s (the figure is informational).
        prop_assert_eq!(RepairProgress::decode("k", &p.encode()).unwrap(), p);
    }

    #[test]
    fn under_replicated_round_trips(have in prop::collection::vec(s(), 0..4), missing in prop::collection::vec(s(), 0..4), at: u64) {
        let u = UnderReplicated { have, missing, at_unix_ms: at };
        prop_assert_eq!(UnderReplicated::decode("k", &u.encode()).unwrap(), u);
    }

    #[test]
    fn node_records_round_trip(id in s(), addr in s(), zone in s(), host in s(), n: [u64; 6]) {
        let r = NodeRecord {
            version: NODE_RECORD_VERSION, id, addr, zone, host,
            capacity_bytes: n[0], free_bytes: n[1], chunks: n[2], used_bytes: n[4], dead_bytes: n[5],
            heartbeat_unix_ms: n[3],
        };
        // The node map reads `cluster/nodes/<id>` as serde_json of NodeRecord.
        let back: NodeRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        prop_assert_eq!(back, r);
    }

    #[test]
    fn pool_settings_round_trip(replicas in 1usize..16, down: u64, out: u64) {
        let p = PoolSettings { version: SETTINGS_VERSION, replicas, down_after_ms: down, out_after_ms: out };
        prop_assert_eq!(PoolSettings::decode(&serde_json::to_vec(&p).unwrap()).unwrap(), p);
    }
}

#[test]
fn admin_states_round_trip() {
    for a in [AdminState::In, AdminState::Draining, AdminState::Out] {
        let back: AdminState = serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }
    assert_eq!(serde_json::to_string(&AdminState::Draining).unwrap(), "\"draining\"", "the stored form");
}

/// What earlier releases wrote (no version) reads as version 1.
#[test]
fn records_from_before_versions_read() {
    let e: GcEpoch = gc::decode("k", br#"{"epoch":3,"write_window_ms":600000,"started_unix_ms":17}"#).unwrap();
    assert_eq!(e, GcEpoch { epoch: 3, write_window_ms: 600_000, started_unix_ms: 17 });
    let w: GcSweep =
        gc::decode("k", br#"{"node":"n1","examined":5,"deleted":1,"deleted_bytes":9,"finished_unix_ms":2}"#).unwrap();
    assert_eq!(w.deleted_bytes, 9);
    let u = UnderReplicated::decode("k", br#"{"have":["a"],"missing":["b"],"at_unix_ms":4}"#).unwrap();
    assert_eq!(u.missing, vec!["b".to_string()]);
    let old = serde_json::to_vec(&RepairProgress { node: "n".into(), passes: 2, ..Default::default() }).unwrap();
    assert_eq!(RepairProgress::decode("k", &old).unwrap().passes, 2);
}

#[test]
fn newer_records_are_refused_naming_both_versions() {
    let mut v: serde_json::Value =
        serde_json::from_slice(&gc::encode(&GcEpoch { epoch: 1, write_window_ms: 1, started_unix_ms: 1 })).unwrap();
    v["version"] = (GC_RECORD_VERSION + 1).into();
    let e = gc::decode::<GcEpoch>("cluster/gc/epoch", &serde_json::to_vec(&v).unwrap()).unwrap_err().to_string();
    assert!(e.ends_with("record cluster/gc/epoch has format version 2; this build reads up to version 1"), "{e}");
    let p = PoolSettings { version: SETTINGS_VERSION + 1, replicas: 1, down_after_ms: 1, out_after_ms: 1 };
    let e = PoolSettings::decode(&serde_json::to_vec(&p).unwrap()).unwrap_err().to_string();
    assert!(
        e.contains("pool settings at cluster/settings has format version 2; this build reads up to version 1"),
        "{e}"
    );
}
