//! `container run|ls|inspect|rm|stop|start|logs` and the views they show.
//!
//! A request records the container's desired state (on a worker, through
//! its manager) and waits for the reconciler to make it real; if that
//! fails (say the command does not exist), the request removes what it
//! recorded and answers the failure, so a refused request changes nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use vxnet_api::ctl::{
    AttachmentView, ContainerCreate, ContainerLogs, ContainerState, ContainerStop, ContainerView,
    LogsView,
};
use vxnet_api::{ApiError, ApiResult, ErrorCode};

use crate::containers::{self, CreateContainer};
use crate::daemon::changes::Outcome;
use crate::daemon::dataplane::DataplaneApi;
use crate::daemon::host::NETNS_DIR;
use crate::daemon::reconcile::DEFAULT_STOP_GRACE;
use crate::daemon::runtime::Runtime;
use crate::daemon::{Daemon, internal, now};
use crate::mgmt::calls;
use crate::model::{Container, DesiredState, Network, Node, NodeStatus};
use crate::store::{Store, StoreExt};

/// Largest log returned by `container logs`.
const MAX_LOG_BYTES: u64 = 1 << 20;
/// How long a manager waits for another node to remove its container.
const REMOTE_REMOVE_TIMEOUT: Duration = Duration::from_secs(15);

