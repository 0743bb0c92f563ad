//! CPU use over a timed phase: the whole machine's busy cores (`/proc/stat`) and this process's
//! own (`getrusage`), so that a figure can be read as "the server had the rest". The bench and
//! the server share the machine's cores.

use std::time::Instant;

/// A reading of the machine's and this process's CPU time.
pub struct Sample {
    at: Instant,
    /// Jiffies busy (user, nice, system, irq, softirq) and in total (with idle, iowait, steal).
    machine: Option<(u64, u64)>,
    cores: usize,
    /// This process's user + system CPU seconds.
    own: f64,
}

/// CPU use between two samples, in cores (1.0 = one core busy all the time).
#[derive(Clone, Copy, Debug, Default)]
pub struct Use {
    pub machine: Option<f64>,
    pub own: f64,
    pub cores: usize,
}

impl Sample {
    pub fn now() -> Sample {
        let (machine, cores) = read_proc_stat().map_or((None, 0), |(b, t, c)| (Some((b, t)), c));
        Sample { at: Instant::now(), machine, cores, own: own_cpu_secs() }
    }

    /// What was used from `self` until now.
    pub fn used(&self) -> Use {
        let later = Sample::now();
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let machine = match (self.machine, later.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some((b1 - b0) as f64 / (t1 - t0) as f64 * later.cores.max(1) as f64)
            }
            _ => None,
        };
        Use { machine, own: (later.own - self.own) / wall, cores: later.cores }
    }
}

impl Use {
    /// "bench 0.4 + rest 1.5 of 2 cores", or the bench's share alone off Linux.
    pub fn describe(&self) -> String {
        match self.machine {
            Some(m) => format!("bench {:.1} + rest {:.1} of {} cores", self.own, (m - self.own).max(0.0), self.cores),
            None => format!("bench {:.1} cores", self.own),
        }
    }
}

fn read_proc_stat() -> Option<(u64, u64, usize)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let mut lines = text.lines();
    let f: Vec<u64> = lines.next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let cores = lines.filter(|l| l.starts_with("cpu")).count();
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6);
    let total = busy + get(3) + get(4) + get(7);
    Some((busy, total, cores))
}

fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
