//! What the dataplane's control side does for real underlays (issue 12).
//!
//! - The underlay MTU: the MTU of the interface that carries the local
//!   VTEP address, read at start, before every attach (a new endpoint gets
//!   the MTU the underlay carries now) and every second by a watcher
//!   thread. It is published to the workers in the forwarding table (their
//!   "too big" check) and reported: `show` says it, `endpoints` gives each
//!   endpoint the MTU its network can carry now, and a change is logged
//!   with the endpoints whose MTU is now too large (their too-big frames
//!   are answered with ICMP, so TCP adapts; a re-attach gives them the new
//!   MTU).
//! - Neighbour announcements: which (VNI, address, MAC) a table edit made
//!   new, handed to worker 0, which writes a gratuitous ARP or unsolicited
//!   neighbour advertisement into the VNI's local TAPs
//!   ([`vxnet_proto::engine::Engine::announce`]).
//!
//! Netlink is read without the state's lock; the lock is only taken to
//! compare and publish.

use super::Dataplane;
use crate::sys::netlink;
use crate::worker::Command;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use vxnet_proto::fdb::{Dest, Fdb};
use vxnet_proto::mtu::{DEFAULT_UNDERLAY_MTU, Underlay};
use vxnet_proto::wire::{MacAddr, Vni};

/// How often the watcher reads the underlay MTU.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The underlay of a dataplane whose local VTEP is `vtep`: the MTU of the
/// interface holding that address in this namespace, or 1500 when none
/// holds it (logged).
pub fn read(vtep: IpAddr) -> Underlay {
    let mtu = match netlink::interface_mtu_of_address(vtep) {
        Ok(Some(mtu)) => mtu,
        Ok(None) => {
            tracing::warn!(%vtep, "no interface holds the local VTEP address; assuming a {DEFAULT_UNDERLAY_MTU}-byte underlay");
            DEFAULT_UNDERLAY_MTU
        }
        Err(e) => {
            tracing::warn!(%vtep, error = %e, "cannot read the underlay MTU; assuming {DEFAULT_UNDERLAY_MTU}");
            DEFAULT_UNDERLAY_MTU
        }
    };
    Underlay::new(mtu, vtep.is_ipv6())
}

impl Dataplane {
    /// Reads the underlay MTU again; publishes and reports a change.
    pub fn refresh_underlay(&self) {
        let now = read(self.cfg.local_vtep);
        let mut st = self.lock();
        let before = st.fdb.underlay();
        if before == now {
            return;
        }
        let mut next = st.fdb.clone();
        next.set_underlay(now);
        self.cell.publish(next.clone());
        st.fdb = next;
        tracing::info!(
            before = before.mtu,
            now = now.mtu,
            "the underlay MTU changed; new endpoints get MTU {} ({} encrypted)",
            now.endpoint_mtu(false),
            now.endpoint_mtu(true)
        );
        for e in st.endpoints.values() {
            let fits = now.path_mtu(st.fdb.is_encrypted(e.info.vni));
            if e.info.mtu > fits {
                tracing::warn!(
                    endpoint = e.info.id,
                    vni = %e.info.vni,
                    mtu = e.info.mtu,
                    path_mtu = fits,
                    "the underlay no longer carries this endpoint's MTU: its larger frames are answered \
                     with ICMP too big; attach it again for the new MTU"
                );
            }
        }
    }

    /// Starts the thread that reads the underlay MTU every `every`; it ends
    /// with [`Dataplane::shutdown`] or when the dataplane is dropped.
    pub fn watch_underlay(self: &Arc<Self>, every: Duration) -> std::io::Result<()> {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("vxnet-underlay".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(dp) = weak.upgrade() else { break };
                    if dp.stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    dp.refresh_underlay();
                }
            })?;
        Ok(())
    }

    /// Has worker 0 tell the local endpoints about `news`.
    pub(super) fn announce(&self, news: Vec<(Vni, IpAddr, MacAddr)>) {
        if news.is_empty() {
            return;
        }
        let workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = workers.first() {
            w.send(Command::Announce(news));
        }
    }
}

/// The addresses among `ips` that `new` maps to `mac` where `old` mapped
/// them to another MAC, or `mac` lived elsewhere (another host, or not at
/// all): what the local endpoints of `vni` must hear about.
pub(super) fn announcements(
    old: &Fdb,
    new: &Fdb,
    vni: Vni,
    mac: MacAddr,
    ips: &[IpAddr],
) -> Vec<(Vni, IpAddr, MacAddr)> {
    let Some(t) = new.vni(vni) else {
        return Vec::new();
    };
    let was = old.vni(vni);
    let dest = |t: Option<&vxnet_proto::fdb::VniTable>| -> Option<Dest> {
        t.and_then(|t| t.macs.get(&mac).copied())
    };
    let moved = dest(was) != dest(Some(t));
    ips.iter()
        .filter(|ip| t.ips.get(ip) == Some(&mac))
        .filter(|ip| moved || was.and_then(|w| w.ips.get(ip)) != Some(&mac))
        .map(|ip| (vni, *ip, mac))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vni() -> Vni {
        Vni::new(7).unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    const M1: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const M2: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    #[test]
    fn only_what_changed_is_announced() {
        let a = ip("10.0.0.3");
        let mut old = Fdb::default();
        old.add_remote(vni(), M1, &[a], ip("192.0.2.2")).unwrap();
        // The same again: nothing new.
        let mut same = old.clone();
        same.add_remote(vni(), M1, &[a], ip("192.0.2.2")).unwrap();
        assert!(announcements(&old, &same, vni(), M1, &[a]).is_empty());
        // Another host: announced.
        let mut moved = old.clone();
        moved.add_remote(vni(), M1, &[a], ip("192.0.2.3")).unwrap();
        assert_eq!(
            announcements(&old, &moved, vni(), M1, &[a]),
            vec![(vni(), a, M1)]
        );
        // Another MAC behind the address: announced.
        let mut other = old.clone();
        other.add_remote(vni(), M2, &[a], ip("192.0.2.2")).unwrap();
        assert_eq!(
            announcements(&old, &other, vni(), M2, &[a]),
            vec![(vni(), a, M2)]
        );
        // A new address of a known MAC: announced, the old one not.
        let b = ip("fd00::3");
        let mut more = old.clone();
        more.add_remote(vni(), M1, &[a, b], ip("192.0.2.2"))
            .unwrap();
        assert_eq!(
            announcements(&old, &more, vni(), M1, &[a, b]),
            vec![(vni(), b, M1)]
        );
        // A local endpoint taking the address over.
        let mut local = old.clone();
        local.add_local(0, vni(), M2, &[a]).unwrap();
        assert_eq!(
            announcements(&old, &local, vni(), M2, &[a]),
            vec![(vni(), a, M2)]
        );
    }
}
