//! Per-thread counters and drop reasons.
//!
//! Each worker owns one [`Stats`] and is its only writer, so an increment is
//! a plain load and store on a cache line no other core writes (no locked
//! instruction, no sharing). Readers sum every worker's [`Stats`] into a
//! [`Snapshot`] when asked (`vxnet dp stats`, `/metrics`).

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! enumerate {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($variant:ident => ($($label:literal),+)),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const COUNT: usize = $name::ALL.len();
        }
        impl $name {
            fn labels(self) -> &'static [&'static str] {
                match self { $($name::$variant => &[$($label),+]),+ }
            }
        }
    };
}

enumerate! {
    /// What the engine counts besides drops.
    pub enum Counter {
        TapRxFrames => ("tap_rx_frames", "frames read from TAPs"),
        TapRxBytes => ("tap_rx_bytes", "bytes read from TAPs (inner frames)"),
        TapRxGsoFrames => ("tap_rx_gso_frames", "GSO super-frames read from TAPs"),
        TapTxFrames => ("tap_tx_frames", "frames written to TAPs"),
        TapTxBytes => ("tap_tx_bytes", "bytes written to TAPs (inner frames)"),
        TapTxGsoFrames => ("tap_tx_gso_frames", "coalesced GSO frames written to TAPs"),
        UdpTxDatagrams => ("udp_tx_datagrams", "VXLAN datagrams sent"),
        UdpTxBytes => ("udp_tx_bytes", "UDP payload bytes sent"),
        UdpTxCalls => ("udp_tx_calls", "sendmmsg calls"),
        UdpTxGsoMessages => ("udp_tx_gso_messages", "messages sent with UDP_SEGMENT"),
        UdpRxDatagrams => ("udp_rx_datagrams", "datagrams received on the data port, empty ones included; each ends as exactly one of decapsulated, decrypted, control_rx, control_stale or a wire/lb drop"),
        UdpRxBytes => ("udp_rx_bytes", "UDP payload bytes received"),
        UdpRxCalls => ("udp_rx_calls", "recvmmsg calls that returned data"),
        UdpRxGroBuffers => ("udp_rx_gro_buffers", "received buffers holding several GRO-coalesced datagrams"),
        Encapsulated => ("encapsulated", "frames encapsulated towards a remote VTEP"),
        Decapsulated => ("decapsulated", "plain VXLAN datagrams whose frame was delivered to local endpoints (ESP ones count as decrypted)"),
        LocalSwitched => ("local_switched", "frames switched between two local endpoints"),
        Flooded => ("flooded", "copies of broadcast, multicast and unknown-unicast frames sent to other hosts (head-end replication)"),
        NeighbourAnnounced => ("neighbour_announced", "gratuitous ARPs and unsolicited neighbour advertisements written to local endpoints"),
        TooBigReplies => ("too_big_replies", "ICMP fragmentation-needed and ICMPv6 packet-too-big messages written back to senders"),
        GsoCapped => ("gso_capped", "GSO frames cut into smaller segments than they asked for, to fit the underlay"),
        OversizeSent => ("oversize_sent", "frames too big for the underlay that may be fragmented (no DF), sent in fragmented datagrams"),
        ArpProxied => ("arp_proxied", "ARP requests answered locally"),
        NdProxied => ("nd_proxied", "IPv6 neighbour solicitations answered locally"),
        GsoFallbacks => ("gso_fallbacks", "sends the kernel refused with UDP_SEGMENT, resent without it"),
        UdpTxRetried => ("udp_tx_retried", "datagrams resent one by one after the kernel refused their GSO send"),
        PollSleeps => ("poll_sleeps", "times a worker went to sleep in epoll"),
        Encrypted => ("encrypted", "frames sealed in ESP"),
        Decrypted => ("decrypted", "ESP datagrams authenticated, opened and their frame delivered to local endpoints (one opened but then dropped counts as that drop)"),
        ControlRx => ("control_rx", "key-rotation control messages received"),
        ControlTx => ("control_tx", "key-rotation control messages sent"),
        ControlStale => ("control_stale", "authentic but superseded control messages (retries, collisions)"),
        LbNewFlows => ("lb_new_flows", "new flows to a VIP given a backend by Maglev (first packets)"),
        LbDnat => ("lb_dnat", "packets to a VIP translated to their backend (DNAT)"),
        LbReverseNat => ("lb_reverse_nat", "replies translated back to come from their VIP"),
        LbEchoReplies => ("lb_echo_replies", "pings to a VIP answered by the dataplane"),
        LbResets => ("lb_resets", "TCP resets sent for a VIP that has no backend"),
        LbHairpin => ("lb_hairpin", "packets of a task to its own service's VIP balanced back to it from the VIP, and their replies (hairpin)"),
        MeshIngress => ("mesh_ingress", "packets to a published port sent on to their task (DNAT, port translated)"),
        MeshToHost => ("mesh_to_host", "replies of published-port flows translated back and handed to the host"),
        MeshReturned => ("mesh_returned", "replies of ingress flows sent back to the node the client came through"),
        MeshEgress => ("mesh_egress", "packets from containers to the outside handed to the host (source mapped for its NAT)"),
        MeshEgressReplies => ("mesh_egress_replies", "packets from the outside delivered to a container (egress replies)"),
        MeshGatewayReplies => ("mesh_gateway_replies", "pings to a network's gateway answered by the dataplane"),
        MeshHostArp => ("mesh_host_arp", "ARP requests of the host link answered"),
        ConntrackInserted => ("conntrack_inserted", "flows added to conntrack"),
        ConntrackEvicted => ("conntrack_evicted", "flows evicted from a full conntrack table (closed, half-open or unanswered ones)"),
        ConntrackExpired => ("conntrack_expired", "flows removed from conntrack after their timeout"),
        ConntrackRemoved => ("conntrack_removed", "flows removed from conntrack because their backend left the service or the service went"),
        ConntrackHits => ("conntrack_hits", "conntrack lookups that found a flow"),
        ConntrackMisses => ("conntrack_misses", "conntrack lookups that found none"),
    }
}

