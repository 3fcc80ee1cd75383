//! `trace` and `trace_wire`: dry runs of one packet through a worker's
//! engine (see `vxnet_proto::engine::trace`), and their notes turned into
//! the stages `vxnet trace` prints.
//!
//! `trace` builds what the source container would send: first its ARP
//! request or neighbour solicitation for the next hop, run through the
//! engine so the real proxy answers it (or does not), then the packet
//! itself to the MAC that answer gave. `trace_wire` runs the datagram the
//! sending host produced through the receive path here. Both run on worker
//! 0 between its batches, which owns the conntrack table a VIP's flows are
//! in (services need a single worker).
use super::{Dataplane, R};
use crate::worker::Command;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use vxnet_api::trace::{
    Bytes, OuterDatagram, PacketSpec, StepVerdict, Trace, TraceProto, TraceReport, TraceStage,
    TraceStep, TraceVerdict, TraceWire,
};
use vxnet_api::{ApiError, ErrorCode};
use vxnet_proto::engine::Engine;
use vxnet_proto::engine::trace::{Answer, FlowMatch, Note, TraceRun};
use vxnet_proto::fdb::PortId;
use vxnet_proto::wire::{MacAddr, Vni, vnet};

/// How long a trace waits for the worker.
const WORKER_ANSWER: Duration = Duration::from_secs(2);
/// `ping`'s packet: 20 + 8 + 56 bytes.
const DEFAULT_SIZE: u32 = 84;
const DEFAULT_SPORT: u16 = 40_000;
const DEFAULT_DPORT: u16 = 80;

/// The source endpoint of a trace, as the dataplane has it.
struct Source {
    port: PortId,
    vni: Vni,
    mac: MacAddr,
    ip: IpAddr,
    /// Its prefixes (on-link destinations) and default routes.
    nets: Vec<ipnet::IpNet>,
    gateways: Vec<IpAddr>,
    mtu: u32,
}

