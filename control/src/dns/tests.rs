//! Table tests of the name logic ([`answer`]) and of the checks on
//! untrusted queries and upstream replies. No sockets.
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use rand_chacha::ChaCha12Rng;
use rand_chacha::rand_core::SeedableRng;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// n1 "front" and n2 "back" are what askers are usually on; n3 is a
/// network nobody in the tables below asks from, except where noted.
fn fixture() -> DnsRecords {
    use EntryKind::*;
    let mut b = DnsRecords::builder();
    b.network_name("n1", "front").network_name("n2", "back");
    for (net, name, addr, kind) in [
        ("n1", "alpine1", "10.0.1.2", Container),
        ("n1", "alpine1", "fd00:1::2", Container),
        ("n1", "db", "10.0.1.2", Alias),
        ("n1", "v6only", "fd00:1::9", Container),
        ("n1", "web", "10.0.1.100", ServiceVip),
        ("n1", "web", "10.0.1.3", ServiceTask),
        ("n1", "web", "10.0.1.4", ServiceTask),
        ("n1", "web", "10.0.1.5", ServiceTask),
        ("n1", "www", "10.0.1.100", ServiceVip),
        ("n1", "www", "10.0.1.3", ServiceTask),
        ("n1", "web.1.aaa", "10.0.1.3", Container),
        ("n1", "rr", "10.0.1.7", ServiceTask),
        ("n1", "rr", "10.0.1.8", ServiceTask),
        ("n2", "web", "10.0.2.100", ServiceVip),
        ("n2", "web", "10.0.2.3", ServiceTask),
        ("n2", "alpine1", "10.0.2.2", Container),
        ("n3", "secret", "10.0.3.2", Container),
        ("n3", "web", "10.0.3.100", ServiceVip),
    ] {
        b.entry(net, name, ip(addr), kind);
    }
    b.build()
}

fn rng() -> ChaCha12Rng {
    ChaCha12Rng::seed_from_u64(7)
}

const ID: u16 = 0x1234;

fn query_msg(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::new();
    m.set_id(ID)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    m
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    query_msg(name, qtype).to_vec().expect("encode")
}

fn with_edns(mut m: Message, payload: u16, version: u8) -> Vec<u8> {
    let mut e = Edns::new();
    e.set_max_payload(payload).set_version(version);
    m.set_edns(e);
    m.to_vec().expect("encode")
}

