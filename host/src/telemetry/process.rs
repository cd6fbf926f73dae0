//! The standard `process_*` metrics of the server's own process, read from `/proc/self` at
//! each scrape (a few small reads; nothing is kept between scrapes). On a system without
//! `/proc` the values read as 0: the families stay present.

use prometheus::core::{Collector, Desc};
use prometheus::proto;

/// The families, in the order they are exposed: name, help, type.
const FAMILIES: [(&str, &str, proto::MetricType); 7] = [
    ("process_cpu_seconds_total", "User and system CPU time spent, in seconds", proto::MetricType::COUNTER),
    ("process_resident_memory_bytes", "Resident memory size, in bytes", proto::MetricType::GAUGE),
    ("process_virtual_memory_bytes", "Virtual memory size, in bytes", proto::MetricType::GAUGE),
    ("process_open_fds", "Open file descriptors", proto::MetricType::GAUGE),
    ("process_max_fds", "The limit on open file descriptors", proto::MetricType::GAUGE),
    (
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds",
        proto::MetricType::GAUGE,
    ),
    ("process_threads", "Threads of the process", proto::MetricType::GAUGE),
];

/// Reads the process's figures when scraped.
pub struct ProcessCollector {
    descs: Vec<Desc>,
}

impl std::fmt::Debug for ProcessCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessCollector").finish_non_exhaustive()
    }
}

impl ProcessCollector {
    /// The collector, its descriptors made once.
    pub fn new() -> prometheus::Result<Self> {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _)| Desc::new((*name).to_owned(), (*help).to_owned(), vec![], Default::default()))
            .collect::<prometheus::Result<_>>()?;
        Ok(Self { descs })
    }
}

/// What `/proc/self` tells, in the order of [`FAMILIES`].
fn read() -> [f64; 7] {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let ticks = ticks_per_second();
    // Fields after the command (which is in parentheses and may hold spaces): field 3 on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Field 14 utime, 15 stime, 20 num_threads, 22 starttime (ticks after boot), 23 vsize;
    // see proc(5).
    let cpu = (num(14) + num(15)) / ticks;
    let start = boot_time() + num(22) / ticks;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count) as f64;
    [cpu, resident(), num(23), fds, max_fds(), start, num(20)]
}

/// Resident memory (`VmRSS` in `/proc/self/status`, in kB), in bytes.
fn resident() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next());
    kb.and_then(|v| v.parse::<f64>().ok()).map_or(0.0, |kb| kb * 1024.0)
}

fn ticks_per_second() -> f64 {
    // The kernel's USER_HZ, which is 100 on every Linux architecture Cortex runs on.
    100.0
}

/// The system's boot time (`btime` in `/proc/stat`), in seconds since the epoch.
fn boot_time() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

/// The soft limit on open files (`Max open files` in `/proc/self/limits`).
fn max_fds() -> f64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let values = read();
        FAMILIES
            .iter()
            .zip(values)
            .map(|((name, help, kind), v)| {
                let mut m = proto::Metric::default();
                if *kind == proto::MetricType::COUNTER {
                    let mut c = proto::Counter::default();
                    c.set_value(v);
                    m.set_counter(c);
                } else {
                    let mut g = proto::Gauge::default();
                    g.set_value(v);
                    m.set_gauge(g);
                }
                let mut mf = proto::MetricFamily::default();
                mf.set_name((*name).to_owned());
                mf.set_help((*help).to_owned());
                mf.set_field_type(*kind);
                mf.set_metric(vec![m]);
                mf
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_reads_as_itself() {
        let [cpu, rss, vsize, fds, max_fds, start, threads] = read();
        assert!(rss > 1e6 && vsize >= rss, "rss {rss}, vsize {vsize}");
        assert!(fds >= 3.0 && max_fds >= fds, "fds {fds} of {max_fds}");
        assert!(threads >= 1.0, "{threads} threads");
        assert!(cpu >= 0.0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(start > now - 86_400.0 * 365.0 && start <= now + 1.0, "started at {start}, now {now}");
    }
}
