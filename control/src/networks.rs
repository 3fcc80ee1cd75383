//! Overlay network operations with Docker's rules: `network create`,
//! `inspect`, `ls`, `rm`, and the question the daemon asks to decide which
//! networks a node must have ("in use on node X").
//!
//! Each operation reads the store, validates, and writes its whole result
//! (network record plus gateway allocations) in one transaction. Callers
//! serialize operations (one manager lock); the address records are also
//! guarded with `require_absent` so a lost race cannot double-allocate.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
pub use vxnet_api::ctl::{EndpointView, NetworkCreate as CreateNetwork, NetworkFilter, PeerView};

use crate::error::{ControlError, Result};
use crate::ipam::{self, AddressSpace};
use crate::model::{
    AddressAlloc, AddressOwner, AddressPool, Cluster, Container, Driver, Ipv4Config, Ipv6Config,
    Network, Node, UnixTime, new_id,
};
use crate::store::{Store, StoreExt, Txn};
use vxnet_api::Vni;

/// First VNI handed out, as Docker.
pub const VNI_FIRST: u32 = 4096;
/// Largest 24-bit VNI.
pub const VNI_LAST: u32 = 0x00ff_ffff;
/// What a network without `--opt mtu` records as its MTU: its endpoints'
/// MTU over a 1500-byte IPv4 underlay. The MTU in force comes from each
/// host's underlay ([`Network::mtu_on`]).
pub const MTU_DEFAULT: u16 = 1450;
/// The same on encrypted networks: [`MTU_DEFAULT`] minus the ESP overhead
/// (header and IV 16, inner UDP 8, trailer 2, ICV 16).
pub const MTU_ENCRYPTED: u16 = 1408;
/// Range accepted for `--opt mtu=N`: Linux's IPv4 minimum (68) to the
/// largest inner MTU a 9216-byte jumbo underlay carries. Docker's own
/// tutorial uses 1200.
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 68..=9166;
/// Smallest MTU of a network with an IPv6 subnet (RFC 8200 §5).
pub const MTU_MIN_IPV6: u16 = 1280;
/// Name of the network `swarm init` creates.
pub const INGRESS_NAME: &str = "ingress";

const OPT_ENCRYPTED: &str = "encrypted";
/// `--opt flood=false`: broadcast, multicast and unknown unicast stay on
/// their host (not replicated to the network's other hosts).
const OPT_FLOOD: &str = "flood";
const OPT_MTU: &str = "mtu";
const OPT_DOCKER_MTU: &str = "com.docker.network.driver.mtu";

/// A valid network or container name (Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
pub(crate) fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && s.len() <= 64
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Finds one record by exact id, exact name, or unique id prefix (Docker's
/// order), returning `Ok(None)` when nothing matches and the list of
/// matches when a prefix is ambiguous.
pub(crate) fn resolve<'a, T>(
    items: &'a [T],
    query: &str,
    id: impl Fn(&T) -> &str,
    name: impl Fn(&T) -> &str,
) -> std::result::Result<Option<&'a T>, Vec<String>> {
    if let Some(t) = items.iter().find(|t| id(t) == query) {
        return Ok(Some(t));
    }
    if let Some(t) = items.iter().find(|t| name(t) == query) {
        return Ok(Some(t));
    }
    if query.is_empty() {
        return Ok(None);
    }
    let hits: Vec<&T> = items.iter().filter(|t| id(t).starts_with(query)).collect();
    match hits.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(many.iter().map(|t| id(t).to_owned()).collect()),
    }
}

/// The network named by `query` (id, name or unique id prefix).
pub fn resolve_network<S: Store + ?Sized>(store: &S, query: &str) -> Result<Network> {
    let all = store.list::<Network>()?;
    match resolve(&all, query, |n| &n.id, |n| &n.name) {
        Ok(Some(n)) => Ok(n.clone()),
        Ok(None) => Err(ControlError::NetworkNotFound(query.to_owned())),
        Err(ids) => Err(ControlError::AmbiguousNetwork(
            query.to_owned(),
            ids.join(", "),
        )),
    }
}

