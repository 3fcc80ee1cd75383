//! The embedded DNS server in real network namespaces, asked by the real
//! `dig` (Debian's dnsutils, installed by scripts/setup.sh) run inside
//! them with `ip netns exec`. Needs root (skipped otherwise).
//!
//! Each test makes its own scratch namespace (deleted on drop, also on
//! failure) and, where it forwards, its own tiny upstream DNS server on
//! 127.0.0.1 in the test's namespace, where the server's forwarding
//! sockets live. No traffic leaves loopback.
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::runtime::Runtime;
use vxnet_control::dns::{DnsConfig, DnsRecords, DnsServer, EntryKind, FORWARD_TIMEOUT};
use vxnet_dataplane::sys::netns::testutil::{TestNetns, root_or_skip};

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// n1 ("front") is the asker's network; n3 ("private") is not, at first.
fn records(with_db: bool) -> DnsRecords {
    use EntryKind::*;
    let mut b = DnsRecords::builder();
    b.network_name("n1", "front").network_name("n3", "private");
    b.entry("n1", "alpine1", ip("10.0.1.2"), Container)
        .entry("n1", "alpine1", ip("fd00:1::2"), Container)
        .entry("n1", "web", ip("10.0.1.100"), ServiceVip)
        .entry("n1", "web.1.k3j5", ip("10.0.1.3"), Container)
        .entry("n1", "rr", ip("10.0.1.7"), ServiceTask)
        .entry("n1", "rr", ip("10.0.1.8"), ServiceTask)
        .entry("n3", "secret", ip("10.0.3.2"), Container);
    for t in ["10.0.1.3", "10.0.1.4", "10.0.1.5"] {
        b.entry("n1", "web", ip(t), ServiceTask);
    }
    if with_db {
        b.entry("n1", "db", ip("10.0.1.2"), Alias);
    }
    b.build()
}

/// Runs `dig @127.0.0.11 ARGS` inside `ns` (2 s, one try, unless ARGS
/// say otherwise) and returns its output.
fn dig(ns: &TestNetns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "dig",
            "@127.0.0.11",
            "+time=2",
            "+tries=1",
        ])
        .args(args)
        .output()
        .expect("run dig (install dnsutils: scripts/setup.sh)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dig +short` answers, as a set.
fn short(ns: &TestNetns, args: &[&str]) -> BTreeSet<String> {
    let mut all = vec!["+short"];
    all.extend_from_slice(args);
    dig(ns, &all).lines().map(str::to_owned).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The `status:` of dig's header line, `None` when no reply came.
fn status(out: &str) -> Option<String> {
    let rest = out.split("status: ").nth(1)?;
    Some(rest.split(',').next()?.to_owned())
}

/// A tiny upstream resolver on 127.0.0.1 (UDP and TCP, one port):
/// `fwd.test` → 198.51.100.7; `big.test` → 60 addresses, which over UDP it
/// always truncates (TC, no answers), like a server capped at 512 octets;
/// `silent.test` → no answer; anything else → NXDOMAIN.
struct FakeUpstream {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
}

const BIG: usize = 60;

fn upstream_reply(query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries().first()?.clone();
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true);
    m.add_query(question.clone());
    if q.extensions().is_some() {
        m.set_edns(Edns::new());
    }
    let owner = question.name().clone();
    let a = |last: u8| Record::from_rdata(owner.clone(), 60, RData::A(A::new(198, 51, 100, last)));
    match question.name().to_ascii().to_ascii_lowercase().as_str() {
        "silent.test." => return None,
        "fwd.test." => {
            m.add_answer(a(7));
        }
        "big.test." => {
            for i in 1..=BIG as u8 {
                m.add_answer(a(i));
            }
        }
        _ => {
            m.set_response_code(ResponseCode::NXDomain);
        }
    }
    let bytes = m.to_vec().ok()?;
    if udp && bytes.len() > 512 {
        m.answers_mut().clear();
        m.set_truncated(true);
        return m.to_vec().ok();
    }
    Some(bytes)
}

impl FakeUpstream {
    fn start(rt: &Runtime) -> FakeUpstream {
        let (udp, tcp) = rt.block_on(async {
            // Same port for both; retry if TCP's is taken.
            loop {
                let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
                let addr = udp.local_addr().expect("addr");
                if let Ok(tcp) = TcpListener::bind(addr).await {
                    return (udp, tcp);
                }
            }
        });
        let addr = udp.local_addr().expect("addr");
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&udp_queries);
        rt.spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                count.fetch_add(1, Ordering::SeqCst);
                if let Some(r) = upstream_reply(&buf[..n], true) {
                    let _ = udp.send_to(&r, peer).await;
                }
            }
        });
        let count = Arc::clone(&tcp_queries);
        rt.spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    while let Ok(len) = s.read_u16().await {
                        let mut q = vec![0u8; usize::from(len)];
                        if s.read_exact(&mut q).await.is_err() {
                            return;
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        let Some(r) = upstream_reply(&q, false) else {
                            continue;
                        };
                        let mut framed = (r.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&r);
                        if s.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeUpstream {
            addr,
            udp_queries,
            tcp_queries,
        }
    }

    fn udp(&self) -> usize {
        self.udp_queries.load(Ordering::SeqCst)
    }
    fn tcp(&self) -> usize {
        self.tcp_queries.load(Ordering::SeqCst)
    }
}

