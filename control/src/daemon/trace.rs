//! `vxnet trace` across hosts: the source container's host runs the
//! packet through its dataplane (a dry run of the engine's real code,
//! `vxnet_api::dp::Trace`), then the host owning the VTEP the packet
//! leaves for runs the very datagram it would carry through its receive
//! path (`vxnet_api::dp::TraceWire`). That second half is asked over the
//! mutual-TLS management channel: a worker asks its manager
//! ([`ManagerCall::NodeTrace`](crate::mgmt::calls::ManagerCall)); the
//! manager runs it on its own dataplane, or asks the node through its
//! assignment watch, as `service logs` does ([`TraceQueue`]).
//!
//! Names are resolved as the source container's DNS server would answer
//! them: with the table the reconciler last gave it, scoped to the
//! container's networks.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use vxnet_api::dp;
use vxnet_api::trace::{
    PacketSpec, StepVerdict, SwarmTrace, TraceReport, TraceStage, TraceStep, TraceVerdict,
    TraceWire,
};
use vxnet_api::{ApiError, ApiResult, ErrorCode};

use super::dataplane::{DataplaneApi, DataplaneExt};
use super::runtime::Runtime;
use super::{Daemon, internal, lock};
use crate::mgmt::calls::{NodeTrace, TraceReply, TraceRequest};
use crate::model::{Container, Network, Node, Service};
use crate::store::{Store, StoreExt};

/// How long a trace waits for another node's half.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(5);

/// Trace halves asked of other nodes, and their answers (a manager's).
#[derive(Default)]
pub struct TraceQueue {
    next: u64,
    pending: BTreeMap<String, Vec<TraceRequest>>,
    replies: BTreeMap<u64, TraceReply>,
}

impl TraceQueue {
    fn ask(&mut self, node: &str, wire: TraceWire) -> u64 {
        self.next += 1;
        self.pending
            .entry(node.to_owned())
            .or_default()
            .push(TraceRequest {
                id: self.next,
                wire,
            });
        self.next
    }

    pub(crate) fn take_for(&mut self, node: &str) -> Vec<TraceRequest> {
        self.pending.remove(node).unwrap_or_default()
    }

    pub(crate) fn answer(&mut self, r: TraceReply) {
        // Only answers to questions asked (a node cannot fill memory).
        if r.id <= self.next && self.replies.len() < 256 {
            self.replies.insert(r.id, r);
        }
    }

    fn forget(&mut self, id: u64) {
        self.replies.remove(&id);
        for v in self.pending.values_mut() {
            v.retain(|r| r.id != id);
        }
    }
}