impl Dataplane {
    pub(super) fn trace(&self, t: Trace) -> R<TraceReport> {
        let src = self.trace_source(&t)?;
        let host = self.cfg.local_vtep.to_string();
        let mut steps = Vec::new();
        let step = |stage, verdict, detail: String| TraceStep {
            host: host.clone(),
            stage,
            verdict,
            detail,
            reason: None,
            fix: None,
        };
        let p = &t.packet;
        vxnet_api::trace::unicast_only(p.dst).map_err(ApiError::invalid)?;
        if p.dst.is_ipv4() != src.ip.is_ipv4() {
            return Err(ApiError::invalid(format!(
                "source {} and destination {} are of different address families",
                src.ip, p.dst
            )));
        }
        let size = p.size.unwrap_or(DEFAULT_SIZE);
        if size > src.mtu && (p.df || p.dst.is_ipv6()) {
            let mut s = step(
                TraceStage::TapRx,
                StepVerdict::Drop,
                format!(
                    "{size}-byte packet with DF, above the endpoint's MTU of {}: its kernel refuses to send it (EMSGSIZE)",
                    src.mtu
                ),
            );
            s.reason = Some("tap/endpoint_mtu".into());
            s.fix = Some(format!(
                "send at most {} bytes (ping -s {}), or attach the endpoint with a larger --mtu",
                src.mtu,
                src.mtu.saturating_sub(28)
            ));
            steps.push(s);
            return Ok(TraceReport {
                steps,
                verdict: TraceVerdict::Dropped,
                outer: None,
            });
        }
        // The next hop: the destination itself when on-link, else the
        // endpoint's gateway of that family.
        let on_link = src.nets.iter().any(|n| n.contains(&p.dst));
        let hop = if on_link {
            Some(p.dst)
        } else {
            src.gateways
                .iter()
                .copied()
                .find(|g| g.is_ipv4() == p.dst.is_ipv4())
        };
        let Some(hop) = hop else {
            let mut s = step(
                TraceStage::ArpNd,
                StepVerdict::Drop,
                format!(
                    "{} is not on the endpoint's networks ({}) and it has no default route",
                    p.dst,
                    super::describe_ips(&src.nets)
                ),
            );
            s.reason = Some("arp_nd/no_route".into());
            s.fix = Some("trace an address on the container's network".into());
            steps.push(s);
            return Ok(TraceReport {
                steps,
                verdict: TraceVerdict::Dropped,
                outer: None,
            });
        };
        let kind = if hop.is_ipv4() {
            "ARP request"
        } else {
            "neighbour solicitation"
        };
        let dst_mac = match p.dst_mac {
            Some(mac) => {
                steps.push(step(
                    TraceStage::ArpNd,
                    StepVerdict::Pass,
                    format!("{hop} taken as {mac} without asking (as from a neighbour cache)"),
                ));
                mac
            }
            None => {
                let mut ask = vec![0u8; vnet::LEN];
                ask.extend_from_slice(&neighbour_request(&src, hop));
                let port = src.port;
                let run = self.on_worker(move |e| e.trace_tap(port, &mut ask))?;
                let answered = run
                    .delivered
                    .iter()
                    .find(|(port, _)| *port == src.port)
                    .and_then(|(_, f)| answered_mac(f, hop));
                let Some(mac) = answered else {
                    let mut s = step(
                        TraceStage::ArpNd,
                        StepVerdict::Drop,
                        format!(
                            "{kind} for {hop} on VNI {}: no answer (no endpoint or VIP here has that address)",
                            src.vni
                        ),
                    );
                    s.reason = Some("arp_nd/no_answer".into());
                    s.fix = Some(format!(
                        "{hop} belongs to no endpoint on VNI {}: check the address (`vxnet dp fdb --vni {}`), or that its container runs and its host announced it",
                        src.vni, src.vni
                    ));
                    steps.push(s);
                    return Ok(TraceReport {
                        steps,
                        verdict: TraceVerdict::Dropped,
                        outer: None,
                    });
                };
                steps.push(step(
                    TraceStage::ArpNd,
                    StepVerdict::Pass,
                    format!("{kind} for {hop} answered by the proxy: {mac}"),
                ));
                mac
            }
        };
        let mut pkt = vec![0u8; vnet::LEN];
        pkt.extend_from_slice(&build_packet(&src, dst_mac, p, size)?);
        let port = src.port;
        let run = self.on_worker(move |e| e.trace_tap(port, &mut pkt))?;
        let local = self.cfg.local_vtep;
        let names = self.port_names();
        let mut report = report(&host, &run, &names);
        report.steps.splice(0..0, steps);
        if report.verdict == TraceVerdict::Sent {
            if let Some((dst, bytes)) = run.sent.first() {
                report.outer = Some(OuterDatagram {
                    src: local,
                    dst: dst.ip(),
                    port: dst.port(),
                    datagram: Bytes(bytes.clone()),
                });
            }
        }
        Ok(report)
    }

    pub(super) fn trace_wire(&self, t: TraceWire) -> R<TraceReport> {
        let src = SocketAddr::new(t.src, self.cfg.port);
        let mut d = t.datagram.0;
        if d.len() > 65_535 {
            return Err(ApiError::invalid("a datagram is at most 65535 bytes"));
        }
        let run = self.on_worker(move |e| e.trace_wire(src, &mut d))?;
        Ok(report(
            &self.cfg.local_vtep.to_string(),
            &run,
            &self.port_names(),
        ))
    }

