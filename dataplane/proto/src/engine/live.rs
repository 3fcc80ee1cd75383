//! `vxnet trace --live`: verdicts of real packets, at a bounded cost.
//!
//! Two things are observed, each as cheaply as it can be:
//! - Drops, all of them: the worker compares [`Stats::drop_seq`] before and
//!   after each packet (two loads of its own cache line) and takes the
//!   reason from [`Stats::last_drop`]. A packet that is not dropped pays
//!   nothing more.
//! - Other verdicts, sampled: one packet in `every` is handled with a
//!   [`Recorder`] installed, which notes its decisions (the same notes as
//!   `vxnet trace`); the rest run exactly as with live tracing off.
//!
//! The `engine` bench (`live/*`) measures both against `from_tap` without
//! an observer: the budget is 5% (see the README's numbers).
//!
//! [`Stats::drop_seq`]: crate::stats::Stats::drop_seq
//! [`Stats::last_drop`]: crate::stats::Stats::last_drop

use super::trace::{Note, Recorder};
use super::{Engine, Outputs};
use crate::batch::FrameRef;
use crate::fdb::PortId;
use crate::stats::Drop;
use std::net::SocketAddr;

/// Which packets a live trace looks at.
#[derive(Debug)]
pub struct LiveSampler {
    /// Note one packet in this many (0: none, drops only).
    every: u32,
    left: u32,
    /// Installed for the sampled packet; its notes stay readable until
    /// the next one.
    rec: Option<Box<Recorder>>,
    sampled: bool,
}

/// What became of an observed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The reason it was dropped, if it was.
    pub drop: Option<Drop>,
    /// Whether it was sampled: [`LiveSampler::notes`] has its decisions.
    pub sampled: bool,
}

impl Observed {
    /// Whether there is anything to report.
    pub fn is_event(&self) -> bool {
        self.drop.is_some() || self.sampled
    }
}

impl LiveSampler {
    /// Samples one packet in `every` (0: report drops only).
    pub fn new(every: u32) -> LiveSampler {
        LiveSampler {
            every,
            left: every,
            rec: Some(Box::new(Recorder::live())),
            sampled: false,
        }
    }

    /// The decisions of the last sampled packet.
    pub fn notes(&self) -> &[Note] {
        self.rec.as_ref().map_or(&[], |r| &r.notes)
    }

    #[inline]
    fn start(&mut self, e: &mut Engine) -> u64 {
        self.sampled = false;
        if self.every != 0 {
            self.left -= 1;
            if self.left == 0 {
                self.left = self.every;
                if let Some(mut r) = self.rec.take() {
                    r.notes.clear();
                    self.rec = e.set_recorder(Some(r));
                    self.sampled = true;
                }
            }
        }
        e.stats().drop_seq()
    }

    #[inline]
    fn finish(&mut self, e: &mut Engine, seq: u64) -> Observed {
        if self.sampled {
            self.rec = e.set_recorder(None);
        }
        let drop = (e.stats().drop_seq() != seq)
            .then(|| e.stats().last_drop())
            .flatten();
        Observed {
            drop,
            sampled: self.sampled,
        }
    }
}

impl Engine {
    /// [`Engine::from_tap`], observed by `live`.
    #[inline]
    pub fn from_tap_observed(
        &mut self,
        port: PortId,
        pkt: &mut [u8],
        out: &mut Outputs,
        live: &mut LiveSampler,
    ) -> Observed {
        let seq = live.start(self);
        self.from_tap(port, pkt, out);
        live.finish(self, seq)
    }

    /// [`Engine::from_wire_at`], observed by `live`.
    #[inline]
    pub fn from_wire_observed(
        &mut self,
        src: SocketAddr,
        datagram: &mut [u8],
        at: FrameRef,
        out: &mut Outputs,
        live: &mut LiveSampler,
    ) -> Observed {
        let seq = live.start(self);
        self.from_wire_at(src, datagram, at, out);
        live.finish(self, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::TxBatch;
    use crate::engine::EngineConfig;
    use crate::fdb::Fdb;
    use crate::stats::Stats;
    use crate::wire::{MacAddr, Vni, vnet};
    use std::sync::Arc;

    #[test]
    fn drops_are_all_seen_and_others_sampled() {
        let vni = Vni::new(10).unwrap();
        let a = MacAddr([2, 0, 0, 0, 0, 1]);
        let b = MacAddr([2, 0, 0, 0, 0, 2]);
        let mut fdb = Fdb::default();
        fdb.add_local(0, vni, a, &[]).unwrap();
        fdb.add_remote(vni, b, &[], "192.0.2.2".parse().unwrap())
            .unwrap();
        let mut e = Engine::new(
            EngineConfig::default(),
            Arc::new(fdb),
            Arc::new(Stats::default()),
        );
        let mut out = Outputs::new(TxBatch::new(1 << 20, 256));
        let frame = |src: MacAddr| {
            let mut v = vec![0u8; vnet::LEN];
            v.extend_from_slice(&b.0);
            v.extend_from_slice(&src.0);
            v.extend_from_slice(&[0x08, 0x00]);
            v.resize(vnet::LEN + 60, 0);
            v
        };
        let mut live = LiveSampler::new(4);
        let mut seen = Vec::new();
        for i in 0..8 {
            let src = if i == 5 {
                MacAddr([2, 9, 9, 9, 9, 9])
            } else {
                a
            };
            let o = e.from_tap_observed(0, &mut frame(src), &mut out, &mut live);
            if o.sampled {
                assert!(matches!(live.notes().last(), Some(Note::Outer { .. })));
            }
            seen.push(o);
        }
        let sampled: Vec<usize> = (0..8).filter(|i| seen[*i].sampled).collect();
        assert_eq!(sampled, [3, 7]);
        let dropped: Vec<usize> = (0..8).filter(|i| seen[*i].drop.is_some()).collect();
        assert_eq!(dropped, [5]);
        assert_eq!(seen[5].drop, Some(Drop::TapSpoofedSource));
        assert_eq!(e.stats().counter(crate::stats::Counter::Encapsulated), 7);
        // Drops only: nothing sampled.
        let mut drops = LiveSampler::new(0);
        let o = e.from_tap_observed(0, &mut frame(a), &mut out, &mut drops);
        assert!(!o.is_event());
    }
}
