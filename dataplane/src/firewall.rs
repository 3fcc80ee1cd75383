//! The host's firewall table of the host link: `table ip vxnet` in
//! nftables, the only part of the host's firewall vxnet writes.
//!
//! ```text
//! table ip vxnet {
//!   set tcp_ports { type inet_service; elements = { 8080, ... } }   # published TCP ports
//!   set udp_ports { type inet_service; elements = { ... } }         # published UDP ports
//!   chain prerouting { type nat hook prerouting priority dstnat; policy accept;
//!     fib daddr type local tcp dport @tcp_ports dnat to 198.18.0.2  # port kept: the
//!     fib daddr type local udp dport @udp_ports dnat to 198.18.0.2  #  dataplane balances
//!   }
//!   chain output { type nat hook output priority dstnat; policy accept;
//!     oifname "lo" ip daddr != 127.0.0.0/8 tcp dport @tcp_ports dnat to 198.18.0.2
//!     oifname "lo" ip daddr != 127.0.0.0/8 udp dport @udp_ports dnat to 198.18.0.2
//!   }                                                               # the host's own clients
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr 198.18.0.0/16 oifname != "vxnet0" masquerade         # egress
//!   }
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     oifname "vxnet0" ip daddr != 198.18.0.2 ct state new drop     # isolation
//!   }
//! }
//! ```
//!
//! The forward chain keeps the egress addresses answer-only, as Docker's
//! `docker_gwbridge` isolation does: nothing routed into the host link
//! starts a connection, except to the mesh address (a published port,
//! after the DNAT above). Without it, any underlay neighbour with a route
//! to 198.18.0.0/16, and any container through its own egress, would
//! reach every container's ports through its egress address, across
//! networks. The host's own processes are not forwarded, so they are not
//! stopped here.
//!
//! The output chain lets the host's own processes reach a published port
//! on any of its addresses, as Docker's mesh does (a locally generated
//! packet to a local address is routed through `lo`). Not on 127.0.0.1:
//! a loopback source cannot leave through another interface, and Docker
//! reaches it only through its userland proxy.
//!
//! Published ports only DNAT the destination: the client's address is
//! never touched (the kernel's conntrack undoes the DNAT on the replies).
//! Egress leaves with the host's address, as Docker's `docker_gwbridge`
//! does. The table is written whole, atomically (one `nft -j -f -`
//! transaction that adds, deletes and adds it again), so a stale table
//! from a killed dataplane is replaced, never duplicated; a port change
//! rewrites only the two sets, also atomically. The JSON is built and
//! read with the `nftables` crate's types, never by string pasting.
use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::{
    CT, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix,
};
use nftables::helper;
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetType,
    SetTypeValue, Table,
};
use nftables::stmt::{Match, NAT, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The table's name (family `ip`).
pub const TABLE: &str = "vxnet";
const TCP_SET: &str = "tcp_ports";
const UDP_SET: &str = "udp_ports";
const PREROUTING: &str = "prerouting";
const POSTROUTING: &str = "postrouting";
const OUTPUT: &str = "output";
const FORWARD: &str = "forward";
/// Netfilter's `dstnat`, `srcnat` and `filter` priorities.
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;
const FILTER: i32 = 0;

/// What the table is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The host link's interface.
    pub ifname: String,
    /// Its subnet (egress from it is masqueraded).
    pub net: Ipv4Addr,
    pub prefix: u8,
    /// Where published ports are sent.
    pub mesh_ip: Ipv4Addr,
}

/// Published ports, by protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ports {
    pub tcp: BTreeSet<u16>,
    pub udp: BTreeSet<u16>,
}

/// What the host's firewall holds of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// All the chains of [`CHAINS`] and both sets are there.
    pub complete: bool,
    pub ports: Ports,
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: TABLE.into(),
        handle: None,
    }
}

fn set(name: &'static str, ports: &BTreeSet<u16>) -> Set<'static> {
    Set {
        family: NfFamily::IP,
        table: TABLE.into(),
        name: name.into(),
        set_type: SetTypeValue::Single(SetType::InetService),
        elem: (!ports.is_empty()).then(|| elems(ports)),
        ..Set::default()
    }
}

fn elems(ports: &BTreeSet<u16>) -> Cow<'static, [Expression<'static>]> {
    ports
        .iter()
        .map(|p| Expression::Number(u32::from(*p)))
        .collect::<Vec<_>>()
        .into()
}

