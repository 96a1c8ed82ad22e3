//! Memory of a running process, read from /proc: what the benchmarks report.

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
