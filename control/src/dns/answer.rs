//! The sans-IO core of the embedded DNS server: one query's bytes in, a
//! [`Decision`] out. No socket, no clock; randomness (answer shuffling)
//! comes from the caller's RNG.
//!
//! Order of checks, each with the RFC it follows:
//! 1. The 12-byte header must parse, else the datagram is dropped: there
//!    is no ID to answer to. A message with QR=1 (a response) is dropped
//!    too, so two servers can never bounce errors off each other.
//! 2. OPCODE other than QUERY → NOTIMP (RFC 1035 §4.1.1).
//! 3. QDCOUNT ≠ 1 → FORMERR (RFC 9619). Record counts that the message
//!    cannot hold (each record needs at least 11 octets) → FORMERR before
//!    anything is decoded: the decoder sizes its vectors from these
//!    counts, and a 12-byte query must not make it allocate megabytes.
//! 4. The whole message must decode (hickory-proto), else FORMERR.
//! 5. EDNS version above 0 → BADVERS (RFC 6891 §6.1.3).
//! 6. Class IN: the name logic below. Any other class is forwarded.
//!
//! Name logic (see [`super`] for the Docker behaviour matched):
//! - `*.in-addr.arpa` / `*.ip6.arpa` PTR for a whole address that is a
//!   container's on one of the asker's networks → `CONTAINER.NETWORK.`.
//! - A, AAAA, ANY for a name on one of the asker's networks → its
//!   addresses of that family, shuffled, TTL [`TTL`]; none of that family
//!   → NOERROR with no answer (NODATA). Any other type for such a name →
//!   NODATA as well: the name is ours, an upstream cannot know it.
//! - Everything else → [`Decision::Forward`].
//!
//! Answers over UDP are cut to the asker's size (512 octets, or its EDNS
//! payload size) by dropping records and setting TC, so the asker retries
//! over TCP (RFC 2181 §9, as Docker's `resp.Truncate`).
use std::net::IpAddr;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use rand::Rng;
use rand::seq::SliceRandom;

use super::records::{DnsRecords, normalize};

/// TTL of every record we answer, in seconds (Docker's `respTTL`).
pub const TTL: u32 = 600;

/// The largest query we accept, in octets, over UDP or TCP. A query is a
/// question (at most 260 octets) plus an OPT record; 4096 leaves room for
/// any EDNS options a stub sends (cookies, padding).
pub const MAX_QUERY_LEN: usize = 4096;

/// The UDP payload size we advertise in our OPT record (RFC 6891 §6.2.3).
/// The asker is on the same host (loopback), so fragmentation is no
/// concern; the asker's own advertised size still bounds each answer.
pub const EDNS_UDP_PAYLOAD: u16 = 4096;

/// The smallest UDP payload every DNS client accepts (RFC 1035 §2.3.4).
const MIN_UDP_PAYLOAD: usize = 512;

/// Smallest encoding of a question (root name, type, class) and of a
/// resource record (root name, type, class, TTL, RDLENGTH).
const MIN_QUESTION_LEN: usize = 5;
const MIN_RECORD_LEN: usize = 11;

/// How the query arrived, which bounds the answer's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What the driver does with one query.
#[derive(Debug)]
pub enum Decision {
    /// Send these bytes back to the asker.
    Reply(Reply),
    /// Not a name of ours: forward to the upstream resolvers.
    Forward(Forward),
    /// Send nothing.
    Drop(DropReason),
}

/// A reply to send, with its RCODE for the counters.
#[derive(Debug)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub rcode: ResponseCode,
}

/// Why a message got no reply at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than a DNS header: no ID to answer to.
    Unparseable,
    /// QR=1: a response, not a query.
    NotAQuery,
    /// Longer than [`MAX_QUERY_LEN`].
    TooLong,
}

/// A query for a name that is not ours, ready to go upstream. Built only
/// by [`answer`], so it always holds exactly one question.
#[derive(Debug)]
pub struct Forward {
    /// The asker's query, as received.
    query: Vec<u8>,
    header: Header,
    question: Query,
    edns: bool,
    /// The most the asker takes back (UDP: 512 or its EDNS size).
    max_reply: usize,
    transport: Transport,
}

/// An upstream's reply, checked and given back the asker's ID.
#[derive(Debug)]
pub struct UpstreamReply {
    pub bytes: Vec<u8>,
    pub rcode: ResponseCode,
    /// TC was set: the answer did not fit the upstream's UDP datagram.
    pub truncated: bool,
}