fn cluster<S: Store + ?Sized>(store: &S) -> Result<Cluster> {
    store
        .get::<Cluster>(Cluster::KEY)?
        .ok_or(ControlError::NotInitialized)
}

/// `vxnet network create`. The swarm must be initialized (the default
/// address pool comes from the cluster record).
pub fn create_network<S: Store + ?Sized>(
    store: &S,
    req: &CreateNetwork,
    now: UnixTime,
    rng: &mut dyn RngCore,
) -> Result<Network> {
    let pool = cluster(store)?.default_pool;
    let (net, txn) = plan_network(store, &pool, req, now, rng)?;
    store.apply(&txn)?;
    Ok(net)
}

/// The request `swarm init` uses for the default ingress network.
pub fn default_ingress_request() -> CreateNetwork {
    CreateNetwork {
        name: INGRESS_NAME.to_owned(),
        ingress: true,
        ..CreateNetwork::default()
    }
}

/// What `--opt` says.
struct Options {
    encrypted: bool,
    mtu: Option<u16>,
    flood: bool,
}

/// A yes/no option: given alone (`--opt encrypted`), `true` or `false`.
fn flag(option: &str, value: &str, hint: &str) -> Result<bool> {
    match value {
        "" | "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ControlError::InvalidOption {
            option: option.to_owned(),
            value: value.to_owned(),
            reason: hint.to_owned(),
        }),
    }
}

fn parse_options(opts: &BTreeMap<String, String>) -> Result<Options> {
    let mut encrypted = false;
    let mut mtu = None;
    let mut flood = true;
    for (k, v) in opts {
        match k.as_str() {
            OPT_FLOOD => {
                flood = flag(
                    k,
                    v,
                    "use --opt flood=false to keep broadcast, multicast and unknown unicast \
                     on their host (or flood=true)",
                )?;
            }
            OPT_ENCRYPTED => {
                encrypted = flag(k, v, "use --opt encrypted (or encrypted=true|false)")?;
            }
            OPT_MTU | OPT_DOCKER_MTU => {
                let bad = |reason: &str| ControlError::InvalidOption {
                    option: k.clone(),
                    value: v.clone(),
                    reason: reason.to_owned(),
                };
                let range = || format!("{}..={}", MTU_RANGE.start(), MTU_RANGE.end());
                let n: u64 = v.trim().parse().map_err(|_| {
                    bad(&format!(
                        "not a number; give an MTU in bytes, in {}",
                        range()
                    ))
                })?;
                let n = u16::try_from(n)
                    .ok()
                    .filter(|n| MTU_RANGE.contains(n))
                    .ok_or_else(|| bad(&format!("out of range; give an MTU in {}", range())))?;
                if mtu.is_some_and(|m| m != n) {
                    return Err(bad("the MTU is given twice with different values"));
                }
                mtu = Some(n);
            }
            _ => return Err(ControlError::UnknownOption(k.clone())),
        }
    }
    Ok(Options {
        encrypted,
        mtu,
        flood,
    })
}

/// Subnet, gateway and range of one address family, as requested.
#[derive(Default)]
struct FamilyRequest {
    subnet: Option<IpNet>,
    gateway: Option<IpAddr>,
    range: Option<IpNet>,
}

