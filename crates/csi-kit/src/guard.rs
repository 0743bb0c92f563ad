//! The per-volume in-flight guard: a second call for a volume while one is in progress answers
//! ABORTED (the spec lets the CO retry), so two calls never race on one volume's state.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::CsiError;

/// Keys (volume ids or names) with a call in progress.
#[derive(Clone, Default)]
pub struct InFlight {
    busy: Arc<Mutex<HashSet<String>>>,
}

/// Held for the length of one call; frees its key when dropped.
pub struct InFlightGuard {
    busy: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// Marks `key` busy, or answers ABORTED if another call holds it.
    pub fn begin(&self, key: &str) -> Result<InFlightGuard, CsiError> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(key.to_string()) {
            return Err(CsiError::Aborted(format!("an operation for {key} is already in progress")));
        }
        Ok(InFlightGuard { busy: self.busy.clone(), key: key.to_string() })
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_call_for_one_volume_is_aborted_until_the_first_ends() {
        let f = InFlight::default();
        let g = f.begin("vol-1").unwrap();
        assert_eq!(f.begin("vol-1").err().map(|e| e.code()), Some(tonic::Code::Aborted));
        let _other = f.begin("vol-2").unwrap();
        drop(g);
        f.begin("vol-1").unwrap();
    }
}
