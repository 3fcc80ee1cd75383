//! Head-end replication of a VNI's broadcast, multicast and unknown-unicast
//! frames: whether it is on, how fast it may go, and what it did.
//!
//! A frame a container floods is sent as one copy per VTEP with endpoints
//! on its VNI (the VTEPs of the table's remote entries, plus any `flood`
//! VTEPs), as the kernel's VXLAN does with a list of default destinations
//! (RFC 7348 section 4.2 allows head-end replication in place of underlay
//! multicast). A network may turn it off (`flood: false`), and every VNI
//! has a rate limit so that a broadcast storm in one container costs its
//! host a bounded number of sends.
//!
//! The limit is a GCRA token bucket (the generic cell rate algorithm of
//! ATM, ITU-T I.371) kept in one atomic word, the "theoretical arrival
//! time" of the next frame, so every worker draws from the same per-VNI
//! budget without a lock. It and the per-VNI counters live in a
//! [`Replication`] shared by every copy of the forwarding table (an `Arc`),
//! so they survive table updates. Only flooded frames touch them: the
//! unicast path never does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Frames per second a VNI may flood when nothing else is configured.
pub const DEFAULT_RATE: u32 = 1000;

/// A network's flooding settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodPolicy {
    /// Replicate to other hosts at all. Off, flooded frames only reach the
    /// VNI's local endpoints (Docker's overlay never floods between hosts).
    pub enabled: bool,
    /// Frames per second, per VNI and host; `None` is the dataplane's
    /// default (`--flood-rate`).
    pub rate: Option<u32>,
}

impl Default for FloodPolicy {
    fn default() -> Self {
        FloodPolicy {
            enabled: true,
            rate: None,
        }
    }
}

/// What replication of one VNI did, summed over the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FloodCounts {
    /// Frames replicated to other hosts.
    pub frames: u64,
    /// Copies sent (frames times VTEPs).
    pub copies: u64,
    /// Frames dropped by the rate limit.
    pub rate_limited: u64,
    /// Frames not replicated because the network turned flooding off.
    pub suppressed: u64,
}

/// The rate limiter and counters of one VNI, shared by the workers.
#[derive(Debug)]
pub struct Replication {
    /// The time origin of `tat`.
    epoch: Instant,
    /// GCRA theoretical arrival time, nanoseconds after `epoch`.
    tat: AtomicU64,
    frames: AtomicU64,
    copies: AtomicU64,
    rate_limited: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for Replication {
    fn default() -> Self {
        Replication::new(Instant::now())
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Replication {
    pub fn new(epoch: Instant) -> Replication {
        Replication {
            epoch,
            tat: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            copies: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Takes one frame from a budget of `rate` frames per second with a
    /// burst of one second's worth; false (and counted) when it is used
    /// up. A rate of 0 admits nothing.
    pub fn admit(&self, now: Instant, rate: u32) -> bool {
        if rate == 0 {
            add(&self.rate_limited, 1);
            return false;
        }
        let now_ns =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let interval = 1_000_000_000 / u64::from(rate);
        // A full bucket holds `rate` frames: one second.
        let tolerance = Duration::from_secs(1).as_nanos() as u64 - interval;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            if tat > now_ns.saturating_add(tolerance) {
                add(&self.rate_limited, 1);
                return false;
            }
            let next = tat.max(now_ns).saturating_add(interval);
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(t) => tat = t,
            }
        }
    }

    /// One frame sent as `copies` datagrams.
    pub fn replicated(&self, copies: usize) {
        add(&self.frames, 1);
        add(&self.copies, copies as u64);
    }

    /// One frame kept on this host because flooding is off.
    pub fn suppressed(&self) {
        add(&self.suppressed, 1);
    }

    pub fn counts(&self) -> FloodCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FloodCounts {
            frames: get(&self.frames),
            copies: get(&self.copies),
            rate_limited: get(&self.rate_limited),
            suppressed: get(&self.suppressed),
        }
    }
}

/// A VNI's replication state, shared by every version of its table.
pub type SharedReplication = Arc<Replication>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let t0 = Instant::now();
        let r = Replication::new(t0);
        let admitted = (0..250).filter(|_| r.admit(t0, 100)).count();
        assert_eq!(admitted, 100, "the bucket holds one second");
        assert_eq!(r.counts().rate_limited, 150);
        // 100 ms later: room for 10 more.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!((0..50).filter(|_| r.admit(t1, 100)).count(), 10);
        // Idle for long: full again, never more.
        let t2 = t0 + Duration::from_secs(60);
        assert_eq!((0..500).filter(|_| r.admit(t2, 100)).count(), 100);
        assert!(!r.admit(t2, 0), "rate 0 admits nothing");
    }

    #[test]
    fn workers_share_one_budget() {
        let t0 = Instant::now();
        let r = Arc::new(Replication::new(t0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = Arc::clone(&r);
                std::thread::spawn(move || (0..1000).filter(|_| r.admit(t0, 500)).count())
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 500);
    }

    #[test]
    fn counts_add_up() {
        let r = Replication::default();
        r.replicated(3);
        r.replicated(2);
        r.suppressed();
        assert_eq!(
            r.counts(),
            FloodCounts {
                frames: 2,
                copies: 5,
                rate_limited: 0,
                suppressed: 1
            }
        );
    }
}
