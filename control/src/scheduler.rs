//! The manager's scheduler: from the services, their tasks and the nodes,
//! what tasks to create, where, and what tasks to remove. A pure function
//! ([`schedule`]) over a snapshot of the store; the manager applies its
//! [`Action`]s in one transaction and runs it again on every change, so it
//! never depends on having seen an earlier event (swarmkit's
//! `manager/orchestrator` and `manager/scheduler` split the same work; this
//! is both at once, for one manager).
//!
//! Rules (Docker's):
//! - Tasks run on Ready, Active nodes. A Paused node keeps its tasks but
//!   gets no new ones; a Drained node's tasks are removed and placed
//!   elsewhere; a Down node's tasks are forgotten at once (the node cannot
//!   confirm their removal) and placed elsewhere.
//! - Replicated: slots 1..=replicas, each with one task; a new task goes
//!   to the eligible node running the fewest tasks of the service, then
//!   the fewest tasks overall, then the lowest node id (so every run
//!   decides alike). Scaling down removes the highest slots; the tasks of
//!   the other slots are never touched.
//! - Global: one task per eligible node, nodes that join later included.
//! - A task made from an older version of the service's template
//!   (command, env, restart condition) is replaced, and so is a task when
//!   the routing mesh comes or goes (the service's first port published
//!   through it, or its last one unpublished): a task with such a port is
//!   on the ingress network first, so its default route, and so its
//!   replies to outside clients, go through the ingress network.
//! - The tasks of a removed service are removed.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Availability, Container, DesiredState, Node, NodeStatus, Service, ServiceMode};

/// One change the manager makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A new task of `service` for `slot` (0 for global) on `node`.
    Create {
        service: String,
        slot: u64,
        node: String,
    },
    /// Its node removes it, then the manager forgets it.
    Remove { task: String, why: &'static str },
    /// Forgotten at once: its node is Down.
    Forget { task: String },
    /// The task joins a network its service joined (`service update
    /// --network-add`), keeping its process: its node plugs the new
    /// interface in (Docker replaces the task instead).
    Connect {
        task: String,
        network: String,
        aliases: Vec<String>,
    },
    /// The task leaves a network its service left.
    Disconnect { task: String, network: String },
}

fn eligible(n: &Node) -> bool {
    n.status == NodeStatus::Ready && n.availability == Availability::Active
}

/// Whether a task still holds its slot (it is not on its way out).
fn active(t: &Container) -> bool {
    t.desired != DesiredState::Removed
}

/// The networks (ids) a task of `s` joins, in order: the ingress network
/// (`ingress`, the swarm's) first when `s` publishes through it, then the
/// service's own.
pub fn task_networks(s: &Service, ingress: Option<&str>) -> Vec<String> {
    ingress
        .filter(|_| s.uses_ingress())
        .map(str::to_owned)
        .into_iter()
        .chain(s.networks.iter().map(|n| n.network.clone()))
        .collect()
}

/// Whether task `t` is on the ingress network `ingress`, first.
fn on_mesh(t: &Container, ingress: Option<&str>) -> bool {
    ingress.is_some_and(|i| t.attachments.first().is_some_and(|a| a.network == i))
}

