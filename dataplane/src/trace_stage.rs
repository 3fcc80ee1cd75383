//! Where each drop reason happens on the packet path, and how to fix it:
//! the words `vxnet trace` and `vxnet trace --live` print for a drop (and
//! the stage of a packet the dataplane answered itself).
//! Matched on the counters' own `stage/reason` names, so a reason added
//! to `vxnet_proto::stats::Drop` lands at its stage's default.

use vxnet_api::trace::TraceStage;
use vxnet_proto::engine::trace::Answer;
use vxnet_proto::stats::Drop;

/// The stage a drop happens at.
pub fn of_drop(d: Drop) -> TraceStage {
    use TraceStage as S;
    match (d.stage(), d.reason()) {
        ("tap", "spoofed_source") => S::AntiSpoof,
        ("tap", "same_port" | "no_receivers" | "flood_off" | "flood_rate") => S::Fdb,
        ("tap", "no_sa") => S::Sa,
        ("tap", "too_big" | "segment_error") => S::Outer,
        ("tap", _) => S::TapRx,
        ("lb", "backend_gone" | "conntrack_full") => S::Conntrack,
        ("lb", _) => S::Vip,
        ("wire", "unknown_vni" | "vni_mismatch") => S::Vni,
        (
            "wire",
            "plain_on_encrypted" | "unknown_spi" | "auth_failed" | "replay" | "too_old" | "bad_esp",
        ) => S::Decrypt,
        ("wire", "no_endpoint") => S::Endpoint,
        ("wire", _) => S::WireRx,
        ("io", "tap_write" | "bad_ref") => S::TapTx,
        ("mesh", "no_flow") => S::Conntrack,
        ("mesh", _) => S::Gateway,
        _ => S::Outer,
    }
}

/// The stage of a packet the dataplane answered itself.
pub fn of_answer(a: Answer) -> TraceStage {
    match a {
        Answer::Arp | Answer::Nd => TraceStage::ArpNd,
        Answer::VipEcho | Answer::VipReset => TraceStage::Vip,
        Answer::GatewayEcho => TraceStage::Gateway,
    }
}

