//! Neighbour announcements (issue 12): when an endpoint is attached, or an
//! address moves to another MAC or another host, the local endpoints of
//! its VNI are told at once with a gratuitous ARP (RFC 5227 announcement)
//! or an unsolicited neighbour advertisement with the Override flag (RFC
//! 4861 section 7.2.6), instead of reaching the old MAC until their
//! neighbour entry expires (about 50 s on Linux). The dataplane's control
//! side decides when ([`Engine::announce`] is called between batches); this
//! only writes the frames.

use super::{Engine, Outputs};
use crate::fdb::Dest;
use crate::stats::Counter;
use crate::wire::vnet::VnetHdr;
use crate::wire::{MacAddr, Vni, arp, nd};
use std::net::IpAddr;

impl Engine {
    /// Writes "`ip` is at `mac`" into every local port of `vni` but the
    /// one `mac` is behind; returns how many frames that was.
    pub fn announce(&mut self, vni: Vni, ip: IpAddr, mac: MacAddr, out: &mut Outputs) -> usize {
        let Some(table) = self.fdb.vni(vni) else {
            return 0;
        };
        let own = match table.macs.get(&mac) {
            Some(Dest::Local(p)) => Some(*p),
            _ => None,
        };
        let ctx = &mut self.ctx;
        let n = match ip {
            IpAddr::V4(v4) => arp::emit_gratuitous(v4, mac, &mut ctx.reply),
            IpAddr::V6(v6) => nd::emit_unsolicited_advert(v6, mac, &mut ctx.reply),
        };
        let mut sent = 0;
        for &p in table.ports.iter().filter(|p| Some(**p) != own) {
            out.tap(p).push_as_is(&VnetHdr::NONE, &ctx.reply[..n]);
            sent += 1;
        }
        ctx.stats.add(Counter::NeighbourAnnounced, sent as u64);
        sent
    }
}