enumerate! {
    /// Why a packet was dropped: `(stage, reason, help)`.
    pub enum Drop {
        TapRunt => ("tap", "runt", "frame shorter than a vnet header plus Ethernet header"),
        TapBadVnetHdr => ("tap", "bad_vnet_hdr", "vnet header unreadable or inconsistent"),
        TapSegmentError => ("tap", "segment_error", "GSO frame could not be segmented"),
        TapUnknownPort => ("tap", "unknown_port", "frame from a TAP with no endpoint"),
        TapSpoofedSource => ("tap", "spoofed_source", "source MAC is not an endpoint of this TAP"),
        TapNoDestination => ("tap", "no_destination", "the port's VNI has no forwarding table"),
        TapSamePort => ("tap", "same_port", "destination MAC is behind the port the frame came from"),
        TapNoReceivers => ("tap", "no_receivers", "broadcast, multicast or unknown unicast with no other endpoint or VTEP on the VNI"),
        TapFloodOff => ("tap", "flood_off", "broadcast, multicast or unknown unicast on a network with flooding off and no other local endpoint"),
        TapFloodRateLimited => ("tap", "flood_rate", "broadcast, multicast or unknown unicast over the VNI's flood rate"),
        TapTooBig => ("tap", "too_big", "frame too big for the underlay after encapsulation, answered with ICMP fragmentation needed or packet too big"),
        TapNoSa => ("tap", "no_sa", "encrypted VNI, but no established SA with the peer yet"),
        WireEmpty => ("wire", "empty", "zero-length UDP datagram"),
        WireRunt => ("wire", "runt", "datagram shorter than a VXLAN header plus Ethernet header"),
        WireBadVxlan => ("wire", "bad_vxlan", "VXLAN flags or reserved fields invalid"),
        WireUnknownVni => ("wire", "unknown_vni", "VNI not configured on this host"),
        WireNoEndpoint => ("wire", "no_endpoint", "destination MAC is not a local endpoint"),
        WireFromSelf => ("wire", "from_self", "inner source MAC belongs to a local endpoint"),
        WirePlainOnEncrypted => ("wire", "plain_on_encrypted", "plain VXLAN for a VNI that must be encrypted"),
        WireUnknownSpi => ("wire", "unknown_spi", "ESP with an SPI no SA of the sending host has"),
        WireReservedSpi => ("wire", "reserved_spi", "ESP with an SPI of 1-255, reserved by IANA for future use (RFC 4303 section 2.1)"),
        WireAuthFailed => ("wire", "auth_failed", "ESP ICV did not verify (tampered or wrong key)"),
        WireReplay => ("wire", "replay", "ESP sequence number already received"),
        WireTooOld => ("wire", "too_old", "ESP sequence number left of the anti-replay window"),
        WireBadEsp => ("wire", "bad_esp", "ESP packet truncated, or its trailer malformed"),
        WireVniMismatch => ("wire", "vni_mismatch", "decrypted VXLAN VNI differs from the SA's VNI"),
        WireBadControl => ("wire", "bad_control", "control message malformed, unauthenticated or from an unknown host"),
        LbNoBackend => ("lb", "no_backend", "new flow to a VIP whose service has no backend"),
        LbBackendGone => ("lb", "backend_gone", "packet of a flow whose backend left the service (the flow ends)"),
        LbConntrackFull => ("lb", "conntrack_full", "new flow to a VIP not tracked: its conntrack buckets hold only live connections"),
        LbFragment => ("lb", "fragment", "IP fragment to a VIP (fragments are not balanced)"),
        LbUnsupported => ("lb", "unsupported", "packet to a VIP that is neither TCP, UDP nor an echo request"),
        LbMalformed => ("lb", "malformed", "packet to a VIP with truncated or inconsistent headers"),
        LbHairpinPort => ("lb", "hairpin_port", "new flow of a task to its own service's VIP from the service's own port, balanced back to the task itself (it would connect to itself); TCP gets a reset"),
        MeshNoPort => ("mesh", "no_port", "packet from the host to a port nothing publishes"),
        MeshNoRoute => ("mesh", "no_route", "packet from the host to an address no local container has"),
        MeshEgressAddress => ("mesh", "egress_address", "packet from a container to an address of the host link's subnet other than the host's and the mesh address: egress addresses, answer-only (the host's isolation rule would drop it)"),
        MeshNoEgress => ("mesh", "no_egress", "packet to the outside from a network without egress (--internal, IPv6, or no host link)"),
        MeshNoFlow => ("mesh", "no_flow", "reply of a published-port flow the dataplane has no state for (after a restart); the peer's retransmission recreates it"),
        MeshUnsupported => ("mesh", "unsupported", "packet from the host link that is neither ARP, TCP, UDP nor ICMP over IPv4"),
        IoUdpSend => ("io", "udp_send", "sendmmsg failed with an errno not listed apart (datagrams lost; the log names it)"),
        IoUdpSendFull => ("io", "udp_send_enobufs", "send queue still full (ENOBUFS or EAGAIN) after waiting for it to drain"),
        IoUdpSendTooBig => ("io", "udp_send_emsgsize", "a datagram too long for the socket (EMSGSIZE), also when sent alone"),
        IoUdpSendInvalid => ("io", "udp_send_einval", "the kernel refused the datagram (EINVAL), also when sent alone"),
        IoUdpSendUnreachable => ("io", "udp_send_unreachable", "no route to the VTEP (ENETUNREACH or EHOSTUNREACH)"),
        IoUdpSendDenied => ("io", "udp_send_eperm", "a firewall refused the datagram (EPERM)"),
        IoUdpSendFamily => ("io", "udp_send_family", "VTEP of the other address family than the local VTEP"),
        IoTapWrite => ("io", "tap_write", "TAP write failed (frames lost)"),
        IoBadRef => ("io", "bad_ref", "TAP write referred to receive-buffer bytes that are not there (a bug; frame lost)"),
    }
}