/// Decides what to do with one query from an asker on `networks`
/// (network IDs, in the asker's order of preference).
///
/// Never panics, whatever `query` holds; see the module doc for the
/// order of checks.
pub fn answer<R: Rng + ?Sized>(
    records: &DnsRecords,
    networks: &[String],
    transport: Transport,
    query: &[u8],
    rng: &mut R,
) -> Decision {
    if query.len() > MAX_QUERY_LEN {
        return Decision::Drop(DropReason::TooLong);
    }
    let mut decoder = BinDecoder::new(query);
    let Ok(header) = Header::read(&mut decoder) else {
        return Decision::Drop(DropReason::Unparseable);
    };
    if header.message_type() == MessageType::Response {
        return Decision::Drop(DropReason::NotAQuery);
    }
    if header.op_code() != OpCode::Query {
        return error(&header, None, ResponseCode::NotImp);
    }
    let records_len = usize::from(header.answer_count())
        + usize::from(header.name_server_count())
        + usize::from(header.additional_count());
    if header.query_count() != 1 || MIN_QUESTION_LEN + records_len * MIN_RECORD_LEN > decoder.len()
    {
        return error(&header, None, ResponseCode::FormErr);
    }
    let Ok(msg) = Message::from_vec(query) else {
        return error(&header, None, ResponseCode::FormErr);
    };
    let Some(question) = msg.queries().first() else {
        return error(&header, None, ResponseCode::FormErr);
    };
    let edns = msg.extensions().as_ref();
    if edns.is_some_and(|e| e.version() > 0) {
        return error(&header, Some(&msg), ResponseCode::BADVERS);
    }
    let max_reply = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => usize::from(msg.max_payload()).max(MIN_UDP_PAYLOAD),
    };
    let nets = records.asker_networks(networks);
    let found = if question.query_class() == DNSClass::IN {
        lookup(records, &nets, question, rng)
    } else {
        None
    };
    match found {
        Some(answers) => {
            let reply = build_reply(&msg, answers, max_reply);
            Decision::Reply(reply)
        }
        None => Decision::Forward(Forward {
            query: query.to_vec(),
            header,
            question: question.clone(),
            edns: edns.is_some(),
            max_reply,
            transport,
        }),
    }
}

/// Our records for `question`, `None` when the name is not ours.
fn lookup<R: Rng + ?Sized>(
    records: &DnsRecords,
    nets: &[u32],
    question: &Query,
    rng: &mut R,
) -> Option<Vec<Record>> {
    let qname = question.name();
    let qtype = question.query_type();
    if qtype == RecordType::PTR
        && let Ok(net) = qname.parse_arpa_name()
    {
        // An arpa name that is not one whole address (a /24 zone) is
        // not ours: forward it.
        if net.prefix_len() != net.max_prefix_len() {
            return None;
        }
        let target = records.reverse(net.addr(), nets)?;
        let target = Name::from_ascii(format!("{target}.")).ok()?;
        return Some(vec![Record::from_rdata(
            qname.clone(),
            TTL,
            RData::PTR(PTR(target)),
        )]);
    }
    let name = normalize(&qname.to_ascii());
    let mut ips = records.resolve(&name, nets, |ip| match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        // The name is ours whatever the type; only A/AAAA have data.
        _ => false,
    })?;
    ips.shuffle(rng);
    Some(
        ips.into_iter()
            .map(|ip| {
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                };
                Record::from_rdata(qname.clone(), TTL, rdata)
            })
            .collect(),
    )
}

/// The response header every reply of ours starts from: the query's ID,
/// opcode, RD and CD (RFC 6895 §2), RA set since we recurse through the
/// upstreams (as Docker's `createRespMsg`).
fn response_header(query: &Header, rcode: ResponseCode) -> Header {
    let mut h = Header::response_from_request(query);
    h.set_recursion_available(true);
    h.set_response_code(rcode);
    h
}

fn our_edns() -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_UDP_PAYLOAD);
    edns
}

/// An authoritative NOERROR reply with `answers` (empty: NODATA), cut to
/// `max_len` octets.
fn build_reply(query: &Message, mut answers: Vec<Record>, max_len: usize) -> Reply {
    let mut header = response_header(query.header(), ResponseCode::NoError);
    header.set_authoritative(true);
    let mut msg = Message::new();
    msg.set_header(header);
    msg.add_queries(query.queries().iter().cloned());
    if query.extensions().is_some() {
        msg.set_edns(our_edns());
    }
    msg.add_answers(answers.iter().cloned());
    let Ok(mut bytes) = msg.to_vec() else {
        return servfail(query);
    };
    // Too big for the asker's datagram: drop answers until it fits, and
    // set TC so the asker retries over TCP for the full set.
    while bytes.len() > max_len && !answers.is_empty() {
        let per_record = bytes.len().div_ceil(answers.len() + 1).max(1);
        let excess = (bytes.len() - max_len).div_ceil(per_record).max(1);
        answers.truncate(answers.len().saturating_sub(excess));
        msg.answers_mut().clear();
        msg.add_answers(answers.iter().cloned());
        msg.set_truncated(true);
        match msg.to_vec() {
            Ok(b) => bytes = b,
            Err(_) => return servfail(query),
        }
    }
    Reply {
        bytes,
        rcode: ResponseCode::NoError,
    }
}

