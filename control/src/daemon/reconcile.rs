//! Reconciliation: the store says which containers live on this node, on
//! which networks, with which addresses; the dataplane says which networks
//! it has declared and which endpoints it serves. This pass makes the
//! second match the first and touches nothing that already matches, so it
//! can run at start, after a dataplane restart and periodically without
//! disturbing traffic.
//!
//! An endpoint matches when the dataplane has a native endpoint in the
//! container's namespace, on the expected interface, with the expected VNI
//! and MAC. Only namespaces of containers the store knows and VNIs of
//! networks the store knows are cleaned up; anything else on the dataplane
//! (say, attached by hand with `vxnet dp attach`) is left alone. Another
//! runtime's container (`network connect --netns|--veth`) is re-attached
//! the same way, but its namespace is never created here, and its veth
//! matches when a sidecar endpoint holds it.

use std::collections::BTreeSet;

use vxnet_dataplane::api::{AttachTarget, EndpointInfo, Request};

use super::api::ReconcileReport;
use super::dataplane::{DataplaneApi, DataplaneExt};
use super::host::Host;
use super::runtime::Runtime;
use super::{Inner, default_runtime, vni};
use crate::containers;
use crate::model::{Container, Network};
use crate::networks;
use crate::store::{Store, StoreExt};

