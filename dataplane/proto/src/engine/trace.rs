//! What the engine decided for one packet, as it decided it: the
//! recorder behind `vxnet trace` (a packet built by the CLI, run through
//! this same code without sending anything) and `vxnet trace --live`
//! (sampled real packets).
//!
//! Design: the forwarding code calls [`Ctx::note`](super::Ctx) at each
//! decision (port found, VIP balanced, FDB answer, SA chosen, outer header
//! built, decrypted, delivered). With no recorder installed that is one
//! test of a `None` per decision, measured in the `engine` bench
//! (`trace_off` against `from_tap`); nothing is allocated or formatted.
//! Drops are not noted here: every drop already goes through
//! [`Stats`](crate::stats::Stats), so a trace runs with a scratch `Stats`
//! of its own and reads the drop from it ([`Stats::last_drop`]). The
//! counters, the drop reasons and the trace therefore come from the same
//! calls, and a trace cannot disagree with what a real packet meets.
//!
//! A dry run ([`Engine::trace_tap`](super::Engine::trace_tap),
//! [`Engine::trace_wire`](super::Engine::trace_wire)) leaves the worker's
//! state as it was, with one exception kept on purpose: an encrypted
//! network's SA seals (and the receiving host opens) the traced packet for
//! real, so it uses up one sequence number. No real packet ever carries
//! it, and anti-replay accepts the gap; in exchange the remote half of the
//! trace runs on exactly the bytes a real packet would carry. Conntrack is
//! looked up but not changed (no flow is created, refreshed or removed),
//! counters go to the scratch `Stats`, and the outputs are discarded.
//!
//! [`Stats::last_drop`]: crate::stats::Stats::last_drop

use crate::fdb::PortId;
use crate::wire::{MacAddr, Vni};
use std::net::{IpAddr, SocketAddr};

/// Whether conntrack knew a packet's flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowMatch {
    /// An existing flow (its backend is kept).
    Hit,
    /// A new flow: the backend is Maglev's pick.
    New,
}

/// How an answered packet was answered by the dataplane itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// ARP request answered by the proxy.
    Arp,
    /// IPv6 neighbour solicitation answered by the proxy.
    Nd,
    /// Echo request to a VIP answered by the dataplane.
    VipEcho,
    /// TCP reset from a VIP (or a published port) that has no backend.
    VipReset,
    /// Echo request to the network's gateway answered by the dataplane.
    GatewayEcho,
}

