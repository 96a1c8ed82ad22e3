//! Memory and CPU time of running processes, read from /proc: what the benchmarks report.

use anyhow::{Context, Result};

fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// The resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// The peak resident set size of process `pid` so far (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM:")
}

/// Samples a process's resident memory in a thread of its own until stopped; keeps the peak.
pub struct PeakSampler {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakSampler {
    /// Starts sampling `pid` every `every` (VmRSS, and VmHWM when the kernel keeps it).
    pub fn start(pid: u32, every: std::time::Duration) -> Self {
        use std::sync::atomic::Ordering;
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let now = rss_kib(pid)
                        .unwrap_or(0)
                        .max(peak_rss_kib(pid).unwrap_or(0));
                    peak.fetch_max(now, Ordering::Relaxed);
                    std::thread::sleep(every);
                }
            })
        };
        PeakSampler {
            peak,
            done,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the peak seen, in KiB.
    pub fn stop(mut self) -> u64 {
        use std::sync::atomic::Ordering;
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// The CPU time process `pid` has used so far (user and system, all its threads), in
/// seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: fields are counted
    // from after its closing one, where field 3 (the state) starts.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("/proc/{pid}/stat: {stat}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat: field {i}"))
    };
    Ok((ticks(14)? + ticks(15)?) as f64 / USER_HZ)
}

/// The CPU time, in seconds, of every running process whose command name is `name` (the
/// database server's processes, say): processes that ended meanwhile are not counted.
pub fn cpu_seconds_of(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|pid| cpu_seconds(pid).ok())
        .sum()
}

/// The unit of /proc's CPU times: USER_HZ, which Linux keeps at 100 ticks a second for
/// every program whatever the kernel's own tick rate (`sysconf(_SC_CLK_TCK)` returns it).
const USER_HZ: f64 = 100.0;