impl<S, D> Daemon<S, D>
where
    S: Store + Send + Sync,
    D: DataplaneApi,
{
    /// `vxnet trace`.
    pub(crate) fn trace(&self, r: SwarmTrace) -> ApiResult<TraceReport> {
        let me = self.local_node()?;
        let src = self.trace_source(&r.from)?;
        if src.node != me {
            return Err(ApiError::precondition(format!(
                "container {} runs on {}; run `vxnet trace` there",
                src.name,
                self.hostname_of(&src.node)
            )));
        }
        // A stopped container has no endpoint in the dataplane to trace.
        if let Some(why) = self.view(&src)?.not_running() {
            return Err(ApiError::precondition(why));
        }
        let networks = self.store.list::<Network>().map_err(internal)?;
        let my_nets: Vec<&Network> = src
            .attachments
            .iter()
            .filter_map(|a| networks.iter().find(|n| n.id == a.network))
            .collect();
        let mut steps = Vec::new();
        let host = self.hostname_of(&me);
        let chosen = match &r.network {
            Some(q) => Some(
                my_nets
                    .iter()
                    .find(|n| n.id == *q || n.name == *q || n.id.starts_with(q.as_str()))
                    .copied()
                    .ok_or_else(|| {
                        ApiError::not_found(format!("container {} is not on network {q}", src.name))
                    })?,
            ),
            None => None,
        };
        // A name resolves on the chosen network only, else as the
        // container's DNS server answers (its first network that has it).
        let scope: Vec<String> = match chosen {
            Some(n) => vec![n.id.clone()],
            None => src.attachments.iter().map(|a| a.network.clone()).collect(),
        };
        let (dst, dns) = self.trace_destination(&src, &scope, &r.to, &host)?;
        vxnet_api::trace::unicast_only(dst).map_err(ApiError::invalid)?;
        // A network's broadcast address is as much a flood as
        // 255.255.255.255 (the container sends it to ff:ff:ff:ff:ff:ff).
        if let Some(n) = my_nets
            .iter()
            .find(|n| IpAddr::V4(n.ipv4.subnet.broadcast()) == dst)
        {
            return Err(ApiError::invalid(format!(
                "{dst} is the broadcast address of network {}: a trace follows one unicast packet; give the address of a container, a service or a host outside",
                n.name
            )));
        }
        if src.attachments.iter().any(|a| a.ips().any(|ip| ip == dst)) {
            return Err(ApiError::invalid(format!(
                "{dst} is {}'s own address: a packet to it never leaves the container; trace to another address",
                src.name
            )));
        }
        steps.extend(dns);
        let net = match chosen {
            Some(n) => n,
            None => my_nets
                .iter()
                .find(|n| on_network(n, dst))
                .or(my_nets.first())
                .copied()
                .ok_or_else(|| {
                    ApiError::precondition(format!("container {} has no network", src.name))
                })?,
        };
        let att = src
            .attachment(&net.id)
            .ok_or_else(|| ApiError::internal("attachment vanished"))?;
        let src_ip = att
            .ips()
            .find(|ip| ip.is_ipv4() == dst.is_ipv4())
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "container {} has no {} address on {}",
                    src.name,
                    if dst.is_ipv4() { "IPv4" } else { "IPv6" },
                    net.name
                ))
            })?;
        let mut packet = PacketSpec {
            dst,
            proto: r.proto,
            sport: r.sport,
            dport: r.dport,
            size: r.size,
            df: r.df,
            dst_mac: None,
        };
        let mut local = self.dp().call(dp::Trace {
            src: src_ip,
            vni: Some(net.vni),
            packet: packet.clone(),
        })?;
        // No answer to ARP, though the swarm has a container with that
        // address.
        let unanswered = local
            .first_failure()
            .is_some_and(|f| f.reason.as_deref() == Some("arp_nd/no_answer"));
        // The fix that names the real cause, when the owner is stopped or Down.
        let mut owner_fix = None;
        match unanswered.then(|| self.owner_of(&net.id, dst)).flatten() {
            // On another host: this host has no peer for it. A container
            // that still has it in its neighbour cache sends to its MAC;
            // trace that.
            Some((owner, mac)) if owner.node != me => {
                let unanswered = local.steps.pop();
                packet.dst_mac = Some(mac);
                local = self.dp().call(dp::Trace {
                    src: src_ip,
                    vni: Some(net.vni),
                    packet,
                })?;
                if let Some(arp) = local
                    .steps
                    .iter_mut()
                    .find(|s| s.stage == TraceStage::ArpNd)
                {
                    arp.detail = format!(
                        "{} unanswered: this host has no peer for {dst}, which the swarm gives to {} on {}; a neighbour cache still holding {mac} sends there",
                        unanswered.map_or_else(|| "ARP".to_owned(), |s| s.detail),
                        owner.name,
                        self.hostname_of(&owner.node)
                    );
                }
                // Its host withdrew the endpoint because it was stopped:
                // that is the fix, wherever the packet ends up dropped (no
                // peer here, or flooded and unknown there).
                let host_down = || -> ApiResult<bool> {
                    Ok(self
                        .store
                        .get::<Node>(&owner.node)
                        .map_err(internal)?
                        .is_some_and(|n| n.status == crate::model::NodeStatus::Down))
                };
                if owner.desired == crate::model::DesiredState::Stopped {
                    owner_fix = Some(format!(
                        "container {} on {} is stopped: start it with `vxnet container start {}`",
                        owner.name,
                        self.hostname_of(&owner.node),
                        owner.name
                    ));
                } else if host_down()? {
                    owner_fix = Some(format!(
                        "container {}'s host {} is Down (`vxnet node ls`): bring the host back; a service's tasks are started elsewhere on their own",
                        owner.name,
                        self.hostname_of(&owner.node)
                    ));
                }
            }
            // On this host: it has no endpoint, as it is not running (its
            // namespace and TAP are gone).
            Some((owner, _)) => {
                if let Some(arp) = local
                    .steps
                    .last_mut()
                    .filter(|s| s.reason.as_deref() == Some("arp_nd/no_answer"))
                {
                    let why = self.view(&owner)?.not_running().unwrap_or_else(|| {
                        format!("container {} has no endpoint here yet", owner.name)
                    });
                    arp.detail = format!(
                        "{}: {dst} belongs to {}, on this host, which has no endpoint for it",
                        arp.detail, owner.name
                    );
                    arp.fix = Some(why);
                }
            }
            None => {}
        }
        let nodes = self.store.list::<Node>().map_err(internal)?;
        let name_of = |vtep: &str| -> Option<String> {
            nodes
                .iter()
                .find(|n| n.data_path_addr.to_string() == vtep)
                .map(|n| n.hostname.clone())
        };
        rename_hosts(&mut local, &name_of);
        rename_namespaces(&mut local, &self.local_namespaces()?);
        steps.append(&mut local.steps);
        let mut verdict = local.verdict;
        // Out through the gateway to another overlay network's address:
        // the dataplane hands it to the host, which does not route between
        // overlays (they are isolated, as in Docker), so it ends there.
        let left = steps.last().is_some_and(|s| s.stage == TraceStage::Gateway);
        if verdict == TraceVerdict::Delivered
            && left
            && let Some(other) = networks
                .iter()
                .find(|n| on_network(n, dst) && src.attachment(&n.id).is_none())
        {
            verdict = TraceVerdict::Dropped;
            // It reached the host, where it ends: handed over, not delivered.
            if let Some(out) = steps.last_mut() {
                out.verdict = StepVerdict::Pass;
            }
            let fix = if other.attachable {
                format!(
                    "connect the container to that network: `vxnet network connect {} {}`",
                    other.name, src.name
                )
            } else {
                format!(
                    "network {} is not attachable: only service tasks join it; to reach a service, use its name or VIP on a network {} shares with it",
                    other.name, src.name
                )
            };
            steps.push(TraceStep {
                host: host.clone(),
                stage: TraceStage::Gateway,
                verdict: StepVerdict::Drop,
                detail: format!(
                    "{dst} is on network {}, which {} is not on: the host does not route between overlay networks (they are isolated from each other)",
                    other.name, src.name
                ),
                reason: Some("mesh/isolated".into()),
                fix: Some(fix),
            });
        }
        if let (TraceVerdict::Sent, Some(outer)) = (verdict, &local.outer) {
            match nodes.iter().find(|n| n.data_path_addr == outer.dst) {
                Some(node) if node.status == crate::model::NodeStatus::Down => {
                    verdict = TraceVerdict::Dropped;
                    steps.push(TraceStep {
                        host: node.hostname.clone(),
                        stage: TraceStage::WireRx,
                        verdict: StepVerdict::Drop,
                        detail: format!(
                            "sent to {} ({}), which is Down: {}",
                            node.hostname,
                            outer.dst,
                            node.down_reason.as_deref().unwrap_or("gossip does not hear it")
                        ),
                        reason: Some("node/down".into()),
                        fix: Some(
                            "bring the host back, or wait: a Down host's endpoints leave the other dataplanes within 5 s"
                                .into(),
                        ),
                    });
                }
                Some(node) => {
                    let half = self.trace_on_node(
                        &node.id,
                        TraceWire {
                            src: outer.src,
                            datagram: outer.datagram.clone(),
                        },
                    );
                    match half {
                        Ok(mut remote) => {
                            rename_hosts(&mut remote, &name_of);
                            verdict = remote.verdict;
                            steps.append(&mut remote.steps);
                        }
                        // What this host did still stands: show it, and
                        // end where the knowledge ends (verdict `sent`).
                        Err(e) if matches!(e.code, ErrorCode::Timeout | ErrorCode::Unavailable) => {
                            steps.push(TraceStep {
                                host: node.hostname.clone(),
                                stage: TraceStage::WireRx,
                                verdict: StepVerdict::Pass,
                                detail: format!(
                                    "sent to {} ({}), whose half of the trace did not come back ({}): what became of the packet there is unknown",
                                    node.hostname, outer.dst, e.message
                                ),
                                reason: None,
                                fix: Some(format!(
                                    "check that {}'s vxnet-control runs and reaches the manager (`vxnet node ls`), then trace again",
                                    node.hostname
                                )),
                            });
                        }
                        Err(e) => return Err(e),
                    }
                }
                None => {
                    verdict = TraceVerdict::Dropped;
                    steps.push(TraceStep {
                        host: outer.dst.to_string(),
                        stage: TraceStage::WireRx,
                        verdict: StepVerdict::Drop,
                        detail: format!("no node of the swarm has VTEP {}", outer.dst),
                        reason: Some("wire/unknown_vtep".into()),
                        fix: Some(
                            "the FDB points at a host that left the swarm: its peers are stale"
                                .into(),
                        ),
                    });
                }
            }
        }
        if let Some(fix) = owner_fix {
            if let Some(drop) = steps.iter_mut().find(|s| s.verdict == StepVerdict::Drop) {
                drop.fix = Some(fix);
            }
        }
        Ok(TraceReport {
            steps,
            verdict,
            outer: None,
        })
    }

    /// The remote half on `node`: this host's dataplane, or another
    /// node's through the manager.
    pub(crate) fn trace_on_node(&self, node: &str, wire: TraceWire) -> ApiResult<TraceReport> {
        if self.local_node()? == node {
            let mut r = self.dp().call(dp::TraceWire {
                src: wire.src,
                datagram: wire.datagram,
            })?;
            rename_namespaces(&mut r, &self.local_namespaces()?);
            return Ok(r);
        }
        if !self.is_manager() {
            return self.manager_call(NodeTrace {
                node: node.to_owned(),
                wire,
            });
        }
        let id = lock(&self.traces).ask(node, wire);
        // Wakes the node's watch.
        self.changes.bump();
        let deadline = Instant::now() + REMOTE_TIMEOUT;
        let mut seq = self.changes.sequence();
        loop {
            if let Some(r) = lock(&self.traces).replies.remove(&id) {
                return match (r.report, r.error) {
                    (Some(report), _) => Ok(report),
                    (None, e) => Err(ApiError::unavailable(e.unwrap_or_default())),
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                lock(&self.traces).forget(id);
                return Err(ApiError::new(
                    ErrorCode::Timeout,
                    format!(
                        "node {} did not run its half of the trace within {} s",
                        self.hostname_of(node),
                        REMOTE_TIMEOUT.as_secs()
                    ),
                ));
            }
            seq = self.changes.wait_change(seq, left);
        }
    }

    /// Runs the manager's trace requests on this node's dataplane.
    pub(crate) fn answer_trace_requests(&self, reqs: &[TraceRequest]) {
        for r in reqs {
            let half = self.dp().call(dp::TraceWire {
                src: r.wire.src,
                datagram: r.wire.datagram.clone(),
            });
            let half = half.and_then(|mut report| {
                rename_namespaces(&mut report, &self.local_namespaces()?);
                Ok(report)
            });
            let reply = match half {
                Ok(report) => TraceReply {
                    id: r.id,
                    report: Some(report),
                    error: None,
                },
                Err(e) => TraceReply {
                    id: r.id,
                    report: None,
                    error: Some(e.message),
                },
            };
            if let Err(e) = self.manager_call(reply) {
                tracing::warn!(error = %e, "trace half not sent to the manager");
            }
        }
    }

    /// This node's containers by the network namespace its dataplane
    /// knows their endpoints by (the runtime's: a task's namespace is
    /// named on the node that runs it).
    fn local_namespaces(&self) -> ApiResult<BTreeMap<String, String>> {
        let me = self.local_node()?;
        let containers = self.store.list::<Container>().map_err(internal)?;
        let runtimes = self.store.list::<Runtime>().map_err(internal)?;
        Ok(runtimes
            .into_iter()
            .filter(|rt| !rt.netns.is_empty())
            .filter_map(|rt| {
                let c = containers
                    .iter()
                    .find(|c| c.id == rt.container_id && c.node == me)?;
                Some((rt.netns, c.name.clone()))
            })
            .collect())
    }

    /// The container `from` names: a name, an ID, or an address.
    fn trace_source(&self, from: &str) -> ApiResult<Container> {
        if let Ok(ip) = from.parse::<IpAddr>() {
            return self
                .store
                .list::<Container>()
                .map_err(internal)?
                .into_iter()
                .find(|c| c.attachments.iter().any(|a| a.ips().any(|i| i == ip)))
                .ok_or_else(|| ApiError::not_found(format!("no container has address {ip}")));
        }
        crate::containers::resolve_container(&self.store, from).map_err(ApiError::from)
    }

    /// `to` as an address, with the DNS step when it was a name.
    fn trace_destination(
        &self,
        src: &Container,
        nets: &[String],
        to: &str,
        host: &str,
    ) -> ApiResult<(IpAddr, Option<TraceStep>)> {
        if to.trim().is_empty() {
            return Err(ApiError::invalid(
                "no destination: give --to an address or a name",
            ));
        }
        if let Ok(ip) = to.parse::<IpAddr>() {
            return Ok((ip, None));
        }
        // "999.1.1.1" or "fd00::zz" is a mistyped address, not a name.
        if to.contains(':') || to.chars().all(|ch| ch.is_ascii_digit() || ch == '.') {
            return Err(ApiError::invalid(format!(
                "{to} is not a valid IP address; give an address or a name"
            )));
        }
        let records = lock(&self.dns_records).clone();
        let name = crate::dns::records::normalize(to);
        let found = records.as_ref().and_then(|r| {
            let on = r.asker_networks(nets);
            r.resolve(&name, &on, IpAddr::is_ipv4)
                .filter(|v| !v.is_empty())
                .or_else(|| r.resolve(&name, &on, IpAddr::is_ipv6))
        });
        let Some(ip) = found.and_then(|v| v.first().copied()) else {
            let networks = self.store.list::<Network>().map_err(internal)?;
            // A stopped container's names answer only while it runs.
            let stopped = self
                .store
                .list::<Container>()
                .map_err(internal)?
                .into_iter()
                .find(|c| {
                    c.desired == crate::model::DesiredState::Stopped
                        && c.attachments
                            .iter()
                            .filter(|a| nets.contains(&a.network))
                            .any(|a| answers_for(c, a, &name, &networks))
                });
            if let Some(c) = stopped {
                return Err(ApiError::precondition(format!(
                    "container {} on {} is stopped, so its name does not resolve: start it with `vxnet container start {}`",
                    c.name,
                    self.hostname_of(&c.node),
                    c.name
                )));
            }
            let on = match nets {
                [one] => {
                    let net = self.store.get::<Network>(one).ok().flatten();
                    format!("network {}", net.map_or_else(|| one.clone(), |n| n.name))
                }
                _ => format!("{}'s networks", src.name),
            };
            return Err(ApiError::not_found(format!(
                "{to} is no name on {on}: its DNS server would forward it to the host's resolvers (a name outside the swarm)"
            )));
        };
        let what = match self.service_of_vip(ip)? {
            Some(s) => format!("the VIP of service {s}"),
            None => "an endpoint's address".to_owned(),
        };
        Ok((
            ip,
            Some(TraceStep {
                host: host.to_owned(),
                stage: TraceStage::Dns,
                verdict: StepVerdict::Pass,
                detail: format!(
                    "{to} is {ip} ({what}), as 127.0.0.11 answers it in {}",
                    src.name
                ),
                reason: None,
                fix: None,
            }),
        ))
    }

    fn service_of_vip(&self, ip: IpAddr) -> ApiResult<Option<String>> {
        Ok(self
            .store
            .list::<Service>()
            .map_err(internal)?
            .into_iter()
            .find(|s| {
                s.vips.iter().any(|v| {
                    IpAddr::V4(v.ipv4) == ip || v.ipv6.is_some_and(|v6| IpAddr::V6(v6) == ip)
                })
            })
            .map(|s| s.name))
    }

    /// The container with address `ip` on network `net`, and its MAC.
    fn owner_of(&self, net: &str, ip: IpAddr) -> Option<(Container, vxnet_api::MacAddr)> {
        let all = self.store.list::<Container>().ok()?;
        all.into_iter().find_map(|c| {
            let mac = c
                .attachment(net)
                .filter(|a| a.ips().any(|i| i == ip))
                .map(|a| a.mac)?;
            Some((c, mac))
        })
    }
}