impl Counter {
    pub fn name(self) -> &'static str {
        self.labels()[0]
    }
    pub fn help(self) -> &'static str {
        self.labels()[1]
    }
}

impl Drop {
    pub fn stage(self) -> &'static str {
        self.labels()[0]
    }
    pub fn reason(self) -> &'static str {
        self.labels()[1]
    }
    pub fn help(self) -> &'static str {
        self.labels()[2]
    }
}

/// One worker's counters.
pub struct Stats {
    counters: CachePadded<[AtomicU64; Counter::COUNT]>,
    drops: CachePadded<DropSlots>,
}

/// Drop counts, and which drop came last: `vxnet trace --live --drops`
/// learns that a packet was dropped, and why, by comparing
/// [`Stats::drop_seq`] before and after it, at no cost to packets that
/// are not dropped.
struct DropSlots {
    counts: [AtomicU64; Drop::COUNT],
    /// Drops counted so far (all reasons).
    seq: AtomicU64,
    /// `Drop as u64 + 1` of the last drop counted; 0 before the first.
    last: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            counters: CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))),
            drops: CachePadded::new(DropSlots {
                counts: std::array::from_fn(|_| AtomicU64::new(0)),
                seq: AtomicU64::new(0),
                last: AtomicU64::new(0),
            }),
        }
    }
}