    /// The endpoint `t.src` names.
    fn trace_source(&self, t: &Trace) -> R<Source> {
        let st = self.lock();
        let found: Vec<&super::Endpoint> = st
            .endpoints
            .values()
            .filter(|e| {
                t.vni.is_none_or(|v| v == e.info.vni)
                    && e.info.ips.iter().any(|n| n.addr() == t.src)
            })
            .collect();
        match found.as_slice() {
            [e] => Ok(Source {
                port: e.port,
                vni: e.info.vni,
                mac: e.info.mac,
                ip: t.src,
                nets: e.info.ips.clone(),
                gateways: e.info.gateways.clone(),
                mtu: e.info.mtu,
            }),
            [] => Err(ApiError::not_found(format!(
                "no local endpoint has address {}{}; see `vxnet dp endpoints`",
                t.src,
                t.vni.map(|v| format!(" on VNI {v}")).unwrap_or_default()
            ))),
            _ => Err(ApiError::invalid(format!(
                "several local endpoints have address {}; say which network with --vni",
                t.src
            ))),
        }
    }

    /// Local ports and the endpoint addresses on them (and the host link),
    /// for the report.
    fn port_names(&self) -> Vec<(PortId, String)> {
        let link = self.host_link_port();
        self.lock()
            .endpoints
            .values()
            .map(|e| {
                let ips = e.info.ips.iter().map(|n| n.addr().to_string());
                (
                    e.port,
                    format!(
                        "{} in {}",
                        ips.collect::<Vec<_>>().join(", "),
                        e.info.location
                    ),
                )
            })
            .chain(link)
            .collect()
    }

    /// Runs `f` on worker 0's engine between its batches.
    fn on_worker(&self, f: impl FnOnce(&mut Engine) -> TraceRun + Send + 'static) -> R<TraceRun> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        {
            let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
            let w = workers
                .first()
                .ok_or_else(|| ApiError::unavailable("the dataplane has no worker"))?;
            w.send(Command::Run(Box::new(move |e| {
                let _ = tx.send(f(e));
            })));
        }
        rx.recv_timeout(WORKER_ANSWER).map_err(|_| {
            ApiError::new(
                ErrorCode::Timeout,
                "the worker did not answer in time; try again",
            )
        })
    }
}

/// The ARP request (IPv4) or neighbour solicitation (IPv6) `src` sends
/// for `hop`.
fn neighbour_request(src: &Source, hop: IpAddr) -> Vec<u8> {
    use etherparse::{Icmpv6Type, PacketBuilder};
    match (src.ip, hop) {
        (IpAddr::V4(me), IpAddr::V4(hop)) => {
            let mut f = Vec::with_capacity(42);
            f.extend_from_slice(&MacAddr::BROADCAST.0);
            f.extend_from_slice(&src.mac.0);
            f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
            f.extend_from_slice(&src.mac.0);
            f.extend_from_slice(&me.octets());
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&hop.octets());
            f
        }
        (IpAddr::V6(me), IpAddr::V6(hop)) => {
            // To the solicited-node multicast address (RFC 4861 §7.2.2).
            let o = hop.octets();
            let group: [u8; 16] = [
                0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
            ];
            let dst_mac = [0x33, 0x33, 0xff, o[13], o[14], o[15]];
            let mut body = Vec::with_capacity(24);
            body.extend_from_slice(&o);
            body.extend_from_slice(&[1, 1]);
            body.extend_from_slice(&src.mac.0);
            let mut f = Vec::new();
            let built = PacketBuilder::ethernet2(src.mac.0, dst_mac)
                .ipv6(me.octets(), group, 255)
                .icmpv6(Icmpv6Type::Unknown {
                    type_u8: 135,
                    code_u8: 0,
                    bytes5to8: [0; 4],
                })
                .write(&mut f, &body);
            if built.is_err() {
                f.clear();
            }
            f
        }
        _ => Vec::new(),
    }
}