/// Whether `ip` is in one of `n`'s subnets.
fn on_network(n: &Network, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => n.ipv4.subnet.contains(&v4),
        IpAddr::V6(v6) => n.ipv6.as_ref().is_some_and(|c| c.subnet.contains(&v6)),
    }
}

/// Dataplanes name themselves by VTEP; the swarm knows their hostnames.
fn rename_hosts(r: &mut TraceReport, name_of: &impl Fn(&str) -> Option<String>) {
    for s in &mut r.steps {
        if let Some(n) = name_of(&s.host) {
            s.host = n;
        }
    }
}

/// Dataplanes name an endpoint by the network namespace it lives in
/// (`10.0.1.2 in vxnet-c1`); the swarm knows the container's name, which
/// is what the user typed (`10.0.1.2 in c1`). Replaces each word of the
/// details that is one of `names`' namespaces (namespace -> container).
fn rename_namespaces(r: &mut TraceReport, names: &BTreeMap<String, String>) {
    if names.is_empty() {
        return;
    }
    let rename = |word: &str| -> String {
        // "ns," or "ns;" in a list: the punctuation stays.
        let core = word.trim_end_matches([',', ';', ':', ')']);
        match names.get(word).map(|n| (n, "")).or_else(|| {
            names
                .get(core)
                .map(|n| (n, word.get(core.len()..).unwrap_or_default()))
        }) {
            Some((name, rest)) => format!("{name}{rest}"),
            None => word.to_owned(),
        }
    };
    for s in &mut r.steps {
        if names.keys().any(|ns| s.detail.contains(ns.as_str())) {
            s.detail = s
                .detail
                .split(' ')
                .map(rename)
                .collect::<Vec<_>>()
                .join(" ");
        }
    }
}

