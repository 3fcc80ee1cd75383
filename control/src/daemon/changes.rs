//! How the parts of the daemon tell each other that something changed,
//! without sharing a lock across any work:
//!
//! - [`Changes`]: a counter bumped after every write of desired state (the
//!   store) and poked when other inputs change (gossip, a dataplane that
//!   restarted). The reconciler waits on it; the manager's assignment
//!   watch waits on its store generation.
//! - [`Realized`]: what the reconciler's last pass made real, by the store
//!   generation it started from. A request that wrote desired state waits
//!   here until a pass has seen its write, then reads that pass's outcome
//!   for the objects it cares about.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use vxnet_api::ctl::ReconcileReport;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    /// Bumped by every write of desired state.
    store: u64,
    /// Bumped by every write and every poke.
    any: u64,
}

/// A change counter with waiting.
pub struct Changes {
    state: Mutex<Counters>,
    cv: Condvar,
}

impl Default for Changes {
    /// The store generation starts at the wall clock in microseconds, so a
    /// manager that restarts hands out generations above those it handed
    /// out before: a worker keeps the newest assignments it saw and would
    /// ignore a restarted manager's until its counter caught up (it took
    /// no new task after a manager restart).
    fn default() -> Self {
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Changes {
            state: Mutex::new(Counters {
                store: base,
                any: 0,
            }),
            cv: Condvar::new(),
        }
    }
}

impl Changes {
    fn lock(&self) -> MutexGuard<'_, Counters> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Desired state was written; returns the new store generation.
    pub fn bump(&self) -> u64 {
        let mut c = self.lock();
        c.store += 1;
        c.any += 1;
        self.cv.notify_all();
        c.store
    }

    /// Something else the reconciler reads changed.
    pub fn poke(&self) {
        let mut c = self.lock();
        c.any += 1;
        self.cv.notify_all();
    }

    /// The current store generation.
    pub fn generation(&self) -> u64 {
        self.lock().store
    }

    /// The current change sequence (writes and pokes).
    pub fn sequence(&self) -> u64 {
        self.lock().any
    }

    /// Waits until the change sequence differs from `seen` or `timeout`
    /// passes; returns the sequence then.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> u64 {
        self.wait_until(timeout, |c| c.any != seen).any
    }

    /// Waits until the store generation is above `seen` or `timeout`
    /// passes; returns the generation then.
    pub fn wait_generation(&self, seen: u64, timeout: Duration) -> u64 {
        self.wait_until(timeout, |c| c.store > seen).store
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&Counters) -> bool) -> Counters {
        let deadline = Instant::now() + timeout;
        let mut c = self.lock();
        while !done(&c) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            c = self
                .cv
                .wait_timeout(c, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *c
    }
}

/// The outcome of making one container real, as of the last pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// As desired (running, stopped or gone).
    Done,
    /// Could not be made real; the message says why.
    Failed(String),
}

#[derive(Default)]
struct Passes {
    /// Store generation the last finished pass started from.
    generation: u64,
    /// Per container id.
    outcomes: BTreeMap<String, Outcome>,
    report: ReconcileReport,
}

/// No pass saw the write in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedOut;

/// What the reconciler's passes made real.
#[derive(Default)]
pub struct Realized {
    state: Mutex<Passes>,
    cv: Condvar,
}

impl Realized {
    fn lock(&self) -> MutexGuard<'_, Passes> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A pass that started from store generation `generation` finished.
    pub fn publish(
        &self,
        generation: u64,
        outcomes: BTreeMap<String, Outcome>,
        report: ReconcileReport,
    ) {
        let mut p = self.lock();
        p.generation = p.generation.max(generation);
        p.outcomes = outcomes;
        p.report = report;
        self.cv.notify_all();
    }

    /// What the last pass changed and could not do.
    pub fn last_report(&self) -> ReconcileReport {
        self.lock().report.clone()
    }

    /// Waits until a pass that saw store generation `generation` finished;
    /// then the outcome for `container` (`None`: that pass did not know
    /// it). [`TimedOut`] when `timeout` passed first.
    pub fn wait(
        &self,
        generation: u64,
        container: &str,
        timeout: Duration,
    ) -> Result<Option<Outcome>, TimedOut> {
        let deadline = Instant::now() + timeout;
        let mut p = self.lock();
        while p.generation < generation {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TimedOut);
            }
            p = self
                .cv
                .wait_timeout(p, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(p.outcomes.get(container).cloned())
    }

    /// The outcome of the last pass for `container`.
    pub fn outcome(&self, container: &str) -> Option<Outcome> {
        self.lock().outcomes.get(container).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waiters_wake_on_the_change_they_wait_for() {
        let c = Arc::new(Changes::default());
        let seq = c.sequence();
        let gen0 = c.generation();
        let c2 = Arc::clone(&c);
        let t = std::thread::spawn(move || c2.wait_change(seq, Duration::from_secs(10)));
        c.poke();
        assert_eq!(t.join().unwrap(), seq + 1);
        // A poke is not a write.
        assert_eq!(c.generation(), gen0);
        assert_eq!(c.wait_generation(gen0, Duration::from_millis(1)), gen0);
        let g = c.bump();
        assert_eq!(c.wait_generation(gen0, Duration::from_millis(1)), g);
    }

    #[test]
    fn realized_waits_for_a_pass_that_saw_the_write() {
        let r = Arc::new(Realized::default());
        assert_eq!(r.wait(1, "c", Duration::from_millis(1)), Err(TimedOut));
        let r2 = Arc::clone(&r);
        let t = std::thread::spawn(move || r2.wait(3, "c", Duration::from_secs(10)));
        // A pass from before the write does not count.
        r.publish(2, BTreeMap::new(), ReconcileReport::default());
        let mut o = BTreeMap::new();
        o.insert("c".to_owned(), Outcome::Failed("no".into()));
        r.publish(3, o, ReconcileReport::default());
        assert_eq!(t.join().unwrap(), Ok(Some(Outcome::Failed("no".into()))));
        assert_eq!(r.outcome("d"), None);
    }
}