impl<S, D, H> Inner<S, D, H>
where
    S: Store,
    D: DataplaneApi,
    H: Host,
{
    pub(crate) fn reconcile(&mut self) -> ReconcileReport {
        let mut rep = ReconcileReport::default();
        if let Err(e) = self.reconcile_into(&mut rep) {
            rep.errors.push(e);
        }
        rep
    }

    fn reconcile_into(&mut self, rep: &mut ReconcileReport) -> Result<(), String> {
        // Before `swarm init` there is nothing to want.
        let Ok(me) = self.local_node() else {
            return Ok(());
        };
        let s = |e: crate::ControlError| e.to_string();
        let all_nets = self.store.list::<Network>().map_err(|e| e.to_string())?;
        let wanted_nets = networks::networks_on_node(&self.store, &me).map_err(s)?;
        let local = containers::list_containers(&self.store, Some(&me)).map_err(s)?;

        // Networks first: an attach needs its VNI declared.
        let declared = self.dp.networks()?;
        for n in &wanted_nets {
            let Ok(v) = vni(n) else { continue };
            let ok = declared
                .iter()
                .any(|d| d.vni == v && d.encrypted == n.encrypted);
            if !ok {
                match self.dp.command(&Request::NetworkAdd {
                    vni: v,
                    encrypted: n.encrypted,
                }) {
                    Ok(()) => rep.networks_added += 1,
                    Err(e) => rep.errors.push(format!("network {}: {e}", n.name)),
                }
            }
        }

        let endpoints = self.dp.endpoints()?;
        for c in &local {
            let mut rt = match self.store.get::<Runtime>(&c.id) {
                Ok(Some(rt)) => rt,
                Ok(None) => default_runtime(c),
                Err(e) => {
                    rep.errors.push(format!("container {}: {e}", c.name));
                    continue;
                }
            };
            if let Some(veth) = rt.veth.clone() {
                self.reconcile_sidecar(c, &veth, &all_nets, &endpoints, rep);
                continue;
            }
            if rt.external && !self.host.netns_exists(&rt.netns) {
                // Another runtime's namespace is that runtime's to make.
                rep.errors.push(format!(
                    "container {}: its namespace {} is gone; `vxnet network disconnect` it",
                    c.name, rt.netns
                ));
                continue;
            }
            if !self.host.netns_exists(&rt.netns) {
                // The host rebooted or someone deleted it: a new, empty one.
                if let Err(e) = self
                    .host
                    .netns_add(&rt.netns)
                    .and_then(|()| self.host.write_resolv_conf(&rt.netns))
                {
                    rep.errors.push(format!("container {}: {e}", c.name));
                    continue;
                }
                rep.netns_created += 1;
            }
            let mut wanted_ifs = BTreeSet::new();
            let mut rt_changed = false;
            for (i, a) in c.attachments.iter().enumerate() {
                let Some(net) = all_nets.iter().find(|n| n.id == a.network) else {
                    continue;
                };
                let ifname = match rt.ifname(&net.id) {
                    Some(i) => i.to_owned(),
                    None => {
                        let i = rt.next_ifname();
                        rt.ifnames.insert(net.id.clone(), i.clone());
                        rt_changed = true;
                        i
                    }
                };
                wanted_ifs.insert(ifname.clone());
                let Ok(v) = vni(net) else { continue };
                let here = endpoints
                    .iter()
                    .find(|e| e.kind == "native" && e.location == rt.netns && e.ifname == ifname);
                let right = here
                    .is_some_and(|e| e.vni == v && e.mac.to_string().eq_ignore_ascii_case(&a.mac));
                if right {
                    continue;
                }
                if here.is_some() {
                    match self.detach(&rt.netns, Some(&ifname)) {
                        Ok(()) => rep.detached += 1,
                        Err(e) => rep.errors.push(format!("container {}: {e}", c.name)),
                    }
                }
                match self.attach_endpoint(&rt.netns, &ifname, net, c, i == 0) {
                    Ok(()) => rep.attached += 1,
                    Err(e) => rep
                        .errors
                        .push(format!("container {} on {}: {e}", c.name, net.name)),
                }
            }
            // Interfaces of networks the container has left.
            for e in endpoints.iter().filter(|e| {
                e.kind == "native" && e.location == rt.netns && !wanted_ifs.contains(&e.ifname)
            }) {
                match self.detach(&rt.netns, Some(&e.ifname)) {
                    Ok(()) => rep.detached += 1,
                    Err(err) => rep.errors.push(format!("container {}: {err}", c.name)),
                }
            }
            if rt_changed {
                if let Err(e) = self.store.put(&rt) {
                    rep.errors.push(format!("container {}: {e}", c.name));
                }
            }
        }

        // Our networks that nothing here uses any more.
        for d in self.dp.networks()? {
            let ours = all_nets.iter().find(|n| vni(n).ok() == Some(d.vni));
            let wanted = wanted_nets.iter().any(|n| vni(n).ok() == Some(d.vni));
            if let Some(n) = ours.filter(|_| !wanted && d.endpoints == 0) {
                match self.dp.command(&Request::NetworkDel { vni: d.vni }) {
                    Ok(()) => rep.networks_removed += 1,
                    Err(e) => rep.errors.push(format!("network {}: {e}", n.name)),
                }
            }
        }
        Ok(())
    }

    /// A sidecar container: its one network bridged to its veth.
    fn reconcile_sidecar(
        &mut self,
        c: &Container,
        veth: &str,
        all_nets: &[Network],
        endpoints: &[EndpointInfo],
        rep: &mut ReconcileReport,
    ) {
        let Some(a) = c.attachments.first() else {
            return;
        };
        let Some(net) = all_nets.iter().find(|n| n.id == a.network) else {
            return;
        };
        let Ok(v) = vni(net) else { return };
        let here = endpoints
            .iter()
            .find(|e| e.kind == "sidecar" && e.ifname == veth);
        if here.is_some_and(|e| e.vni == v && e.mac.to_string().eq_ignore_ascii_case(&a.mac)) {
            return;
        }
        if here.is_some() {
            match self.dp.command(&Request::Detach {
                target: vxnet_dataplane::api::DetachTarget::Veth(veth.to_owned()),
            }) {
                Ok(()) => rep.detached += 1,
                Err(e) => rep.errors.push(format!("container {}: {e}", c.name)),
            }
        }
        match self.attach_to(AttachTarget::Veth(veth.to_owned()), None, net, c, false) {
            Ok(()) => rep.attached += 1,
            Err(e) => rep
                .errors
                .push(format!("container {} on {}: {e}", c.name, net.name)),
        }
    }
}
