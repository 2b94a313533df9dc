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

/// A `Name:   N kB` field of a `/proc` status-like file, in KiB.
fn proc_kib(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Peak resident set size of a process in KiB (VmHWM), if readable.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    proc_kib(&format!("/proc/{pid}/status"), "VmHWM")
}

/// Anonymous memory of a process backed by transparent huge pages, in KiB.
pub fn anon_huge_kib(pid: u32) -> Option<u64> {
    proc_kib(&format!("/proc/{pid}/smaps_rollup"), "AnonHugePages")
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

/// CPU time (user + system) a `/proc/.../stat` line reports, at 100 ticks/s.
fn stat_cpu(stat: &str) -> Option<Duration> {
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time used so far by one process (all its threads).
pub fn cpu_of_pid(pid: u32) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| stat_cpu(&s))
        .unwrap_or_default()
}

/// CPU time used so far by the entries of a `/proc`-like folder (processes,
/// or one process's threads) whose `comm` satisfies `matches`.
fn cpu_where(folder: &str, matches: impl Fn(&str) -> bool) -> Duration {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Duration::ZERO;
    };
    entries
        .filter_map(|e| {
            let dir = e.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            matches(comm.trim())
                .then(|| stat_cpu(&std::fs::read_to_string(dir.join("stat")).ok()?))?
        })
        .sum()
}

/// CPU time used so far by the threads of `pid` whose name starts with `prefix`.
pub fn cpu_of_threads(pid: u32, prefix: &str) -> Duration {
    cpu_where(&format!("/proc/{pid}/task"), |name| {
        name.starts_with(prefix)
    })
}

/// CPU time used so far by every live process with this command name
/// (`postgres`, `beam.smp`).
pub fn cpu_of_command(name: &str) -> Duration {
    cpu_where("/proc", |comm| comm == name)
}

/// Where the CPU time of a phase went: the service's hashing threads, the
/// rest of the service, PostgreSQL, RabbitMQ and the load generator.
pub struct CpuSplit {
    pid: u32,
    start: [Duration; 5],
}

impl CpuSplit {
    fn sample(pid: u32) -> [Duration; 5] {
        let hashing = cpu_of_threads(pid, "argon2-");
        [
            hashing,
            cpu_of_pid(pid).saturating_sub(hashing),
            cpu_of_command("postgres"),
            cpu_of_command("beam.smp"),
            cpu_of_pid(std::process::id()),
        ]
    }

    pub fn start(pid: u32) -> Self {
        Self {
            pid,
            start: Self::sample(pid),
        }
    }

    /// Milliseconds of CPU per operation since `start`, by part.
    pub fn per_op(&self, ops: usize) -> String {
        let end = Self::sample(self.pid);
        let per =
            |i: usize| (end[i].saturating_sub(self.start[i])).as_secs_f64() * 1e3 / ops as f64;
        format!(
            "CPU per request: hashing {:.1} ms, rest of the service {:.1} ms, PostgreSQL {:.1} ms, RabbitMQ {:.1} ms, load generator {:.1} ms",
            per(0),
            per(1),
            per(2),
            per(3),
            per(4)
        )
    }
}
