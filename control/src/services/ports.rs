//! Published ports of services, with Docker's rules: a port/protocol is
//! published by one service at most (a second one is refused, naming the
//! first), a port given without `published=` gets the lowest free one of
//! 30000-32767, `mode=host` needs `published=`, and neither an `--internal`
//! network nor DNS round robin goes with the routing mesh. Pure functions
//! over the services the store holds.

use std::ops::RangeInclusive;

use vxnet_api::ctl::PortRequest;

use crate::error::{ControlError, Result};
use crate::model::{EndpointMode, Network, PortConfig, PortProtocol, PublishMode, Service};

/// Where ports published without a number come from (Docker's).
pub const AUTO_PORTS: RangeInclusive<u16> = 30000..=32767;

/// Ports the swarm itself listens on, on every node (Docker's defaults):
/// the management port (2377/tcp), gossip (7946/udp, and /tcp as Docker
/// has it) and the VXLAN data port (4789/udp). A service publishing one
/// would take it from the node's own daemons.
pub const SWARM_PORTS: [(PortProtocol, u16); 4] = [
    (PortProtocol::Tcp, 2377),
    (PortProtocol::Tcp, 7946),
    (PortProtocol::Udp, 7946),
    (PortProtocol::Udp, 4789),
];

/// `keep` plus the ports `reqs` ask for, for service `id` among `all`
/// (every service, its own old record included): refused if a port is
/// taken by another service or given twice.
pub fn add_ports(
    id: &str,
    keep: &[PortConfig],
    reqs: &[PortRequest],
    all: &[Service],
) -> Result<Vec<PortConfig>> {
    let others = || all.iter().filter(|s| s.id != id);
    let taken = |proto, port| {
        others().find(|s| {
            s.ports
                .iter()
                .any(|p| p.protocol == proto && p.published_port == port)
        })
    };
    let mut out: Vec<PortConfig> = keep.to_vec();
    for r in reqs {
        if r.target_port == 0 {
            return Err(ControlError::PortRange(r.target_port));
        }
        let published = match (r.published_port, r.publish_mode) {
            (Some(0), _) => return Err(ControlError::PortRange(0)),
            (Some(p), _) => p,
            (None, PublishMode::Host) => return Err(ControlError::HostModeNeedsPublished),
            (None, PublishMode::Ingress) => AUTO_PORTS
                .clone()
                .find(|p| {
                    taken(r.protocol, *p).is_none()
                        && !out
                            .iter()
                            .any(|o| o.protocol == r.protocol && o.published_port == *p)
                })
                .ok_or(ControlError::PortsExhausted)?,
        };
        if SWARM_PORTS.contains(&(r.protocol, published)) {
            return Err(ControlError::SwarmPort {
                protocol: r.protocol,
                port: published,
            });
        }
        if let Some(s) = taken(r.protocol, published) {
            return Err(ControlError::PortInUse {
                protocol: r.protocol,
                port: published,
                service: s.name.clone(),
            });
        }
        if let Some(k) = keep
            .iter()
            .find(|o| o.protocol == r.protocol && o.published_port == published)
        {
            return Err(ControlError::PortPublishedHere {
                protocol: r.protocol,
                port: published,
                target: k.target_port,
            });
        }
        if out
            .iter()
            .any(|o| o.protocol == r.protocol && o.published_port == published)
        {
            return Err(ControlError::PortGivenTwice {
                protocol: r.protocol,
                port: published,
            });
        }
        out.push(PortConfig {
            protocol: r.protocol,
            target_port: r.target_port,
            published_port: published,
            publish_mode: r.publish_mode,
        });
    }
    Ok(out)
}

