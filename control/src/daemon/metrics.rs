//! The control daemon's Prometheus metrics (`vxnet-control --metrics
//! ADDR`): the swarm as this node sees it (members, nodes, networks,
//! services, tasks), what its loops did (reconcile passes and errors,
//! gossip packets, gossip key rotations), build info and process metrics.
//!
//! Like the dataplane's, nothing is kept per event beyond a few counters
//! ([`ControlCounters`]): each scrape reads the store and the gossip
//! driver's status then ([`ControlView`]). The HTTP side is the
//! dataplane's (`vxnet_dataplane::metrics::serve_registry`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use super::Daemon;
use super::dataplane::DataplaneApi;
use crate::model::{Container, Network, Node, Service};
use crate::store::{Store, StoreExt};

/// Events counted as they happen.
#[derive(Debug, Default)]
pub struct ControlCounters {
    pub reconcile_runs: AtomicU64,
    pub reconcile_errors: AtomicU64,
    pub key_rotations: AtomicU64,
}

impl ControlCounters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one scrape shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlView {
    pub manager: bool,
    /// Other members gossip holds Up.
    pub members: u64,
    /// Nodes by status (`ready`, `down`).
    pub nodes: BTreeMap<String, u64>,
    pub networks: u64,
    pub services: u64,
    /// Containers that are tasks, by state (`running`, `pending`, ...).
    pub tasks: BTreeMap<String, u64>,
    pub containers: u64,
    pub reconcile_runs: u64,
    pub reconcile_errors: u64,
    pub key_rotations: u64,
    pub gossip_rx_packets: u64,
    pub gossip_tx_packets: u64,
    pub gossip_rx_dropped: u64,
}

impl<S, D> Daemon<S, D>
where
    S: Store + Send + Sync,
    D: DataplaneApi,
{
    /// The numbers a scrape shows, read now.
    pub fn metrics_view(&self) -> ControlView {
        let list = |n: Result<usize, crate::store::StoreError>| n.unwrap_or(0) as u64;
        let mut v = ControlView {
            manager: self.local_node().is_ok() && self.is_manager(),
            members: self.gossip_view().members.len() as u64,
            networks: list(self.store.list::<Network>().map(|v| v.len())),
            services: list(self.store.list::<Service>().map(|v| v.len())),
            reconcile_runs: self.counters.reconcile_runs.load(Ordering::Relaxed),
            reconcile_errors: self.counters.reconcile_errors.load(Ordering::Relaxed),
            key_rotations: self.counters.key_rotations.load(Ordering::Relaxed),
            ..ControlView::default()
        };
        for n in self.store.list::<Node>().unwrap_or_default() {
            *v.nodes
                .entry(format!("{:?}", n.status).to_lowercase())
                .or_default() += 1;
        }
        let containers = self.store.list::<Container>().unwrap_or_default();
        v.containers = containers.len() as u64;
        for c in containers.iter().filter(|c| c.task.is_some()) {
            let state = c.status.as_ref().map_or_else(
                || "pending".to_owned(),
                |s| s.state.to_string().to_lowercase(),
            );
            *v.tasks.entry(state).or_default() += 1;
        }
        if let Ok(g) = self.gossip_status() {
            v.gossip_rx_packets = g.rx_packets;
            v.gossip_tx_packets = g.tx_packets;
            v.gossip_rx_dropped = g.rx_dropped;
        }
        v
    }
}

/// Produces a [`ControlView`] on demand.
pub type ControlViewFn = Arc<dyn Fn() -> ControlView + Send + Sync>;

/// A [`Collector`] that reads a fresh [`ControlView`] on every collect.
pub struct ControlCollector {
    view: ControlViewFn,
    descs: Vec<Desc>,
}

const GAUGES: [(&str, &str); 5] = [
    (
        "vxnet_control_manager",
        "1 when this node is a swarm manager",
    ),
    (
        "vxnet_control_members",
        "other swarm members gossip holds Up",
    ),
    ("vxnet_control_networks", "overlay networks this node knows"),
    ("vxnet_control_services", "services this node knows"),
    (
        "vxnet_control_containers",
        "containers this node knows (tasks included)",
    ),
];
const NODES: (&str, &str) = ("vxnet_control_nodes", "swarm nodes by status");
const TASKS: (&str, &str) = ("vxnet_control_tasks", "service tasks by state");
const COUNTERS: [(&str, &str); 4] = [
    (
        "vxnet_control_reconcile_runs_total",
        "reconciliation passes",
    ),
    (
        "vxnet_control_reconcile_errors_total",
        "reconciliation passes that met an error",
    ),
    (
        "vxnet_control_gossip_key_rotations_total",
        "gossip key rotations this manager started",
    ),
    (
        "vxnet_control_gossip_dropped_total",
        "gossip packets received and dropped (bad seal, unknown key, malformed)",
    ),
];
const GOSSIP: (&str, &str) = (
    "vxnet_control_gossip_packets_total",
    "gossip packets by direction",
);