impl Stats {
    /// Adds `n`. Only the owning worker may call this (single writer).
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        let slot = &self.counters[c as usize];
        slot.store(
            slot.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn inc(&self, c: Counter) {
        self.add(c, 1);
    }

    /// Counts `n` dropped packets. Only the owning worker may call this.
    #[inline]
    pub fn drop_n(&self, d: Drop, n: u64) {
        let slots = &*self.drops;
        for (slot, add) in [(&slots.counts[d as usize], n), (&slots.seq, n)] {
            slot.store(
                slot.load(Ordering::Relaxed).wrapping_add(add),
                Ordering::Relaxed,
            );
        }
        slots.last.store(d as u64 + 1, Ordering::Relaxed);
    }

    #[inline]
    pub fn dropped(&self, d: Drop) {
        self.drop_n(d, 1);
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters[c as usize].load(Ordering::Relaxed)
    }

    pub fn drops(&self, d: Drop) -> u64 {
        self.drops.counts[d as usize].load(Ordering::Relaxed)
    }

    /// Packets dropped so far, all reasons together: a packet was dropped
    /// if this moved while it was handled.
    #[inline]
    pub fn drop_seq(&self) -> u64 {
        self.drops.seq.load(Ordering::Relaxed)
    }

    /// The reason of the last drop counted, if any.
    pub fn last_drop(&self) -> Option<Drop> {
        let last = self.drops.last.load(Ordering::Relaxed);
        Drop::ALL
            .get(usize::try_from(last).ok()?.checked_sub(1)?)
            .copied()
    }
}

/// The sum of several workers' counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub counters: [u64; Counter::COUNT],
    pub drops: [u64; Drop::COUNT],
}

impl Snapshot {
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Stats>) -> Snapshot {
        let mut s = Snapshot {
            counters: [0; Counter::COUNT],
            drops: [0; Drop::COUNT],
        };
        for st in all {
            for c in Counter::ALL {
                s.counters[*c as usize] += st.counter(*c);
            }
            for d in Drop::ALL {
                s.drops[*d as usize] += st.drops(*d);
            }
        }
        s
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }

    pub fn drop_count(&self, d: Drop) -> u64 {
        self.drops[d as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// What became of the datagrams received on the data port: delivered
    /// (`decapsulated` plain, `decrypted` ESP), taken by the key exchange
    /// (`control_rx`, `control_stale`) or dropped at the `wire` stage. Each
    /// received datagram adds exactly one, so this equals
    /// `udp_rx_datagrams` for every worker (and for their sum) whenever the
    /// worker is between two datagrams.
    pub fn wire_outcomes(&self) -> u64 {
        let delivered = [
            Counter::Decapsulated,
            Counter::Decrypted,
            Counter::ControlRx,
            Counter::ControlStale,
        ]
        .iter()
        .map(|c| self.counter(*c))
        .sum::<u64>();
        let dropped = Drop::ALL
            .iter()
            .filter(|d| d.stage() == "wire")
            .map(|d| self.drop_count(*d))
            .sum::<u64>();
        delivered + dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_workers() {
        let a = Stats::default();
        let b = Stats::default();
        a.add(Counter::TapRxFrames, 3);
        b.inc(Counter::TapRxFrames);
        b.dropped(Drop::WireUnknownVni);
        let s = Snapshot::sum([&a, &b]);
        assert_eq!(s.counter(Counter::TapRxFrames), 4);
        assert_eq!(s.drop_count(Drop::WireUnknownVni), 1);
        assert_eq!(s.total_drops(), 1);
    }

    #[test]
    fn drop_seq_and_last_drop_follow_drops() {
        let a = Stats::default();
        assert_eq!((a.drop_seq(), a.last_drop()), (0, None));
        a.dropped(Drop::WireReplay);
        a.drop_n(Drop::TapNoSa, 3);
        assert_eq!((a.drop_seq(), a.last_drop()), (4, Some(Drop::TapNoSa)));
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::COUNT);
        let mut reasons: Vec<_> = Drop::ALL.iter().map(|d| (d.stage(), d.reason())).collect();
        reasons.sort();
        reasons.dedup();
        assert_eq!(reasons.len(), Drop::COUNT);
    }
}
