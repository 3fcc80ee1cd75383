//! Rendering of API results: aligned tables (like `docker network ls`) or
//! JSON exactly as the dataplane sent it.

use clap::ValueEnum;
use std::fmt::Write as _;
use vxnet_api::dp::{
    ConntrackReport, EndpointInfo, FdbEntry, NetworkInfo, SaEntry, ServiceInfo, ShowReport,
    StatsReport, VtepInfo,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The dataplane's JSON answer, pretty-printed, for scripts.
    Json,
}

/// Columns separated by at least three spaces, headers in capitals.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        const GAP: usize = 3;
        let ncols = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate().take(ncols) {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                if i + 1 < ncols {
                    let pad = w - cell.chars().count() + GAP;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        return "-".into();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub fn endpoints(list: &[EndpointInfo]) -> String {
    let mut t = Table::new(&[
        "ID", "VNI", "MAC", "IPS", "MTU", "KIND", "LOCATION", "IFNAME", "TAP",
    ]);
    for e in list {
        t.row(vec![
            e.id.to_string(),
            e.vni.to_string(),
            e.mac.to_string(),
            join(&e.ips),
            mtu_cell(e),
            e.kind.to_string(),
            e.location.clone(),
            e.ifname.clone(),
            e.tap.clone(),
        ]);
    }
    t.render()
}

/// The MTU, and what the path carries when that is less (the underlay's
/// MTU shrank after the attach).
fn mtu_cell(e: &EndpointInfo) -> String {
    if e.path_mtu != 0 && e.path_mtu < e.mtu {
        format!("{} (path {})", e.mtu, e.path_mtu)
    } else {
        e.mtu.to_string()
    }
}

pub fn fdb(list: &[FdbEntry]) -> String {
    let mut t = Table::new(&["VNI", "MAC", "IPS", "KIND", "DEST"]);
    for e in list {
        t.row(vec![
            e.vni.to_string(),
            e.mac.map_or_else(|| "flood".into(), |m| m.to_string()),
            join(&e.ips),
            e.kind.to_string(),
            match (e.endpoint, e.vtep) {
                (Some(id), _) => format!("endpoint {id}"),
                (None, Some(v)) => v.to_string(),
                (None, None) => "-".into(),
            },
        ]);
    }
    t.render()
}

pub fn networks(list: &[NetworkInfo]) -> String {
    let mut t = Table::new(&[
        "VNI",
        "ENCRYPTED",
        "MTU",
        "ENDPOINTS",
        "PEERS",
        "GATEWAYS",
        "EGRESS",
        "FLOOD",
        "FLOODED",
        "RATE LIMITED",
        "KEPT LOCAL",
    ]);
    for n in list {
        let gateways: Vec<String> = n.gateways.iter().map(ToString::to_string).collect();
        t.row(vec![
            n.vni.to_string(),
            if n.encrypted { "yes" } else { "no" }.into(),
            n.mtu.to_string(),
            n.endpoints.to_string(),
            n.peers.to_string(),
            if gateways.is_empty() {
                "-".into()
            } else {
                gateways.join(",")
            },
            match (n.egress, n.ingress) {
                (_, true) => "ingress".into(),
                (true, false) => "yes".into(),
                (false, false) => "no".into(),
            },
            if n.flood {
                format!("{}/s", n.flood_rate)
            } else {
                "off".into()
            },
            n.flooding.frames.to_string(),
            n.flooding.rate_limited.to_string(),
            n.flooding.suppressed.to_string(),
        ]);
    }
    t.render()
}

pub fn vteps(list: &[VtepInfo]) -> String {
    let mut t = Table::new(&[
        "VTEP",
        "PUBLIC KEY",
        "ESTABLISHED",
        "GENERATION",
        "ROTATING",
    ]);
    for v in list {
        t.row(vec![
            v.vtep.to_string(),
            v.pubkey.to_string(),
            if v.established { "yes" } else { "no" }.into(),
            v.generation.to_string(),
            if v.rotating { "yes" } else { "no" }.into(),
        ]);
    }
    t.render()
}

pub fn sas(list: &[SaEntry]) -> String {
    let with_keys = list.iter().any(|s| s.key.is_some());
    let mut headers = vec![
        "SPI", "DIR", "PEER", "VNI", "GEN", "PACKETS", "AGE", "STATE",
    ];
    if with_keys {
        headers.extend(["KEY", "SALT"]);
    }
    let mut t = Table::new(&headers);
    for s in list {
        let mut row = vec![
            s.spi.clone(),
            match s.direction {
                vxnet_api::dp::SaDirection::In => "in".into(),
                vxnet_api::dp::SaDirection::Out => "out".into(),
            },
            s.peer.to_string(),
            s.vni.to_string(),
            s.generation.to_string(),
            s.packets.to_string(),
            format!("{:.0}s", s.age_secs),
            match s.state {
                vxnet_api::dp::SaState::Active => "active".into(),
                vxnet_api::dp::SaState::Standby => "standby".into(),
            },
        ];
        if with_keys {
            row.push(s.key.clone().unwrap_or_default());
            row.push(s.salt.clone().unwrap_or_default());
        }
        t.row(row);
    }
    t.render()
}

/// One row per backend (a service without backends gets one row of `-`).
pub fn services(list: &[ServiceInfo]) -> String {
    let mut t = Table::new(&["VNI", "VIP", "VIP MAC", "BACKEND", "BACKEND MAC", "FLOWS"]);
    for s in list {
        let head = [s.vni.to_string(), s.vip.to_string(), s.mac.to_string()];
        if s.backends.is_empty() {
            t.row(
                head.iter()
                    .cloned()
                    .chain(["-".into(), "-".into(), "0".into()])
                    .collect(),
            );
        }
        for b in &s.backends {
            let cells = [b.ip.to_string(), b.mac.to_string(), b.flows.to_string()];
            t.row(head.iter().cloned().chain(cells).collect());
        }
    }
    t.render()
}

/// Durations as people read them: 42s, 7m, 3h, 2d.
fn ago(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub fn conntrack(r: &ConntrackReport) -> String {
    let mut t = Table::new(&[
        "VNI", "PROTO", "CLIENT", "VIP", "BACKEND", "STATE", "AGE", "IDLE", "EXPIRES", "PACKETS",
    ]);
    let addr = |ip: std::net::IpAddr, port: u16| std::net::SocketAddr::new(ip, port).to_string();
    for e in &r.entries {
        t.row(vec![
            e.vni.to_string(),
            e.proto.to_string(),
            addr(e.client, e.client_port),
            addr(e.vip, e.port),
            addr(
                e.backend,
                if e.backend_port == 0 {
                    e.port
                } else {
                    e.backend_port
                },
            ),
            e.state.to_string(),
            ago(e.age_secs),
            ago(e.idle_secs),
            ago(e.expires_secs),
            format!("{}/{}", e.packets_out, e.packets_in),
        ]);
    }
    let mut out = t.render();
    if r.entries.len() < r.total {
        out.push_str(&format!(
            "({} of {} flows shown; --limit shows more)\n",
            r.entries.len(),
            r.total
        ));
    }
    out
}

pub fn host_link(h: &vxnet_api::dp::HostLinkInfo) -> String {
    let mut out = String::new();
    let ingress = h
        .ingress
        .map_or_else(|| "-".to_string(), |i| format!("{} on VNI {}", i.ip, i.vni));
    let rows = [
        ("interface", h.ifname.clone()),
        ("subnet", h.subnet.to_string()),
        ("host address", h.host_ip.to_string()),
        ("mesh address", h.mesh_ip.to_string()),
        ("MAC", h.mac.to_string()),
        ("MTU", h.mtu.to_string()),
        ("ingress endpoint", ingress),
        (
            "firewall",
            match (&h.firewall_error, h.firewall_ok) {
                (Some(e), _) => e.clone(),
                (None, true) => "table ip vxnet in place".into(),
                (None, false) => "table ip vxnet missing or incomplete".into(),
            },
        ),
        ("egress addresses", h.egress_addresses.to_string()),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<18}{v}");
    }
    out
}

pub fn ports(list: &[vxnet_api::dp::PortInfo]) -> String {
    let mut t = Table::new(&["PORT", "TARGET", "VNI", "TO", "FIREWALL"]);
    for p in list {
        let to = match &p.to {
            vxnet_api::dp::PortTo::Vip(v) => format!("VIP {v}"),
            vxnet_api::dp::PortTo::Backends(b) => b
                .iter()
                .map(|b| b.ip.to_string())
                .collect::<Vec<_>>()
                .join(","),
        };
        t.row(vec![
            format!("{}/{}", p.published, p.protocol),
            p.target.to_string(),
            p.vni.to_string(),
            to,
            if p.in_firewall { "yes" } else { "MISSING" }.into(),
        ]);
    }
    t.render()
}

pub fn show(r: &ShowReport) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let rows = [
        ("Version", r.version.clone()),
        ("Local VTEP", r.local_vtep.to_string()),
        ("VXLAN port", r.port.to_string()),
        ("Workers", r.workers.to_string()),
        ("Poll mode", r.poll.to_string()),
        ("UDP GSO", yes_no(r.gso)),
        ("UDP GRO", yes_no(r.gro)),
        ("Endpoints", r.endpoints.to_string()),
        ("VNIs", r.vnis.to_string()),
        ("Public key", r.public_key.to_string()),
        ("Underlay MTU", r.underlay_mtu.to_string()),
        (
            "Flood rate",
            format!("{} frames/s per network", r.flood_rate),
        ),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{:<width$}   {v}", format!("{k}:"), width = width + 1);
    }
    out
}

/// Counters then drops grouped by stage; zeros hidden unless `all`.
pub fn stats(r: &StatsReport, all: bool) -> String {
    let mut out = format!("Workers: {}\n\n", r.workers);
    let mut t = Table::new(&["COUNTER", "VALUE", "DESCRIPTION"]);
    for c in r.counters.iter().filter(|c| all || c.value != 0) {
        t.row(vec![c.name.clone(), c.value.to_string(), c.help.clone()]);
    }
    if t.is_empty() {
        out.push_str("All counters are zero (--all lists them).\n");
    } else {
        out.push_str(&t.render());
    }
    out.push('\n');

    // Group by stage in the order stages first appear, keeping the
    // dataplane's order of reasons within a stage.
    let mut stages: Vec<&str> = Vec::new();
    for d in &r.drops {
        if !stages.contains(&d.stage.as_str()) {
            stages.push(&d.stage);
        }
    }
    let mut t = Table::new(&["STAGE", "REASON", "DROPPED", "DESCRIPTION"]);
    for stage in stages {
        for d in &r.drops {
            if d.stage == stage && (all || d.count != 0) {
                t.row(vec![
                    d.stage.clone(),
                    d.reason.clone(),
                    d.count.to_string(),
                    d.help.clone(),
                ]);
            }
        }
    }
    if t.is_empty() {
        out.push_str("No drops.\n");
    } else {
        out.push_str(&t.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vxnet_api::{IpNet, MacAddr, Vni};

    #[test]
    fn table_aligns_columns_docker_style() {
        let mut t = Table::new(&["ID", "NAME", "DRIVER"]);
        t.row(vec!["1".into(), "overlay-long-name".into(), "vxlan".into()]);
        t.row(vec!["123".into(), "x".into(), "".into()]);
        assert_eq!(
            t.render(),
            "ID    NAME                DRIVER\n\
             1     overlay-long-name   vxlan\n\
             123   x\n"
        );
    }

    #[test]
    fn service_and_conntrack_tables() {
        let vni = Vni::new(4096).unwrap();
        let mac = |s: &str| s.parse::<MacAddr>().unwrap();
        let list = [
            ServiceInfo {
                vni,
                vip: "10.0.0.100".parse().unwrap(),
                mac: mac("06:56:0a:00:00:64"),
                table_size: 16381,
                owner: vxnet_api::dp::Owner::User,
                backends: vec![vxnet_api::dp::BackendInfo {
                    ip: "10.0.0.2".parse().unwrap(),
                    mac: mac("02:42:0a:00:00:02"),
                    flows: 3,
                }],
            },
            ServiceInfo {
                vni,
                vip: "10.0.0.101".parse().unwrap(),
                mac: mac("06:56:0a:00:00:65"),
                table_size: 16381,
                owner: vxnet_api::dp::Owner::Control,
                backends: vec![],
            },
        ];
        let s = services(&list);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 3, "{s}");
        let cells = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        let want = |c: [&str; 6]| c.map(String::from).to_vec();
        assert_eq!(
            cells(lines[1]),
            want([
                "4096",
                "10.0.0.100",
                "06:56:0a:00:00:64",
                "10.0.0.2",
                "02:42:0a:00:00:02",
                "3"
            ])
        );
        assert_eq!(
            cells(lines[2]),
            want(["4096", "10.0.0.101", "06:56:0a:00:00:65", "-", "-", "0"])
        );
        let r = ConntrackReport {
            total: 2,
            entries: vec![vxnet_api::dp::ConntrackEntry {
                vni,
                kind: vxnet_api::dp::FlowKind::Vip,
                proto: vxnet_api::dp::FlowProto::Tcp,
                client: "fd00::2".parse().unwrap(),
                client_port: 40000,
                vip: "fd00::100".parse().unwrap(),
                port: 80,
                backend: "fd00::3".parse().unwrap(),
                backend_port: 80,
                state: vxnet_api::dp::FlowState::Established,
                age_secs: 7300.0,
                idle_secs: 3.5,
                expires_secs: 86_000.0,
                packets_out: 5,
                packets_in: 4,
            }],
        };
        let c = conntrack(&r);
        let row = c.lines().nth(1).map(cells).unwrap_or_default();
        assert_eq!(
            row[2..],
            [
                "[fd00::2]:40000",
                "[fd00::100]:80",
                "[fd00::3]:80",
                "established",
                "2h",
                "3s",
                "23h",
                "5/4"
            ]
        );
        assert!(
            c.ends_with("(1 of 2 flows shown; --limit shows more)\n"),
            "{c}"
        );
    }

    #[test]
    fn empty_table_prints_headers() {
        assert_eq!(fdb(&[]), "VNI   MAC   IPS   KIND   DEST\n");
    }

    #[test]
    fn endpoint_table() {
        let e = EndpointInfo {
            id: 7,
            vni: Vni::new(4096).unwrap(),
            mac: "02:42:0a:00:00:02".parse::<MacAddr>().unwrap(),
            ips: vec![
                "10.0.0.2/24".parse::<IpNet>().unwrap(),
                "fd00::2/64".parse().unwrap(),
            ],
            mtu: 1450,
            ifname: "eth0".into(),
            location: "ns1".into(),
            kind: vxnet_api::dp::EndpointKind::Native,
            tap: "vx7".into(),
            gateways: vec![],
            path_mtu: 1450,
            owner: vxnet_api::dp::Owner::User,
        };
        let shrunk = EndpointInfo {
            path_mtu: 1350,
            ..e.clone()
        };
        assert!(endpoints(&[shrunk]).contains("1450 (path 1350)"));
        let s = endpoints(&[e]);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID   VNI    MAC "), "{s}");
        assert!(
            lines[1].contains("02:42:0a:00:00:02   10.0.0.2/24,fd00::2/64   1450"),
            "{s}"
        );
        // Columns line up: every header starts where its values start.
        let col = lines[0].find("IPS").unwrap();
        assert_eq!(&lines[1][col..col + 11], "10.0.0.2/24");
    }

    fn counter(name: &str, value: u64, help: &str) -> vxnet_api::dp::CounterValue {
        vxnet_api::dp::CounterValue {
            name: name.into(),
            value,
            help: help.into(),
        }
    }

    fn drop(stage: &str, reason: &str, count: u64) -> vxnet_api::dp::DropCount {
        vxnet_api::dp::DropCount {
            stage: stage.into(),
            reason: reason.into(),
            count,
            help: String::new(),
        }
    }

    fn report() -> StatsReport {
        StatsReport {
            workers: 2,
            counters: vec![
                counter("tap_rx_frames", 42, "frames read from TAPs"),
                counter("tap_rx_bytes", 0, ""),
            ],
            drops: vec![
                drop("tap", "runt", 0),
                drop("tap", "too_big", 3),
                drop("wire", "unknown_vni", 7),
                drop("wire", "runt", 0),
            ],
        }
    }

    #[test]
    fn stats_hide_zeros_unless_all() {
        let s = stats(&report(), false);
        assert!(s.starts_with("Workers: 2\n"));
        assert!(
            s.contains("tap_rx_frames   42      frames read from TAPs\n"),
            "{s}"
        );
        assert!(!s.contains("tap_rx_bytes"));
        assert!(s.contains("tap     too_big       3"), "{s}");
        assert!(s.contains("wire    unknown_vni   7"), "{s}");
        assert!(!s.contains("runt"));
        let all = stats(&report(), true);
        assert!(all.contains("tap_rx_bytes"));
        // Grouped by stage: both tap rows before the wire rows.
        let runt_tap = all.find("tap     runt").unwrap();
        let too_big = all.find("tap     too_big").unwrap();
        let wire = all.find("wire    unknown_vni").unwrap();
        assert!(runt_tap < too_big && too_big < wire, "{all}");
    }

    #[test]
    fn stats_all_zero() {
        let r = StatsReport {
            workers: 1,
            counters: vec![counter("tap_rx_frames", 0, "")],
            drops: vec![drop("tap", "runt", 0)],
        };
        let s = stats(&r, false);
        assert!(s.contains("All counters are zero"));
        assert!(s.contains("No drops."));
    }

    #[test]
    fn show_is_key_value() {
        let r = ShowReport {
            version: "0.1.0".into(),
            instance: 1,
            local_vtep: "192.0.2.1".parse().unwrap(),
            port: 4789,
            workers: 2,
            poll: vxnet_api::dp::PollMode::Busy,
            gso: true,
            gro: false,
            endpoints: 3,
            vnis: 1,
            public_key: vxnet_api::PublicKey::from_bytes([0; 32]),
            underlay_mtu: 1400,
            flood_rate: 1000,
        };
        let s = show(&r);
        assert!(s.contains("Underlay MTU:   1400\n"), "{s}");
        assert!(s.contains("Local VTEP:     192.0.2.1\n"), "{s}");
        assert!(s.contains("UDP GSO:        yes\n"), "{s}");
        assert!(
            s.contains("Public key:     AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"),
            "{s}"
        );
    }
}