/// The changes that bring the tasks to what the services want; `ingress`
/// is the swarm's ingress network.
pub fn schedule(
    services: &[Service],
    tasks: &[Container],
    nodes: &[Node],
    ingress: Option<&str>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let node_of = |id: &str| nodes.iter().find(|n| n.id == id);
    // Tasks per node (all services), counted as placements happen.
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks.iter().filter(|t| active(t)) {
        *load.entry(t.node.clone()).or_default() += 1;
    }
    // First what must go; what stays holds its slot.
    let mut staying: Vec<&Container> = Vec::new();
    for t in tasks {
        let Some(info) = &t.task else { continue };
        if !active(t) {
            continue;
        }
        let node = node_of(&t.node);
        let why = match (services.iter().find(|s| s.id == info.service), node) {
            (_, None) => Some("its node left the swarm"),
            (_, Some(n)) if n.status == NodeStatus::Down => {
                actions.push(Action::Forget { task: t.id.clone() });
                if let Some(l) = load.get_mut(&t.node) {
                    *l = l.saturating_sub(1);
                }
                continue;
            }
            (None, _) => Some("its service was removed"),
            (Some(_), Some(n)) if n.availability == Availability::Drain => {
                Some("its node is drained")
            }
            (Some(s), _) if info.version < s.version => Some("the service was updated"),
            (Some(s), _) if on_mesh(t, ingress) != (s.uses_ingress() && ingress.is_some()) => {
                Some("the routing mesh came or went")
            }
            (Some(s), _) => match s.mode {
                ServiceMode::Replicated { replicas } if info.slot > replicas || info.slot == 0 => {
                    Some("the service was scaled down")
                }
                ServiceMode::Global if info.slot != 0 => Some("the service is global"),
                _ => None,
            },
        };
        match why {
            Some(why) => {
                match node {
                    // A node that is gone cannot confirm: forget it.
                    None => actions.push(Action::Forget { task: t.id.clone() }),
                    Some(_) => actions.push(Action::Remove {
                        task: t.id.clone(),
                        why,
                    }),
                }
                if let Some(l) = load.get_mut(&t.node) {
                    *l = l.saturating_sub(1);
                }
            }
            None => staying.push(t),
        }
    }
    // Duplicates (two tasks in one slot, or two on one node for a global
    // service): keep the oldest.
    let mut seen: BTreeSet<(String, u64, String)> = BTreeSet::new();
    let mut kept: Vec<&Container> = Vec::new();
    let mut sorted = staying;
    sorted.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    for t in sorted {
        let Some(info) = &t.task else { continue };
        let global = services
            .iter()
            .find(|s| s.id == info.service)
            .is_some_and(|s| s.mode == ServiceMode::Global);
        let key = (
            info.service.clone(),
            info.slot,
            if global {
                t.node.clone()
            } else {
                String::new()
            },
        );
        if seen.insert(key) {
            kept.push(t);
        } else {
            actions.push(Action::Remove {
                task: t.id.clone(),
                why: "another task holds its slot",
            });
            if let Some(l) = load.get_mut(&t.node) {
                *l = l.saturating_sub(1);
            }
        }
    }
    // Tasks that stay follow their service's networks.
    for t in &kept {
        let Some(s) = t
            .task
            .as_ref()
            .and_then(|i| services.iter().find(|s| s.id == i.service))
        else {
            continue;
        };
        for n in s
            .networks
            .iter()
            .filter(|n| t.attachment(&n.network).is_none())
        {
            actions.push(Action::Connect {
                task: t.id.clone(),
                network: n.network.clone(),
                aliases: n.aliases.clone(),
            });
        }
        for a in &t.attachments {
            if Some(a.network.as_str()) != ingress
                && !s.networks.iter().any(|n| n.network == a.network)
            {
                actions.push(Action::Disconnect {
                    task: t.id.clone(),
                    network: a.network.clone(),
                });
            }
        }
    }
    // Then what is missing.
    let mut eligible_nodes: Vec<&Node> = nodes.iter().filter(|n| eligible(n)).collect();
    eligible_nodes.sort_by(|a, b| a.id.cmp(&b.id));
    for s in services {
        let mine: Vec<&&Container> = kept
            .iter()
            .filter(|t| t.task.as_ref().is_some_and(|i| i.service == s.id))
            .collect();
        match s.mode {
            ServiceMode::Replicated { replicas } => {
                let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
                for t in &mine {
                    *per_node.entry(t.node.clone()).or_default() += 1;
                }
                for slot in 1..=replicas {
                    if mine
                        .iter()
                        .any(|t| t.task.as_ref().is_some_and(|i| i.slot == slot))
                    {
                        continue;
                    }
                    let Some(n) = eligible_nodes.iter().min_by_key(|n| {
                        (
                            per_node.get(&n.id).copied().unwrap_or(0),
                            load.get(&n.id).copied().unwrap_or(0),
                            n.id.clone(),
                        )
                    }) else {
                        break;
                    };
                    *per_node.entry(n.id.clone()).or_default() += 1;
                    *load.entry(n.id.clone()).or_default() += 1;
                    actions.push(Action::Create {
                        service: s.id.clone(),
                        slot,
                        node: n.id.clone(),
                    });
                }
            }
            ServiceMode::Global => {
                for n in &eligible_nodes {
                    if !mine.iter().any(|t| t.node == n.id) {
                        actions.push(Action::Create {
                            service: s.id.clone(),
                            slot: 0,
                            node: n.id.clone(),
                        });
                    }
                }
            }
        }
    }
    actions
}

#[cfg(test)]
mod tests;
