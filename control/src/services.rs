//! Service records with Docker's rules: `service create`, `update`,
//! `scale`, `rm`, and finding one by name. Each operation validates, then
//! writes the service and its virtual IPs (address records owned by the
//! service) in one transaction. The tasks are the scheduler's
//! ([`crate::scheduler`]): these functions only change what is wanted.

use std::collections::BTreeSet;

use rand_core::RngCore;
use vxnet_api::ctl::{ServiceCreate, ServiceNetworkRequest, ServiceUpdate};

use crate::containers::{NetworkRequest, allocate};
use crate::error::{ControlError, Result};
use crate::model::{
    AddressAlloc, AddressOwner, Container, EndpointMode, Network, Service, ServiceMode,
    ServiceNetwork, UnixTime, VirtualIp, new_id,
};
use crate::networks::{resolve, resolve_network, valid_name};
use crate::store::{Store, StoreExt, Txn};

pub mod ports;

/// The most replicas a service may ask for.
pub const MAX_REPLICAS: u64 = 10_000;

/// The service named by `query` (id, name or unique id prefix).
pub fn resolve_service<S: Store + ?Sized>(store: &S, query: &str) -> Result<Service> {
    let all = store.list::<Service>()?;
    match resolve(&all, query, |s| &s.id, |s| &s.name) {
        Ok(Some(s)) => Ok(s.clone()),
        Ok(None) => Err(ControlError::ServiceNotFound(query.to_owned())),
        Err(ids) => Err(ControlError::AmbiguousService(
            query.to_owned(),
            ids.join(", "),
        )),
    }
}

fn check_env(env: &[String]) -> Result<()> {
    for kv in env {
        match kv.split_once('=') {
            Some((k, _)) if !k.is_empty() && !k.contains(char::is_whitespace) => {}
            _ => return Err(ControlError::InvalidEnv(kv.clone())),
        }
    }
    Ok(())
}

fn check_mode(mode: ServiceMode) -> Result<()> {
    match mode {
        ServiceMode::Replicated { replicas } if replicas > MAX_REPLICAS => {
            Err(ControlError::TooManyReplicas(replicas))
        }
        _ => Ok(()),
    }
}

/// The network a service may join: a swarm overlay network, not the
/// ingress network (that one carries published ports, issue 10).
fn service_network<S: Store + ?Sized>(store: &S, req: &ServiceNetworkRequest) -> Result<Network> {
    let net = resolve_network(store, &req.network)?;
    if net.ingress {
        return Err(ControlError::IngressForServices(net.name));
    }
    for a in &req.aliases {
        if !valid_name(a) {
            return Err(ControlError::InvalidName(a.clone()));
        }
    }
    Ok(net)
}

/// Allocates the service's virtual IP on `net` into `txn`.
fn allocate_vip<S: Store + ?Sized>(
    store: &S,
    txn: &mut Txn,
    service_id: &str,
    net: &Network,
) -> Result<VirtualIp> {
    let a = allocate(
        store,
        txn,
        net,
        &AddressOwner::Service(service_id.to_owned()),
        &NetworkRequest {
            network: net.id.clone(),
            ..Default::default()
        },
    )?;
    Ok(VirtualIp {
        network: net.id.clone(),
        ipv4: a.ipv4,
        ipv6: a.ipv6,
    })
}

