//! Machine-wide CPU use over an interval, from `/proc/stat`.
//!
//! Every part of a testbed path runs on this one machine: both containers'
//! TCP stacks, iperf3, the dataplanes or the kernel's VXLAN, softirqs. On
//! a small host the paths are CPU-bound, so throughput alone hides how much
//! each path costs; CPU-seconds per gigabyte moved does not. Steal time (a
//! noisy hypervisor neighbour) is reported apart: it is CPU the guest
//! wanted and did not get.

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// Cumulative counters of the `cpu` line, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    /// user + nice + system + irq + softirq.
    busy: u64,
    /// idle + iowait.
    idle: u64,
    steal: u64,
}

/// CPU use between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuUse {
    /// CPU-seconds spent working, all CPUs together.
    pub busy_s: f64,
    /// Wall-clock seconds times CPUs that the interval covered.
    pub total_s: f64,
    /// CPU-seconds the hypervisor gave to someone else.
    pub steal_s: f64,
}

impl CpuUse {
    /// Busy share of all CPUs, 0..=100.
    pub fn busy_percent(&self) -> f64 {
        if self.total_s > 0.0 {
            100.0 * self.busy_s / self.total_s
        } else {
            0.0
        }
    }

    /// CPU-seconds per gigabyte (10^9 bytes) moved.
    pub fn seconds_per_gb(&self, bytes: u64) -> Option<f64> {
        (bytes > 0).then(|| self.busy_s / (bytes as f64 / 1e9))
    }
}

impl CpuSample {
    /// Reads `/proc/stat` now.
    pub fn now() -> Result<CpuSample> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Self::parse(&text)
    }

    /// Parses the aggregate `cpu` line of `/proc/stat`.
    pub fn parse(stat: &str) -> Result<CpuSample> {
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
            bail!("/proc/stat has no aggregate cpu line");
        };
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse::<u64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("/proc/stat cpu line not understood: {line}"))?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]:
        // guest time is already counted in user and nice.
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = fields[..] else {
            bail!("/proc/stat cpu line has too few fields: {line}");
        };
        Ok(CpuSample {
            busy: user + nice + system + irq + softirq,
            idle: idle + iowait,
            steal,
        })
    }

    /// Use from `self` to the later sample `after`.
    pub fn until(&self, after: &CpuSample) -> CpuUse {
        let hz = clock_ticks_per_second();
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / hz;
        let busy_s = secs(self.busy, after.busy);
        let steal_s = secs(self.steal, after.steal);
        CpuUse {
            busy_s,
            steal_s,
            total_s: busy_s + steal_s + secs(self.idle, after.idle),
        }
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 1000 10 3 7 20 0 0\n\
                        cpu0 50 2 25 500 5 1 3 10 0 0\n\
                        intr 12345\n";

    #[test]
    fn parses_the_aggregate_line() {
        let s = CpuSample::parse(STAT).unwrap();
        assert_eq!(
            s,
            CpuSample {
                busy: 100 + 5 + 50 + 3 + 7,
                idle: 1010,
                steal: 20
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(CpuSample::parse("intr 1\n").is_err());
        assert!(CpuSample::parse("cpu  1 2 x 4 5 6 7 8\n").is_err());
        assert!(CpuSample::parse("cpu  1 2 3\n").is_err());
    }

    #[test]
    fn use_between_samples() {
        let a = CpuSample::parse(STAT).unwrap();
        let b = CpuSample::parse("cpu  200 5 150 1100 10 3 7 20 0 0\n").unwrap();
        let hz = clock_ticks_per_second();
        let u = a.until(&b);
        assert!((u.busy_s - 200.0 / hz).abs() < 1e-9, "{u:?}");
        assert!((u.total_s - 300.0 / hz).abs() < 1e-9, "{u:?}");
        assert!((u.busy_percent() - 200.0 / 3.0).abs() < 1e-9, "{u:?}");
        // 2 GB moved with 2 s of CPU at 100 Hz: 1 s per GB.
        let per_gb = u.seconds_per_gb(2_000_000_000).unwrap();
        assert!((per_gb - 100.0 / hz).abs() < 1e-9, "{per_gb}");
        assert_eq!(u.seconds_per_gb(0), None);
        // Counters never run backwards; if they seem to, nothing is used.
        assert_eq!(b.until(&a).busy_s, 0.0);
    }
}