/// The MAC an ARP reply or neighbour advertisement (for `hop`) gives.
fn answered_mac(frame: &[u8], hop: IpAddr) -> Option<MacAddr> {
    let mac = |r: std::ops::Range<usize>| -> Option<MacAddr> {
        let b = frame.get(r)?;
        let mut m = [0u8; 6];
        m.copy_from_slice(b);
        Some(MacAddr(m))
    };
    match hop {
        // ARP reply: sender hardware address after the 8-byte fixed part.
        IpAddr::V4(h) if frame.get(12..14)? == [0x08, 0x06] && frame.get(28..32)? == h.octets() => {
            mac(22..28)
        }
        // Neighbour advertisement: target link-layer address option.
        IpAddr::V6(h)
            if frame.get(12..14)? == [0x86, 0xdd]
                && frame.get(54)? == &136
                && frame.get(62..78)? == h.octets() =>
        {
            mac(80..86)
        }
        _ => None,
    }
}

/// The packet `src` sends to `dst_mac`: `p.size` bytes of IP packet.
fn build_packet(src: &Source, dst_mac: MacAddr, p: &PacketSpec, size: u32) -> R<Vec<u8>> {
    use etherparse::{IpNumber, Ipv4Header, Ipv6Header, PacketBuilder};
    let sport = p.sport.unwrap_or(DEFAULT_SPORT);
    let dport = p.dport.unwrap_or(DEFAULT_DPORT);
    let (l3, l4) = match (src.ip, p.proto) {
        (IpAddr::V4(_), TraceProto::Icmp) => (20, 8),
        (IpAddr::V6(_), TraceProto::Icmp) => (40, 8),
        (IpAddr::V4(_), TraceProto::Tcp) => (20, 20),
        (IpAddr::V6(_), TraceProto::Tcp) => (40, 20),
        (IpAddr::V4(_), TraceProto::Udp) => (20, 8),
        (IpAddr::V6(_), TraceProto::Udp) => (40, 8),
    };
    let payload = usize::try_from(size)
        .ok()
        .and_then(|s| s.checked_sub(l3 + l4))
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "--size {size} is smaller than the headers ({} bytes)",
                l3 + l4
            ))
        })?;
    if payload > 65_000 {
        return Err(ApiError::invalid(format!(
            "--size {size} is larger than an IP packet"
        )));
    }
    let data = vec![0x61u8; payload];
    let eth = PacketBuilder::ethernet2(src.mac.0, dst_mac.0);
    let ip = match (src.ip, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let proto = match p.proto {
                TraceProto::Icmp => IpNumber::ICMP,
                TraceProto::Tcp => IpNumber::TCP,
                TraceProto::Udp => IpNumber::UDP,
            };
            let mut h = Ipv4Header::new(0, 64, proto, s.octets(), d.octets())
                .map_err(|e| ApiError::internal(e.to_string()))?;
            h.dont_fragment = p.df;
            h.identification = 0x7472; // "tr"
            eth.ip(etherparse::IpHeaders::Ipv4(h, Default::default()))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let h = Ipv6Header {
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
                ..Default::default()
            };
            eth.ip(etherparse::IpHeaders::Ipv6(h, Default::default()))
        }
        _ => return Err(ApiError::invalid("mixed address families")),
    };
    let mut out = Vec::with_capacity(14 + size as usize);
    let written = match p.proto {
        TraceProto::Icmp if src.ip.is_ipv4() => {
            ip.icmpv4_echo_request(0x7472, 1).write(&mut out, &data)
        }
        TraceProto::Icmp => ip.icmpv6_echo_request(0x7472, 1).write(&mut out, &data),
        TraceProto::Tcp => ip.tcp(sport, dport, 1, 64_240).syn().write(&mut out, &data),
        TraceProto::Udp => ip.udp(sport, dport).write(&mut out, &data),
    };
    written.map_err(|e| ApiError::internal(format!("cannot build the packet: {e}")))?;
    Ok(out)
}

/// The stages of a dry run on `host`: its notes, then its drop.
/// The trace's own reason for unknown unicast that reaches no other host
/// (no counter sees it: the other local endpoints get copies).
pub const NO_PEER: &str = "fdb/no_peer";