impl ControlCollector {
    pub fn new(view: ControlViewFn) -> ControlCollector {
        let mut descs = Vec::new();
        let mut desc = |name: &str, help: &str, labels: &[&str]| {
            descs.extend(
                Desc::new(
                    name.into(),
                    help.into(),
                    labels.iter().map(|l| (*l).to_owned()).collect(),
                    Default::default(),
                )
                .ok(),
            );
        };
        for (n, h) in GAUGES.into_iter().chain(COUNTERS) {
            desc(n, h, &[]);
        }
        desc(NODES.0, NODES.1, &["status"]);
        desc(TASKS.0, TASKS.1, &["state"]);
        desc(GOSSIP.0, GOSSIP.1, &["direction"]);
        ControlCollector { view, descs }
    }

    fn families(v: &ControlView) -> prometheus::Result<Vec<MetricFamily>> {
        let mut out = Vec::new();
        let gauges = [
            u64::from(v.manager),
            v.members,
            v.networks,
            v.services,
            v.containers,
        ];
        for ((name, help), value) in GAUGES.into_iter().zip(gauges) {
            let g = IntGauge::new(name, help)?;
            g.set(i64::try_from(value).unwrap_or(i64::MAX));
            out.extend(g.collect());
        }
        let counters = [
            v.reconcile_runs,
            v.reconcile_errors,
            v.key_rotations,
            v.gossip_rx_dropped,
        ];
        for ((name, help), value) in COUNTERS.into_iter().zip(counters) {
            let c = IntCounter::new(name, help)?;
            c.inc_by(value);
            out.extend(c.collect());
        }
        for ((name, help), label, values) in
            [(NODES, "status", &v.nodes), (TASKS, "state", &v.tasks)]
        {
            let g = IntGaugeVec::new(Opts::new(name, help), &[label])?;
            for (k, n) in values {
                g.with_label_values(&[k.as_str()])
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
            out.extend(g.collect());
        }
        let g = IntCounterVec::new(Opts::new(GOSSIP.0, GOSSIP.1), &["direction"])?;
        g.with_label_values(&["rx"]).inc_by(v.gossip_rx_packets);
        g.with_label_values(&["tx"]).inc_by(v.gossip_tx_packets);
        out.extend(g.collect());
        Ok(out)
    }
}

impl Collector for ControlCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        match Self::families(&(self.view)()) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot build metrics");
                Vec::new()
            }
        }
    }
}

/// The registry `vxnet-control --metrics` serves.
pub fn registry(view: ControlViewFn) -> std::io::Result<prometheus::Registry> {
    let r = prometheus::Registry::new();
    r.register(Box::new(ControlCollector::new(view)))
        .map_err(std::io::Error::other)?;
    vxnet_dataplane::metrics::register_common(&r, "vxnet-control")?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_renders_with_its_labels() {
        let mut v = ControlView {
            manager: true,
            members: 2,
            reconcile_runs: 9,
            gossip_tx_packets: 5,
            ..ControlView::default()
        };
        v.nodes.insert("ready".into(), 3);
        v.tasks.insert("running".into(), 4);
        let r = registry(Arc::new(move || v.clone())).unwrap();
        let text = String::from_utf8(vxnet_dataplane::metrics::render(&r).unwrap()).unwrap();
        for want in [
            "vxnet_control_manager 1",
            "vxnet_control_members 2",
            "vxnet_control_nodes{status=\"ready\"} 3",
            "vxnet_control_tasks{state=\"running\"} 4",
            "vxnet_control_reconcile_runs_total 9",
            "vxnet_control_gossip_packets_total{direction=\"tx\"} 5",
            "vxnet_control_gossip_key_rotations_total 0",
            "vxnet_build_info{daemon=\"vxnet-control\",version=",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }
}
