//! `vxnet trace` and `vxnet dp trace`: the stages a packet goes through,
//! each with its verdict, as the dataplane's dry run reports them
//! ([`TraceReport`]), on one host or on both ends of the tunnel.
//!
//! Stage names follow the packet path of the README; a drop carries the
//! same `stage/reason` as the drop counters (`vxnet dp stats`,
//! `vxnet_drops_total{stage,reason}`), and one line on how to fix it. Two
//! failures are not counters because nothing reaches the engine:
//! `arp_nd/no_answer` (no endpoint or VIP has the address, so the
//! container's ARP or neighbour solicitation goes unanswered) and
//! `tap/endpoint_mtu` (the container's own kernel refuses a DF packet
//! bigger than its interface's MTU).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use vxnet_proto::wire::Vni;

/// Bytes carried in JSON as standard base64 (a datagram, a frame).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Bytes)
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

/// The transport of a traced packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceProto {
    /// An echo request (ping).
    #[default]
    Icmp,
    /// A SYN.
    Tcp,
    Udp,
}

impl std::fmt::Display for TraceProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TraceProto::Icmp => "icmp",
            TraceProto::Tcp => "tcp",
            TraceProto::Udp => "udp",
        })
    }
}

impl std::str::FromStr for TraceProto {
    type Err = String;
    /// Case-insensitive: `tcp`, `TCP`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "icmp" => Ok(TraceProto::Icmp),
            "tcp" => Ok(TraceProto::Tcp),
            "udp" => Ok(TraceProto::Udp),
            _ => Err(format!("protocol '{s}' is not one of icmp, tcp, udp")),
        }
    }
}

/// What `dst` is when it is no unicast address a packet could be traced
/// to: the container's own loopback never leaves it, and broadcast or
/// multicast are flooded, not routed.
pub fn not_unicast(dst: IpAddr) -> Option<&'static str> {
    if dst.is_loopback() {
        Some("the container's own loopback (the packet never leaves it)")
    } else if dst.is_unspecified() {
        Some("the unspecified address")
    } else if dst.is_multicast() {
        Some("a multicast address")
    } else if matches!(dst, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("the broadcast address")
    } else {
        None
    }
}

/// The refusal of a trace to `dst` when it is not unicast, in the words
/// `vxnet trace` and `vxnet dp trace` both give.
pub fn unicast_only(dst: IpAddr) -> Result<(), String> {
    match not_unicast(dst) {
        Some(what) => Err(format!(
            "{dst} is {what}: a trace follows one unicast packet; give the address of a container, a service or a host outside"
        )),
        None => Ok(()),
    }
}

/// The packet a trace builds: what the source would send to `dst`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketSpec {
    pub dst: IpAddr,
    #[serde(default)]
    pub proto: TraceProto,
    /// Source port (TCP, UDP); 40000 by default.
    #[serde(default)]
    pub sport: Option<u16>,
    /// Destination port (TCP, UDP); 80 by default.
    #[serde(default)]
    pub dport: Option<u16>,
    /// IP packet bytes (headers included); 84 by default (`ping`'s).
    #[serde(default)]
    pub size: Option<u32>,
    /// IPv4 Don't Fragment (IPv6 is never fragmented on the way).
    #[serde(default)]
    pub df: bool,
    /// Send to this MAC without asking ARP/ND first, as a container whose
    /// neighbour cache still holds it would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_mac: Option<vxnet_proto::wire::MacAddr>,
}

/// The stages of the packet path, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceStage {
    /// The name given for the destination, resolved as the source's DNS
    /// server would answer it.
    Dns,
    /// The frame read from the source's TAP.
    TapRx,
    /// Its source MAC belongs to the port it came from.
    AntiSpoof,
    /// The ARP or neighbour solicitation for the next hop.
    ArpNd,
    /// A service VIP: the backend Maglev picks.
    Vip,
    /// Conntrack: an existing flow, or a new one.
    Conntrack,
    /// The destination MAC: a local endpoint, a remote VTEP, or nothing.
    Fdb,
    /// The outbound SA (encrypted networks).
    Sa,
    /// The outer header: VTEPs, ports, datagram size.
    Outer,
    /// The datagram arriving at the remote host.
    WireRx,
    /// ESP opened with an inbound SA (encrypted networks).
    Decrypt,
    /// The VXLAN header's VNI.
    Vni,
    /// The destination MAC's local endpoint.
    Endpoint,
    /// Written to the destination's TAP.
    TapTx,
    /// The network's gateway and the host link (`vxnet0`): egress out of
    /// the overlay and its answers, published ports (routing mesh, host
    /// mode) and their replies, a ping to the gateway.
    Gateway,
}

impl TraceStage {
    pub fn name(self) -> &'static str {
        match self {
            TraceStage::Dns => "dns",
            TraceStage::TapRx => "tap_rx",
            TraceStage::AntiSpoof => "anti_spoof",
            TraceStage::ArpNd => "arp_nd",
            TraceStage::Vip => "vip",
            TraceStage::Conntrack => "conntrack",
            TraceStage::Fdb => "fdb",
            TraceStage::Sa => "sa",
            TraceStage::Outer => "outer",
            TraceStage::WireRx => "wire_rx",
            TraceStage::Decrypt => "decrypt",
            TraceStage::Vni => "vni",
            TraceStage::Endpoint => "endpoint",
            TraceStage::TapTx => "tap_tx",
            TraceStage::Gateway => "gateway",
        }
    }
}

