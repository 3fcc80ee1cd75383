//! Frames too big for the underlay after encapsulation (issue 12): what
//! Linux's bridge and VXLAN do (`skb_tunnel_check_pmtu`), so that the
//! container's path-MTU discovery adapts instead of its TCP stalling.
//!
//! - A frame without GSO that does not fit is answered with an ICMP
//!   "fragmentation needed" or ICMPv6 "packet too big" carrying the MTU
//!   that fits ([`crate::wire::icmp`]) and dropped (`tap`/`too_big`), when
//!   its sender can use the answer (IPv4 with DF, IPv6); otherwise it is
//!   sent whole and the kernel fragments its datagram (`oversize_sent`).
//! - A GSO frame is cut into segments that fit (see
//!   [`crate::offload::segment::segment_within`]), nothing is lost, and its
//!   sender is told the MTU all the same (`gso_capped`), so that it stops
//!   handing over segments that need cutting.
//!
//! The MTU reported is the inner IP MTU the underlay carries for the VNI
//! ([`crate::mtu::Underlay::path_mtu`]). The answer goes back into the TAP
//! the frame came from; it costs nothing to frames that fit.

use super::trace::Note;
use super::{Ctx, Outputs, note};
use crate::fdb::{Fdb, PortId};
use crate::stats::{Counter, Drop};
use crate::wire::icmp;
use crate::wire::vnet::VnetHdr;

impl Ctx {
    /// A frame (no GSO) from `port` longer than the underlay carries:
    /// answered and dropped (true), or, when its sender cannot use an
    /// answer, left to be sent whole (false).
    pub(super) fn too_big(
        &mut self,
        fdb: &Fdb,
        encrypted: bool,
        port: PortId,
        frame: &[u8],
        out: &mut Outputs,
    ) -> bool {
        let mtu = fdb.underlay().path_mtu(encrypted);
        let answered = self.answer_too_big(port, frame, mtu, out);
        note!(
            self.rec,
            Note::TooBig {
                mtu,
                port,
                answered
            }
        );
        if answered {
            self.stats.dropped(Drop::TapTooBig);
            true
        } else {
            self.stats.inc(Counter::OversizeSent);
            false
        }
    }

    /// A GSO frame from `port` whose segments were cut smaller than it
    /// asked: its data went, and its sender is told the MTU.
    pub(super) fn gso_capped(
        &mut self,
        fdb: &Fdb,
        encrypted: bool,
        port: PortId,
        frame: &[u8],
        out: &mut Outputs,
    ) {
        self.stats.inc(Counter::GsoCapped);
        let mtu = fdb.underlay().path_mtu(encrypted);
        self.answer_too_big(port, frame, mtu, out);
    }

    /// Writes the ICMP answer to `frame` into `port`; false when the frame
    /// must not be answered.
    fn answer_too_big(&mut self, port: PortId, frame: &[u8], mtu: u32, out: &mut Outputs) -> bool {
        let Some(n) = icmp::emit_too_big(frame, mtu, &mut self.icmp) else {
            return false;
        };
        out.tap(port).push_as_is(&VnetHdr::NONE, &self.icmp[..n]);
        self.stats.inc(Counter::TooBigReplies);
        true
    }
}
