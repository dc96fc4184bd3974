//! The process's own gauges, read from `/proc/self` at each scrape (Linux; elsewhere they
//! are left out): CPU seconds, resident memory, open and allowed file descriptors, threads.
//! Named as Prometheus' own clients name them, so dashboards for other services apply.

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// `/proc` reports CPU times in USER_HZ ticks, 100 a second on every Linux architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// Adds the process gauges to `registry`.
pub(crate) fn register(registry: &mut Registry) {
    if let Some(seconds) = cpu_seconds() {
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time spent by the process",
            ConstCounter::new(seconds),
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<i64>().ok())
    };
    if let Some(kib) = field("VmRSS:") {
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            ConstGauge::new(kib * 1024),
        );
    }
    if let Some(threads) = field("Threads:") {
        registry.register(
            "process_threads",
            "Threads of the process",
            ConstGauge::new(threads),
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        registry.register(
            "process_open_fds",
            "Open file descriptors of the process",
            ConstGauge::new(fds.count() as i64),
        );
    }
    if let Some(max) = open_file_limit() {
        registry.register(
            "process_max_fds",
            "The process's open file limit",
            ConstGauge::new(i64::try_from(max).unwrap_or(i64::MAX)),
        );
    }
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces, inside parentheses): state is
    // field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3)?.parse::<u64>().ok();
    Some((ticks(14)? + ticks(15)?) as f64 / TICKS_PER_SECOND)
}

/// The soft limit on open files, from `/proc/self/limits` (Linux); `None` elsewhere or when
/// unlimited.
pub(crate) fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The memory this process may use: its cgroup's `memory.max` (cgroup v2, a container's
/// limit) or the machine's total, whichever is smaller; `None` where neither is known.
pub(crate) fn memory_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    match (cgroup, total) {
        (Some(c), Some(t)) => Some(c.min(t)),
        (c, t) => c.or(t),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_gauges_read_this_process() {
        let mut registry = prometheus_client::registry::Registry::default();
        super::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encode");
        if cfg!(target_os = "linux") {
            for name in [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_open_fds",
                "process_max_fds",
                "process_threads",
            ] {
                assert!(text.contains(&format!("\n{name} ")), "{name} in {text}");
            }
        }
    }
}