fn field(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>) -> Rule<'static> {
    Rule {
        family: NfFamily::IP,
        table: TABLE.into(),
        chain: chain.into(),
        expr: expr.into(),
        ..Rule::default()
    }
}

/// `fib daddr type local <proto> dport @<set> dnat to <mesh>`.
fn dnat_rule(proto: &'static str, set: &'static str, mesh: Ipv4Addr) -> Rule<'static> {
    let local = matches(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: HashSet::from([FibFlag::Daddr]),
        })),
        Operator::EQ,
        Expression::String("local".into()),
    );
    let port = matches(
        field(proto, "dport"),
        Operator::EQ,
        Expression::String(format!("@{set}").into()),
    );
    let dnat = Statement::DNAT(Some(NAT {
        addr: Some(Expression::String(mesh.to_string().into())),
        family: None,
        port: None,
        flags: None,
    }));
    rule(PREROUTING, vec![local, port, dnat])
}

/// `oifname "lo" ip daddr != 127.0.0.0/8 <proto> dport @<set> dnat to
/// <mesh>`: the host's own connections to its published ports.
fn local_dnat_rule(proto: &'static str, set: &'static str, mesh: Ipv4Addr) -> Rule<'static> {
    let lo = matches(
        Expression::Named(NamedExpression::Meta(Meta {
            key: MetaKey::Oifname,
        })),
        Operator::EQ,
        Expression::String("lo".into()),
    );
    let not_loopback = matches(
        field("ip", "daddr"),
        Operator::NEQ,
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String("127.0.0.0".into())),
            len: 8,
        })),
    );
    let mut r = dnat_rule(proto, set, mesh);
    let mut expr = vec![lo, not_loopback];
    // The port match and the DNAT, without prerouting's `fib` match.
    expr.extend(r.expr.iter().skip(1).cloned());
    r.chain = OUTPUT.into();
    r.expr = expr.into();
    r
}

/// `ip saddr <net>/<prefix> oifname != <ifname> masquerade`.
fn masquerade_rule(spec: &Spec) -> Rule<'static> {
    let from = matches(
        field("ip", "saddr"),
        Operator::EQ,
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(spec.net.to_string().into())),
            len: u32::from(spec.prefix),
        })),
    );
    let out = matches(
        Expression::Named(NamedExpression::Meta(Meta {
            key: MetaKey::Oifname,
        })),
        Operator::NEQ,
        Expression::String(spec.ifname.clone().into()),
    );
    rule(POSTROUTING, vec![from, out, Statement::Masquerade(None)])
}

/// `oifname <ifname> ip daddr != <mesh> ct state new drop`.
fn isolation_rule(spec: &Spec) -> Rule<'static> {
    let into_link = matches(
        Expression::Named(NamedExpression::Meta(Meta {
            key: MetaKey::Oifname,
        })),
        Operator::EQ,
        Expression::String(spec.ifname.clone().into()),
    );
    let not_mesh = matches(
        field("ip", "daddr"),
        Operator::NEQ,
        Expression::String(spec.mesh_ip.to_string().into()),
    );
    let new = matches(
        Expression::Named(NamedExpression::CT(CT {
            key: "state".into(),
            family: None,
            dir: None,
        })),
        Operator::IN,
        Expression::String("new".into()),
    );
    rule(
        FORWARD,
        vec![into_link, not_mesh, new, Statement::Drop(None)],
    )
}

/// The table's base chains: name, hook, priority and type. `install`
/// creates them; `observe` counts them.
const CHAINS: [(&str, NfHook, i32, NfChainType); 4] = [
    (PREROUTING, NfHook::Prerouting, DSTNAT, NfChainType::NAT),
    (POSTROUTING, NfHook::Postrouting, SRCNAT, NfChainType::NAT),
    (OUTPUT, NfHook::Output, DSTNAT, NfChainType::NAT),
    (FORWARD, NfHook::Forward, FILTER, NfChainType::Filter),
];