fn nets(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn decide(records: &DnsRecords, asker: &[&str], t: Transport, q: &[u8]) -> Decision {
    answer(records, &nets(asker), t, q, &mut rng())
}

fn reply_of(d: Decision) -> Message {
    match d {
        Decision::Reply(r) => {
            let m = Message::from_vec(&r.bytes).expect("our reply parses");
            // By number: BADVERS and BADSIG share 16 (RFC 6891, RFC 8945).
            assert_eq!(
                u16::from(m.response_code()),
                u16::from(r.rcode),
                "Reply.rcode is what is sent"
            );
            m
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[derive(Debug, PartialEq)]
enum Got {
    Ips(BTreeSet<IpAddr>),
    NoData,
    Ptr(String),
    Forward,
}

fn ask(records: &DnsRecords, asker: &[&str], name: &str, qtype: RecordType) -> Got {
    match decide(records, asker, Transport::Udp, &query(name, qtype)) {
        Decision::Forward(_) => Got::Forward,
        d => {
            let m = reply_of(d);
            assert_eq!(m.response_code(), ResponseCode::NoError, "{name}");
            if m.answers().is_empty() {
                return Got::NoData;
            }
            if let Some(RData::PTR(p)) = m.answers()[0].data().clone().into() {
                return Got::Ptr(p.0.to_ascii());
            }
            Got::Ips(
                m.answers()
                    .iter()
                    .map(|r| match r.data() {
                        RData::A(a) => IpAddr::V4(a.0),
                        RData::AAAA(a) => IpAddr::V6(a.0),
                        other => panic!("unexpected record {other:?}"),
                    })
                    .collect(),
            )
        }
    }
}

fn ips(list: &[&str]) -> Got {
    Got::Ips(list.iter().map(|s| ip(s)).collect())
}

#[test]
fn names_are_scoped_by_the_askers_networks() {
    use RecordType::*;
    let r = fixture();
    let cases: &[(&[&str], &str, RecordType, Got)] = &[
        // Containers, both families, case and trailing dot.
        (&["n1"], "alpine1", A, ips(&["10.0.1.2"])),
        (&["n1"], "alpine1", AAAA, ips(&["fd00:1::2"])),
        (&["n1"], "ALPINE1.", A, ips(&["10.0.1.2"])),
        (&["n1"], "Alpine1", AAAA, ips(&["fd00:1::2"])),
        (&["n1"], "alpine1", ANY, ips(&["10.0.1.2", "fd00:1::2"])),
        // A known name without the asked type: NODATA, never forwarded.
        (&["n1"], "alpine1", MX, Got::NoData),
        (&["n1"], "alpine1", TXT, Got::NoData),
        (&["n1"], "alpine1", PTR, Got::NoData),
        (&["n1"], "v6only", A, Got::NoData),
        (&["n1"], "v6only", AAAA, ips(&["fd00:1::9"])),
        (&["n1"], "web", AAAA, Got::NoData),
        // Aliases and a task's container name.
        (&["n1"], "db", A, ips(&["10.0.1.2"])),
        (&["n1"], "web.1.aaa", A, ips(&["10.0.1.3"])),
        // Services: VIP mode, DNSRR, tasks., service aliases.
        (&["n1"], "web", A, ips(&["10.0.1.100"])),
        (
            &["n1"],
            "tasks.web",
            A,
            ips(&["10.0.1.3", "10.0.1.4", "10.0.1.5"]),
        ),
        (
            &["n1"],
            "TASKS.Web.",
            A,
            ips(&["10.0.1.3", "10.0.1.4", "10.0.1.5"]),
        ),
        (&["n1"], "rr", A, ips(&["10.0.1.7", "10.0.1.8"])),
        (&["n1"], "tasks.rr", A, ips(&["10.0.1.7", "10.0.1.8"])),
        (&["n1"], "www", A, ips(&["10.0.1.100"])),
        (&["n1"], "tasks.www", A, ips(&["10.0.1.3"])),
        (&["n1"], "tasks.alpine1", A, Got::Forward),
        // Another network's name is not ours for this asker.
        (&["n1"], "secret", A, Got::Forward),
        (&["n1"], "secret", AAAA, Got::Forward),
        (&["n3"], "secret", A, ips(&["10.0.3.2"])),
        (&[], "web", A, Got::Forward),
        (&["unknown-net"], "web", A, Got::Forward),
        // The first of the asker's networks with the family answers.
        (&["n2", "n1"], "web", A, ips(&["10.0.2.100"])),
        (&["n1", "n2"], "web", A, ips(&["10.0.1.100"])),
        (&["n2", "n1"], "tasks.web", A, ips(&["10.0.2.3"])),
        (&["n2", "n1"], "alpine1", AAAA, ips(&["fd00:1::2"])),
        (&["n2"], "alpine1", AAAA, Got::NoData),
        // NAME.NETWORK, only on the asker's own networks.
        (&["n2", "n1"], "web.front", A, ips(&["10.0.1.100"])),
        (&["n1"], "alpine1.FRONT.", A, ips(&["10.0.1.2"])),
        (
            &["n1"],
            "tasks.web.front",
            A,
            ips(&["10.0.1.3", "10.0.1.4", "10.0.1.5"]),
        ),
        (&["n1"], "web.back", A, Got::Forward),
        // Reverse: containers only, scoped, named NAME.NETWORK.
        (
            &["n1"],
            "2.1.0.10.in-addr.arpa",
            PTR,
            Got::Ptr("alpine1.front.".into()),
        ),
        (
            &["n1"],
            "3.1.0.10.IN-ADDR.ARPA.",
            PTR,
            Got::Ptr("web.1.aaa.front.".into()),
        ),
        (
            &["n1"],
            "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa",
            PTR,
            Got::Ptr("alpine1.front.".into()),
        ),
        (
            &["n2", "n1"],
            "2.1.0.10.in-addr.arpa",
            PTR,
            Got::Ptr("alpine1.front.".into()),
        ),
        (&["n1"], "100.1.0.10.in-addr.arpa", PTR, Got::Forward),
        (&["n1"], "2.3.0.10.in-addr.arpa", PTR, Got::Forward),
        (
            &["n3"],
            "2.3.0.10.in-addr.arpa",
            PTR,
            Got::Ptr("secret.".into()),
        ),
        (&["n1"], "1.0.10.in-addr.arpa", PTR, Got::Forward),
        (&["n1"], "x.1.0.10.in-addr.arpa", PTR, Got::Forward),
        // Not ours at all.
        (&["n1"], "nothing.invalid", A, Got::Forward),
        (&["n1"], "example.com", AAAA, Got::Forward),
        (&["n1"], "front", A, Got::Forward),
    ];
    for (asker, name, qtype, want) in cases {
        assert_eq!(
            &ask(&r, asker, name, *qtype),
            want,
            "{asker:?} {name} {qtype}"
        );
    }
}

#[test]
fn reply_header_ttl_and_question() {
    let r = fixture();
    let mut q = query_msg("Web.", RecordType::A);
    q.set_checking_disabled(true);
    let m = reply_of(decide(&r, &["n1"], Transport::Udp, &q.to_vec().unwrap()));
    assert_eq!(m.id(), ID);
    assert_eq!(m.message_type(), MessageType::Response);
    assert!(m.authoritative() && m.recursion_available() && m.recursion_desired());
    assert!(m.checking_disabled() && !m.truncated());
    assert_eq!(m.queries(), q.queries());
    assert_eq!(m.answers().len(), 1);
    let rec = &m.answers()[0];
    assert_eq!(rec.ttl(), TTL);
    assert_eq!(TTL, 600);
    // The owner name is the question as asked (0x20 case preserved).
    assert!(rec.name().eq_case(&Name::from_ascii("Web.").unwrap()));
    assert!(m.extensions().is_none(), "no OPT to a query without one");
}

#[test]
fn other_classes_are_forwarded() {
    let r = fixture();
    let mut q = query_msg("alpine1", RecordType::A);
    q.queries_mut()[0].set_query_class(DNSClass::CH);
    let d = decide(&r, &["n1"], Transport::Udp, &q.to_vec().unwrap());
    assert!(matches!(d, Decision::Forward(_)), "{d:?}");
}

#[test]
fn removed_entries_are_gone_from_the_next_table() {
    let before = fixture();
    assert_eq!(
        ask(&before, &["n1"], "db", RecordType::A),
        ips(&["10.0.1.2"])
    );
    let mut b = DnsRecords::builder();
    b.entry("n1", "alpine1", ip("10.0.1.2"), EntryKind::Container);
    let after = b.build();
    assert_eq!(ask(&after, &["n1"], "db", RecordType::A), Got::Forward);
    assert_eq!(after.len(), 1);
}

#[test]
fn answers_are_shuffled() {
    let mut b = DnsRecords::builder();
    for i in 1..=8u8 {
        b.entry(
            "n1",
            "svc",
            IpAddr::from([10, 0, 0, i]),
            EntryKind::ServiceTask,
        );
    }
    let r = b.build();
    let q = query("tasks.svc", RecordType::A);
    let mut rng = rng();
    let mut orders = HashSet::new();
    let mut firsts = HashSet::new();
    for _ in 0..200 {
        let m = reply_of(answer(&r, &nets(&["n1"]), Transport::Udp, &q, &mut rng));
        let order: Vec<IpAddr> = m
            .answers()
            .iter()
            .map(|a| match a.data() {
                RData::A(a) => IpAddr::V4(a.0),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            order.iter().collect::<BTreeSet<_>>().len(),
            8,
            "all 8, once each"
        );
        firsts.insert(order[0]);
        orders.insert(order);
    }
    // 8! orders: 200 draws repeat rarely; a fixed order would give 1.
    assert!(orders.len() > 100, "only {} distinct orders", orders.len());
    assert_eq!(firsts.len(), 8, "every address comes first sometimes");
}

fn big_service(n: u16) -> DnsRecords {
    let mut b = DnsRecords::builder();
    for i in 0..n {
        let [hi, lo] = i.to_be_bytes();
        b.entry(
            "n1",
            "big",
            IpAddr::from([10, 1, hi, lo]),
            EntryKind::ServiceTask,
        );
    }
    b.build()
}

#[test]
fn udp_answers_fit_the_askers_size_and_set_tc() {
    let r = big_service(100);
    // No EDNS: 512 octets.
    let plain = query("tasks.big", RecordType::A);
    let Decision::Reply(small) = decide(&r, &["n1"], Transport::Udp, &plain) else {
        panic!("a reply");
    };
    assert!(small.bytes.len() <= 512, "{}", small.bytes.len());
    let m = Message::from_vec(&small.bytes).unwrap();
    assert!(m.truncated());
    assert!(!m.answers().is_empty() && m.answers().len() < 100);
    // EDNS 4096: all 100 fit (100 × 16 octets).
    let edns = with_edns(query_msg("tasks.big", RecordType::A), 4096, 0);
    let m = reply_of(decide(&r, &["n1"], Transport::Udp, &edns));
    assert!(!m.truncated());
    assert_eq!(m.answers().len(), 100);
    assert_eq!(
        m.extensions().as_ref().map(|e| e.max_payload()),
        Some(EDNS_UDP_PAYLOAD)
    );
    // TCP: no cut.
    let m = reply_of(decide(&big_service(1000), &["n1"], Transport::Tcp, &plain));
    assert!(!m.truncated());
    assert_eq!(m.answers().len(), 1000);
}

#[test]
fn malformed_queries() {
    let r = fixture();
    let good = query("alpine1", RecordType::A);
    let rcode_of = |bytes: &[u8]| {
        let m = reply_of(decide(&r, &["n1"], Transport::Udp, bytes));
        assert_eq!(m.id(), ID, "the error echoes the ID");
        m.response_code()
    };
    // Shorter than a header: nothing to answer to.
    for n in 0..12 {
        let d = decide(&r, &["n1"], Transport::Udp, &good[..n]);
        assert!(
            matches!(d, Decision::Drop(DropReason::Unparseable)),
            "{n}: {d:?}"
        );
    }
    // A truncated question.
    for n in 12..good.len() {
        assert_eq!(rcode_of(&good[..n]), ResponseCode::FormErr, "cut at {n}");
    }
    // QDCOUNT 0 and 2.
    let mut zero = query_msg("alpine1", RecordType::A);
    zero.queries_mut().clear();
    assert_eq!(rcode_of(&zero.to_vec().unwrap()), ResponseCode::FormErr);
    let mut two = query_msg("alpine1", RecordType::A);
    two.add_query(Query::query(Name::from_ascii("db").unwrap(), RecordType::A));
    assert_eq!(rcode_of(&two.to_vec().unwrap()), ResponseCode::FormErr);
    // Record counts the message cannot hold (ARCOUNT 65535 in 29 octets).
    let mut lying = good.clone();
    lying[10..12].copy_from_slice(&[0xff, 0xff]);
    assert_eq!(rcode_of(&lying), ResponseCode::FormErr);
    // Opcodes other than QUERY.
    for op in [OpCode::Status, OpCode::Notify, OpCode::Update] {
        let mut m = query_msg("alpine1", RecordType::A);
        m.set_op_code(op);
        let reply = reply_of(decide(&r, &["n1"], Transport::Udp, &m.to_vec().unwrap()));
        assert_eq!(reply.response_code(), ResponseCode::NotImp, "{op:?}");
        assert_eq!(reply.op_code(), op);
    }
    // A response is never answered.
    let mut resp = query_msg("alpine1", RecordType::A);
    resp.set_message_type(MessageType::Response);
    let d = decide(&r, &["n1"], Transport::Udp, &resp.to_vec().unwrap());
    assert!(matches!(d, Decision::Drop(DropReason::NotAQuery)), "{d:?}");
    // Oversized.
    let mut long = good.clone();
    long.resize(MAX_QUERY_LEN + 1, 0);
    let d = decide(&r, &["n1"], Transport::Tcp, &long);
    assert!(matches!(d, Decision::Drop(DropReason::TooLong)), "{d:?}");
    // EDNS version 1: BADVERS, with an OPT of version 0.
    let v1 = with_edns(query_msg("alpine1", RecordType::A), 1232, 1);
    let m = reply_of(decide(&r, &["n1"], Transport::Udp, &v1));
    assert_eq!(
        u16::from(m.response_code()),
        u16::from(ResponseCode::BADVERS)
    );
    assert_eq!(m.extensions().as_ref().map(|e| e.version()), Some(0));
}

fn forward_of(q: &[u8], t: Transport) -> Forward {
    match decide(&fixture(), &["n1"], t, q) {
        Decision::Forward(f) => f,
        other => panic!("expected a forward, got {other:?}"),
    }
}

/// An upstream's answer to `q` (already carrying the upstream ID).
fn upstream_answer(q: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let q = Message::from_vec(q).unwrap();
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_response_code(rcode);
    m.add_queries(q.queries().iter().cloned());
    if rcode == ResponseCode::NoError {
        let name = q.queries()[0].name().clone();
        m.add_answer(Record::from_rdata(name, 60, RData::A(A::new(192, 0, 2, 1))));
    }
    m.to_vec().unwrap()
}

#[test]
fn forwarded_queries_get_a_fresh_id_and_only_matching_replies() {
    let q = query("example.com", RecordType::A);
    let fwd = forward_of(&q, Transport::Udp);
    assert_eq!(fwd.transport(), Transport::Udp);
    let up = fwd.upstream_query(0xbeef);
    assert_eq!(&up[..2], &0xbeef_u16.to_be_bytes());
    assert_eq!(&up[2..], &q[2..], "otherwise sent as received");

    let good = upstream_answer(&up, ResponseCode::NoError);
    let got = fwd.accept_reply(0xbeef, &good).expect("a matching reply");
    assert_eq!(
        &got.bytes[..2],
        &ID.to_be_bytes(),
        "the asker's ID restored"
    );
    assert_eq!(&got.bytes[2..], &good[2..], "passed through untouched");
    assert_eq!(got.rcode, ResponseCode::NoError);
    assert!(!got.truncated);

    // Wrong ID, not a response, another question, junk.
    assert!(fwd.accept_reply(0xbeee, &good).is_none());
    assert!(
        fwd.accept_reply(0xbeef, &up).is_none(),
        "a query is no reply"
    );
    let other = upstream_answer(
        &{
            let mut m = query_msg("example.org", RecordType::A);
            m.set_id(0xbeef);
            m.to_vec().unwrap()
        },
        ResponseCode::NoError,
    );
    assert!(fwd.accept_reply(0xbeef, &other).is_none());
    assert!(fwd.accept_reply(0xbeef, &good[..11]).is_none());
    assert!(
        fwd.accept_reply(0xbeef, &good[..14]).is_none(),
        "cut question"
    );

    // 0x20: the same name in other case is the same question.
    let mut upper = query_msg("EXAMPLE.com", RecordType::A);
    upper.set_id(0xbeef);
    let upper = upstream_answer(&upper.to_vec().unwrap(), ResponseCode::NXDomain);
    assert_eq!(
        fwd.accept_reply(0xbeef, &upper).unwrap().rcode,
        ResponseCode::NXDomain
    );

    // No question: only an error is believable.
    let mut bare = Message::new();
    bare.set_id(0xbeef)
        .set_message_type(MessageType::Response)
        .set_response_code(ResponseCode::Refused);
    let got = fwd.accept_reply(0xbeef, &bare.to_vec().unwrap()).unwrap();
    assert_eq!(got.rcode, ResponseCode::Refused);
    bare.set_response_code(ResponseCode::NoError);
    assert!(fwd.accept_reply(0xbeef, &bare.to_vec().unwrap()).is_none());
}

#[test]
fn forward_error_replies_and_sizes() {
    let q = with_edns(query_msg("example.com", RecordType::AAAA), 1232, 0);
    let fwd = forward_of(&q, Transport::Udp);
    assert!(fwd.fits(1232) && !fwd.fits(1233));
    for rcode in [ResponseCode::ServFail, ResponseCode::Refused] {
        let m = Message::from_vec(&fwd.error_reply(rcode)).unwrap();
        assert_eq!(m.id(), ID);
        assert_eq!(m.response_code(), rcode);
        assert_eq!(m.queries()[0].name().to_ascii(), "example.com.");
        assert!(m.extensions().is_some(), "OPT back to an EDNS asker");
        assert!(m.answers().is_empty());
    }
    let plain = forward_of(&query("example.com", RecordType::A), Transport::Udp);
    assert!(plain.fits(512) && !plain.fits(513));
    let tcp = forward_of(&query("example.com", RecordType::A), Transport::Tcp);
    assert!(tcp.fits(65_535));
    assert_eq!(tcp.transport(), Transport::Tcp);
}

#[test]
fn truncated_upstream_replies_are_flagged() {
    let q = query("example.com", RecordType::A);
    let fwd = forward_of(&q, Transport::Udp);
    let up = fwd.upstream_query(7);
    let mut m = Message::from_vec(&upstream_answer(&up, ResponseCode::NoError)).unwrap();
    m.set_truncated(true);
    assert!(fwd.accept_reply(7, &m.to_vec().unwrap()).unwrap().truncated);
}
