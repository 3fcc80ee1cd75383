//! The name table the embedded DNS server answers from: an immutable
//! snapshot the control plane builds from desired state and swaps whole
//! (`Arc<DnsRecords>`) on every change, so a query sees one consistent
//! table and a removed name is gone from the next query on.
//!
//! Input is flat, one [`DnsEntry`] per `(network, name, ip, kind)`, the way
//! libnetwork's `addSvcRecords` registers them; [`DnsRecords::new`] indexes
//! them by name, then by network, so a lookup costs one hash probe plus a
//! scan of the few networks that name is on.
use std::collections::HashMap;
use std::net::IpAddr;

/// What an entry's name means, which decides how it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A container's own name: a standalone container's `--name`, or a
    /// task's container name `SERVICE.SLOT.TASKID` (Docker's). Answers
    /// A/AAAA for the name, and PTR for the address (Docker's reverse
    /// record).
    Container,
    /// Another name of one container: `--network-alias`, its short ID or
    /// hostname (Docker adds both on user-defined networks). A/AAAA only.
    Alias,
    /// `name` is a service name, or one of a service's `--network-alias`
    /// names, and `ip` the service's virtual IP on this network. In VIP
    /// mode the service name answers its VIP.
    ServiceVip,
    /// `name` is a service name (or service alias) and `ip` one running
    /// task's address on this network. `tasks.NAME` always answers these;
    /// `NAME` answers them when the service has no VIP on the network
    /// (DNSRR mode), as libnetwork's `addServiceBinding` does.
    ServiceTask,
}

/// One record of the desired state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DnsEntry {
    /// The network's ID (as in [`crate::model::Network`]); answers are only
    /// given to askers on this network.
    pub network: String,
    /// The name, matched case-insensitively; a trailing dot is ignored.
    pub name: String,
    pub ip: IpAddr,
    pub kind: EntryKind,
}

/// The addresses one name has on one network, by role.
#[derive(Debug, Default)]
struct NameSet {
    /// `Container` and `Alias` entries, in insertion order, deduplicated.
    hosts: Vec<IpAddr>,
    vips: Vec<IpAddr>,
    tasks: Vec<IpAddr>,
}

impl NameSet {
    /// What the bare name answers: its hosts, plus the VIPs in VIP mode
    /// or the task addresses when there is no VIP (DNSRR).
    fn plain(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let service = if self.vips.is_empty() {
            &self.tasks
        } else {
            &self.vips
        };
        self.hosts.iter().chain(service).copied()
    }
}

/// Index of a network in [`DnsRecords::networks`].
type NetIdx = u32;

#[derive(Debug)]
struct NetworkInfo {
    /// Lower-cased network name, if the control plane gave one.
    name: Option<String>,
}

/// The immutable name table. Build it with [`DnsRecords::new`] (or
/// [`DnsRecords::builder`]) and hand it to the server as an `Arc`.
///
/// Scoping follows Docker: an asker sees a name only on the networks it
/// is attached to; the first of its networks (in the order the asker's
/// list gives) that has addresses of the asked family answers, and
/// answers are never merged across networks (libnetwork
/// `Sandbox.ResolveName`).
#[derive(Debug, Default)]
pub struct DnsRecords {
    networks: Vec<NetworkInfo>,
    net_by_id: HashMap<String, NetIdx>,
    /// Lower-cased network name → networks with that name.
    net_by_name: HashMap<String, Vec<NetIdx>>,
    /// Lower-cased name without trailing dot → the networks it is on.
    names: HashMap<String, Vec<(NetIdx, NameSet)>>,
    /// Container address → (network, container name), for PTR.
    reverse: HashMap<IpAddr, Vec<(NetIdx, String)>>,
    entries: usize,
}

/// Collects entries and network names; [`DnsRecordsBuilder::build`]
/// indexes them.
#[derive(Debug, Default)]
pub struct DnsRecordsBuilder {
    entries: Vec<DnsEntry>,
    network_names: Vec<(String, String)>,
}

impl DnsRecordsBuilder {
    /// Adds one entry (see [`EntryKind`] for what each kind answers).
    pub fn entry(
        &mut self,
        network: impl Into<String>,
        name: impl Into<String>,
        ip: IpAddr,
        kind: EntryKind,
    ) -> &mut Self {
        self.entries.push(DnsEntry {
            network: network.into(),
            name: name.into(),
            ip,
            kind,
        });
        self
    }

    /// Names network `id` `name`. Optional; with it, `NAME.NETWORK`
    /// resolves `NAME` on that network only, and PTR answers are
    /// `CONTAINER.NETWORK.`, both as Docker does.
    pub fn network_name(&mut self, id: impl Into<String>, name: impl Into<String>) -> &mut Self {
        self.network_names.push((id.into(), name.into()));
        self
    }

    pub fn build(&self) -> DnsRecords {
        DnsRecords::new(
            self.entries.iter().cloned(),
            self.network_names.iter().cloned(),
        )
    }
}

/// A DNS name as we key it: ASCII lower case, without the trailing dot.
pub(crate) fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn push_unique(v: &mut Vec<IpAddr>, ip: IpAddr) {
    if !v.contains(&ip) {
        v.push(ip);
    }
}

impl DnsRecords {
    pub fn builder() -> DnsRecordsBuilder {
        DnsRecordsBuilder::default()
    }

