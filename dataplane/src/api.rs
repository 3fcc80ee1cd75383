//! The dataplane's local API: newline-delimited JSON over a Unix socket.
//!
//! One request per line, one response per line. Requests come from the CLI
//! and (later) from `vxnet-control`; both are untrusted input: every field is
//! validated before anything changes, and a refused request changes nothing.
//!
//! ```text
//! -> {"op":"peer_add","vni":4096,"mac":"02:42:0a:00:00:03","ip":"10.0.0.3","vtep":"192.0.2.2"}
//! <- {"ok":true,"result":null}
//! <- {"ok":false,"error":"VNI 0 is outside 1..=16777215"}
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use vxnet_proto::wire::{MacAddr, Vni};

/// Default path of the API socket.
pub const DEFAULT_SOCKET: &str = "/run/vxnet/dataplane.sock";
/// Longest request line the server reads; longer ones are refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// An interface address with its prefix length, `ADDR/PLEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| {
            format!("'{s}' needs a prefix length, like 10.0.0.2/24 or fd00::2/64")
        })?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("'{a}' is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("prefix length '{p}' must be a number from 0 to {max}"))?;
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl TryFrom<String> for IpNet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<IpNet> for String {
    fn from(n: IpNet) -> String {
        n.to_string()
    }
}

/// Where an endpoint's frames enter the dataplane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachTarget {
    /// Native attach: a TAP created inside this network namespace (a name
    /// under /run/netns or a path such as /proc/PID/ns/net).
    Netns(String),
    /// Sidecar attach: this existing host-side veth is enslaved to the
    /// network's bridge, which also holds the dataplane's TAP.
    Veth(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    pub target: AttachTarget,
    pub vni: Vni,
    /// One or more addresses (IPv4 and/or IPv6).
    pub ips: Vec<IpNet>,
    /// Defaults to one derived from the first address (02:42:...).
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Defaults to 1450 (1500 minus VXLAN overhead).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Default routes to install, one per address family at most.
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    /// Interface name inside the namespace; defaults to eth0.
    #[serde(default)]
    pub ifname: Option<String>,
}

/// Which endpoints to detach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetachTarget {
    Id(u32),
    /// Every endpoint attached in this namespace (optionally one interface).
    Netns {
        netns: String,
        ifname: Option<String>,
    },
    Veth(String),
}

/// A remote endpoint: `mac`/`ip` live behind `vtep`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub vni: Vni,
    pub mac: MacAddr,
    /// Overlay addresses of the endpoint (answered by the ARP/ND proxy).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    pub vtep: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Attach(AttachRequest),
    Detach {
        target: DetachTarget,
    },
    PeerAdd(Peer),
    PeerDel {
        vni: Vni,
        mac: MacAddr,
    },
    FloodAdd {
        vni: Vni,
        vtep: IpAddr,
    },
    FloodDel {
        vni: Vni,
        vtep: IpAddr,
    },
    Stats,
    Fdb {
        vni: Option<Vni>,
    },
    Endpoints,
    Show,
    /// Declares a network (VNI) and whether its traffic must be encrypted.
    NetworkAdd {
        vni: Vni,
        #[serde(default)]
        encrypted: bool,
    },
    NetworkDel {
        vni: Vni,
    },
    Networks,
    /// Tells the dataplane another host's X25519 public key (static mode).
    VtepAdd {
        vtep: IpAddr,
        pubkey: String,
    },
    VtepDel {
        vtep: IpAddr,
    },
    Vteps,
    /// Starts a key rotation with one host, or with all.
    Rekey {
        vtep: Option<IpAddr>,
    },
    /// Lists SAs; keys only if the dataplane allows key export.
    Sa {
        #[serde(default)]
        show_keys: bool,
    },
    /// Creates the service with VIP `vip` on `vni`, or replaces its whole
    /// backend set at once (an empty set refuses new connections).
    ServiceSet(ServiceSpec),
    /// Removes a service; its flows end.
    ServiceDel {
        vni: Vni,
        vip: IpAddr,
    },
    /// Lists services with their backends and flows per backend.
    Services {
        #[serde(default)]
        vni: Option<Vni>,
    },
    /// Lists tracked flows to VIPs (at most `limit`, default 1000).
    Conntrack {
        #[serde(default)]
        vni: Option<Vni>,
        #[serde(default)]
        limit: Option<usize>,
    },
}