/// What a stage did with the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepVerdict {
    /// On to the next stage.
    Pass,
    /// Answered by the dataplane itself (ARP/ND proxy, ping to a VIP, a
    /// reset from a VIP without backends).
    Answered,
    /// Dropped here; `reason` says why.
    Drop,
    /// Written to the destination container's TAP.
    Delivered,
}

impl std::fmt::Display for StepVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepVerdict::Pass => "pass",
            StepVerdict::Answered => "answered",
            StepVerdict::Drop => "drop",
            StepVerdict::Delivered => "delivered",
        })
    }
}

/// One stage of a trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceStep {
    /// The host it ran on (its name under the control plane, else its
    /// VTEP address).
    pub host: String,
    pub stage: TraceStage,
    pub verdict: StepVerdict,
    pub detail: String,
    /// A drop's `stage/reason`, as the drop counters name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A drop's fix, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// How a traced packet ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceVerdict {
    /// Written to the destination's TAP.
    Delivered,
    /// Answered by the dataplane.
    Answered,
    /// Dropped; the last step says where and why.
    Dropped,
    /// Left for another host (a trace of one host only ends here).
    Sent,
}

impl std::fmt::Display for TraceVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TraceVerdict::Delivered => "delivered",
            TraceVerdict::Answered => "answered",
            TraceVerdict::Dropped => "dropped",
            TraceVerdict::Sent => "sent",
        })
    }
}

/// The datagram a traced packet leaves as: what the remote half runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OuterDatagram {
    /// The sending host's VTEP.
    pub src: IpAddr,
    /// The VTEP it is sent to.
    pub dst: IpAddr,
    pub port: u16,
    /// The UDP payload (VXLAN, or ESP on an encrypted network).
    pub datagram: Bytes,
}

/// The answer to a trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceReport {
    pub steps: Vec<TraceStep>,
    pub verdict: TraceVerdict,
    /// When the packet left for another host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outer: Option<OuterDatagram>,
}

impl TraceReport {
    /// The first step that did not pass (a drop, or where it ended).
    pub fn first_failure(&self) -> Option<&TraceStep> {
        self.steps.iter().find(|s| s.verdict == StepVerdict::Drop)
    }
}

/// `trace` (dataplane): a dry run of `packet` from the local endpoint
/// with address `src` (on `vni`, when several networks have it), through
/// the engine's real code: nothing is sent, no counter moves, no flow is
/// created. Replies the local stages; the datagram it would send is in
/// [`TraceReport::outer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trace {
    pub src: IpAddr,
    #[serde(default)]
    pub vni: Option<Vni>,
    pub packet: PacketSpec,
}

/// `trace_wire` (dataplane): the remote half of a trace: `datagram` as it
/// would arrive from VTEP `src`, through the receive path's real code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceWire {
    pub src: IpAddr,
    pub datagram: Bytes,
}

/// `trace` (control daemon): a packet from container `from` (a name, an
/// ID, or one of its addresses; on this host) to `to` (an address, or a
/// name resolved as the container's DNS server would answer it), traced
/// on this host and then on the host it reaches, asked over the mutual-TLS
/// management channel. `network` picks the source's network when it has
/// several (by default the one `to` is on).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmTrace {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub proto: TraceProto,
    #[serde(default)]
    pub sport: Option<u16>,
    #[serde(default)]
    pub dport: Option<u16>,
    #[serde(default)]
    pub size: Option<u32>,
    #[serde(default)]
    pub df: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback, unspecified, broadcast and multicast destinations are
    /// refused with what they are; unicast ones pass.
    #[test]
    fn only_unicast_destinations_are_traced() {
        for (dst, what) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
        ] {
            let got = not_unicast(dst.parse().expect("address"));
            assert!(got.is_some_and(|w| w.contains(what)), "{dst}: {got:?}");
        }
        for dst in ["10.0.1.3", "192.0.2.12", "8.8.8.8", "fd00::5"] {
            assert_eq!(not_unicast(dst.parse().expect("address")), None, "{dst}");
        }
    }

    #[test]
    fn json_shapes() {
        let t: Trace = serde_json::from_str(
            r#"{"src":"10.0.0.2","packet":{"dst":"10.0.0.3","proto":"tcp","dport":443,"df":true}}"#,
        )
        .unwrap();
        assert_eq!(t.packet.proto, TraceProto::Tcp);
        assert_eq!(t.packet.dport, Some(443));
        let w = TraceWire {
            src: "192.0.2.1".parse().unwrap(),
            datagram: Bytes(vec![8, 0, 0, 0]),
        };
        let s = serde_json::to_string(&w).unwrap();
        assert_eq!(s, r#"{"src":"192.0.2.1","datagram":"CAAAAA=="}"#);
        assert_eq!(serde_json::from_str::<TraceWire>(&s).unwrap(), w);
        for bad in [
            r#"{"src":"192.0.2.1","datagram":"!!"}"#,
            r#"{"src":"10.0.0.2","packet":{"dst":"10.0.0.3","proto":"sctp"}}"#,
            r#"{"src":"10.0.0.2","packet":{"dst":"10.0.0.3"},"extra":1}"#,
        ] {
            assert!(
                serde_json::from_str::<Trace>(bad).is_err()
                    && serde_json::from_str::<TraceWire>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
