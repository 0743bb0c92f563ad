//! Test helpers for the drivers' persisted records (feature `testing`, for their tests only).

use std::path::PathBuf;

use proptest::prelude::*;

use crate::child::{ChildKind, ChildSpec};

/// Optional paths as specs hold them: any text without NUL, or none.
pub fn opt_path() -> impl Strategy<Value = Option<PathBuf>> {
    proptest::option::of("[^\\x00]{1,40}".prop_map(PathBuf::from))
}

/// Writes `spec` as the node plugin does and reads it back as the child does.
pub fn spec_round_trip<S: ChildSpec>(kind: &'static ChildKind, spec: &S) -> Result<S, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = kind.dir(tmp.path());
    d.store_spec(spec).map_err(|e| e.to_string())?;
    d.load_spec::<S>()
}
