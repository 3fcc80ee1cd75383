//! TAP device tests against the real kernel, inside a namespace the test
//! creates (root only; skipped otherwise).
use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use vxnet_dataplane::sys::netns::testutil::{TestNetns, root_or_skip};
use vxnet_dataplane::sys::poll::Poller;
use vxnet_dataplane::sys::tap::{Tap, VNET_HDR_LEN};

const TAP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const TAP_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

/// A namespace with a TAP `vxt0` up as 10.99.0.1/24 and a permanent
/// neighbour 10.99.0.2 behind it.
fn setup() -> (TestNetns, Tap) {
    let ns = TestNetns::new().unwrap();
    let tap = ns.run(|| Tap::create("vxt0")).unwrap().unwrap();
    assert_eq!(tap.name(), "vxt0");
    ns.ip(&["link", "set", "vxt0", "address", "02:00:00:00:00:01"])
        .unwrap();
    ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "vxt0"])
        .unwrap();
    ns.ip(&["link", "set", "vxt0", "up"]).unwrap();
    ns.ip(&[
        "neigh",
        "add",
        "10.99.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "vxt0",
        "nud",
        "permanent",
    ])
    .unwrap();
    (ns, tap)
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for pair in data.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        let lo = pair.get(1).copied().map_or(0, u32::from);
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Ethernet + IPv4 + UDP from the peer to the TAP's address; the UDP
/// checksum field is left to the caller.
fn udp_frame(dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&TAP_MAC);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&PEER_IP.octets());
    ip[16..20].copy_from_slice(&TAP_IP.octets());
    let c = !checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&9999u16.to_be_bytes());
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Reads frames from the TAP until `want` accepts one (other traffic such as
/// IPv6 router solicitations is skipped), waiting in epoll, for at most 5 s.
fn read_until(tap: &Tap, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let poller = Poller::new().unwrap();
    poller.add(tap.as_raw_fd(), 0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; VNET_HDR_LEN + 65_550];
    let mut ready = Vec::new();
    while Instant::now() < deadline {
        match tap.read(&mut buf) {
            Ok(n) if want(&buf[..n]) => return buf[..n].to_vec(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                ready.clear();
                poller
                    .wait(&mut ready, Some(Duration::from_millis(100)))
                    .unwrap();
            }
            Err(e) => panic!("TAP read: {e}"),
        }
    }
    panic!("no matching frame read from the TAP within 5 s");
}

#[test]
fn tap_offloads_and_frames_both_ways() {
    if !root_or_skip("tap_offloads_and_frames_both_ways") {
        return;
    }
    let (ns, tap) = setup();
    let off = tap.offloads();
    eprintln!("TAP offloads accepted: {off:?}");
    assert!(off.csum && off.tso4 && off.tso6, "{off:?}");

    let (sender, receiver) = ns
        .run(|| {
            (
                UdpSocket::bind((TAP_IP, 0)).unwrap(),
                UdpSocket::bind((TAP_IP, 0)).unwrap(),
            )
        })
        .unwrap();

    // From the kernel out through the TAP: vnet header ‖ Ethernet frame.
    let payload = b"vxnet tap read test";
    sender.send_to(payload, (PEER_IP, 9999)).unwrap();
    let got = read_until(&tap, |b| {
        b.len() > VNET_HDR_LEN + 42 && b[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == [0x08, 0x00]
    });
    let (hdr, frame) = got.split_at(VNET_HDR_LEN);
    assert_eq!(&frame[0..6], &PEER_MAC);
    assert_eq!(&frame[6..12], &TAP_MAC);
    assert_eq!(frame[14 + 9], 17, "IPv4 protocol UDP");
    assert_eq!(&frame[14 + 12..14 + 16], &TAP_IP.octets());
    assert_eq!(&frame[14 + 16..14 + 20], &PEER_IP.octets());
    let src_port = sender.local_addr().unwrap().port();
    assert_eq!(&frame[34..36], &src_port.to_be_bytes());
    assert_eq!(&frame[36..38], &9999u16.to_be_bytes());
    assert_eq!(&frame[42..], payload);
    assert_eq!(hdr[1], 0, "no GSO for a small datagram");
    if hdr[0] & 1 != 0 {
        // NEEDS_CSUM: the checksum starts at the UDP header, field at +6.
        assert_eq!(u16::from_le_bytes([hdr[6], hdr[7]]), 34);
        assert_eq!(u16::from_le_bytes([hdr[8], hdr[9]]), 6);
    }

    // Into the kernel through the TAP: a datagram to `receiver`.
    let port = receiver.local_addr().unwrap().port();
    let payload = b"vxnet tap write test";
    let mut buf = vec![0u8; VNET_HDR_LEN];
    buf.extend_from_slice(&udp_frame(port, payload));
    assert_eq!(tap.write(&buf).unwrap(), buf.len());
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rbuf = [0u8; 128];
    let (n, from) = receiver.recv_from(&mut rbuf).unwrap();
    assert_eq!(&rbuf[..n], payload);
    assert_eq!(from, SocketAddr::from((PEER_IP, 9999)));
}

#[test]
fn tap_write_uso_super_frame_is_segmented_by_the_kernel() {
    if !root_or_skip("tap_write_uso_super_frame_is_segmented_by_the_kernel") {
        return;
    }
    let (ns, tap) = setup();
    let receiver = ns.run(|| UdpSocket::bind((TAP_IP, 0)).unwrap()).unwrap();
    let port = receiver.local_addr().unwrap().port();

    // 250 bytes in segments of 100: the kernel must deliver 100, 100, 50.
    let payload: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
    let mut frame = udp_frame(port, &payload);
    // CHECKSUM_PARTIAL: the UDP checksum field holds the pseudo-header sum.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&PEER_IP.octets());
    pseudo.extend_from_slice(&TAP_IP.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    let partial = checksum(&pseudo, 0);
    frame[40..42].copy_from_slice(&partial.to_be_bytes());
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    hdr[1] = 5; // VIRTIO_NET_HDR_GSO_UDP_L4
    hdr[2..4].copy_from_slice(&42u16.to_le_bytes()); // hdr_len
    hdr[4..6].copy_from_slice(&100u16.to_le_bytes()); // gso_size
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
    hdr[8..10].copy_from_slice(&6u16.to_le_bytes()); // csum_offset
    let mut buf = hdr.to_vec();
    buf.extend_from_slice(&frame);
    assert_eq!(tap.write(&buf).unwrap(), buf.len());

    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let mut rbuf = [0u8; 512];
    for want in [100, 100, 50] {
        let n = receiver.recv(&mut rbuf).unwrap();
        assert_eq!(n, want);
        got.extend_from_slice(&rbuf[..n]);
    }
    assert_eq!(got, payload);
}

#[test]
fn tap_writev_gathers_one_frame_from_pieces() {
    if !root_or_skip("tap_writev_gathers_one_frame_from_pieces") {
        return;
    }
    let (ns, tap) = setup();
    let receiver = ns.run(|| UdpSocket::bind((TAP_IP, 0)).unwrap()).unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let port = receiver.local_addr().unwrap().port();
    let mut rbuf = [0u8; 512];

    // vnet header, headers and payload in separate iovecs, the payload
    // itself in two: the way the dataplane writes received frames.
    let payload: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    let frame = udp_frame(port, &payload);
    let hdr = [0u8; VNET_HDR_LEN];
    let iov = [
        IoSlice::new(&hdr),
        IoSlice::new(&frame[..42]),
        IoSlice::new(&frame[42..142]),
        IoSlice::new(&frame[142..]),
    ];
    assert_eq!(tap.writev(&iov).unwrap(), VNET_HDR_LEN + frame.len());
    let n = receiver.recv(&mut rbuf).unwrap();
    assert_eq!(&rbuf[..n], &payload[..], "one datagram, all of it");

    // A GSO frame in pieces is segmented like a contiguous one.
    let mut frame = udp_frame(port, &payload[..250]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&PEER_IP.octets());
    pseudo.extend_from_slice(&TAP_IP.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(8u16 + 250).to_be_bytes());
    let partial = checksum(&pseudo, 0);
    frame[40..42].copy_from_slice(&partial.to_be_bytes());
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr[0] = 1; // NEEDS_CSUM
    hdr[1] = 5; // GSO_UDP_L4
    hdr[2..4].copy_from_slice(&42u16.to_le_bytes());
    hdr[4..6].copy_from_slice(&100u16.to_le_bytes());
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&6u16.to_le_bytes());
    let iov = [
        IoSlice::new(&hdr),
        IoSlice::new(&frame[..42]),
        IoSlice::new(&frame[42..170]),
        IoSlice::new(&frame[170..]),
    ];
    if tap.offloads().uso {
        assert_eq!(tap.writev(&iov).unwrap(), VNET_HDR_LEN + frame.len());
        let mut got = Vec::new();
        for want in [100, 100, 50] {
            let n = receiver.recv(&mut rbuf).unwrap();
            assert_eq!(n, want);
            got.extend_from_slice(&rbuf[..n]);
        }
        assert_eq!(got, &payload[..250]);
    }

    // More iovecs than the kernel takes in one call: refused, not cut.
    let many = vec![IoSlice::new(&hdr[..1]); 2000];
    let err = tap.writev(&many).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn tap_read_on_empty_queue_would_block() {
    if !root_or_skip("tap_read_on_empty_queue_would_block") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    // Link down: the kernel sends nothing through it.
    let tap = ns.run(|| Tap::create("vxt%d")).unwrap().unwrap();
    assert_eq!(tap.name(), "vxt0", "kernel expands the name pattern");
    let mut buf = [0u8; 2048];
    let err = tap.read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
}