fn base_chain(
    (name, hook, prio, kind): (&'static str, NfHook, i32, NfChainType),
) -> Chain<'static> {
    Chain {
        family: NfFamily::IP,
        table: TABLE.into(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }
}

/// The transaction that (re)creates the whole table with `ports`.
pub fn install(spec: &Spec, ports: &Ports) -> Nftables<'static> {
    let mut b = Batch::new();
    // `add` then `delete`: removes a stale table without failing when
    // there is none, in the same transaction as the new one.
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.add(NfListObject::Table(table()));
    b.add(NfListObject::Set(Box::new(set(TCP_SET, &ports.tcp))));
    b.add(NfListObject::Set(Box::new(set(UDP_SET, &ports.udp))));
    for chain in CHAINS {
        b.add(NfListObject::Chain(base_chain(chain)));
    }
    b.add(NfListObject::Rule(dnat_rule("tcp", TCP_SET, spec.mesh_ip)));
    b.add(NfListObject::Rule(dnat_rule("udp", UDP_SET, spec.mesh_ip)));
    b.add(NfListObject::Rule(local_dnat_rule(
        "tcp",
        TCP_SET,
        spec.mesh_ip,
    )));
    b.add(NfListObject::Rule(local_dnat_rule(
        "udp",
        UDP_SET,
        spec.mesh_ip,
    )));
    b.add(NfListObject::Rule(masquerade_rule(spec)));
    b.add(NfListObject::Rule(isolation_rule(spec)));
    b.to_nftables()
}

/// The transaction that makes the two sets hold exactly `ports`.
pub fn set_ports(ports: &Ports) -> Nftables<'static> {
    let mut b = Batch::new();
    for (name, list) in [(TCP_SET, &ports.tcp), (UDP_SET, &ports.udp)] {
        b.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(set(
            name,
            &BTreeSet::new(),
        )))));
        if !list.is_empty() {
            b.add(NfListObject::Element(Element {
                family: NfFamily::IP,
                table: TABLE.into(),
                name: name.into(),
                elem: elems(list),
            }));
        }
    }
    b.to_nftables()
}

/// The transaction that removes the table, if it is there.
pub fn remove() -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.to_nftables()
}

/// What a listing of the table (`nft -j list table ip vxnet`) holds.
pub fn observe(listing: &Nftables) -> Observed {
    let mut o = Observed::default();
    let (mut chains, mut sets) = (0, 0);
    for obj in listing.objects.iter() {
        let NfObject::ListObject(obj) = obj else {
            continue;
        };
        match obj {
            NfListObject::Chain(c)
                if c.table == TABLE && CHAINS.iter().any(|(name, ..)| *name == c.name) =>
            {
                chains += 1;
            }
            NfListObject::Set(s) if s.table == TABLE => {
                let into = match s.name.as_ref() {
                    TCP_SET => &mut o.ports.tcp,
                    UDP_SET => &mut o.ports.udp,
                    _ => continue,
                };
                sets += 1;
                for e in s.elem.iter().flat_map(|e| e.iter()) {
                    if let Some(p) = port_of(e) {
                        into.insert(p);
                    }
                }
            }
            _ => {}
        }
    }
    o.complete = chains == CHAINS.len() && sets == 2;
    o
}

fn port_of(e: &Expression) -> Option<u16> {
    match e {
        Expression::Number(n) => u16::try_from(*n).ok(),
        Expression::Named(NamedExpression::Elem(el)) => port_of(&el.val),
        _ => None,
    }
}

/// Runs a transaction.
pub fn apply(n: &Nftables) -> Result<(), String> {
    helper::apply_ruleset(n).map_err(describe)
}

/// Reads the table; `None` when there is none.
pub fn read() -> Result<Option<Observed>, String> {
    match helper::get_current_ruleset_with_args(
        helper::DEFAULT_NFT,
        &["list", "table", "ip", TABLE],
    ) {
        Ok(n) => Ok(Some(observe(&n))),
        Err(helper::NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(None)
        }
        Err(e) => Err(describe(e)),
    }
}