fn split_addressing(req: &CreateNetwork) -> Result<(FamilyRequest, FamilyRequest)> {
    let bad = |s: String| Err(ControlError::InvalidAddressing(s));
    let (mut v4, mut v6) = (FamilyRequest::default(), FamilyRequest::default());
    for s in &req.subnets {
        ipam::check_subnet(s)?;
        let fam = if matches!(s, IpNet::V4(_)) {
            &mut v4
        } else {
            &mut v6
        };
        if let Some(prev) = fam.subnet {
            return bad(format!(
                "subnets {prev} and {s} are of the same family; an overlay network has at most one IPv4 and one IPv6 subnet"
            ));
        }
        fam.subnet = Some(*s);
    }
    for g in &req.gateways {
        let fam = match [&mut v4, &mut v6]
            .into_iter()
            .find(|f| f.subnet.is_some_and(|s| s.contains(g)))
        {
            Some(f) => f,
            None if req.subnets.is_empty() => {
                return bad(format!("--gateway {g} needs a --subnet that contains it"));
            }
            None => return bad(format!("gateway {g} is not inside any given --subnet")),
        };
        if fam.gateway.is_some() {
            return bad(format!("more than one --gateway for the subnet of {g}"));
        }
        fam.gateway = Some(*g);
    }
    for r in &req.ip_ranges {
        let fam = match [&mut v4, &mut v6]
            .into_iter()
            .find(|f| f.subnet.is_some_and(|s| s.contains(r)))
        {
            Some(f) => f,
            None if req.subnets.is_empty() => {
                return bad(format!("--ip-range {r} needs a --subnet that contains it"));
            }
            None => return bad(format!("ip-range {r} is not inside any given --subnet")),
        };
        if fam.range.is_some() {
            return bad(format!("more than one --ip-range for the subnet of {r}"));
        }
        fam.range = Some(*r);
    }
    Ok((v4, v6))
}

/// Validates `req` against the current state and returns the network and
/// the transaction that creates it (not applied).
pub(crate) fn plan_network<S: Store + ?Sized>(
    store: &S,
    pool: &AddressPool,
    req: &CreateNetwork,
    now: UnixTime,
    rng: &mut dyn RngCore,
) -> Result<(Network, Txn)> {
    if !valid_name(&req.name) {
        return Err(ControlError::InvalidNetworkName(req.name.clone()));
    }
    if req.ingress && req.attachable {
        return Err(ControlError::IngressAttachable);
    }
    let Options {
        encrypted,
        mtu,
        flood,
    } = parse_options(&req.options)?;
    let (v4, v6) = split_addressing(req)?;
    if let (Some(m), Some(_)) = (mtu, v6.subnet) {
        if m < MTU_MIN_IPV6 {
            return Err(ControlError::InvalidOption {
                option: OPT_MTU.to_owned(),
                value: m.to_string(),
                reason: format!(
                    "a network with an IPv6 subnet needs an MTU of at least {MTU_MIN_IPV6} (RFC 8200)"
                ),
            });
        }
    }

    let existing = store.list::<Network>()?;
    if let Some(n) = existing.iter().find(|n| n.name == req.name) {
        return Err(ControlError::NetworkNameInUse {
            name: req.name.clone(),
            id: n.id.clone(),
        });
    }
    if req.ingress {
        if let Some(n) = existing.iter().find(|n| n.ingress) {
            return Err(ControlError::IngressExists {
                name: n.name.clone(),
                id: n.id.clone(),
            });
        }
    }
    let used: Vec<(IpNet, &Network)> = existing
        .iter()
        .flat_map(|n| n.subnets().into_iter().map(move |s| (s, n)))
        .collect();
    for s in [v4.subnet, v6.subnet].into_iter().flatten() {
        if let Some((other, n)) = used.iter().find(|(u, _)| ipam::overlaps(&s, u)) {
            return Err(ControlError::SubnetOverlap {
                subnet: s,
                other: *other,
                network: n.name.clone(),
            });
        }
    }
    let subnet4 = match v4.subnet {
        Some(IpNet::V4(s)) => s,
        _ => {
            let used: Vec<IpNet> = used.iter().map(|(s, _)| *s).collect();
            ipam::next_subnet(pool, &used)?
        }
    };

    let vnis: BTreeSet<u32> = existing.iter().map(|n| n.vni.get()).collect();
    let vni = (VNI_FIRST..=VNI_LAST)
        .find(|v| !vnis.contains(v))
        .and_then(Vni::new)
        .ok_or(ControlError::VniExhausted)?;

    let id = new_id(rng);
    let mut txn = Txn::new();
    let mut gateway = |subnet: IpNet, fam: &FamilyRequest| -> Result<(IpAddr, Option<IpNet>)> {
        let mut space = AddressSpace::new(&req.name, subnet, fam.range)?;
        let gw = fam.gateway.unwrap_or_else(|| space.default_gateway());
        space.take(gw, |_| String::new())?;
        txn.require_absent::<AddressAlloc>(&AddressAlloc::key_of(&id, gw));
        txn.put(&AddressAlloc {
            network: id.clone(),
            ip: gw,
            owner: AddressOwner::Gateway,
        })?;
        Ok((gw, fam.range))
    };
    let ipv4 = match gateway(IpNet::V4(subnet4), &v4)? {
        (IpAddr::V4(gw), range) => Ipv4Config {
            subnet: subnet4,
            gateway: gw,
            ip_range: match range {
                Some(IpNet::V4(r)) => Some(r),
                _ => None,
            },
        },
        (gw, _) => {
            return Err(ControlError::InvalidAddressing(format!(
                "gateway {gw} is not an IPv4 address"
            )));
        }
    };
    let ipv6 = match v6.subnet {
        Some(IpNet::V6(s)) => match gateway(IpNet::V6(s), &v6)? {
            (IpAddr::V6(gw), range) => Some(Ipv6Config {
                subnet: s,
                gateway: gw,
                ip_range: match range {
                    Some(IpNet::V6(r)) => Some(r),
                    _ => None,
                },
            }),
            (gw, _) => {
                return Err(ControlError::InvalidAddressing(format!(
                    "gateway {gw} is not an IPv6 address"
                )));
            }
        },
        _ => None,
    };

    let net = Network {
        id,
        name: req.name.clone(),
        driver: Driver::Overlay,
        vni,
        ipv4,
        ipv6,
        attachable: req.attachable,
        ingress: req.ingress,
        internal: req.internal,
        encrypted,
        mtu: mtu.unwrap_or(if encrypted {
            MTU_ENCRYPTED
        } else {
            MTU_DEFAULT
        }),
        mtu_explicit: Some(mtu.is_some()),
        flood,
        created: now,
    };
    txn.require_absent::<Network>(&net.id);
    txn.put(&net)?;
    Ok((net, txn))
}