    /// Indexes `entries`; `network_names` are `(network id, name)` pairs
    /// (see [`DnsRecordsBuilder::network_name`]). Entries with an empty
    /// name are ignored; duplicates are harmless.
    pub fn new(
        entries: impl IntoIterator<Item = DnsEntry>,
        network_names: impl IntoIterator<Item = (String, String)>,
    ) -> DnsRecords {
        let mut r = DnsRecords::default();
        for (id, name) in network_names {
            let idx = r.network(&id);
            let name = normalize(&name);
            if !name.is_empty() && r.networks[idx as usize].name.is_none() {
                r.networks[idx as usize].name = Some(name.clone());
                r.net_by_name.entry(name).or_default().push(idx);
            }
        }
        for e in entries {
            let name = normalize(&e.name);
            if name.is_empty() {
                continue;
            }
            let net = r.network(&e.network);
            let sets = r.names.entry(name.clone()).or_default();
            let set = match sets.iter().position(|(n, _)| *n == net) {
                Some(i) => &mut sets[i].1,
                None => {
                    sets.push((net, NameSet::default()));
                    &mut sets.last_mut().expect("just pushed").1
                }
            };
            match e.kind {
                EntryKind::Container | EntryKind::Alias => push_unique(&mut set.hosts, e.ip),
                EntryKind::ServiceVip => push_unique(&mut set.vips, e.ip),
                EntryKind::ServiceTask => push_unique(&mut set.tasks, e.ip),
            }
            if e.kind == EntryKind::Container {
                let names = r.reverse.entry(e.ip).or_default();
                if !names.iter().any(|(n, s)| *n == net && *s == name) {
                    names.push((net, name));
                }
            }
            r.entries += 1;
        }
        r
    }

    fn network(&mut self, id: &str) -> NetIdx {
        if let Some(&i) = self.net_by_id.get(id) {
            return i;
        }
        let i = NetIdx::try_from(self.networks.len()).unwrap_or(NetIdx::MAX);
        self.networks.push(NetworkInfo { name: None });
        self.net_by_id.insert(id.to_owned(), i);
        i
    }

    /// How many entries went in (for logs and metrics).
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The asker's networks as indices, in the asker's order; unknown
    /// network IDs (nothing registered on them) are skipped.
    pub(crate) fn asker_networks(&self, ids: &[String]) -> Vec<NetIdx> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(&i) = self.net_by_id.get(id.as_str())
                && !out.contains(&i)
            {
                out.push(i);
            }
        }
        out
    }

    /// The addresses `name` (normalized) has on network `net`, or `None`
    /// when the name is not on that network. `tasks.NAME` answers the
    /// task addresses of service `NAME`; a name registered literally as
    /// `tasks.…` is answered too (Docker keeps both in one map).
    fn on_network(&self, name: &str, net: NetIdx) -> Option<Vec<IpAddr>> {
        let mut found = false;
        let mut out = Vec::new();
        if let Some(set) = self.set(name, net) {
            found = true;
            out.extend(set.plain());
        }
        if let Some(service) = name.strip_prefix("tasks.")
            && let Some(set) = self.set(service, net)
            && !set.tasks.is_empty()
        {
            found = true;
            for ip in &set.tasks {
                push_unique(&mut out, *ip);
            }
        }
        found.then_some(out)
    }

    fn set(&self, name: &str, net: NetIdx) -> Option<&NameSet> {
        self.names
            .get(name)?
            .iter()
            .find(|(n, _)| *n == net)
            .map(|(_, s)| s)
    }

    /// Resolves `name` (normalized) for an asker on `nets`: `None` if the
    /// name is on none of them (so not ours to answer), else the
    /// addresses of the first network that has any matching `want`
    /// (empty when the name exists there without such addresses: NODATA).
    ///
    /// Docker's `NAME.NETWORK` form is tried after the full name: for
    /// `a.b.c`, `a.b` on the asker's network named `c`, then `a` on `b.c`.
    pub(crate) fn resolve(
        &self,
        name: &str,
        nets: &[NetIdx],
        want: impl Fn(&IpAddr) -> bool,
    ) -> Option<Vec<IpAddr>> {
        if let Some(found) = self.resolve_on(name, nets, &want) {
            return Some(found);
        }
        let mut rest = name;
        while let Some(dot) = rest.rfind('.') {
            let (prefix, network) = (&name[..dot], &name[dot + 1..]);
            rest = prefix;
            let Some(named) = self.net_by_name.get(network) else {
                continue;
            };
            let on: Vec<NetIdx> = nets.iter().copied().filter(|n| named.contains(n)).collect();
            if let Some(found) = self.resolve_on(prefix, &on, &want) {
                return Some(found);
            }
        }
        None
    }

    fn resolve_on(
        &self,
        name: &str,
        nets: &[NetIdx],
        want: &impl Fn(&IpAddr) -> bool,
    ) -> Option<Vec<IpAddr>> {
        let mut exists = false;
        for &net in nets {
            if let Some(ips) = self.on_network(name, net) {
                exists = true;
                let ips: Vec<IpAddr> = ips.into_iter().filter(|ip| want(ip)).collect();
                if !ips.is_empty() {
                    return Some(ips);
                }
            }
        }
        exists.then(Vec::new)
    }

    /// The PTR target for `ip` seen from `nets`: `CONTAINER.NETWORK` when
    /// the network has a name, else `CONTAINER` (no trailing dot). Only
    /// [`EntryKind::Container`] entries have one; the first of the
    /// asker's networks that knows the address answers.
    pub(crate) fn reverse(&self, ip: IpAddr, nets: &[NetIdx]) -> Option<String> {
        let names = self.reverse.get(&ip)?;
        nets.iter().find_map(|net| {
            let (_, name) = names.iter().find(|(n, _)| n == net)?;
            Some(match &self.networks[*net as usize].name {
                Some(network) => format!("{name}.{network}"),
                None => name.clone(),
            })
        })
    }
}