/// One backend of a service: a task's overlay address, and its MAC. Without
/// a MAC, the MAC the forwarding table knows for the address is used (the
/// endpoint or peer must be programmed first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub ip: IpAddr,
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

/// A service as `service_set` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub vni: Vni,
    pub vip: IpAddr,
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
}

/// A service as `vxnet dp services` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub vni: Vni,
    pub vip: IpAddr,
    /// The MAC the dataplane answers ARP/ND for the VIP with.
    pub mac: MacAddr,
    /// Entries of its Maglev table.
    pub table_size: u32,
    /// Backends, sorted by address (the order every host builds its table in).
    pub backends: Vec<BackendInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub ip: IpAddr,
    pub mac: MacAddr,
    /// Tracked flows to this backend through the VIP.
    pub flows: usize,
}

/// `vxnet dp conntrack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConntrackReport {
    /// Flows tracked (matching the filter), of which `entries` lists the
    /// first `limit`.
    pub total: usize,
    pub entries: Vec<ConntrackEntry>,
}

/// One tracked flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConntrackEntry {
    pub vni: Vni,
    /// "tcp" or "udp".
    pub proto: String,
    pub client: IpAddr,
    pub client_port: u16,
    pub vip: IpAddr,
    /// The destination port (the same on the backend: VIP mode keeps it).
    pub port: u16,
    pub backend: IpAddr,
    /// syn_sent, established, closing, closed (TCP); unreplied, replied,
    /// assured (UDP).
    pub state: String,
    pub age_secs: f64,
    pub idle_secs: f64,
    /// Seconds until it expires unless a packet comes.
    pub expires_secs: f64,
    /// Packets client → backend, and back.
    pub packets_out: u64,
    pub packets_in: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Response {
        match serde_json::to_value(result) {
            Ok(v) => Response {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Response::error(format!("internal error encoding the result: {e}")),
        }
    }

    pub fn error(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }
}

/// An attached endpoint as listed by `vxnet dp endpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub id: u32,
    pub vni: Vni,
    pub mac: MacAddr,
    pub ips: Vec<IpNet>,
    pub mtu: u32,
    /// Interface name inside the namespace (native) or the veth (sidecar).
    pub ifname: String,
    /// Namespace (native) or bridge (sidecar) it lives in.
    pub location: String,
    /// "native" or "sidecar".
    pub kind: String,
    /// The dataplane's TAP for it.
    pub tap: String,
}

/// One forwarding entry as listed by `vxnet dp fdb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntry {
    pub vni: Vni,
    /// A MAC, or "flood" for a default VTEP.
    pub mac: String,
    pub ips: Vec<IpAddr>,
    /// "local" or "remote" or "flood".
    pub kind: String,
    /// Endpoint id (local) or VTEP address (remote, flood).
    pub dest: String,
}

/// `vxnet dp stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub workers: usize,
    /// Counter name -> value, in a fixed order.
    pub counters: Vec<(String, u64)>,
    /// (stage, reason, count) for every drop reason.
    pub drops: Vec<(String, String, u64)>,
}

/// A declared network, as listed by `vxnet dp network ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub vni: Vni,
    pub encrypted: bool,
    /// Local endpoints on it.
    pub endpoints: usize,
    /// Remote endpoints known on it.
    pub peers: usize,
    /// Default MTU of endpoints attached to it.
    pub mtu: u32,
}

/// A host whose key this dataplane knows (`vxnet dp vtep ls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VtepInfo {
    pub vtep: IpAddr,
    pub pubkey: String,
    /// A handshake completed: encrypted traffic can flow.
    pub established: bool,
    pub generation: u32,
    /// A rotation is under way.
    pub rotating: bool,
}