/// `ports` without those `rm` names (by protocol and target port, and by
/// published port when given); refused if one names no port.
pub fn remove_ports(
    service: &str,
    ports: &[PortConfig],
    rm: &[PortRequest],
) -> Result<Vec<PortConfig>> {
    let mut out = ports.to_vec();
    for r in rm {
        let before = out.len();
        out.retain(|p| {
            !(p.protocol == r.protocol
                && p.target_port == r.target_port
                && r.published_port.is_none_or(|x| x == p.published_port))
        });
        if out.len() == before {
            return Err(ControlError::NotPublished {
                service: service.to_owned(),
                protocol: r.protocol,
                target: r.target_port,
                published: r
                    .published_port
                    .map(|p| format!(" on {p}"))
                    .unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// Whether a service with these ports, endpoint mode and networks may
/// publish them.
pub fn check_publishable(
    ports: &[PortConfig],
    mode: EndpointMode,
    networks: &[&Network],
) -> Result<()> {
    if ports.is_empty() {
        return Ok(());
    }
    if let Some(n) = networks.iter().find(|n| n.internal) {
        return Err(ControlError::PublishOnInternal(n.name.clone()));
    }
    if mode == EndpointMode::Dnsrr && ports.iter().any(|p| p.publish_mode == PublishMode::Ingress) {
        return Err(ControlError::IngressWithDnsrr);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PortProtocol, ServiceMode};

    fn req(target: u16, published: Option<u16>) -> PortRequest {
        PortRequest {
            protocol: PortProtocol::Tcp,
            target_port: target,
            published_port: published,
            publish_mode: PublishMode::Ingress,
        }
    }

    fn service(id: &str, ports: Vec<PortConfig>) -> Service {
        Service {
            id: id.into(),
            name: format!("svc-{id}"),
            mode: ServiceMode::Replicated { replicas: 1 },
            endpoint_mode: EndpointMode::Vip,
            networks: vec![],
            command: vec!["true".into()],
            env: vec![],
            restart: Default::default(),
            vips: vec![],
            created: 0,
            updated: 0,
            version: 1,
            ports,
        }
    }

    #[test]
    fn ports_are_allocated_and_never_shared() {
        let web = add_ports("a", &[], &[req(80, Some(8080)), req(81, None)], &[]).unwrap();
        assert_eq!(web[0].published_port, 8080);
        assert_eq!(web[1].published_port, 30000, "the lowest free one");
        let all = vec![service("a", web.clone())];
        // Another service: 8080/tcp is taken (the refusal names the
        // holder), 8080/udp is free, and allocation skips 30000.
        let e = add_ports("b", &[], &[req(80, Some(8080))], &all).unwrap_err();
        assert!(e.to_string().contains("service svc-a"), "{e}");
        let mut udp = req(53, Some(8080));
        udp.protocol = PortProtocol::Udp;
        let b = add_ports("b", &[], &[udp, req(80, None)], &all).unwrap();
        assert_eq!(b[1].published_port, 30001);
        // The service itself may keep its own ports on update.
        assert!(add_ports("a", &web, &[req(82, Some(9000))], &all).is_ok());
        // Already published by this very service: named as such.
        let e = add_ports("a", &web, &[req(81, Some(8080))], &all).unwrap_err();
        assert!(
            matches!(e, ControlError::PortPublishedHere { target: 80, .. }),
            "{e}"
        );
        // The swarm's own ports, on either protocol they are used with.
        for (protocol, port) in SWARM_PORTS {
            let mut r = req(80, Some(port));
            r.protocol = protocol;
            let e = add_ports("c", &[], &[r], &all).unwrap_err();
            assert!(matches!(e, ControlError::SwarmPort { .. }), "{e}");
        }
        let mut r = req(80, Some(2377));
        r.protocol = PortProtocol::Udp;
        assert!(add_ports("c", &[], &[r], &all).is_ok(), "2377/udp is free");
        // Twice in one request, zero, and host mode without a number.
        assert!(matches!(
            add_ports("c", &[], &[req(1, Some(7)), req(2, Some(7))], &all),
            Err(ControlError::PortGivenTwice { .. })
        ));
        assert!(matches!(
            add_ports("c", &[], &[req(0, Some(7))], &all),
            Err(ControlError::PortRange(0))
        ));
        let mut host = req(80, None);
        host.publish_mode = PublishMode::Host;
        assert!(matches!(
            add_ports("c", &[], &[host], &all),
            Err(ControlError::HostModeNeedsPublished)
        ));
    }

    #[test]
    fn ports_are_removed_by_target_or_exactly() {
        let ports = add_ports("a", &[], &[req(80, Some(8080)), req(80, Some(8081))], &[]).unwrap();
        let left = remove_ports("web", &ports, &[req(80, Some(8081))]).unwrap();
        assert_eq!(left.len(), 1);
        assert!(
            remove_ports("web", &ports, &[req(80, None)])
                .unwrap()
                .is_empty()
        );
        let e = remove_ports("web", &ports, &[req(90, None)]).unwrap_err();
        assert!(e.to_string().contains("no tcp port with target 90"), "{e}");
    }
}
