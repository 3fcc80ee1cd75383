//! The embedded DNS server: every container and task namespace gets a
//! resolver at 127.0.0.11:53 (UDP and TCP) that answers swarm names,
//! scoped by the asker's networks, and forwards the rest to the host's
//! resolvers. Docker's is libnetwork's `resolver.go`; this one matches
//! its answers and fixes its forwarding (see [`upstream`]).
//!
//! # Layers
//! - [`records`] holds [`DnsRecords`], the immutable name table.
//! - [`answer`](mod@answer) is the sans-IO core: query bytes in, [`Decision`] out
//!   (reply, forward, drop). All the name logic is here.
//! - [`upstream`] forwards a [`Forward`] to the upstream resolvers.
//! - [`server`] has [`DnsServer`], the sockets in each namespace and their
//!   tasks on the daemon's tokio runtime.
//! - [`resolv_conf`](mod@resolv_conf) reads the host's upstreams and writes a
//!   container's resolv.conf.
//! - [`stats`] counts.
//!
//! # The seam with the daemon
//! ```no_run
//! # use std::sync::Arc;
//! # use vxnet_control::dns::*;
//! # let rt = tokio::runtime::Runtime::new().unwrap();
//! let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
//! let dns = DnsServer::start(rt.handle().clone(), DnsConfig::new(upstreams_from_resolv_conf(&host)));
//! // On every change of desired state: rebuild the table, swap it in.
//! let mut b = DnsRecords::builder();
//! b.network_name("n1", "test-net");
//! b.entry("n1", "alpine1", "10.0.1.2".parse().unwrap(), EntryKind::Container);
//! b.entry("n1", "web", "10.0.1.100".parse().unwrap(), EntryKind::ServiceVip);
//! b.entry("n1", "web", "10.0.1.3".parse().unwrap(), EntryKind::ServiceTask);
//! b.entry("n1", "web.1.x7k2a9", "10.0.1.3".parse().unwrap(), EntryKind::Container);
//! dns.set_records(Arc::new(b.build()));
//! // When a container's namespace is up (write resolv_conf(&host) into its
//! // /etc/resolv.conf), and again whenever its networks change:
//! dns.serve_netns("container-id", "vxnet-alpine1", vec!["n1".into()]).unwrap();
//! // When the container goes (the sockets keep its namespace alive until then):
//! dns.stop_netns("container-id");
//! let _ = dns.stats();
//! ```
//! What the daemon must put in the table, per network: each container's
//! name as [`EntryKind::Container`] and its `--network-alias` names (plus
//! its short ID and hostname, as Docker does) as [`EntryKind::Alias`];
//! for each service and each of its aliases, its VIP as
//! [`EntryKind::ServiceVip`] (VIP mode only) and each *running* task's
//! address as [`EntryKind::ServiceTask`]; each task's container name
//! `SERVICE.SLOT.TASKID` as [`EntryKind::Container`]. A service's
//! endpoint mode is carried by the entries: with a VIP entry on a network
//! the service name answers the VIP there, without one (DNSRR) its tasks.
//! Rebuild and [`DnsServer::set_records`] when a task stops running:
//! that is what removes it from answers, from the next query on.
//!
//! # Names answered (Docker behaviour matched)
//! - `SERVICE` (and each service alias): the VIP on the asker's network
//!   in VIP mode, the running tasks' addresses in DNSRR mode.
//! - `tasks.SERVICE`: the running tasks' addresses, in either mode.
//! - Container names, a task's container name `SERVICE.SLOT.TASKID`,
//!   container aliases. Docker does not resolve the bare task name
//!   `SERVICE.SLOT`, and neither does this server unless the daemon adds
//!   it as an alias.
//! - `NAME.NETWORK`: `NAME` on the asker's network called `NETWORK`
//!   (libnetwork `Sandbox.ResolveName`), when the daemon names networks
//!   with [`DnsRecordsBuilder::network_name`].
//! - PTR for a container's address: `CONTAINER.NETWORK.` (libnetwork
//!   `Network.ResolveIP`); service VIPs have none, as in Docker.
//! - A, AAAA and ANY; any other type of a known name is NODATA (Docker
//!   forwards some of those, so an upstream could answer for our name).
//! - Multiple addresses are shuffled on every answer; TTL [`TTL`] (600 s).
//! - Names match case-insensitively, with or without the trailing dot.
//!
//! Scoping: the asker is the container whose namespace the query arrived
//! in; it sees only names on its own networks, and the first of its
//! networks with addresses of the asked family answers. A name that
//! exists only on other networks is not ours for this asker: it is
//! forwarded like any unknown name, so upstream says NXDOMAIN.
//!
//! # Forwarding
//! Names that are not ours go to the host's resolvers (at most
//! [`MAX_UPSTREAMS`], from its resolv.conf) from the daemon's own
//! namespace: UDP, retried over TCP when truncated, TCP for TCP queries;
//! [`FORWARD_TIMEOUT`] for the whole query, upstreams hedged one
//! [`upstream::HEDGE_DELAY`] apart. SERVFAIL when none answers (at once
//! when none is configured); REFUSED beyond [`MAX_FORWARDS_IN_FLIGHT`]
//! forwards in flight in one namespace (Docker's limit, per container
//! as in Docker).
//!
//! # Untrusted input
//! Queries are parsed by hickory-proto; see [`answer`](mod@answer) for the
//! checks (FORMERR, NOTIMP, BADVERS, dropped). TCP: a length prefix of 0
//! or above [`MAX_QUERY_LEN`] closes the connection, as do
//! [`TCP_IDLE_TIMEOUT`] of silence; at most [`MAX_TCP_CONNECTIONS`] per
//! namespace. The fuzz target `dns_query` drives [`answer()`] and
//! [`Forward::accept_reply`].
use std::time::Duration;

pub mod answer;
pub mod records;
pub mod resolv_conf;
pub mod server;
pub mod stats;
pub mod upstream;

#[cfg(test)]
mod tests;

pub use answer::{
    Decision, DropReason, EDNS_UDP_PAYLOAD, Forward, MAX_QUERY_LEN, Reply, TTL, Transport,
    UpstreamReply, answer,
};
pub use hickory_proto::op::ResponseCode;
pub use records::{DnsEntry, DnsRecords, DnsRecordsBuilder, EntryKind};
pub use resolv_conf::{LISTEN_ADDR, MAX_UPSTREAMS, resolv_conf, upstreams_from_resolv_conf};
pub use server::{DnsConfig, DnsError, DnsServer};
pub use stats::DnsStatsSnapshot;

/// Deadline of one forwarded query, all upstreams included (Docker's
/// `extIOTimeout`, which Docker gives each upstream in turn).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(4);

/// Forwarded queries one namespace may have in flight; more are answered
/// REFUSED (Docker's `maxConcurrent`).
pub const MAX_FORWARDS_IN_FLIGHT: usize = 1024;

/// Open TCP connections one namespace may have; more are closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 128;

/// A TCP connection with no complete query for this long is closed
/// (RFC 7766 §6.2.3 leaves the value to the server).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
