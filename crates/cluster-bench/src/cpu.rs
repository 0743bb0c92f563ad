//! Machine CPU use over a timed phase, from `/proc/stat`: how many cores were busy, how much the
//! hypervisor stole, and what that costs per GB moved (to tell a CPU-bound result from an
//! I/O-bound one).

/// One reading of the machine's CPU time counters.
pub struct CpuSample {
    /// Jiffies spent busy (user, nice, system, irq, softirq), idle (idle, iowait), and stolen.
    busy: u64,
    idle: u64,
    steal: u64,
    cores: usize,
}

/// CPU use between two samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// Cores busy on average (of `cores`).
    pub busy_cores: f64,
    /// Cores' worth of time the hypervisor gave to others.
    pub steal_cores: f64,
    pub cores: usize,
}

impl CpuSample {
    /// Reads `/proc/stat`; None off Linux or when it cannot be parsed.
    pub fn now() -> Option<CpuSample> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let mut lines = text.lines();
        let total: Vec<u64> = lines.next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        let cores = lines.filter(|l| l.starts_with("cpu")).count();
        let get = |i: usize| total.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal
        Some(CpuSample {
            busy: get(0) + get(1) + get(2) + get(5) + get(6),
            idle: get(3) + get(4),
            steal: get(7),
            cores,
        })
    }

    /// What was used between two readings; nothing known when either is missing.
    pub fn between(earlier: Option<&CpuSample>, later: Option<&CpuSample>) -> CpuUse {
        match (earlier, later) {
            (Some(a), Some(b)) => a.until(b),
            _ => CpuUse::default(),
        }
    }

    /// What was used from `self` until `later`.
    pub fn until(&self, later: &CpuSample) -> CpuUse {
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let idle = later.idle.saturating_sub(self.idle) as f64;
        let steal = later.steal.saturating_sub(self.steal) as f64;
        let all = (busy + idle + steal).max(1.0);
        let cores = later.cores.max(1) as f64;
        CpuUse { busy_cores: busy / all * cores, steal_cores: steal / all * cores, cores: later.cores }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_busy_loop_shows_up_as_busy_time() {
        let Some(before) = CpuSample::now() else { return };
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = CpuSample::now().expect("read twice");
        let used = before.until(&after);
        assert!(used.cores >= 1);
        assert!(used.busy_cores > 0.0 && used.busy_cores <= used.cores as f64 + 1e-9, "{used:?}");
    }
}