/// Gives `s` a VIP on the ingress network while a port of it is published
/// through the routing mesh (Docker lists it in `Endpoint.VirtualIPs`
/// too), and releases it when none is.
fn sync_ingress_vip<S: Store + ?Sized>(store: &S, txn: &mut Txn, s: &mut Service) -> Result<()> {
    let nets = store.list::<Network>()?;
    let ingress = nets.iter().find(|n| n.ingress);
    let has = |s: &Service| ingress.and_then(|n| s.vip(&n.id)).cloned();
    let wants = s.uses_ingress() && s.endpoint_mode == EndpointMode::Vip;
    match (wants, ingress, has(s)) {
        (true, None, _) => Err(ControlError::NoIngressNetwork),
        (true, Some(n), None) => {
            let v = allocate_vip(store, txn, &s.id, n)?;
            s.vips.push(v);
            Ok(())
        }
        (false, Some(n), Some(v)) => {
            release_vip(txn, &v);
            s.vips.retain(|x| x.network != n.id);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks that `s`'s ports may be published on its networks.
fn check_ports<S: Store + ?Sized>(store: &S, s: &Service) -> Result<()> {
    let nets = store.list::<Network>()?;
    let mine: Vec<&Network> = nets
        .iter()
        .filter(|n| s.networks.iter().any(|x| x.network == n.id))
        .collect();
    ports::check_publishable(&s.ports, s.endpoint_mode, &mine)
}

fn release_vip(txn: &mut Txn, v: &VirtualIp) {
    txn.delete::<AddressAlloc>(&AddressAlloc::key_of(&v.network, v.ipv4.into()));
    if let Some(v6) = v.ipv6 {
        txn.delete::<AddressAlloc>(&AddressAlloc::key_of(&v.network, v6.into()));
    }
}

/// `vxnet service create`.
pub fn create_service<S: Store + ?Sized>(
    store: &S,
    req: &ServiceCreate,
    now: UnixTime,
    rng: &mut dyn RngCore,
) -> Result<Service> {
    if !valid_name(&req.name) {
        return Err(ControlError::InvalidServiceName(req.name.clone()));
    }
    crate::containers::check_name_free(store, &req.name)?;
    if req.command.is_empty() {
        return Err(ControlError::NoCommand);
    }
    check_mode(req.mode)?;
    check_env(&req.env)?;
    let id = new_id(rng);
    let mut txn = Txn::new();
    let mut networks: Vec<ServiceNetwork> = Vec::new();
    let mut vips = Vec::new();
    for nr in &req.networks {
        let net = service_network(store, nr)?;
        if networks.iter().any(|n| n.network == net.id) {
            return Err(ControlError::NetworkGivenTwice(net.name));
        }
        if req.endpoint_mode == EndpointMode::Vip {
            vips.push(allocate_vip(store, &mut txn, &id, &net)?);
        }
        networks.push(ServiceNetwork {
            network: net.id,
            aliases: nr.aliases.clone(),
        });
    }
    let all = store.list::<Service>()?;
    let published = ports::add_ports(&id, &[], &req.ports, &all)?;
    let mut s = Service {
        id,
        name: req.name.clone(),
        mode: req.mode,
        endpoint_mode: req.endpoint_mode,
        networks,
        command: req.command.clone(),
        env: req.env.clone(),
        restart: req.restart,
        vips,
        created: now,
        updated: now,
        version: 1,
        ports: published,
    };
    check_ports(store, &s)?;
    sync_ingress_vip(store, &mut txn, &mut s)?;
    txn.require_absent::<Service>(&s.id);
    txn.put(&s)?;
    store.apply(&txn)?;
    Ok(s)
}

/// `vxnet service update` and `scale`: only what is given changes.
pub fn update_service<S: Store + ?Sized>(
    store: &S,
    req: &ServiceUpdate,
    now: UnixTime,
) -> Result<Service> {
    let mut s = resolve_service(store, &req.service)?;
    let mut txn = Txn::new();
    if let Some(n) = req.replicas {
        match s.mode {
            ServiceMode::Replicated { .. } => s.mode = ServiceMode::Replicated { replicas: n },
            ServiceMode::Global => return Err(ControlError::ScaleGlobal(s.name)),
        }
        check_mode(s.mode)?;
    }
    for name in &req.network_rm {
        let net = resolve_network(store, name)?;
        let before = s.networks.len();
        s.networks.retain(|n| n.network != net.id);
        if s.networks.len() == before {
            return Err(ControlError::ServiceNotOnNetwork {
                service: s.name,
                network: net.name,
            });
        }
        if let Some(v) = s.vip(&net.id).cloned() {
            release_vip(&mut txn, &v);
            s.vips.retain(|x| x.network != net.id);
        }
    }
    for nr in &req.network_add {
        let net = service_network(store, nr)?;
        if s.networks.iter().any(|n| n.network == net.id) {
            return Err(ControlError::NetworkGivenTwice(net.name));
        }
        if s.endpoint_mode == EndpointMode::Vip {
            let vip = allocate_vip(store, &mut txn, &s.id, &net)?;
            s.vips.push(vip);
        }
        s.networks.push(ServiceNetwork {
            network: net.id,
            aliases: nr.aliases.clone(),
        });
    }
    let mut template = false;
    if !req.env_add.is_empty() || !req.env_rm.is_empty() {
        check_env(&req.env_add)?;
        let gone: BTreeSet<&str> = req
            .env_rm
            .iter()
            .map(String::as_str)
            .chain(
                req.env_add
                    .iter()
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| k)),
            )
            .collect();
        s.env
            .retain(|kv| !gone.contains(kv.split_once('=').map_or(kv.as_str(), |(k, _)| k)));
        s.env.extend(req.env_add.iter().cloned());
        template = true;
    }
    if let Some(c) = &req.command {
        if c.is_empty() {
            return Err(ControlError::NoCommand);
        }
        s.command = c.clone();
        template = true;
    }
    if let Some(r) = req.restart {
        s.restart = r;
        template = true;
    }
    if !req.publish_rm.is_empty() {
        s.ports = ports::remove_ports(&s.name, &s.ports, &req.publish_rm)?;
    }
    if !req.publish_add.is_empty() {
        let all = store.list::<Service>()?;
        s.ports = ports::add_ports(&s.id, &s.ports, &req.publish_add, &all)?;
    }
    check_ports(store, &s)?;
    sync_ingress_vip(store, &mut txn, &mut s)?;
    if template {
        s.version += 1;
    }
    s.updated = now;
    txn.put(&s)?;
    store.apply(&txn)?;
    Ok(s)
}

/// `vxnet service rm`: the service and its VIPs go at once; its tasks are
/// removed by the scheduler (their nodes confirm each removal).
pub fn remove_service<S: Store + ?Sized>(store: &S, query: &str) -> Result<Service> {
    let s = resolve_service(store, query)?;
    let mut txn = Txn::new();
    for v in &s.vips {
        release_vip(&mut txn, v);
    }
    txn.delete::<Service>(&s.id);
    store.apply(&txn)?;
    Ok(s)
}

/// The containers that are tasks of `service`.
pub fn tasks_of<S: Store + ?Sized>(store: &S, service: &str) -> Result<Vec<Container>> {
    Ok(store
        .list::<Container>()?
        .into_iter()
        .filter(|c| c.task.as_ref().is_some_and(|t| t.service == service))
        .collect())
}

#[cfg(test)]
mod tests;
