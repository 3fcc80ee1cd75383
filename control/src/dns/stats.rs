//! Counters of the embedded DNS server, shared by every namespace's
//! sockets: relaxed atomics, bumped once per query, read as a
//! [`DnsStatsSnapshot`] the daemon can print or export (one Prometheus
//! counter per field, `vxnet_dns_<field>_total`).
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::ResponseCode;
use serde::Serialize;

#[derive(Debug, Default)]
pub(crate) struct DnsStats {
    queries_udp: AtomicU64,
    queries_tcp: AtomicU64,
    noerror: AtomicU64,
    nxdomain: AtomicU64,
    servfail: AtomicU64,
    formerr: AtomicU64,
    notimp: AtomicU64,
    refused: AtomicU64,
    other_rcode: AtomicU64,
    dropped: AtomicU64,
    forwarded: AtomicU64,
    forward_timeouts: AtomicU64,
    forward_failures: AtomicU64,
    overload_refusals: AtomicU64,
    tcp_rejected: AtomicU64,
}

/// A point-in-time copy of the counters. Replies are counted by the RCODE
/// the asker got, whether we made the reply or an upstream did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DnsStatsSnapshot {
    /// Queries received over UDP / TCP (every message, well-formed or not).
    pub queries_udp: u64,
    pub queries_tcp: u64,
    /// Replies sent, by RCODE.
    pub noerror: u64,
    pub nxdomain: u64,
    pub servfail: u64,
    pub formerr: u64,
    pub notimp: u64,
    pub refused: u64,
    pub other_rcode: u64,
    /// Messages that got no reply: shorter than a header, a response
    /// (QR=1), or longer than [`super::MAX_QUERY_LEN`].
    pub dropped: u64,
    /// Queries sent to the upstream resolvers.
    pub forwarded: u64,
    /// Forwarded queries no upstream answered within the timeout.
    pub forward_timeouts: u64,
    /// Forwarded queries every upstream failed before the timeout
    /// (refused connection, SERVFAIL, REFUSED), or with no upstream set.
    pub forward_failures: u64,
    /// Queries refused because [`super::MAX_FORWARDS_IN_FLIGHT`] were
    /// already being forwarded for the namespace.
    pub overload_refusals: u64,
    /// TCP connections closed for a length prefix of 0 or above
    /// [`super::MAX_QUERY_LEN`], or refused past
    /// [`super::MAX_TCP_CONNECTIONS`].
    pub tcp_rejected: u64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl DnsStats {
    pub(crate) fn query(&self, tcp: bool) {
        bump(if tcp {
            &self.queries_tcp
        } else {
            &self.queries_udp
        });
    }

    pub(crate) fn reply(&self, rcode: ResponseCode) {
        bump(match rcode {
            ResponseCode::NoError => &self.noerror,
            ResponseCode::NXDomain => &self.nxdomain,
            ResponseCode::ServFail => &self.servfail,
            ResponseCode::FormErr => &self.formerr,
            ResponseCode::NotImp => &self.notimp,
            ResponseCode::Refused => &self.refused,
            _ => &self.other_rcode,
        });
    }

    pub(crate) fn dropped(&self) {
        bump(&self.dropped);
    }
    pub(crate) fn forwarded(&self) {
        bump(&self.forwarded);
    }
    pub(crate) fn forward_timeout(&self) {
        bump(&self.forward_timeouts);
    }
    pub(crate) fn forward_failure(&self) {
        bump(&self.forward_failures);
    }
    pub(crate) fn overload_refusal(&self) {
        bump(&self.overload_refusals);
    }
    pub(crate) fn tcp_rejected(&self) {
        bump(&self.tcp_rejected);
    }

    pub(crate) fn snapshot(&self) -> DnsStatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsStatsSnapshot {
            queries_udp: r(&self.queries_udp),
            queries_tcp: r(&self.queries_tcp),
            noerror: r(&self.noerror),
            nxdomain: r(&self.nxdomain),
            servfail: r(&self.servfail),
            formerr: r(&self.formerr),
            notimp: r(&self.notimp),
            refused: r(&self.refused),
            other_rcode: r(&self.other_rcode),
            dropped: r(&self.dropped),
            forwarded: r(&self.forwarded),
            forward_timeouts: r(&self.forward_timeouts),
            forward_failures: r(&self.forward_failures),
            overload_refusals: r(&self.overload_refusals),
            tcp_rejected: r(&self.tcp_rejected),
        }
    }
}