impl<S, D> Daemon<S, D>
where
    S: Store + Send + Sync,
    D: DataplaneApi,
{
    pub(crate) fn runtime_of(&self, id: &str) -> ApiResult<Option<Runtime>> {
        self.store.get::<Runtime>(id).map_err(internal)
    }

    pub(crate) fn view(&self, c: &Container) -> ApiResult<ContainerView> {
        let me = self.local_node().ok();
        let nets = self.store.list::<Network>().map_err(internal)?;
        let rt = self.runtime_of(&c.id)?.unwrap_or_default();
        let desired = rt.desired_override.unwrap_or(c.desired);
        let state = if me.as_deref() != Some(c.node.as_str()) {
            ContainerState::Remote
        } else if desired == DesiredState::Removed {
            ContainerState::Removing
        } else if rt.external {
            ContainerState::External
        } else if desired == DesiredState::Stopped {
            ContainerState::Stopped
        } else if rt.pid.is_none() {
            ContainerState::Created
        } else if rt.ended {
            ContainerState::Exited
        } else {
            ContainerState::Running
        };
        let networks = c
            .attachments
            .iter()
            .filter_map(|a| {
                let n = nets.iter().find(|n| n.id == a.network)?;
                Some(AttachmentView {
                    network_id: n.id.clone(),
                    network: n.name.clone(),
                    ifname: rt
                        .ifname(&n.id)
                        .or(rt.veth.as_deref())
                        .unwrap_or("-")
                        .to_owned(),
                    ipv4: a.ipv4,
                    prefix: n.ipv4.subnet.prefix_len(),
                    ipv6: a.ipv6,
                    mac: a.mac,
                    gateway: n.ipv4.gateway,
                    mtu: u16::try_from(self.mtu_in_force(n)).unwrap_or(u16::MAX),
                    aliases: a.aliases.clone(),
                })
            })
            .collect();
        Ok(ContainerView {
            id: c.id.clone(),
            name: c.name.clone(),
            node: self.hostname_of(&c.node),
            netns: if rt.netns.is_empty() {
                c.netns.clone().unwrap_or_default()
            } else {
                rt.netns.clone()
            },
            pid: rt.pid.filter(|_| !rt.ended),
            state,
            exit_code: rt.exit_code,
            command: c.command.clone(),
            veth: rt.veth.clone(),
            log_path: rt.log_path.clone(),
            created: c.created,
            networks,
        })
    }

    pub(crate) fn hostname_of(&self, node: &str) -> String {
        self.store
            .get::<Node>(node)
            .ok()
            .flatten()
            .map_or_else(|| node.to_owned(), |n| n.hostname)
    }

    /// The container `query` names (id, name, unique id prefix).
    pub(crate) fn resolve(&self, query: &str) -> ApiResult<Container> {
        Ok(containers::resolve_container(&self.store, query)?)
    }

    /// A container of this host, for requests that act on the host.
    pub(crate) fn local_container(&self, query: &str) -> ApiResult<Container> {
        let c = self.resolve(query)?;
        if c.node != self.local_node()? {
            return Err(ApiError::precondition(format!(
                "container {} runs on node {}; run the command there",
                c.name,
                self.hostname_of(&c.node)
            )));
        }
        Ok(c)
    }

    /// Records a new container of this node (on a worker: the manager
    /// allocates) and returns it with the store generation to wait for.
    pub(crate) fn record_container(&self, req: CreateContainer) -> ApiResult<(Container, u64)> {
        if self.is_manager() {
            let _w = self.write();
            let c = containers::create_container(&self.store, &req, now(), &mut rand_core::OsRng)?;
            Ok((c, self.changes.generation()))
        } else {
            let g = self.manager_call(calls::ContainerCreate(req))?;
            let generation = self.keep_grant(&g)?;
            Ok((g.container, generation))
        }
    }

    /// Sets a container's desired state: on a manager in its store; on a
    /// worker through the manager. With `force` on a worker that cannot
    /// reach its manager, this node decides alone (until the manager
    /// hears of it). Returns the store generation to wait for.
    pub(crate) fn desire(
        &self,
        c: &Container,
        desired: DesiredState,
        force: bool,
    ) -> ApiResult<u64> {
        if self.is_manager() {
            let _w = self.write();
            let mut now = self.resolve(&c.id)?;
            now.desired = desired;
            self.store.put(&now).map_err(internal)?;
            return Ok(self.changes.generation());
        }
        match self.manager_call(calls::ContainerDesire {
            container_id: c.id.clone(),
            desired,
        }) {
            Ok(g) => self.keep_grant(&g),
            Err(e) if force && matches!(e.code, ErrorCode::Unavailable | ErrorCode::Timeout) => {
                tracing::warn!(container = %c.name, error = %e, "deciding without the manager");
                let _w = self.write();
                let mut rt = self.runtime_of(&c.id)?.unwrap_or_else(|| Runtime {
                    container_id: c.id.clone(),
                    ..Runtime::default()
                });
                rt.desired_override = Some(desired);
                self.store.put(&rt).map_err(internal)?;
                Ok(self.changes.generation())
            }
            Err(e) => Err(e),
        }
    }

    /// Undoes a container this request recorded and could not make real:
    /// removed here, then forgotten (and its addresses released).
    pub(crate) fn undo_container(&self, c: &Container) {
        let r = self
            .desire(c, DesiredState::Removed, true)
            .and_then(|g| self.realized(g, &c.id));
        if let Err(e) = r {
            tracing::warn!(container = %c.name, error = %e, "could not undo the container");
            return;
        }
        if !self.is_manager() {
            // As `container rm` does: the manager forgets it now, not on
            // the agent's next round, so the refused request leaves no
            // record behind when it returns.
            if let Err(e) = self.report_removed() {
                tracing::info!(container = %c.name, error = %e, "removal not reported yet");
            }
        }
    }

    /// Waits for a pass that saw `generation`; a failure for `c` undoes it
    /// and becomes the answer.
    fn made_real(&self, c: &Container, generation: u64, undo: bool) -> ApiResult<()> {
        match self.realized(generation, &c.id)? {
            Some(Outcome::Failed(e)) => {
                if undo {
                    self.undo_container(c);
                }
                Err(ApiError::precondition(format!("container {}: {e}", c.name)))
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn container_create(&self, r: ContainerCreate) -> ApiResult<ContainerView> {
        let me = self.local_node()?;
        // The name before the namespace: a container of that name holds
        // the namespace too, and its name is what to hear about. (On a
        // worker the manager checks the name again when it allocates.)
        containers::check_name_free(&self.store, &r.name)?;
        let netns = format!("{}{}", self.cfg.netns_prefix, r.name);
        if Path::new(NETNS_DIR).join(&netns).exists() {
            return Err(ApiError::exists(format!(
                "a network namespace named {netns} already exists; remove it or choose another container name"
            )));
        }
        let (c, generation) = self.record_container(CreateContainer {
            name: r.name,
            node: me,
            netns: Some(netns),
            networks: r.networks,
            command: r.command,
            env: r.env,
            external: None,
            task: None,
            id: None,
        })?;
        self.made_real(&c, generation, true)?;
        tracing::info!(container = %c.name, "container created");
        self.view(&self.resolve(&c.id)?)
    }

    /// The CLI started the container's (foreground) command as `pid`.
    pub(crate) fn container_started(&self, query: &str, pid: u32) -> ApiResult<ContainerView> {
        let c = self.local_container(query)?;
        {
            let _w = self.write();
            let mut rt = self.runtime_of(&c.id)?.ok_or_else(|| {
                ApiError::precondition(format!("container {} is not set up yet", c.name))
            })?;
            if rt.pid.is_some_and(|p| p != pid) && !rt.ended {
                return Err(ApiError::precondition(format!(
                    "container {} already runs a command (pid {}); use `vxnet container exec`",
                    c.name,
                    rt.pid.unwrap_or_default()
                )));
            }
            rt.pid = Some(pid);
            rt.ended = false;
            rt.exit_code = None;
            self.store.put(&rt).map_err(internal)?;
        }
        self.view(&c)
    }

    pub(crate) fn container_ls(&self, all: bool) -> ApiResult<Vec<ContainerView>> {
        let me = self.local_node()?;
        let mut v = Vec::new();
        for c in containers::list_containers(&self.store, Some(&me))? {
            let view = self.view(&c)?;
            let shown =
                all || !matches!(view.state, ContainerState::Exited | ContainerState::Stopped);
            if shown {
                v.push(view);
            }
        }
        Ok(v)
    }

    pub(crate) fn container_inspect(&self, query: &str) -> ApiResult<ContainerView> {
        self.view(&self.resolve(query)?)
    }

    pub(crate) fn container_rm(&self, query: &str, force: bool) -> ApiResult<ContainerView> {
        let c = self.resolve(query)?;
        let view = self.view(&c)?;
        let me = self.local_node()?;
        if c.node != me {
            return self.remove_remote(&c, force).map(|()| view);
        }
        let rt = self.runtime_of(&c.id)?.unwrap_or_default();
        if let Some(pid) = rt.pid.filter(|_| !rt.ended && !force) {
            return Err(ApiError::precondition(format!(
                "container {} is running (pid {pid}); stop it first or use `vxnet container rm -f`",
                c.name
            )));
        }
        let generation = self.desire(&c, DesiredState::Removed, force)?;
        if let Some(Outcome::Failed(e)) = self.realized(generation, &c.id)? {
            return Err(ApiError::internal(format!(
                "container {} could not be removed: {e}",
                c.name
            )));
        }
        if !self.is_manager() {
            // Tell the manager now rather than on the agent's next round,
            // so the container is gone when this returns; if the manager
            // cannot be told, the agent keeps trying.
            if let Err(e) = self.report_removed() {
                tracing::info!(container = %c.name, error = %e, "removal not reported yet");
            }
        }
        Ok(view)
    }

    /// A manager removes another node's container: that node removes it,
    /// tells the manager, and the manager forgets it. A Down node cannot,
    /// so with `force` the manager forgets it at once (the node removes
    /// it when it is back, as it is no longer assigned).
    fn remove_remote(&self, c: &Container, force: bool) -> ApiResult<()> {
        self.manager_only()?;
        let node = self.store.get::<Node>(&c.node).map_err(internal)?;
        let down = node.as_ref().is_none_or(|n| n.status == NodeStatus::Down);
        let host = self.hostname_of(&c.node);
        if !force && c.desired == DesiredState::Running {
            return Err(ApiError::precondition(format!(
                "container {} may be running on node {host}; stop it first or use `vxnet container rm -f`",
                c.name
            )));
        }
        if down {
            if !force {
                return Err(ApiError::precondition(format!(
                    "node {host} is down and cannot remove container {}; use -f to forget it here \
                     (the node removes it when it comes back)",
                    c.name
                )));
            }
            let _w = self.write();
            containers::remove_container(&self.store, &c.id)?;
            tracing::warn!(container = %c.name, node = %host, "forgotten while its node is down");
            return Ok(());
        }
        let generation = self.desire(c, DesiredState::Removed, force)?;
        let deadline = Instant::now() + REMOTE_REMOVE_TIMEOUT;
        let mut seen = generation;
        while self
            .store
            .get::<Container>(&c.id)
            .map_err(internal)?
            .is_some()
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ApiError::new(
                    ErrorCode::Timeout,
                    format!(
                        "node {host} did not confirm the removal of {} within {} s; \
                         it removes it as soon as it can",
                        c.name,
                        REMOTE_REMOVE_TIMEOUT.as_secs()
                    ),
                ));
            }
            seen = self.changes.wait_generation(seen, left);
        }
        Ok(())
    }

    pub(crate) fn container_stop(&self, r: ContainerStop) -> ApiResult<ContainerView> {
        let c = self.resolve(&r.container)?;
        let grace = r.timeout_secs.unwrap_or(DEFAULT_STOP_GRACE);
        let local = c.node == self.local_node()?;
        if local {
            let _w = self.write();
            let mut rt = self.runtime_of(&c.id)?.unwrap_or_else(|| Runtime {
                container_id: c.id.clone(),
                ..Runtime::default()
            });
            rt.grace_secs = Some(grace);
            self.store.put(&rt).map_err(internal)?;
        }
        let generation = self.desire(&c, DesiredState::Stopped, false)?;
        if local {
            self.made_real(&c, generation, false)?;
            // The command ends within the grace period (then SIGKILL).
            let deadline = Instant::now() + Duration::from_secs(grace + 5);
            let mut seq = self.changes.sequence();
            loop {
                let rt = self.runtime_of(&c.id)?.unwrap_or_default();
                if rt.pid.is_none() || rt.ended {
                    break;
                }
                // Another request (`container start`, `rm`) overtook this
                // one: its command is meant to run on, or to go.
                let desired = rt.desired_override.unwrap_or(self.resolve(&c.id)?.desired);
                if desired != DesiredState::Stopped {
                    let what = if desired == DesiredState::Running {
                        format!("started again; see `vxnet container inspect {}`", c.name)
                    } else {
                        "removed".to_owned()
                    };
                    return Err(ApiError::precondition(format!(
                        "container {} was {what} by another request while it stopped",
                        c.name
                    )));
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ApiError::new(
                        ErrorCode::Timeout,
                        format!("container {} did not stop within {} s", c.name, grace + 5),
                    ));
                }
                seq = self
                    .changes
                    .wait_change(seq, left.min(Duration::from_millis(200)));
            }
        }
        self.view(&self.resolve(&c.id)?)
    }

    pub(crate) fn container_start(&self, query: &str) -> ApiResult<ContainerView> {
        let c = self.resolve(query)?;
        let local = c.node == self.local_node()?;
        if local {
            let _w = self.write();
            if let Some(mut rt) = self.runtime_of(&c.id)? {
                rt.restart = true;
                rt.grace_secs = None;
                self.store.put(&rt).map_err(internal)?;
            }
        }
        let generation = self.desire(&c, DesiredState::Running, false)?;
        if local {
            self.made_real(&c, generation, false)?;
        }
        self.view(&self.resolve(&c.id)?)
    }

    pub(crate) fn container_logs(&self, r: ContainerLogs) -> ApiResult<LogsView> {
        use std::io::{Read, Seek, SeekFrom};
        let c = self.local_container(&r.container)?;
        let rt = self.runtime_of(&c.id)?.unwrap_or_default();
        if rt.log_path.is_empty() {
            return Ok(LogsView {
                text: String::new(),
                truncated: false,
            });
        }
        let mut f = match std::fs::File::open(&rt.log_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LogsView {
                    text: String::new(),
                    truncated: false,
                });
            }
            Err(e) => return Err(internal(format!("cannot read {}: {e}", rt.log_path))),
        };
        let len = f.metadata().map_err(internal)?.len();
        let truncated = len > MAX_LOG_BYTES;
        if truncated {
            f.seek(SeekFrom::Start(len - MAX_LOG_BYTES))
                .map_err(internal)?;
        }
        let mut bytes = Vec::new();
        f.take(MAX_LOG_BYTES)
            .read_to_end(&mut bytes)
            .map_err(internal)?;
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(n) = r.tail {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            text = lines[start..].join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
        }
        Ok(LogsView { text, truncated })
    }
}