/// Whether `name` (normalised) is one the embedded DNS gives `c` on its
/// attachment `a` while it runs ([`own_names`], each also as
/// `NAME.NETWORK`).
///
/// [`own_names`]: super::reconcile::names::own_names
fn answers_for(
    c: &Container,
    a: &crate::model::Attachment,
    name: &str,
    networks: &[Network],
) -> bool {
    let net = networks
        .iter()
        .find(|n| n.id == a.network)
        .map(|n| n.name.to_ascii_lowercase());
    let bare = match &net {
        Some(n) => name
            .strip_suffix(n.as_str())
            .and_then(|s| s.strip_suffix('.'))
            .unwrap_or(name),
        None => name,
    };
    super::reconcile::names::own_names(c, a).any(|(n, _)| n.eq_ignore_ascii_case(bare))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(detail: &str) -> TraceStep {
        TraceStep {
            host: "host1".into(),
            stage: TraceStage::TapTx,
            verdict: StepVerdict::Delivered,
            detail: detail.into(),
            reason: None,
            fix: None,
        }
    }

    /// Details speak of containers by name, not by the namespace the
    /// dataplane knows them by; only the given namespaces are renamed (a
    /// node renames its own containers'), and a word that merely starts
    /// like one is left alone.
    #[test]
    fn details_name_containers_not_namespaces() {
        let names: BTreeMap<String, String> =
            [("vxnet-c1", "c1"), ("vxnet-web.1.abc", "web.1.abc")]
                .into_iter()
                .map(|(ns, n)| (ns.to_owned(), n.to_owned()))
                .collect();
        let mut r = TraceReport {
            steps: vec![
                step("98-byte frame written to the TAP of 10.0.1.2 in vxnet-c1"),
                step("copied to 10.0.1.3 in vxnet-web.1.abc, 10.0.1.2 in vxnet-c1; and more"),
                step("10.0.1.4 in vxnet-c2 and vxnet-c10"),
            ],
            verdict: TraceVerdict::Delivered,
            outer: None,
        };
        rename_namespaces(&mut r, &names);
        let details: Vec<&str> = r.steps.iter().map(|s| s.detail.as_str()).collect();
        assert_eq!(
            details,
            [
                "98-byte frame written to the TAP of 10.0.1.2 in c1",
                "copied to 10.0.1.3 in web.1.abc, 10.0.1.2 in c1; and more",
                "10.0.1.4 in vxnet-c2 and vxnet-c10",
            ]
        );
    }
}