/// SERVFAIL when our own reply cannot be encoded (a name too long once
/// the network name is appended, say).
fn servfail(query: &Message) -> Reply {
    let bytes = error_bytes(query.header(), Some(query), ResponseCode::ServFail);
    Reply {
        bytes,
        rcode: ResponseCode::ServFail,
    }
}

fn error(header: &Header, msg: Option<&Message>, rcode: ResponseCode) -> Decision {
    Decision::Reply(Reply {
        bytes: error_bytes(header, msg, rcode),
        rcode,
    })
}

/// An error reply: the query's header with `rcode`, its question when we
/// could decode it, and an OPT record when the query had one (needed to
/// carry BADVERS's upper bits).
fn error_bytes(header: &Header, msg: Option<&Message>, rcode: ResponseCode) -> Vec<u8> {
    let mut reply = Message::new();
    reply.set_header(response_header(header, rcode));
    if let Some(msg) = msg {
        reply.add_queries(msg.queries().iter().cloned());
        if msg.extensions().is_some() {
            reply.set_edns(our_edns());
        }
    }
    reply.to_vec().unwrap_or_else(|_| {
        // Only the question can fail to encode; the bare header cannot.
        let mut bare = Message::new();
        bare.set_header(response_header(header, ResponseCode::ServFail));
        bare.to_vec().unwrap_or_default()
    })
}

impl Forward {
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The question, for logs.
    pub fn question(&self) -> &Query {
        &self.question
    }

    /// The asker's query with `id` in place of its own ID: every upstream
    /// attempt gets a fresh random ID, so a forged reply must guess it
    /// (RFC 5452 §9.2). The ID is the first two octets (RFC 1035 §4.1.1).
    pub fn upstream_query(&self, id: u16) -> Vec<u8> {
        let mut q = self.query.clone();
        q[..2].copy_from_slice(&id.to_be_bytes());
        q
    }

    /// Checks `reply` against the query sent as [`Forward::upstream_query`]`(id)`:
    /// a response with that ID and the same question (name compared
    /// case-insensitively, RFC 4343), or with no question and an error
    /// RCODE (some servers send FORMERR/REFUSED so). Returns it with the
    /// asker's ID restored, or `None` for anything else (a stray or
    /// forged datagram, which the caller ignores and keeps waiting).
    ///
    /// Only the header and question are decoded: the rest is passed to
    /// the asker untouched, so record types we do not know survive.
    pub fn accept_reply(&self, id: u16, reply: &[u8]) -> Option<UpstreamReply> {
        let mut decoder = BinDecoder::new(reply);
        let header = Header::read(&mut decoder).ok()?;
        if header.message_type() != MessageType::Response || header.id() != id {
            return None;
        }
        let rcode = header.response_code();
        match header.query_count() {
            0 if rcode != ResponseCode::NoError => {}
            1 => {
                let q = Query::read(&mut decoder).ok()?;
                if q != self.question {
                    return None;
                }
            }
            _ => return None,
        }
        let mut bytes = reply.to_vec();
        bytes[..2].copy_from_slice(&self.header.id().to_be_bytes());
        Some(UpstreamReply {
            bytes,
            rcode,
            truncated: header.truncated(),
        })
    }

    /// Whether a reply of `len` octets may go back to the asker as it is
    /// (over UDP: within 512 octets or the asker's EDNS payload size).
    pub fn fits(&self, len: usize) -> bool {
        len <= self.max_reply
    }

    /// Our own reply to the asker when forwarding fails: SERVFAIL when no
    /// upstream answered (or none is configured), REFUSED when too many
    /// queries are in flight (Docker's behaviour for both).
    pub fn error_reply(&self, rcode: ResponseCode) -> Vec<u8> {
        let mut reply = Message::new();
        reply.set_header(response_header(&self.header, rcode));
        reply.add_query(self.question.clone());
        if self.edns {
            reply.set_edns(our_edns());
        }
        match reply.to_vec() {
            Ok(bytes) => bytes,
            // The question decoded, so it encodes; keep a header-only
            // reply as a last resort rather than panic.
            Err(_) => error_bytes(&self.header, None, ResponseCode::ServFail),
        }
    }
}