/// A namespace served by a fresh server with `upstreams`, asker on n1.
/// Field order is drop order: the server stops before the namespace goes.
struct Setup {
    dns: DnsServer,
    ns: TestNetns,
    rt: Runtime,
}

impl Setup {
    fn new(upstreams: Vec<SocketAddr>) -> Setup {
        Setup::with_runtime(runtime(), upstreams)
    }

    fn with_runtime(rt: Runtime, upstreams: Vec<SocketAddr>) -> Setup {
        let ns = TestNetns::new().expect("scratch namespace");
        let dns = DnsServer::start(rt.handle().clone(), DnsConfig::new(upstreams));
        dns.set_records(Arc::new(records(true)));
        dns.serve_netns("c1", ns.name(), vec!["n1".into()])
            .expect("serve in the namespace");
        Setup { dns, ns, rt }
    }
}

#[test]
fn dig_resolves_swarm_names_inside_the_namespace() {
    if !root_or_skip("dig_resolves_swarm_names_inside_the_namespace") {
        return;
    }
    let rt = runtime();
    let up = FakeUpstream::start(&rt);
    let s = Setup::with_runtime(rt, vec![up.addr]);
    let ns = &s.ns;
    for t in ["+notcp", "+tcp"] {
        assert_eq!(short(ns, &[t, "alpine1"]), set(&["10.0.1.2"]), "{t}");
        assert_eq!(
            short(ns, &[t, "AAAA", "ALPINE1."]),
            set(&["fd00:1::2"]),
            "{t}"
        );
        assert_eq!(short(ns, &[t, "web"]), set(&["10.0.1.100"]), "{t}");
        assert_eq!(
            short(ns, &[t, "tasks.web"]),
            set(&["10.0.1.3", "10.0.1.4", "10.0.1.5"]),
            "{t}"
        );
        assert_eq!(short(ns, &[t, "rr"]), set(&["10.0.1.7", "10.0.1.8"]), "{t}");
        assert_eq!(short(ns, &[t, "db"]), set(&["10.0.1.2"]), "{t}");
        assert_eq!(short(ns, &[t, "web.1.k3j5"]), set(&["10.0.1.3"]), "{t}");
        assert_eq!(short(ns, &[t, "alpine1.front"]), set(&["10.0.1.2"]), "{t}");
        assert_eq!(
            short(ns, &[t, "-x", "10.0.1.2"]),
            set(&["alpine1.front."]),
            "{t}"
        );
    }
    // A known name without AAAA: NOERROR, no answer, not forwarded.
    let before = up.udp();
    let out = dig(ns, &["AAAA", "web"]);
    assert_eq!(status(&out).as_deref(), Some("NOERROR"), "{out}");
    assert!(out.contains("ANSWER: 0"), "{out}");
    assert!(out.contains("flags: qr aa rd ra"), "authoritative: {out}");
    assert_eq!(up.udp(), before, "NODATA is not forwarded");
    let out = dig(ns, &["+noall", "+answer", "web"]);
    assert!(out.contains("\t600\tIN\tA\t10.0.1.100"), "TTL 600: {out}");

    // Another network's name is forwarded (and so unknown upstream).
    let out = dig(ns, &["secret"]);
    assert_eq!(status(&out).as_deref(), Some("NXDOMAIN"), "{out}");
    assert_eq!(up.udp(), before + 1, "forwarded once");

    // Connected to n3 too: the same call only updates the networks.
    s.dns
        .serve_netns("c1", ns.name(), vec!["n1".into(), "n3".into()])
        .expect("update networks");
    assert_eq!(short(ns, &["secret"]), set(&["10.0.3.2"]));
    assert_eq!(short(ns, &["-x", "10.0.3.2"]), set(&["secret.private."]));
    assert_eq!(s.dns.served(), ["c1"]);

    // A removed entry is gone from the very next query.
    s.dns.set_records(Arc::new(records(false)));
    let out = dig(ns, &["db"]);
    assert_eq!(status(&out).as_deref(), Some("NXDOMAIN"), "{out}");
    assert_eq!(short(ns, &["alpine1"]), set(&["10.0.1.2"]));

    let st = s.dns.stats();
    assert!(st.queries_udp >= 15 && st.queries_tcp >= 9, "{st:?}");
    assert_eq!(st.forwarded, 2, "{st:?}");
    assert_eq!(st.nxdomain, 2, "{st:?}");
    assert_eq!(st.servfail + st.formerr + st.refused, 0, "{st:?}");
}

