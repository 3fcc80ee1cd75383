//! UdpIo against the real kernel: GSO sends, GRO receives, fallbacks and
//! drops, on the loopback of a namespace the test creates (root only).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use vxnet_dataplane::sys::netns::testutil::{TestNetns, root_or_skip};
use vxnet_dataplane::sys::poll::Poller;
use vxnet_dataplane::sys::udp::UdpIo;
use vxnet_proto::batch::{RxBatch, TxBatch};
use vxnet_proto::stats::{Counter, Drop, Stats};

/// Distinct bytes per message so that mixed-up buffers are noticed.
fn pattern(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| tag.wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

/// Datagrams dropped for any send error.
fn send_drops(stats: &Stats) -> u64 {
    Drop::ALL
        .iter()
        .filter(|d| d.stage() == "io" && d.reason().starts_with("udp_send"))
        .map(|d| stats.drops(*d))
        .sum()
}

fn push(tx: &mut TxBatch, dst: SocketAddr, bytes: &[u8], segment: u16, entropy: u32) {
    let start = tx.arena().len();
    tx.arena().extend_from_slice(bytes);
    tx.commit(dst, start, segment, entropy);
}

/// One received buffer: its source, segment size and bytes.
#[derive(Debug)]
struct Got {
    src: SocketAddr,
    segment: u16,
    bytes: Vec<u8>,
    datagram_lens: Vec<usize>,
}

/// Receives until `datagrams` datagrams arrived (GRO buffers count for the
/// datagrams they hold), sleeping in epoll between tries, for at most 5 s.
fn recv_datagrams(io: &mut UdpIo, datagrams: usize) -> Vec<Got> {
    let poller = Poller::new().unwrap();
    poller.add(io.rx_fd(), 0).unwrap();
    let mut rx = RxBatch::new(8, 65_536);
    let mut out = Vec::new();
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ready = Vec::new();
    while count < datagrams {
        assert!(
            Instant::now() < deadline,
            "only {count} of {datagrams} datagrams arrived: {out:?}"
        );
        match io.recv_batch(&mut rx) {
            Ok(n) => {
                assert_eq!(rx.filled, n);
                for i in 0..n {
                    let m = rx.meta[i];
                    let lens: Vec<usize> = rx.datagrams(i).map(<[u8]>::len).collect();
                    count += lens.len();
                    out.push(Got {
                        src: m.src,
                        segment: m.segment,
                        bytes: rx.bufs[i][..m.len].to_vec(),
                        datagram_lens: lens,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                ready.clear();
                poller
                    .wait(&mut ready, Some(Duration::from_millis(100)))
                    .unwrap();
            }
            Err(e) => panic!("recv_batch: {e}"),
        }
    }
    assert_eq!(count, datagrams, "more datagrams than sent: {out:?}");
    out
}

fn pair(ns: &TestNetns, ip: &str, src_ports: usize) -> (UdpIo, UdpIo) {
    let local: SocketAddr = format!("{ip}:0").parse().unwrap();
    ns.run(move || {
        let rx = UdpIo::bind(local, 0).unwrap();
        let tx = UdpIo::bind(local, src_ports).unwrap();
        (rx, tx)
    })
    .unwrap()
}

/// One GSO message of 10 datagrams (the last one short) and three single
/// datagrams from other source ports: the GSO message arrives as one GRO
/// buffer, the singles as they were sent, and the counters add up.
fn gso_gro_round_trip(ip: &str, seg: usize) {
    let ns = TestNetns::new().unwrap();
    let (mut receiver, mut sender) = pair(&ns, ip, 4);
    assert!(receiver.gro_enabled(), "kernel has UDP_GRO");
    assert!(sender.gso_enabled(), "kernel has UDP_SEGMENT");
    let dst = receiver.local_addr();
    assert_ne!(dst.port(), 0);

    // Each worker binds its own receive socket on the same port.
    let again = ns.run(move || UdpIo::bind(dst, 0).map(|io| io.local_addr()));
    assert_eq!(again.unwrap().unwrap(), dst);

    let big = pattern(1, 9 * seg + seg / 2);
    let singles = [pattern(2, 100), pattern(3, 200), pattern(4, 300)];
    let mut tx = TxBatch::new(1 << 20, 64);
    push(&mut tx, dst, &big, seg as u16, 0);
    for (i, s) in singles.iter().enumerate() {
        push(&mut tx, dst, s, 0, i as u32 + 1);
    }
    let stats = Stats::default();
    sender.send_batch(&tx, &stats);

    assert_eq!(stats.counter(Counter::UdpTxDatagrams), 13);
    assert_eq!(stats.counter(Counter::UdpTxBytes), (big.len() + 600) as u64);
    assert_eq!(stats.counter(Counter::UdpTxGsoMessages), 1);
    // One sendmmsg per source socket (entropies 0..3 over 4 sockets).
    assert_eq!(stats.counter(Counter::UdpTxCalls), 4);
    assert_eq!(send_drops(&stats), 0);
    assert_eq!(stats.counter(Counter::GsoFallbacks), 0);

    let got = recv_datagrams(&mut receiver, 13);
    let by_src: HashMap<SocketAddr, &Got> = got.iter().map(|g| (g.src, g)).collect();
    assert_eq!(by_src.len(), 4, "four distinct source ports: {got:?}");
    let g = by_src[&sender.source_addr(0)];
    assert_eq!(g.segment as usize, seg, "GRO kept the GSO message whole");
    assert_eq!(g.bytes, big);
    let mut lens = vec![seg; 9];
    lens.push(seg / 2);
    assert_eq!(g.datagram_lens, lens);
    for (i, s) in singles.iter().enumerate() {
        let g = by_src[&sender.source_addr(i as u32 + 1)];
        assert_eq!(g.segment, 0);
        assert_eq!(&g.bytes, s);
    }
}

#[test]
fn udp_gso_gro_v4() {
    if !root_or_skip("udp_gso_gro_v4") {
        return;
    }
    gso_gro_round_trip("127.0.0.1", 1000);
}

#[test]
fn udp_gso_gro_v6() {
    if !root_or_skip("udp_gso_gro_v6") {
        return;
    }
    gso_gro_round_trip("[::1]", 1200);
}

#[test]
fn udp_gso_over_64_segments_is_split() {
    if !root_or_skip("udp_gso_over_64_segments_is_split") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    let (mut receiver, mut sender) = pair(&ns, "127.0.0.1", 1);
    let data = pattern(5, 100 * 100);
    let mut tx = TxBatch::new(1 << 20, 64);
    push(&mut tx, receiver.local_addr(), &data, 100, 0);
    let stats = Stats::default();
    sender.send_batch(&tx, &stats);
    assert_eq!(stats.counter(Counter::UdpTxGsoMessages), 2);
    assert_eq!(stats.counter(Counter::UdpTxDatagrams), 100);
    assert_eq!(stats.counter(Counter::UdpTxCalls), 1);
    let got = recv_datagrams(&mut receiver, 100);
    let all: Vec<u8> = got.iter().flat_map(|g| g.bytes.clone()).collect();
    assert_eq!(all, data);
    assert!(
        got.iter()
            .all(|g| g.datagram_lens.iter().all(|&l| l == 100))
    );
}

#[test]
fn udp_consecutive_gso_messages_are_packed() {
    if !root_or_skip("udp_consecutive_gso_messages_are_packed") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    let (mut receiver, mut sender) = pair(&ns, "127.0.0.1", 1);
    // Three messages of 47 segments of 1400 bytes; a send takes at most
    // 46 (65 507 bytes). Unpacked that is 46+1 three times; packed, the
    // sends are 46, 46, 46 and 3 segments, one iovec per message slice.
    let msgs: Vec<Vec<u8>> = (0..3).map(|i| pattern(10 + i, 47 * 1400)).collect();
    let mut tx = TxBatch::new(1 << 20, 64);
    for m in &msgs {
        push(&mut tx, receiver.local_addr(), m, 1400, 0);
    }
    let stats = Stats::default();
    sender.send_batch(&tx, &stats);
    assert_eq!(stats.counter(Counter::UdpTxDatagrams), 141);
    assert_eq!(stats.counter(Counter::UdpTxGsoMessages), 4);
    assert_eq!(stats.counter(Counter::UdpTxCalls), 1);
    assert_eq!(send_drops(&stats), 0);
    let got = recv_datagrams(&mut receiver, 141);
    let all: Vec<u8> = got.iter().flat_map(|g| g.bytes.clone()).collect();
    assert_eq!(all, msgs.concat(), "same bytes, same order");
    assert!(
        got.iter()
            .all(|g| g.datagram_lens.iter().all(|&l| l == 1400))
    );
}

#[test]
fn udp_gso_disabled_sends_the_same_bytes_as_datagrams() {
    if !root_or_skip("udp_gso_disabled_sends_the_same_bytes_as_datagrams") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    let (mut receiver, mut sender) = pair(&ns, "127.0.0.1", 2);
    sender.disable_gso();
    let data = pattern(6, 9 * 700 + 123);
    let mut tx = TxBatch::new(1 << 20, 64);
    push(&mut tx, receiver.local_addr(), &data, 700, 7);
    let stats = Stats::default();
    sender.send_batch(&tx, &stats);
    assert_eq!(stats.counter(Counter::UdpTxGsoMessages), 0);
    assert_eq!(stats.counter(Counter::UdpTxDatagrams), 10);
    assert_eq!(stats.counter(Counter::UdpTxBytes), data.len() as u64);
    assert_eq!(stats.counter(Counter::UdpTxCalls), 1);
    let got = recv_datagrams(&mut receiver, 10);
    assert_eq!(got.len(), 10, "ten separate datagrams");
    assert!(got.iter().all(|g| g.segment == 0));
    let all: Vec<u8> = got.iter().flat_map(|g| g.bytes.clone()).collect();
    assert_eq!(all, data);
}

#[test]
fn udp_gso_refused_by_kernel_falls_back() {
    if !root_or_skip("udp_gso_refused_by_kernel_falls_back") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    let (mut receiver, mut sender) = pair(&ns, "127.0.0.1", 1);
    // SO_NO_CHECK: the kernel answers EINVAL to every UDP_SEGMENT send.
    sender.test_refuse_gso().unwrap();
    assert!(sender.gso_enabled());
    let dst = receiver.local_addr();
    let a = pattern(7, 5 * 200);
    let b = pattern(8, 3 * 200 + 50);
    let c = pattern(9, 60);
    let mut tx = TxBatch::new(1 << 20, 64);
    push(&mut tx, dst, &c, 0, 0);
    push(&mut tx, dst, &a, 200, 0);
    push(&mut tx, dst, &b, 200, 0);
    let stats = Stats::default();
    sender.send_batch(&tx, &stats);
    assert!(!sender.gso_enabled(), "GSO switched off after the refusal");
    assert_eq!(stats.counter(Counter::GsoFallbacks), 1);
    assert_eq!(stats.counter(Counter::UdpTxGsoMessages), 0);
    assert_eq!(stats.counter(Counter::UdpTxDatagrams), 1 + 5 + 4);
    assert_eq!(
        stats.counter(Counter::UdpTxBytes),
        (a.len() + b.len() + c.len()) as u64
    );
    assert_eq!(send_drops(&stats), 0);
    let got = recv_datagrams(&mut receiver, 10);
    let all: Vec<u8> = got.iter().flat_map(|g| g.bytes.clone()).collect();
    assert_eq!(all, [c, a, b].concat(), "same bytes, same order");

    // Later batches go out without GSO and without another fallback.
    sender.send_batch(&tx, &stats);
    assert_eq!(stats.counter(Counter::GsoFallbacks), 1);
    assert_eq!(stats.counter(Counter::UdpTxDatagrams), 20);
    recv_datagrams(&mut receiver, 10);
}

/// Issue 12: a GSO send whose segments are larger than the route's MTU
/// (the kernel says EMSGSIZE) is resent datagram by datagram, which the
/// kernel fragments, and arrives whole; GSO stays on for the next sends.
#[test]
fn udp_gso_segments_too_big_for_the_route_are_resent_one_by_one() {
    if !root_or_skip("udp_gso_segments_too_big_for_the_route_are_resent_one_by_one") {
        return;
    }
    let a = TestNetns::new().unwrap();
    let b = TestNetns::new().unwrap();
    a.ip(&[
        "link", "add", "v0", "mtu", "1400", "type", "veth", "peer", "name", "v1",
    ])
    .unwrap();
    a.ip(&["link", "set", "v1", "netns", b.name()]).unwrap();
    a.ip(&["addr", "add", "10.97.0.1/24", "dev", "v0"]).unwrap();
    b.ip(&["addr", "add", "10.97.0.2/24", "dev", "v1"]).unwrap();
    b.ip(&["link", "set", "v1", "mtu", "1400"]).unwrap();
    a.ip(&["link", "set", "v0", "up"]).unwrap();
    b.ip(&["link", "set", "v1", "up"]).unwrap();
    let mut receiver = b
        .run(|| UdpIo::bind("10.97.0.2:0".parse().unwrap(), 0).unwrap())
        .unwrap();
    let mut sender = a
        .run(|| UdpIo::bind("10.97.0.1:0".parse().unwrap(), 1).unwrap())
        .unwrap();
    let dst = receiver.local_addr();
    // 1472-byte datagrams over a 1400-byte link.
    let big = pattern(20, 4 * 1472 + 100);
    let fits = pattern(21, 3 * 1000);
    let mut tx = TxBatch::new(1 << 20, 64);
    push(&mut tx, dst, &big, 1472, 0);
    push(&mut tx, dst, &fits, 1000, 0);
    let stats = Stats::default();
    sender.send_batch(&tx, &stats);
    assert_eq!(send_drops(&stats), 0, "nothing lost");
    assert_eq!(stats.counter(Counter::UdpTxRetried), 5);
    assert_eq!(stats.counter(Counter::UdpTxDatagrams), 5 + 3);
    assert_eq!(
        stats.counter(Counter::UdpTxGsoMessages),
        1,
        "the one that fits"
    );
    assert!(sender.gso_enabled(), "GSO itself was not refused");
    let got = recv_datagrams(&mut receiver, 8);
    let all: Vec<u8> = got.iter().flat_map(|g| g.bytes.clone()).collect();
    assert_eq!(all, [big, fits].concat(), "same bytes, same order");
}

#[test]
fn udp_unsendable_messages_are_dropped_and_counted() {
    if !root_or_skip("udp_unsendable_messages_are_dropped_and_counted") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    let (mut receiver, mut sender) = pair(&ns, "127.0.0.1", 1);
    let ok = pattern(10, 80);
    let mut tx = TxBatch::new(1 << 20, 64);
    // No route in a namespace that only has `lo`: ENETUNREACH.
    push(
        &mut tx,
        "10.1.2.3:4789".parse().unwrap(),
        &pattern(11, 300),
        100,
        0,
    );
    // An IPv6 destination from an IPv4 socket.
    push(
        &mut tx,
        "[::1]:4789".parse().unwrap(),
        &pattern(12, 50),
        0,
        0,
    );
    push(&mut tx, receiver.local_addr(), &ok, 0, 0);
    let stats = Stats::default();
    sender.send_batch(&tx, &stats);
    assert_eq!(stats.drops(Drop::IoUdpSendUnreachable), 3);
    assert_eq!(stats.drops(Drop::IoUdpSendFamily), 1);
    assert_eq!(send_drops(&stats), 3 + 1);
    assert_eq!(stats.counter(Counter::UdpTxDatagrams), 1);
    assert_eq!(stats.counter(Counter::GsoFallbacks), 0, "not a GSO refusal");
    assert!(sender.gso_enabled());
    let got = recv_datagrams(&mut receiver, 1);
    assert_eq!(got[0].bytes, ok);
}

#[test]
fn udp_recv_on_empty_socket_would_block() {
    if !root_or_skip("udp_recv_on_empty_socket_would_block") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    let (mut receiver, _) = pair(&ns, "127.0.0.1", 0);
    let mut rx = RxBatch::new(4, 2048);
    let err = receiver.recv_batch(&mut rx).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    assert_eq!(rx.filled, 0);
}

#[test]
fn udp_truncated_datagram_is_reported_empty() {
    if !root_or_skip("udp_truncated_datagram_is_reported_empty") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    let (mut receiver, mut sender) = pair(&ns, "127.0.0.1", 1);
    let mut tx = TxBatch::new(1 << 20, 64);
    push(&mut tx, receiver.local_addr(), &pattern(13, 200), 0, 0);
    push(&mut tx, receiver.local_addr(), &pattern(14, 50), 0, 0);
    let stats = Stats::default();
    sender.send_batch(&tx, &stats);
    assert_eq!(stats.counter(Counter::UdpTxDatagrams), 2);
    // 64-byte buffers: the 200-byte datagram does not fit.
    let mut rx = RxBatch::new(2, 64);
    let poller = Poller::new().unwrap();
    poller.add(receiver.rx_fd(), 0).unwrap();
    let mut lens = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lens.len() < 2 && Instant::now() < deadline {
        match receiver.recv_batch(&mut rx) {
            Ok(n) => lens.extend(rx.meta[..n].iter().map(|m| m.len)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut ready = Vec::new();
                poller
                    .wait(&mut ready, Some(Duration::from_millis(100)))
                    .unwrap();
            }
            Err(e) => panic!("recv_batch: {e}"),
        }
    }
    assert_eq!(lens, vec![0, 50]);
}

#[test]
fn io_types_can_move_to_worker_threads() {
    fn send<T: Send>() {}
    send::<UdpIo>();
    send::<vxnet_dataplane::sys::tap::Tap>();
    send::<Poller>();
    send::<vxnet_dataplane::sys::poll::Waker>();
}

#[test]
fn udp_full_send_buffer_waits_briefly_then_drops() {
    if !root_or_skip("udp_full_send_buffer_waits_briefly_then_drops") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    // A veth whose qdisc releases 1 kB/s: sent datagrams stay charged to
    // the sender's tiny send buffer, so the kernel soon answers EAGAIN.
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        .unwrap();
    ns.ip(&["addr", "add", "10.98.0.1/24", "dev", "v0"])
        .unwrap();
    ns.ip(&["link", "set", "v0", "up"]).unwrap();
    ns.ip(&["link", "set", "v1", "up"]).unwrap();
    ns.ip(&[
        "neigh",
        "add",
        "10.98.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "v0",
        "nud",
        "permanent",
    ])
    .unwrap();
    let tc = std::process::Command::new("tc")
        .args(["-n", ns.name(), "qdisc", "add", "dev", "v0", "root", "tbf"])
        .args(["rate", "8kbit", "burst", "1600", "limit", "1000000"])
        .status();
    if !matches!(tc, Ok(s) if s.success()) {
        eprintln!("skipping: cannot add a tbf qdisc ({tc:?})");
        return;
    }
    let mut sender = ns
        .run(|| UdpIo::bind("10.98.0.1:0".parse().unwrap(), 1).unwrap())
        .unwrap();
    sender.test_set_send_buffer(4096).unwrap();
    let mut tx = TxBatch::new(1 << 20, 64);
    for i in 0..20 {
        push(
            &mut tx,
            "10.98.0.2:4789".parse().unwrap(),
            &pattern(i, 1000),
            0,
            0,
        );
    }
    let stats = Stats::default();
    let t = Instant::now();
    sender.send_batch(&tx, &stats);
    let elapsed = t.elapsed();
    let sent = stats.counter(Counter::UdpTxDatagrams);
    let dropped = stats.drops(Drop::IoUdpSendFull);
    assert_eq!(send_drops(&stats), dropped, "only for a full queue");
    assert_eq!(sent + dropped, 20, "every datagram sent or counted lost");
    assert!(sent >= 1, "the first datagrams fit");
    assert!(dropped >= 10, "a full buffer drops the rest: {sent} sent");
    assert!(
        elapsed < Duration::from_secs(1),
        "bounded wait: {elapsed:?}"
    );
}
