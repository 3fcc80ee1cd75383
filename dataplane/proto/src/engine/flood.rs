//! Broadcast, multicast and unknown unicast from a local endpoint (issue
//! 12): delivered to the VNI's other local ports and replicated head-end
//! to every VTEP with endpoints on the VNI ([`VniTable::replicate`]: the
//! remote entries' VTEPs and the `flood` VTEPs), within the VNI's flood
//! rate, unless its network turned flooding off.
//!
//! A plain VNI encapsulates the frame once and sends the same bytes to
//! each VTEP; an encrypted one seals a copy per VTEP (each host pair has
//! its own keys). Every frame that reaches nobody is counted by why: no
//! other endpoint (`no_receivers`), flooding off (`flood_off`), over the
//! rate (`flood_rate`). Per VNI, [`crate::replication::Replication`] counts
//! frames replicated, copies, rate-limited and suppressed frames.

use super::trace::Note;
use super::{Ctx, Outputs, note};
use crate::fdb::{Fdb, PortId, VniTable};
use crate::stats::{Counter, Drop};
use crate::wire::Vni;
use crate::wire::vnet::{GsoType, VnetHdr};
use std::net::SocketAddr;

impl Ctx {
    /// Floods `frame` from local port `from`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn flood(
        &mut self,
        fdb: &Fdb,
        vni: Vni,
        table: &VniTable,
        from: PortId,
        hdr: &VnetHdr,
        frame: &[u8],
        out: &mut Outputs,
    ) {
        let local = table.ports.iter().any(|p| *p != from);
        let remote = !table.replicate.is_empty();
        let replicate = remote && table.policy.enabled;
        if remote && !replicate {
            table.replication.suppressed();
        }
        if !local && !replicate {
            let why = if remote {
                Drop::TapFloodOff
            } else {
                Drop::TapNoReceivers
            };
            return self.stats.dropped(why);
        }
        if !table.replication.admit(self.now, fdb.flood_rate(table)) {
            return self.stats.dropped(Drop::TapFloodRateLimited);
        }
        note!(
            self.rec,
            Note::Flood {
                ports: table.ports.iter().filter(|p| **p != from).count(),
                vteps: if replicate { table.replicate.len() } else { 0 },
            }
        );
        let max = fdb.max_frame(table.encrypted);
        if replicate
            && frame.len() > max
            && hdr.gso_type == GsoType::None
            && self.too_big(fdb, table.encrypted, from, frame, out)
        {
            return;
        }
        for &p in table.ports.iter().filter(|p| **p != from) {
            out.tap(p).push_as_is(hdr, frame);
        }
        if replicate {
            self.replicate(fdb, vni, table, from, hdr, frame, out);
        }
    }

    /// Sends `frame` to every VTEP of [`VniTable::replicate`].
    #[allow(clippy::too_many_arguments)]
    fn replicate(
        &mut self,
        fdb: &Fdb,
        vni: Vni,
        table: &VniTable,
        from: PortId,
        hdr: &VnetHdr,
        frame: &[u8],
        out: &mut Outputs,
    ) {
        let max = fdb.max_frame(table.encrypted);
        let before = out.udp.msgs().len();
        let mut capped = false;
        if table.encrypted {
            // Each VTEP has its own keys: no sharing of sealed bytes.
            for vtep in &table.replicate {
                capped |= self.encap_esp(fdb, vni, *vtep, hdr, frame, max, out);
            }
        } else if let Some((first, rest)) = table.replicate.split_first() {
            if let Some(e) = self.encap(vni, *first, hdr, frame, max, out) {
                capped = e.capped;
                if let Some(msg) = out.udp.msgs().last().cloned() {
                    for vtep in rest {
                        let dst = SocketAddr::new(*vtep, self.cfg.port);
                        out.udp
                            .commit_again(dst, e.range.clone(), msg.segment, msg.entropy);
                    }
                }
            }
        }
        let copies = out.udp.msgs().len() - before;
        if copies > 0 {
            self.stats.add(Counter::Flooded, copies as u64);
            table.replication.replicated(copies);
        }
        if capped {
            self.gso_capped(fdb, table.encrypted, from, frame, out);
        }
    }
}