fn describe(e: helper::NftablesError) -> String {
    match e {
        helper::NftablesError::NftExecution { inner, .. }
            if inner.kind() == std::io::ErrorKind::NotFound =>
        {
            "nft is not installed (Debian package nftables); the host link needs it".into()
        }
        helper::NftablesError::NftFailed { stderr, hint, .. } => {
            format!("nft failed while {hint}: {}", stderr.trim())
        }
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            ifname: "vxnet0".into(),
            net: Ipv4Addr::new(198, 18, 0, 0),
            prefix: 16,
            mesh_ip: Ipv4Addr::new(198, 18, 0, 2),
        }
    }

    fn ports(tcp: &[u16], udp: &[u16]) -> Ports {
        Ports {
            tcp: tcp.iter().copied().collect(),
            udp: udp.iter().copied().collect(),
        }
    }

    #[test]
    fn the_table_is_replaced_whole_and_says_what_the_header_says() {
        let n = install(&spec(), &ports(&[8080, 80], &[53]));
        let j = serde_json::to_value(&n).unwrap();
        let cmds = j["nftables"].as_array().unwrap();
        // add, delete, add: a stale table goes in the same transaction.
        assert!(cmds[0]["add"]["table"]["name"] == "vxnet");
        assert!(cmds[1]["delete"]["table"]["name"] == "vxnet");
        assert!(cmds[2]["add"]["table"]["family"] == "ip");
        let text = j.to_string();
        for want in [
            r#""fib":{"flags":["daddr"],"result":"type"}"#,
            r#""right":"@tcp_ports""#,
            r#""dnat":{"addr":"198.18.0.2"}"#,
            r#""masquerade":null"#,
            r#""right":"vxnet0""#,
            r#""op":"!=""#,
            r#""prefix":{"addr":"198.18.0.0","len":16}"#,
            r#""hook":"prerouting""#,
            r#""prio":-100"#,
            r#""hook":"output""#,
            r#""right":"lo""#,
            r#""prefix":{"addr":"127.0.0.0","len":8}"#,
            r#""hook":"forward""#,
            r#""type":"filter""#,
            r#""ct":{"key":"state"}"#,
            r#""right":"new""#,
            r#""drop":null"#,
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
        // No rule anywhere but in vxnet's own table.
        for c in cmds {
            if let Some(r) = c["add"].get("rule") {
                assert_eq!(r["table"], "vxnet");
                assert_eq!(r["family"], "ip");
            }
        }
    }

    #[test]
    fn port_updates_flush_and_refill_both_sets() {
        let j = serde_json::to_value(set_ports(&ports(&[8080], &[]))).unwrap();
        let cmds = j["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 3, "{j}");
        assert_eq!(cmds[0]["flush"]["set"]["name"], "tcp_ports");
        assert_eq!(cmds[1]["add"]["element"]["elem"][0], 8080);
        assert_eq!(cmds[2]["flush"]["set"]["name"], "udp_ports");
    }

    #[test]
    fn a_listing_is_read_back() {
        // What `nft -j list table ip vxnet` prints (nftables 1.0.6).
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
          {"table": {"family": "ip", "name": "vxnet", "handle": 1}},
          {"set": {"family": "ip", "name": "tcp_ports", "table": "vxnet", "type": "inet_service", "handle": 1, "elem": [80, 8080]}},
          {"set": {"family": "ip", "name": "udp_ports", "table": "vxnet", "type": "inet_service", "handle": 2}},
          {"chain": {"family": "ip", "table": "vxnet", "name": "prerouting", "handle": 3, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
          {"chain": {"family": "ip", "table": "vxnet", "name": "postrouting", "handle": 4, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
          {"chain": {"family": "ip", "table": "vxnet", "name": "output", "handle": 5, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}},
          {"chain": {"family": "ip", "table": "vxnet", "name": "forward", "handle": 6, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}]}"#;
        let n: Nftables = serde_json::from_str(listing).unwrap();
        let o = observe(&n);
        assert!(o.complete);
        assert_eq!(o.ports, ports(&[80, 8080], &[]));
        // A table someone stripped of a chain is not complete.
        let partial = listing.replace(r#""name": "postrouting""#, r#""name": "other""#);
        let n: Nftables = serde_json::from_str(&partial).unwrap();
        assert!(!observe(&n).complete);
    }
}
