//! Helpers shared by the benchmark binaries: latency percentiles, peak RSS of
//! a child process, a throwaway database and broker prefix.

use std::time::Duration;

/// Sorted latencies and the figures we print for them.
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    /// The `p`th percentile (0-100).
    pub fn pct(&mut self, p: f64) -> Duration {
        self.0.sort();
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let i = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[i]
    }
}

/// Peak resident set size of a process in KiB (VmHWM), if readable.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs a shell command and returns its stdout.
pub fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("bash")
        .args(["-c", cmd])
        .output()
        .expect("bash runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Formats a duration in milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