fn report(host: &str, run: &TraceRun, names: &[(PortId, String)]) -> TraceReport {
    let name = |port: PortId| {
        names
            .iter()
            .find(|(p, _)| *p == port)
            .map_or_else(|| format!("port {port}"), |(_, n)| n.clone())
    };
    let mut steps = Vec::new();
    let mut push = |stage, verdict, detail: String| {
        steps.push(TraceStep {
            host: host.to_string(),
            stage,
            verdict,
            detail,
            reason: None,
            fix: None,
        });
    };
    use StepVerdict::{Answered, Delivered, Pass};
    use TraceStage as S;
    for n in &run.notes {
        match n {
            Note::TapRx {
                port,
                vni,
                src,
                dst,
                len,
            } => {
                push(
                    S::TapRx,
                    Pass,
                    format!(
                        "{len}-byte frame from {} on VNI {vni}, to {dst}",
                        name(*port)
                    ),
                );
                push(
                    S::AntiSpoof,
                    Pass,
                    format!("source MAC {src} belongs to its port"),
                );
            }
            Note::Answered { answer, port } => {
                let what = match answer {
                    Answer::Arp => "ARP request answered by the proxy",
                    Answer::Nd => "neighbour solicitation answered by the proxy",
                    Answer::VipEcho => "echo request to the VIP answered by the dataplane",
                    Answer::VipReset => {
                        "the service has no backend: the connection is refused with a TCP reset"
                    }
                    Answer::GatewayEcho => {
                        "echo request to the network's gateway answered by the dataplane"
                    }
                };
                push(
                    crate::trace_stage::of_answer(*answer),
                    Answered,
                    format!("{what}, back to {}", name(*port)),
                );
            }
            Note::Vip {
                vip,
                backend,
                mac,
                flow,
                backends,
            } => {
                push(
                    S::Vip,
                    Pass,
                    format!(
                        "VIP {vip}: backend {backend} ({mac}), one of {backends}; destination rewritten (DNAT)"
                    ),
                );
                push(
                    S::Conntrack,
                    Pass,
                    match flow {
                        FlowMatch::Hit => "hit: an existing flow keeps its backend".to_string(),
                        FlowMatch::New => {
                            "new flow: Maglev's pick (a real packet would be tracked)".to_string()
                        }
                    },
                );
            }
            Note::FdbMiss { mac } => {
                // The flood or the drop that follows says it.
                let _ = mac;
            }
            Note::FdbLocal { mac, port } => {
                push(S::Fdb, Pass, format!("{mac} is local: {}", name(*port)))
            }
            Note::FdbRemote { mac, vtep } => {
                push(S::Fdb, Pass, format!("{mac} lives behind VTEP {vtep}"))
            }
            Note::Flood { ports, vteps } => push(
                S::Fdb,
                Pass,
                format!("broadcast or unknown: flooded to {ports} local ports and {vteps} VTEPs"),
            ),
            Note::Sa {
                spi,
                generation,
                seq,
            } => push(
                S::Sa,
                Pass,
                format!("sealed with SPI 0x{spi:08x} (generation {generation}), sequence {seq}"),
            ),
            Note::Outer {
                dst,
                vni,
                len,
                datagrams,
                encrypted,
            } => {
                let ip_hdr = if dst.is_ipv4() { 20 } else { 40 };
                push(
                    S::Outer,
                    Pass,
                    format!(
                        "{} to {dst}, VNI {vni}: {datagrams} datagram(s) of {len} bytes of UDP payload ({} bytes of outer IP packet)",
                        if *encrypted {
                            "ESP in UDP"
                        } else {
                            "VXLAN in UDP"
                        },
                        len + 8 + ip_hdr
                    ),
                );
            }
            Note::WireRx { src, len } => {
                push(S::WireRx, Pass, format!("{len}-byte datagram from {src}"))
            }
            Note::Decrypted {
                spi,
                vni,
                generation,
            } => push(
                S::Decrypt,
                Pass,
                format!(
                    "opened with SPI 0x{spi:08x} (VNI {vni}, generation {generation}); ICV and anti-replay passed"
                ),
            ),
            Note::Vni { vni, encrypted } => push(
                S::Vni,
                Pass,
                format!(
                    "VNI {vni} is a network here ({})",
                    if *encrypted { "encrypted" } else { "plain" }
                ),
            ),
            Note::Endpoint { mac, port } => {
                push(S::Endpoint, Pass, format!("{mac} is {}", name(*port)))
            }
            Note::Hairpin { vip } => push(
                S::Vip,
                Pass,
                format!(
                    "the sender is its own backend: source rewritten to VIP {vip} too (hairpin NAT), so that its reply comes back through the dataplane"
                ),
            ),
            Note::ReverseNat { vip } => push(
                S::Vip,
                Pass,
                format!("reply of a balanced flow: its source becomes VIP {vip} again"),
            ),
            Note::TooBig {
                mtu,
                port,
                answered: true,
            } => push(
                S::Outer,
                Answered,
                format!(
                    "too big for the underlay once encapsulated (it carries inner packets of {mtu} bytes): an ICMP fragmentation needed (packet too big) with MTU {mtu} goes back to {}",
                    name(*port)
                ),
            ),
            Note::TooBig {
                mtu,
                answered: false,
                ..
            } => push(
                S::Outer,
                Pass,
                format!(
                    "too big for the underlay once encapsulated (it carries inner packets of {mtu} bytes), without DF: sent whole, the kernel fragments the datagram"
                ),
            ),
            Note::TapTx { port, len } => push(
                S::TapTx,
                Delivered,
                format!("{len}-byte frame written to the TAP of {}", name(*port)),
            ),
            Note::HostLinkRx { port, len } => push(
                S::Gateway,
                Pass,
                format!("{len}-byte frame from the host through {}", name(*port)),
            ),
            Note::Published {
                published,
                backend,
                target_port,
            } => push(
                S::Gateway,
                Pass,
                format!(
                    "published port {published}: destination rewritten to task {backend} port {target_port} (DNAT); the client's address is kept"
                ),
            ),
            Note::EgressReply { addr } => push(
                S::Gateway,
                Pass,
                format!("answer to egress traffic: destination rewritten back to {addr}"),
            ),
            Note::Egress {
                from,
                addr,
                port,
                len,
            } => push(
                S::Gateway,
                Delivered,
                format!(
                    "leaves the overlay: source {from} rewritten to egress address {addr} (SNAT), {len}-byte frame written to {}; the host masquerades it to its own address and routes it",
                    name(*port)
                ),
            ),
            Note::ToHost {
                backend,
                target_port,
                mesh,
                published,
                port,
                len,
            } => push(
                S::Gateway,
                Delivered,
                format!(
                    "reply of published port {published}: source {backend} port {target_port} rewritten to {mesh} port {published}, {len}-byte frame written to {} for the host to return to the client",
                    name(*port)
                ),
            ),
        }
    }
    // Unknown unicast that reached no other host: copied to the other
    // local endpoints (none has the MAC) at most. No counter calls that a
    // drop, but the packet goes nowhere.
    let unknown = run.notes.iter().any(|n| matches!(n, Note::FdbMiss { .. }))
        && run
            .notes
            .iter()
            .any(|n| matches!(n, Note::Flood { vteps: 0, .. }));
    let verdict = if let Some(d) = run.drops.first() {
        steps.push(TraceStep {
            host: host.to_string(),
            stage: crate::trace_stage::of_drop(*d),
            verdict: StepVerdict::Drop,
            detail: d.help().to_string(),
            reason: Some(format!("{}/{}", d.stage(), d.reason())),
            fix: Some(crate::trace_stage::fix(*d).to_string()),
        });
        TraceVerdict::Dropped
    } else if unknown {
        steps.push(TraceStep {
            host: host.to_string(),
            stage: S::Fdb,
            verdict: StepVerdict::Drop,
            detail: "no endpoint or peer has the destination MAC on the VNI, and no other host is there to flood it to: only the other local endpoints get a copy, and none of them has the MAC".into(),
            reason: Some(NO_PEER.into()),
            fix: Some(crate::trace_stage::fix_no_peer().into()),
        });
        TraceVerdict::Dropped
    } else if steps.iter().any(|s| s.verdict == Delivered) {
        TraceVerdict::Delivered
    } else if steps.iter().any(|s| s.verdict == Answered) {
        TraceVerdict::Answered
    } else if !run.sent.is_empty() {
        TraceVerdict::Sent
    } else {
        TraceVerdict::Dropped
    };
    TraceReport {
        steps,
        verdict,
        outer: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vxnet_proto::stats::Drop;

    fn tap_rx() -> Note {
        Note::TapRx {
            port: 2,
            vni: Vni::new(4097).expect("VNI"),
            src: MacAddr([2, 0x42, 10, 1, 0, 5]),
            dst: MacAddr([2, 0x42, 10, 1, 0, 1]),
            len: 74,
        }
    }

    fn run(notes: Vec<Note>, drops: Vec<Drop>) -> TraceRun {
        TraceRun {
            notes,
            drops,
            sent: Vec::new(),
            delivered: Vec::new(),
        }
    }

    fn names() -> Vec<(PortId, String)> {
        vec![
            (2, "10.1.0.5 in c1".to_string()),
            (9, "the host link vxnet0".to_string()),
        ]
    }

    /// A packet to an address outside the overlay ends at the gateway,
    /// delivered to the host link with its egress address (it used to end
    /// "dropped" with no stage at all).
    #[test]
    fn egress_is_delivered_at_the_gateway() {
        let egress = Note::Egress {
            from: "10.1.0.5".parse().expect("address"),
            addr: "198.18.0.9".parse().expect("address"),
            port: 9,
            len: 74,
        };
        let r = report("host1", &run(vec![tap_rx(), egress], vec![]), &names());
        assert_eq!(r.verdict, TraceVerdict::Delivered);
        let last = r.steps.last().expect("steps");
        assert_eq!(
            (last.stage, last.verdict),
            (TraceStage::Gateway, StepVerdict::Delivered)
        );
        assert!(
            last.detail.contains("egress address 198.18.0.9")
                && last.detail.contains("the host link vxnet0"),
            "{}",
            last.detail
        );
    }

    /// A network without egress stops at the gateway, with the counter's
    /// reason and its fix.
    #[test]
    fn no_egress_drops_at_the_gateway() {
        let r = report(
            "host1",
            &run(vec![tap_rx()], vec![Drop::MeshNoEgress]),
            &names(),
        );
        assert_eq!(r.verdict, TraceVerdict::Dropped);
        let f = r.first_failure().expect("a drop step");
        assert_eq!(f.stage, TraceStage::Gateway);
        assert_eq!(f.reason.as_deref(), Some("mesh/no_egress"));
        assert!(f.fix.as_deref().is_some_and(|x| x.contains("--internal")));
    }

    /// A ping to the gateway is answered at the gateway stage.
    #[test]
    fn a_ping_to_the_gateway_is_answered_there() {
        let echo = Note::Answered {
            answer: Answer::GatewayEcho,
            port: 2,
        };
        let r = report("host1", &run(vec![tap_rx(), echo], vec![]), &names());
        assert_eq!(r.verdict, TraceVerdict::Answered);
        let last = r.steps.last().expect("steps");
        assert_eq!(
            (last.stage, last.verdict),
            (TraceStage::Gateway, StepVerdict::Answered)
        );
    }
}