/// One decision of the engine about the packet being recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Read from the TAP of `port`, an endpoint on `vni`; its source MAC
    /// is one of the port's (anti-spoof passed).
    TapRx {
        port: PortId,
        vni: Vni,
        src: MacAddr,
        dst: MacAddr,
        /// Frame bytes (without the vnet header).
        len: usize,
    },
    /// Answered locally (proxy, VIP echo, VIP reset), sent back to `port`.
    Answered { answer: Answer, port: PortId },
    /// Sent to a service VIP: balanced to `backend`.
    Vip {
        vip: IpAddr,
        backend: IpAddr,
        mac: MacAddr,
        flow: FlowMatch,
        /// Backends the service has.
        backends: usize,
    },
    /// Balanced back to the task that sent it ([`Note::Vip`] came
    /// first): its source became `vip` too (hairpin NAT), and it goes back
    /// to the port it came from.
    Hairpin { vip: IpAddr },
    /// The FDB has no entry for the destination MAC: the frame is flooded
    /// ([`Note::Flood`]), or dropped when nobody would get it (the drop
    /// follows).
    FdbMiss { mac: MacAddr },
    /// Switched to another local endpoint.
    FdbLocal { mac: MacAddr, port: PortId },
    /// The destination lives behind `vtep`.
    FdbRemote { mac: MacAddr, vtep: IpAddr },
    /// Broadcast or unknown unicast: copied to local ports and flood VTEPs.
    Flood { ports: usize, vteps: usize },
    /// Longer than the underlay carries for the VNI once encapsulated
    /// (`mtu`: the inner IP MTU that fits). `answered`: an ICMP
    /// fragmentation needed or packet too big went back to `port` (and
    /// the drop `tap/too_big` follows); else the frame is sent whole, in a
    /// datagram the kernel fragments.
    TooBig {
        mtu: u32,
        port: PortId,
        answered: bool,
    },
    /// Sealed with this outbound SA.
    Sa { spi: u32, generation: u32, seq: u64 },
    /// Encapsulated: `datagrams` UDP payloads of `len` bytes (the first;
    /// the last may be shorter) for `dst`.
    Outer {
        dst: SocketAddr,
        vni: Vni,
        len: usize,
        datagrams: usize,
        encrypted: bool,
    },
    /// A datagram from `src` on the data port.
    WireRx { src: SocketAddr, len: usize },
    /// Opened with the inbound SA `spi` (of `vni`, generation).
    Decrypted { spi: u32, vni: u32, generation: u32 },
    /// The VXLAN header's VNI is a network here.
    Vni { vni: Vni, encrypted: bool },
    /// The destination MAC is the local endpoint on `port`.
    Endpoint { mac: MacAddr, port: PortId },
    /// A reply of a balanced flow: its source became the VIP again.
    ReverseNat { vip: IpAddr },
    /// Queued for the TAP of `port`.
    TapTx { port: PortId, len: usize },
    /// Read from the host link (`vxnet0`, on `port`): a connection to a
    /// published port, or an answer to a container's egress traffic.
    HostLinkRx { port: PortId, len: usize },
    /// To published port `published` (routing mesh or host mode): the
    /// destination became task `backend`, port `target_port` (DNAT); the
    /// client's source address is kept.
    Published {
        published: u16,
        backend: IpAddr,
        target_port: u16,
    },
    /// An answer to egress traffic: the destination became the
    /// container's own address `addr` again (the host's conntrack undid
    /// its masquerade first).
    EgressReply { addr: IpAddr },
    /// Out of the overlay through the network's gateway: the source,
    /// container address `from`, became egress address `addr` (SNAT; the
    /// host masquerades it to its own address), queued for the host link's
    /// TAP on `port`.
    Egress {
        from: IpAddr,
        addr: IpAddr,
        port: PortId,
        len: usize,
    },
    /// A published flow's reply from task `backend` port `target_port`:
    /// the source became `mesh`:`published`, queued for the host link's
    /// TAP on `port`, for the host to return to the client.
    ToHost {
        backend: IpAddr,
        target_port: u16,
        mesh: IpAddr,
        published: u16,
        port: PortId,
        len: usize,
    },
}

/// Collects the [`Note`]s of one packet. Installed in the engine only
/// while a packet is being traced or sampled.
#[derive(Debug, Default)]
pub struct Recorder {
    pub notes: Vec<Note>,
    /// Dry run: decide, but change no conntrack state.
    pub dry_run: bool,
}

impl Recorder {
    /// A recorder for a dry run (`vxnet trace`).
    pub fn dry_run() -> Recorder {
        Recorder {
            notes: Vec::with_capacity(16),
            dry_run: true,
        }
    }

    /// A recorder for real packets (`vxnet trace --live`): the notes of
    /// each sampled packet, conntrack changed as always.
    pub fn live() -> Recorder {
        Recorder {
            notes: Vec::with_capacity(16),
            dry_run: false,
        }
    }
}

/// The outcome of a dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRun {
    pub notes: Vec<Note>,
    /// The drops the packet met, in order (usually none or one).
    pub drops: Vec<crate::stats::Drop>,
    /// What would have been sent: destination and the first datagram of
    /// each message (the bytes a real packet would carry, sealed on an
    /// encrypted network).
    pub sent: Vec<(SocketAddr, Vec<u8>)>,
    /// Frames that would have been written to local ports.
    pub delivered: Vec<(PortId, Vec<u8>)>,
}