/// One security association (`vxnet dp sa`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaEntry {
    /// SPI as 0x-prefixed hex, as dissectors show it.
    pub spi: String,
    /// "in" or "out".
    pub direction: String,
    /// The peer host's VTEP address.
    pub peer: IpAddr,
    pub vni: u32,
    pub generation: u32,
    pub packets: u64,
    pub age_secs: f64,
    /// "active", or "standby" (inbound in grace, outbound not yet used).
    pub state: String,
    /// Source and destination VTEP of the packets this SA protects.
    pub src: IpAddr,
    pub dst: IpAddr,
    /// AES-GCM key and salt in hex; only with `--show-keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
}

/// `vxnet dp show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShowReport {
    pub version: String,
    pub local_vtep: IpAddr,
    pub port: u16,
    pub workers: usize,
    pub poll: String,
    pub gso: bool,
    pub gro: bool,
    pub endpoints: usize,
    pub vnis: usize,
    /// The host's X25519 public key (base64), once encryption exists.
    #[serde(default)]
    pub public_key: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shape() {
        let r: Request = serde_json::from_str(
            r#"{"op":"peer_add","vni":4096,"mac":"02:42:0a:00:00:03","ips":["10.0.0.3"],"vtep":"192.0.2.2"}"#,
        )
        .unwrap();
        assert!(matches!(r, Request::PeerAdd(Peer { vni, .. }) if vni.get() == 4096));
        for bad in [
            r#"{"op":"peer_add","vni":0,"mac":"02:42:0a:00:00:03","vtep":"192.0.2.2"}"#,
            r#"{"op":"peer_add","vni":16777216,"mac":"02:42:0a:00:00:03","vtep":"192.0.2.2"}"#,
            r#"{"op":"peer_add","vni":5,"mac":"02:42:0a:00:00","vtep":"192.0.2.2"}"#,
            r#"{"op":"peer_add","vni":5,"mac":"02:42:0a:00:00:03","vtep":"192.0.2.300"}"#,
            r#"{"op":"nope"}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_requests() {
        let r: Request = serde_json::from_str(
            r#"{"op":"service_set","vni":4096,"vip":"10.0.0.100","backends":[{"ip":"10.0.0.2","mac":"02:42:0a:00:00:02"},{"ip":"10.0.0.3"}]}"#,
        )
        .unwrap();
        let Request::ServiceSet(s) = r else {
            panic!("{r:?}")
        };
        assert_eq!(s.backends.len(), 2);
        assert_eq!(s.backends[1].mac, None);
        let r: Request =
            serde_json::from_str(r#"{"op":"service_set","vni":4096,"vip":"fd00::100"}"#).unwrap();
        assert!(
            matches!(r, Request::ServiceSet(ServiceSpec { ref backends, .. }) if backends.is_empty())
        );
        assert!(matches!(
            serde_json::from_str::<Request>(r#"{"op":"conntrack"}"#).unwrap(),
            Request::Conntrack {
                vni: None,
                limit: None
            }
        ));
        for bad in [
            r#"{"op":"service_set","vni":4096,"vip":"10.0.0.300"}"#,
            r#"{"op":"service_set","vni":0,"vip":"10.0.0.1"}"#,
            r#"{"op":"service_set","vni":1,"vip":"10.0.0.1","backends":[{"ip":"10.0.0.2","mac":"zz"}]}"#,
            r#"{"op":"service_del","vni":1}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipnet_parse() {
        assert_eq!("10.0.0.2/24".parse::<IpNet>().unwrap().prefix, 24);
        assert_eq!(
            "fd00::2/64".parse::<IpNet>().unwrap().to_string(),
            "fd00::2/64"
        );
        for bad in [
            "10.0.0.2",
            "10.0.0.2/33",
            "fd00::/129",
            "x/1",
            "10.0.0.2/-1",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }
}