#[test]
fn unknown_names_fail_fast() {
    if !root_or_skip("unknown_names_fail_fast") {
        return;
    }
    // No upstream at all: SERVFAIL at once.
    let s = Setup::new(Vec::new());
    let t = Instant::now();
    let out = dig(&s.ns, &["nothing.invalid"]);
    assert_eq!(status(&out).as_deref(), Some("SERVFAIL"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let st = s.dns.stats();
    assert_eq!((st.servfail, st.forward_failures), (1, 1), "{st:?}");

    // An upstream that knows nothing under .invalid: NXDOMAIN, UDP and TCP.
    let rt = runtime();
    let up = FakeUpstream::start(&rt);
    let s = Setup::with_runtime(rt, vec![up.addr]);
    for t in ["+notcp", "+tcp"] {
        let out = dig(&s.ns, &[t, "nothing.invalid"]);
        assert_eq!(status(&out).as_deref(), Some("NXDOMAIN"), "{t}: {out}");
    }
    assert_eq!(
        (up.udp(), up.tcp()),
        (1, 1),
        "a TCP query is forwarded over TCP"
    );
}

#[test]
fn forwarding_retries_truncated_answers_over_tcp() {
    if !root_or_skip("forwarding_retries_truncated_answers_over_tcp") {
        return;
    }
    let rt = runtime();
    let up = FakeUpstream::start(&rt);
    let s = Setup::with_runtime(rt, vec![up.addr]);
    assert_eq!(short(&s.ns, &["fwd.test"]), set(&["198.51.100.7"]));
    assert_eq!(short(&s.ns, &["+tcp", "fwd.test"]), set(&["198.51.100.7"]));

    // The upstream truncates over UDP; the asker takes 4096 octets, so
    // the server's TCP retry brings the whole answer back over UDP.
    let (udp0, tcp0) = (up.udp(), up.tcp());
    let out = dig(&s.ns, &["+bufsize=4096", "big.test"]);
    assert_eq!(status(&out).as_deref(), Some("NOERROR"), "{out}");
    assert!(out.contains(&format!("ANSWER: {BIG}")), "{out}");
    assert!(
        !out.contains("Truncated"),
        "dig did not have to retry: {out}"
    );
    assert_eq!((up.udp(), up.tcp()), (udp0 + 1, tcp0 + 1));

    // An asker that takes 512: it gets TC, retries over TCP to us, and
    // we forward that over TCP.
    let out = dig(&s.ns, &["+bufsize=512", "big.test"]);
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(out.contains(&format!("ANSWER: {BIG}")), "{out}");
    assert_eq!(
        up.tcp(),
        tcp0 + 3,
        "the retry of the UDP query, then dig's TCP query"
    );
}

#[test]
fn silent_upstream_gives_servfail_within_the_timeout() {
    if !root_or_skip("silent_upstream_gives_servfail_within_the_timeout") {
        return;
    }
    let rt = runtime();
    // Bound but never read: queries to it vanish.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let up = FakeUpstream::start(&rt);
    let s = Setup::with_runtime(rt, vec![silent_addr]);
    let t = Instant::now();
    let out = dig(&s.ns, &["+time=8", "example.test"]);
    let took = t.elapsed();
    assert_eq!(status(&out).as_deref(), Some("SERVFAIL"), "{out}");
    assert!(
        took >= FORWARD_TIMEOUT - Duration::from_millis(500),
        "{took:?}"
    );
    assert!(took < FORWARD_TIMEOUT + Duration::from_secs(2), "{took:?}");
    assert_eq!(s.dns.stats().forward_timeouts, 1);

    // Silent first, a working one second: the second is asked one hedge
    // delay later, well inside the deadline (Docker would wait 4 s).
    s.dns.set_upstreams(vec![silent_addr, up.addr]);
    let t = Instant::now();
    assert_eq!(
        short(&s.ns, &["+time=3", "fwd.test"]),
        set(&["198.51.100.7"])
    );
    assert!(t.elapsed() < FORWARD_TIMEOUT, "{:?}", t.elapsed());
    assert_eq!(up.udp(), 1);
    drop(silent);
}

#[test]
fn bad_queries_get_errors_and_bad_tcp_lengths_close() {
    if !root_or_skip("bad_queries_get_errors_and_bad_tcp_lengths_close") {
        return;
    }
    let s = Setup::new(Vec::new());
    let (formerr, closed) =
        s.ns.run(|| {
            use std::io::{Read, Write};
            let to = Some(Duration::from_secs(2));
            let server: SocketAddr = "127.0.0.11:53".parse().expect("addr");
            // A header that promises a question that is not there.
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            udp.set_read_timeout(to).expect("timeout");
            let q = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w'];
            udp.send_to(&q, server).expect("send");
            let mut buf = [0u8; 512];
            let n = udp.recv(&mut buf).expect("a FORMERR reply");
            let formerr = Message::from_vec(&buf[..n]).expect("parses");
            // A TCP length prefix of 65535 (more than any query).
            let mut tcp = std::net::TcpStream::connect(server).expect("connect");
            tcp.set_read_timeout(to).expect("timeout");
            tcp.write_all(&[0xff, 0xff, 0, 0]).expect("write");
            let closed = matches!(tcp.read(&mut buf), Ok(0));
            (formerr, closed)
        })
        .expect("run in the namespace");
    assert_eq!(formerr.id(), 0xabcd);
    assert_eq!(formerr.response_code(), ResponseCode::FormErr);
    assert!(closed, "the server closes the connection");
    // The server still answers.
    assert_eq!(short(&s.ns, &["web"]), set(&["10.0.1.100"]));
    let st = s.dns.stats();
    assert_eq!((st.formerr, st.tcp_rejected), (1, 1), "{st:?}");
}

#[test]
fn stop_and_serve_again() {
    if !root_or_skip("stop_and_serve_again") {
        return;
    }
    let s = Setup::new(Vec::new());
    assert_eq!(short(&s.ns, &["web"]), set(&["10.0.1.100"]));
    s.dns.stop_netns("c1");
    assert!(s.dns.served().is_empty());
    let gone = Instant::now() + Duration::from_secs(5);
    while status(&dig(&s.ns, &["web"])).is_some() {
        assert!(Instant::now() < gone, "still answering after stop_netns");
    }
    // Serving the same namespace again rebinds the port at once.
    s.dns
        .serve_netns("c1", s.ns.name(), vec!["n1".into()])
        .expect("serve again");
    assert_eq!(short(&s.ns, &["web"]), set(&["10.0.1.100"]));
    // A missing namespace is refused with its name in the message.
    let err = s
        .dns
        .serve_netns("c2", "vxnet-no-such-netns", vec![])
        .expect_err("no such namespace");
    assert!(err.to_string().contains("vxnet-no-such-netns"), "{err}");
    assert_eq!(s.dns.served(), ["c1"]);
    drop(s.rt);
}

#[test]
fn a_namespace_made_anew_under_the_same_name_is_served_again() {
    if !root_or_skip("a_namespace_made_anew_under_the_same_name_is_served_again") {
        return;
    }
    let s = Setup::new(Vec::new());
    assert_eq!(short(&s.ns, &["web"]), set(&["10.0.1.100"]));
    // The container's namespace is deleted and made again (a restart);
    // the old sockets live on in the old namespace, the new one is empty.
    let name = s.ns.name();
    for args in [
        &["netns", "del", name][..],
        &["netns", "add", name],
        &["-n", name, "link", "set", "lo", "up"],
    ] {
        vxnet_dataplane::sys::netns::testutil::ip(args).expect("recreate the namespace");
    }
    assert_eq!(status(&dig(&s.ns, &["web"])), None, "nothing answers yet");
    s.dns
        .serve_netns("c1", name, vec!["n1".into()])
        .expect("serve the new namespace");
    assert_eq!(short(&s.ns, &["web"]), set(&["10.0.1.100"]));
}