/// One line on how to fix what made a packet drop.
pub fn fix(d: Drop) -> &'static str {
    match (d.stage(), d.reason()) {
        ("tap", "spoofed_source") => {
            "the container sends from a MAC that is not its endpoint's: use the MAC `vxnet dp endpoints` shows"
        }
        ("tap", "no_destination") => {
            "the source's network has no forwarding table on this host: re-add it (`vxnet dp network add`), or reconnect the container"
        }
        ("tap", "no_receivers") => fix_no_peer(),
        ("tap", "flood_off") => {
            "the destination MAC is unknown here and the network does not flood: add the peer (`vxnet dp peer add`), or turn flooding on for the network"
        }
        ("tap", "flood_rate") => {
            "broadcast and unknown unicast exceed the network's flood rate: find the sender that floods, or raise the rate"
        }
        ("tap", "same_port") => {
            "the destination MAC is behind the port the frame came from: the container sends to its own MAC, check its neighbour cache (`ip neigh` in it)"
        }
        ("tap", "no_sa") => {
            "no established SA with the destination's host: both hosts need each other's key (`vxnet dp vtep ls` on both; `vxnet node ls` shows both Ready)"
        }
        ("tap", "too_big") => {
            "a DF packet does not fit the underlay after encapsulation: the sender got an ICMP fragmentation needed (packet too big) with the MTU that fits; send smaller packets, lower the container's MTU, or raise the underlay's MTU"
        }
        ("tap", _) => "the frame is malformed or from an unknown port; see `vxnet dp endpoints`",
        ("lb", "no_backend") => {
            "the service has no running task: `vxnet service ps SERVICE` says why"
        }
        ("lb", "backend_gone") => {
            "the flow's task left the service; the client's next connection gets a live task"
        }
        ("lb", "conntrack_full") => {
            "the conntrack table is full of live connections: raise --conntrack-size"
        }
        ("lb", "hairpin_port") => {
            "a task connects to its own service's VIP from the service's own port and was balanced to itself: connect from another source port (let the kernel pick one)"
        }
        ("lb", _) => "only TCP, UDP and ping to a VIP are balanced, unfragmented",
        ("wire", "unknown_vni") => {
            "the receiving host has no network with this VNI: the network must reach that host (a container there on it), or `vxnet dp network add` it there"
        }
        ("wire", "no_endpoint") => {
            "the destination MAC is no endpoint on the receiving host: its container moved or stopped, and the sender's FDB is stale"
        }
        ("wire", "unknown_spi") => {
            "the receiving host has no SA for this sender: it does not know the sender's key (`vxnet dp vtep add` there; under vxnet-control, check both hosts are Ready)"
        }
        ("wire", "plain_on_encrypted") => {
            "the network is encrypted on the receiver but not on the sender: declare it encrypted on both"
        }
        ("wire", "vni_mismatch" | "auth_failed" | "replay" | "too_old" | "bad_esp") => {
            "the datagram failed ESP checks: a forged, replayed or corrupted packet, or keys out of step (`vxnet dp rekey`)"
        }
        ("wire", "from_self") => {
            "the inner source MAC is a local endpoint here: a MAC is used on two hosts"
        }
        ("wire", "empty") => {
            "a zero-length UDP datagram reached the data port: something on the underlay sends to it that is not a VTEP (a probe or an attack)"
        }
        ("wire", "reserved_spi") => {
            "ESP with an SPI of 1-255, which no SA has (RFC 4303 section 2.1): a forged or corrupted packet"
        }
        ("wire", _) => "the datagram is not valid VXLAN",
        ("io", "udp_send_unreachable") => {
            "the underlay has no route to the destination VTEP: check the host's routes to it"
        }
        ("io", "udp_send_eperm") => {
            "a firewall on this host refused the datagram: allow UDP to the data port"
        }
        ("io", "udp_send_family") => {
            "the destination VTEP is of the other address family than this host's VTEP: use one family for all VTEPs"
        }
        ("mesh", "no_port") => {
            "nothing publishes this port: `vxnet service ls` shows the published PORTS; add one with `vxnet service update --publish-add`"
        }
        ("mesh", "no_route") => {
            "the host link sent to an address no local container has: the task moved or stopped; `vxnet dp ports` and `vxnet dp endpoints` show what is here"
        }
        ("mesh", "egress_address") => {
            "the host link's addresses other than the host's own and the mesh address are egress addresses, which only carry answers to the containers' own connections: reach a container by its address on a network you share, or through a published port"
        }
        ("mesh", "no_egress") => {
            "the network has no way out: it was created --internal, the address is IPv6, or the dataplane runs without a host link"
        }
        ("mesh", "no_flow") => {
            "a published-port reply with no flow state here (the dataplane restarted): the client's next packet recreates it"
        }
        ("mesh", _) => "only ARP, TCP, UDP and ICMP over IPv4 cross the host link",
        _ => "the kernel refused the send or write; see the dataplane's log",
    }
}

/// How to fix unknown unicast that nobody else gets (`tap/no_receivers`,
/// and the trace's own `fdb/no_peer`).
pub fn fix_no_peer() -> &'static str {
    "no endpoint or peer has this MAC on the VNI: add the peer (`vxnet dp peer add`), or check that the destination's container runs and its host is Ready (`vxnet node ls`)"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outside the kernel's own refusals (`io/*`, whose errno the log
    /// has), every drop reason has a fix of its own words, not the
    /// fallback.
    #[test]
    fn every_reason_outside_io_has_its_own_fix() {
        let fallback = fix(Drop::ALL
            .iter()
            .copied()
            .find(|d| d.stage() == "io" && d.reason() == "udp_send")
            .expect("io/udp_send"));
        for d in Drop::ALL.iter().copied().filter(|d| d.stage() != "io") {
            assert_ne!(fix(d), fallback, "{}/{} has no fix", d.stage(), d.reason());
        }
    }
}
