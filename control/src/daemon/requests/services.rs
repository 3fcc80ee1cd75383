//! `service create|ls|inspect|ps|scale|update|rm|logs` (managers only, as
//! Docker's). A request changes the service record; the scheduler
//! ([`crate::scheduler`], run by the manager's tending) makes the tasks
//! follow, and each node's reconciler runs them.

use std::time::{Duration, Instant};

use vxnet_api::ApiResult;
use vxnet_api::ctl::{
    ServiceCreate, ServiceLogs, ServiceUpdate, ServiceView, TaskLogs, TaskView, VirtualIpView,
};

use crate::daemon::dataplane::DataplaneApi;
use crate::daemon::{Daemon, internal, now};
use crate::model::{Container, DesiredState, Network, Node, Service, ServiceMode, TaskState};
use crate::services;
use crate::store::{Store, StoreExt};

/// How long `service rm` waits for the tasks' nodes to remove them.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(15);

impl<S, D> Daemon<S, D>
where
    S: Store + Send + Sync,
    D: DataplaneApi,
{
    fn service_view(&self, s: Service) -> ApiResult<ServiceView> {
        let nets: Vec<Network> = self.store.list::<Network>().map_err(internal)?;
        let name_of = |id: &str| {
            nets.iter()
                .find(|n| n.id == id)
                .map_or_else(|| id.to_owned(), |n| n.name.clone())
        };
        let virtual_ips = s
            .vips
            .iter()
            .map(|v| {
                let net = nets.iter().find(|n| n.id == v.network);
                VirtualIpView {
                    network_id: v.network.clone(),
                    network: name_of(&v.network),
                    addr: format!(
                        "{}/{}",
                        v.ipv4,
                        net.map_or(32, |n| n.ipv4.subnet.prefix_len())
                    ),
                    addr6: v.ipv6.map(|a| {
                        format!(
                            "{a}/{}",
                            net.and_then(|n| n.ipv6.as_ref())
                                .map_or(128, |c| c.subnet.prefix_len())
                        )
                    }),
                }
            })
            .collect();
        let tasks = services::tasks_of(&self.store, &s.id)?;
        let running = tasks
            .iter()
            .filter(|t| t.desired == DesiredState::Running)
            .filter(|t| {
                t.status
                    .as_ref()
                    .is_some_and(|st| st.state == TaskState::Running)
            })
            .count() as u64;
        let desired = match s.mode {
            ServiceMode::Replicated { replicas } => replicas,
            ServiceMode::Global => self
                .store
                .list::<Node>()
                .map_err(internal)?
                .iter()
                .filter(|n| {
                    n.status == crate::model::NodeStatus::Ready
                        && n.availability == crate::model::Availability::Active
                })
                .count() as u64,
        };
        let schedule_error = crate::daemon::lock(&self.schedule_errors)
            .get(&s.id)
            .cloned();
        Ok(ServiceView {
            schedule_error,
            network_names: s.networks.iter().map(|n| name_of(&n.network)).collect(),
            service: s,
            virtual_ips,
            running,
            desired,
        })
    }

    /// Bumps the store and waits for the scheduler to have run on it, so a
    /// `service ps` right after sees the tasks.
    fn scheduled(&self) {
        self.tend_services();
    }

    pub(crate) fn service_create(&self, r: ServiceCreate) -> ApiResult<ServiceView> {
        self.manager_only()?;
        let s = {
            let _w = self.write();
            services::create_service(&self.store, &r, now(), &mut rand_core::OsRng)?
        };
        tracing::info!(service = %s.name, "service created");
        self.scheduled();
        self.service_view(s)
    }

    pub(crate) fn service_ls(&self) -> ApiResult<Vec<ServiceView>> {
        self.manager_only()?;
        let mut all = self.store.list::<Service>().map_err(internal)?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.into_iter().map(|s| self.service_view(s)).collect()
    }

    pub(crate) fn service_inspect(&self, query: &str) -> ApiResult<ServiceView> {
        self.manager_only()?;
        self.service_view(services::resolve_service(&self.store, query)?)
    }

    pub(crate) fn service_ps(&self, query: &str) -> ApiResult<Vec<TaskView>> {
        self.manager_only()?;
        let s = services::resolve_service(&self.store, query)?;
        let nets: Vec<Network> = self.store.list::<Network>().map_err(internal)?;
        let mut tasks = services::tasks_of(&self.store, &s.id)?;
        tasks.sort_by(|a, b| {
            let slot = |c: &Container| c.task.as_ref().map_or(0, |t| t.slot);
            (slot(a), &a.node, a.created).cmp(&(slot(b), &b.node, b.created))
        });
        Ok(tasks
            .iter()
            .map(|t| task_view(&s, t, &nets, &self.hostname_of(&t.node)))
            .collect())
    }

    pub(crate) fn service_update(&self, r: ServiceUpdate) -> ApiResult<ServiceView> {
        self.manager_only()?;
        let s = {
            let _w = self.write();
            services::update_service(&self.store, &r, now())?
        };
        tracing::info!(service = %s.name, version = s.version, "service updated");
        self.scheduled();
        self.service_view(s)
    }

    /// `service rm`: the record goes at once, the tasks follow as their
    /// nodes confirm; this waits for them (bounded).
    pub(crate) fn service_rm(&self, query: &str) -> ApiResult<ServiceView> {
        self.manager_only()?;
        let view = self.service_inspect(query)?;
        let s = {
            let _w = self.write();
            services::remove_service(&self.store, query)?
        };
        tracing::info!(service = %s.name, "service removed");
        self.scheduled();
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        let mut seen = self.changes.generation();
        while !services::tasks_of(&self.store, &s.id)?.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Their nodes remove them when they can; the service is gone.
                tracing::warn!(service = %s.name, "tasks still being removed");
                break;
            }
            seen = self
                .changes
                .wait_generation(seen, left.min(Duration::from_millis(200)));
        }
        Ok(view)
    }

    pub(crate) fn service_logs(&self, r: ServiceLogs) -> ApiResult<Vec<TaskLogs>> {
        self.manager_only()?;
        let s = services::resolve_service(&self.store, &r.service)?;
        let me = self.local_node()?;
        let mut out = Vec::new();
        let mut tasks = services::tasks_of(&self.store, &s.id)?;
        tasks.sort_by(|a, b| a.name.cmp(&b.name));
        for t in tasks {
            let node = self.hostname_of(&t.node);
            let (text, error) = if t.node == me {
                match self.container_logs(vxnet_api::ctl::ContainerLogs {
                    container: t.id.clone(),
                    tail: r.tail,
                }) {
                    Ok(l) => (l.text, None),
                    Err(e) => (String::new(), Some(e.message)),
                }
            } else {
                match self.remote_logs(&t, r.tail) {
                    Ok(text) => (text, None),
                    Err(e) => (String::new(), Some(e.message)),
                }
            };
            out.push(TaskLogs {
                task: t.name.clone(),
                node,
                text,
                error,
            });
        }
        Ok(out)
    }
}

/// `service ps`'s row for task `t` of `s`.
fn task_view(s: &Service, t: &Container, nets: &[Network], node: &str) -> TaskView {
    let info = t.task.as_ref();
    let name = match s.mode {
        ServiceMode::Replicated { .. } => {
            format!("{}.{}", s.name, info.map_or(0, |i| i.slot))
        }
        ServiceMode::Global => format!("{}.{node}", s.name),
    };
    let st = t.status.clone();
    TaskView {
        id: t.id.clone(),
        name,
        container: t.name.clone(),
        node: node.to_owned(),
        desired: t.desired,
        state: st.as_ref().map_or(TaskState::Pending, |s| s.state),
        since: st.as_ref().map_or(t.created, |s| s.since),
        exit_code: st.as_ref().and_then(|s| s.exit_code),
        error: st.as_ref().and_then(|s| s.error.clone()),
        restarts: st.as_ref().map_or(0, |s| s.restarts),
        addresses: t
            .attachments
            .iter()
            .map(|a| {
                let net = nets
                    .iter()
                    .find(|n| n.id == a.network)
                    .map_or_else(|| a.network.clone(), |n| n.name.clone());
                (net, a.ipv4)
            })
            .collect(),
    }
}