/// `vxnet network ls`, sorted by name.
pub fn list_networks<S: Store + ?Sized>(store: &S, filter: &NetworkFilter) -> Result<Vec<Network>> {
    let mut v: Vec<Network> = store
        .list::<Network>()?
        .into_iter()
        .filter(|n| {
            filter
                .name
                .as_ref()
                .is_none_or(|f| n.name.contains(f.as_str()))
        })
        .filter(|n| {
            filter
                .id
                .as_ref()
                .is_none_or(|f| n.id.starts_with(f.as_str()))
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

/// `vxnet network inspect`: the network with every endpoint and the hosts
/// they are on; the CLI shows the endpoints of its own host as `Containers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDetails {
    pub network: Network,
    pub containers: Vec<EndpointView>,
    pub peers: Vec<PeerView>,
}

pub fn inspect_network<S: Store + ?Sized>(store: &S, query: &str) -> Result<NetworkDetails> {
    let network = resolve_network(store, query)?;
    let mut containers = Vec::new();
    let mut nodes = BTreeSet::new();
    for c in store.list::<Container>()? {
        if let Some(a) = c.attachment(&network.id) {
            nodes.insert(c.node.clone());
            containers.push(EndpointView {
                container_id: c.id.clone(),
                name: c.name.clone(),
                node: c.node.clone(),
                ipv4: a.ipv4,
                ipv6: a.ipv6,
                mac: a.mac,
            });
        }
    }
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut peers = Vec::new();
    for id in nodes {
        // A container whose node record is gone has no tunnel endpoint.
        if let Some(n) = store.get::<Node>(&id)? {
            peers.push(PeerView {
                node: n.id,
                hostname: n.hostname,
                data_path_addr: n.data_path_addr,
            });
        }
    }
    Ok(NetworkDetails {
        network,
        containers,
        peers,
    })
}

/// `vxnet network rm`: refused while any container is attached, naming
/// them. Releases the network's addresses and its VNI.
pub fn remove_network<S: Store + ?Sized>(store: &S, query: &str) -> Result<Network> {
    let net = resolve_network(store, query)?;
    let users: Vec<String> = store
        .list::<Container>()?
        .into_iter()
        .filter(|c| c.attachment(&net.id).is_some())
        .map(|c| format!("container {} ({})", c.name, c.id))
        .collect();
    if !users.is_empty() {
        return Err(ControlError::NetworkInUse {
            name: net.name.clone(),
            users: users.join(", "),
        });
    }
    let mut txn = Txn::new();
    for a in store.list::<AddressAlloc>()? {
        if a.network == net.id {
            txn.delete::<AddressAlloc>(&AddressAlloc::key_of(&a.network, a.ip));
        }
    }
    txn.delete::<Network>(&net.id);
    store.apply(&txn)?;
    Ok(net)
}

/// The networks something on `node` uses: the daemon creates these on the
/// node's dataplane and removes any other (a network appears on a worker
/// when something there needs it and goes when nothing there uses it).
/// Sorted by name. Only container attachments count: whether every node
/// keeps the ingress network for the routing mesh is the daemon's choice.
pub fn networks_on_node<S: Store + ?Sized>(store: &S, node: &str) -> Result<Vec<Network>> {
    let ids: BTreeSet<String> = store
        .list::<Container>()?
        .into_iter()
        .filter(|c| c.node == node)
        .flat_map(|c| c.attachments.into_iter().map(|a| a.network))
        .collect();
    let mut v: Vec<Network> = store
        .list::<Network>()?
        .into_iter()
        .filter(|n| ids.contains(&n.id))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::init;
    use crate::model::test_rng::TestRng;
    use crate::store::MemStore;

    fn req(name: &str) -> CreateNetwork {
        CreateNetwork {
            name: name.into(),
            ..CreateNetwork::default()
        }
    }

    fn create(s: &MemStore, r: &CreateNetwork) -> Result<Network> {
        create_network(s, r, 100, &mut TestRng::from_name(&r.name))
    }

    #[test]
    fn create_needs_swarm() {
        let s = MemStore::new();
        let e = create(&s, &req("a")).unwrap_err();
        assert!(matches!(e, ControlError::NotInitialized));
        assert!(e.to_string().contains("swarm init"));
    }

    #[test]
    fn create_defaults_after_ingress() {
        let s = MemStore::new();
        init(&s);
        let ingress = resolve_network(&s, INGRESS_NAME).unwrap();
        assert!(ingress.ingress && !ingress.attachable);
        assert_eq!(ingress.vni.get(), VNI_FIRST);
        assert_eq!(ingress.ipv4.subnet.to_string(), "10.0.0.0/24");

        let n = create(&s, &req("test-net")).unwrap();
        assert_eq!(n.driver, Driver::Overlay);
        assert_eq!(n.vni.get(), 4097);
        assert_eq!(n.ipv4.subnet.to_string(), "10.0.1.0/24");
        assert_eq!(n.ipv4.gateway.to_string(), "10.0.1.1");
        assert_eq!(n.mtu, MTU_DEFAULT);
        assert!(!n.attachable && !n.encrypted && !n.ingress);
        assert_eq!(n.created, 100);
        assert!(crate::model::is_id(&n.id));
        // The gateway is allocated in the store.
        let gw = s
            .get::<AddressAlloc>(&AddressAlloc::key_of(&n.id, n.ipv4.gateway.into()))
            .unwrap()
            .unwrap();
        assert_eq!(gw.owner, AddressOwner::Gateway);
        assert_eq!(s.get::<Network>(&n.id).unwrap(), Some(n));
    }

    #[test]
    fn name_driver_and_option_rules() {
        let s = MemStore::new();
        init(&s);
        let a = create(&s, &req("a")).unwrap();
        let e = create(&s, &req("a")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "network name 'a' is already used by network {}; choose another name or remove it first",
                a.id
            )
        );
        assert!(matches!(
            create(&s, &req("-bad")),
            Err(ControlError::InvalidNetworkName(_))
        ));
        assert!(matches!(
            create(&s, &req("")),
            Err(ControlError::InvalidNetworkName(_))
        ));
        let mut r = req("enc");
        r.options.insert("encrypted".into(), String::new());
        r.attachable = true;
        let n = create(&s, &r).unwrap();
        assert!(n.encrypted && n.attachable);
        assert_eq!(n.mtu, MTU_ENCRYPTED);

        let mut r = req("m");
        r.options
            .insert("com.docker.network.driver.mtu".into(), "9000".into());
        assert_eq!(create(&s, &r).unwrap().mtu, 9000);
        // Docker's tutorial value is fine on an IPv4 network.
        let mut r = req("m1200");
        r.options
            .insert("com.docker.network.driver.mtu".into(), "1200".into());
        assert_eq!(create(&s, &r).unwrap().mtu, 1200);
        for (bad, why) in [
            ("67", "out of range"),
            ("9167", "out of range"),
            ("99999", "out of range"),
            ("99999999999999999999", "not a number"),
            ("x", "not a number"),
            ("", "not a number"),
        ] {
            let mut r = req("m2");
            r.options.insert("mtu".into(), bad.into());
            let e = create(&s, &r).unwrap_err();
            assert!(
                matches!(e, ControlError::InvalidOption { .. }),
                "{bad}: {e}"
            );
            assert!(e.to_string().contains(why), "{bad}: {e}");
            assert!(e.to_string().contains("68..=9166"), "{e}");
        }
        // IPv6 needs 1280 (RFC 8200).
        let mut r = req("m6");
        r.options.insert("mtu".into(), "1200".into());
        r.subnets = vec!["fd77::/64".parse().unwrap()];
        let e = create(&s, &r).unwrap_err();
        assert!(e.to_string().contains("at least 1280"), "{e}");
        let mut r = req("m3");
        r.options.insert("mtu".into(), "1400".into());
        r.options
            .insert("com.docker.network.driver.mtu".into(), "1500".into());
        assert!(create(&s, &r).is_err());
        let mut r = req("o");
        r.options.insert("colour".into(), "blue".into());
        assert!(matches!(
            create(&s, &r),
            Err(ControlError::UnknownOption(_))
        ));
        let mut r = req("o");
        r.options.insert("encrypted".into(), "yes".into());
        assert!(create(&s, &r).is_err());
        // Flooding is on unless turned off; only true or false.
        assert!(a.flood && a.mtu_explicit == Some(false));
        let mut r = req("quiet");
        r.options.insert("flood".into(), "false".into());
        let q = create(&s, &r).unwrap();
        assert!(!q.flood);
        let mut r = req("o");
        r.options.insert("flood".into(), "off".into());
        let e = create(&s, &r).unwrap_err();
        assert!(e.to_string().contains("flood=false"), "{e}");
        // A given MTU is recorded as given.
        let m = resolve_network(&s, "m").unwrap();
        assert_eq!((m.mtu, m.mtu_explicit), (9000, Some(true)));
        // None of the refused requests left anything behind.
        let names: Vec<String> = list_networks(&s, &NetworkFilter::default())
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, ["a", "enc", "ingress", "m", "m1200", "quiet"]);
    }

    #[test]
    fn ingress_rules() {
        let s = MemStore::new();
        init(&s);
        let mut r = req("ing2");
        r.ingress = true;
        let e = create(&s, &r).unwrap_err();
        assert!(matches!(e, ControlError::IngressExists { .. }));
        assert!(e.to_string().contains("only one"), "{e}");
        remove_network(&s, INGRESS_NAME).unwrap();
        r.attachable = true;
        assert!(matches!(
            create(&s, &r),
            Err(ControlError::IngressAttachable)
        ));
        r.attachable = false;
        let n = create(&s, &r).unwrap();
        assert!(n.ingress);
        // The freed VNI 4096 and subnet 10.0.0.0/24 are reused.
        assert_eq!(n.vni.get(), VNI_FIRST);
        assert_eq!(n.ipv4.subnet.to_string(), "10.0.0.0/24");
    }

    #[test]
    fn user_addressing_rules() {
        let s = MemStore::new();
        init(&s);
        let mut r = req("u");
        r.subnets = vec![
            "192.168.10.0/24".parse().unwrap(),
            "fd00:10::/64".parse().unwrap(),
        ];
        r.gateways = vec!["192.168.10.254".parse().unwrap()];
        r.ip_ranges = vec!["192.168.10.128/25".parse().unwrap()];
        let n = create(&s, &r).unwrap();
        assert_eq!(n.ipv4.gateway.to_string(), "192.168.10.254");
        assert_eq!(n.ipv4.ip_range.unwrap().to_string(), "192.168.10.128/25");
        let v6 = n.ipv6.unwrap();
        assert_eq!(v6.gateway.to_string(), "fd00:10::1");

        // Overlap with the user subnet, naming the network.
        let mut r = req("o");
        r.subnets = vec!["192.168.0.0/16".parse().unwrap()];
        let e = create(&s, &r).unwrap_err();
        assert!(matches!(e, ControlError::SubnetOverlap { .. }));
        assert!(e.to_string().contains("of network u"), "{e}");
        let mut r = req("o6");
        r.subnets = vec!["fd00:10::/48".parse().unwrap()];
        assert!(matches!(
            create(&s, &r),
            Err(ControlError::SubnetOverlap { .. })
        ));
        // Overlap with a pool-allocated subnet (ingress has 10.0.0.0/24).
        let mut r = req("o2");
        r.subnets = vec!["10.0.0.0/16".parse().unwrap()];
        assert!(create(&s, &r).unwrap_err().to_string().contains("ingress"));

        // (subnets, gateways, ip ranges, expected message part)
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a str);
        let cases: &[Case] = &[
            (&[], &["10.9.0.1"], &[], "needs a --subnet"),
            (&[], &[], &["10.9.0.0/25"], "needs a --subnet"),
            (
                &["10.9.0.0/24"],
                &["10.8.0.1"],
                &[],
                "not inside any given --subnet",
            ),
            (
                &["10.9.0.0/24"],
                &[],
                &["10.8.0.0/25"],
                "not inside any given --subnet",
            ),
            (&["10.9.0.0/24"], &["10.9.0.0"], &[], "network address"),
            (&["10.9.0.0/24"], &["10.9.0.255"], &[], "broadcast"),
            (&["10.9.0.0/24", "10.10.0.0/24"], &[], &[], "same family"),
            (&["10.9.0.3/24"], &[], &[], "host bits"),
            (&["10.9.0.0/31"], &[], &[], "too small"),
            (
                &["10.9.0.0/24"],
                &["10.9.0.1", "10.9.0.2"],
                &[],
                "more than one --gateway",
            ),
        ];
        for (subnets, gws, ranges, want) in cases {
            let mut r = req("bad");
            r.subnets = subnets.iter().map(|x| x.parse().unwrap()).collect();
            r.gateways = gws.iter().map(|x| x.parse().unwrap()).collect();
            r.ip_ranges = ranges.iter().map(|x| x.parse().unwrap()).collect();
            let e = create(&s, &r).unwrap_err();
            assert!(
                e.to_string().contains(want),
                "{subnets:?} {gws:?} {ranges:?}: {e}"
            );
        }
        assert!(resolve_network(&s, "bad").is_err());
        // The pool skips the user subnets: next auto subnet is 10.0.1.0/24.
        assert_eq!(
            create(&s, &req("auto")).unwrap().ipv4.subnet.to_string(),
            "10.0.1.0/24"
        );
    }

    #[test]
    fn vni_allocation_reuses_only_free_ones() {
        let s = MemStore::new();
        init(&s);
        let a = create(&s, &req("a")).unwrap();
        let b = create(&s, &req("b")).unwrap();
        let c = create(&s, &req("c")).unwrap();
        assert_eq!([a.vni.get(), b.vni.get(), c.vni.get()], [4097, 4098, 4099]);
        remove_network(&s, "b").unwrap();
        let d = create(&s, &req("d")).unwrap();
        assert_eq!(d.vni.get(), 4098);
        let e = create(&s, &req("e")).unwrap();
        assert_eq!(e.vni.get(), 4100);
        let all: BTreeSet<u32> = s
            .list::<Network>()
            .unwrap()
            .iter()
            .map(|n| n.vni.get())
            .collect();
        assert_eq!(all.len(), s.list::<Network>().unwrap().len());
    }

    #[test]
    fn pool_exhaustion_is_reported() {
        let s = MemStore::new();
        crate::cluster::tests::init_with_pool(&s, "10.5.0.0/23".parse().unwrap(), 24);
        // Ingress took 10.5.0.0/24.
        create(&s, &req("a")).unwrap();
        let e = create(&s, &req("b")).unwrap_err();
        assert!(matches!(e, ControlError::PoolExhausted { .. }));
        assert!(e.to_string().contains("10.5.0.0/23"), "{e}");
    }

    #[test]
    fn ls_inspect_and_resolve() {
        let s = MemStore::new();
        init(&s);
        let a = create(&s, &req("front")).unwrap();
        let b = create(&s, &req("back")).unwrap();
        let names = |f: NetworkFilter| -> Vec<String> {
            list_networks(&s, &f)
                .unwrap()
                .into_iter()
                .map(|n| n.name)
                .collect()
        };
        assert_eq!(
            names(NetworkFilter::default()),
            ["back", "front", "ingress"]
        );
        assert_eq!(
            names(NetworkFilter {
                name: Some("ack".into()),
                ..Default::default()
            }),
            ["back"]
        );
        assert_eq!(
            names(NetworkFilter {
                id: Some(a.id[..12].to_owned()),
                ..Default::default()
            }),
            ["front"]
        );
        assert_eq!(resolve_network(&s, &b.id).unwrap().name, "back");
        assert_eq!(resolve_network(&s, &b.id[..5]).unwrap().name, "back");
        assert!(matches!(
            resolve_network(&s, "nope"),
            Err(ControlError::NetworkNotFound(_))
        ));
        let d = inspect_network(&s, "front").unwrap();
        assert_eq!(d.network, a);
        assert!(d.containers.is_empty() && d.peers.is_empty());
    }

    #[test]
    fn resolve_reports_ambiguity() {
        struct T(&'static str, &'static str);
        let v = [T("abc1", "x"), T("abc2", "y"), T("zzz", "abc")];
        let r = |q| resolve(&v, q, |t| t.0, |t| t.1).map(|o| o.map(|t| t.1));
        assert_eq!(r("abc2"), Ok(Some("y")));
        // An exact name wins over an id prefix.
        assert_eq!(r("abc"), Ok(Some("abc")));
        assert_eq!(r("ab"), Err(vec!["abc1".to_string(), "abc2".to_string()]));
        assert_eq!(r("z"), Ok(Some("abc")));
        assert_eq!(r(""), Ok(None));
    }
}
