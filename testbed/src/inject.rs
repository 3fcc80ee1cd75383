//! Malformed VXLAN datagrams and forged ESP packets for robustness tests,
//! sent with a plain UDP socket from inside a host namespace
//! (`vxnet-testbed inject`, run with `ip netns exec`).
//!
//! The ESP kinds work on datagrams captured from a real flow (UDP payloads
//! as hex, one per line, e.g. from `tshark -T fields -e udp.payload`):
//! `replay` sends them again unchanged, `flip` alters one bit of the
//! sequence number (so the packet passes the replay pre-check as new) and one
//! bit of the ciphertext, so only the ICV can reject it. `random-spi` and
//! `plain-vxlan` need no capture. `--src` sends as another host (whose
//! address this namespace does not own), as an adversary on the underlay
//! would.
//!
//! ```text
//!  ESP in UDP (RFC 3948 style, on the VXLAN port):
//!  +---------------+---------------+-----------------+-------------+--------+
//!  | SPI (4, != 0) | seq low (4)   | IV = seq64 (8)  | ciphertext  | ICV 16 |
//!  +---------------+---------------+-----------------+-------------+--------+
//! ```
//!
//! VXLAN:
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::net::{IpAddr, SocketAddr, UdpSocket};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use socket2::{Domain, Protocol, Socket, Type};

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InjectKind {
    /// Pseudo-random bytes of pseudo-random length (0..=200).
    Garbage,
    /// A well-formed VXLAN datagram for the given (unconfigured) VNI.
    UnknownVni,
    /// The I flag clear and reserved bits set, otherwise well-formed.
    BadFlags,
    /// A valid VXLAN header followed by a 4-byte stub: no room for Ethernet.
    Runt,
    /// A well-formed plain VXLAN datagram for the given VNI (sent to an
    /// encrypted VNI it must be refused).
    PlainVxlan,
    /// ESP-shaped datagrams with pseudo-random SPIs no SA has.
    RandomSpi,
    /// Captured datagrams (`--from`), sent again unchanged.
    Replay,
    /// Captured datagrams (`--from`) with a sequence-number bit and a
    /// ciphertext bit flipped.
    Flip,
    /// Zero-length datagrams.
    Empty,
    /// Forged key-exchange control messages: a first word of 0 (the
    /// control marker), then pseudo-random bytes no static key signed.
    Control,
}

impl InjectKind {
    /// The `--kind` value naming this kind.
    pub fn as_arg(self) -> &'static str {
        match self {
            InjectKind::Garbage => "garbage",
            InjectKind::UnknownVni => "unknown-vni",
            InjectKind::BadFlags => "bad-flags",
            InjectKind::Runt => "runt",
            InjectKind::PlainVxlan => "plain-vxlan",
            InjectKind::RandomSpi => "random-spi",
            InjectKind::Replay => "replay",
            InjectKind::Flip => "flip",
            InjectKind::Empty => "empty",
            InjectKind::Control => "control",
        }
    }

    /// Whether the kind works on captured datagrams (`--from`).
    pub fn needs_capture(self) -> bool {
        matches!(self, InjectKind::Replay | InjectKind::Flip)
    }
}

/// ESP header (SPI, sequence number) plus the explicit IV.
const ESP_HEADER_AND_IV: usize = 16;
/// The AES-GCM ICV.
const ESP_ICV: usize = 16;

/// Parses captured datagrams: one hex string per line (colons and blank
/// lines ignored, as tshark may print either).
pub fn parse_hex_lines(text: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let hex: String = line
            .chars()
            .filter(|c| !c.is_whitespace() && *c != ':')
            .collect();
        if hex.is_empty() {
            continue;
        }
        if hex.len() % 2 != 0 {
            bail!("line {}: odd number of hex digits", n + 1);
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
                    .with_context(|| format!("line {}: bad hex {:?}", n + 1, hex.get(i..i + 2)))
            })
            .collect::<Result<Vec<u8>>>()?;
        out.push(bytes);
    }
    Ok(out)
}

/// One captured ESP datagram, altered as `kind` says (`Replay`: unchanged,
/// `Flip`: bit 24 of the sequence number and one bit of the ciphertext,
/// chosen by `seq`). Datagrams too short to be ESP are returned unchanged.
pub fn alter_captured(kind: InjectKind, captured: &[u8], seq: u64) -> Vec<u8> {
    let mut d = captured.to_vec();
    if kind != InjectKind::Flip || d.len() <= ESP_HEADER_AND_IV + ESP_ICV {
        return d;
    }
    // The sequence number is authenticated (in the AAD), so this flip alone
    // already breaks the ICV; it also moves the packet 2^24 ahead so the
    // receiver's replay pre-check lets it through to the ICV check.
    if let Some(b) = d.get_mut(4) {
        *b ^= 0x01;
    }
    let body = d.len() - ESP_HEADER_AND_IV - ESP_ICV;
    let bit = (seq as usize) % (body * 8);
    if let Some(b) = d.get_mut(ESP_HEADER_AND_IV + bit / 8) {
        *b ^= 1 << (bit % 8);
    }
    d
}

const VXLAN_FLAG_I: u8 = 0x08;

/// A minimal inner Ethernet frame: broadcast, from a locally administered
/// MAC, IPv4 ethertype, zero payload up to 60 bytes.
fn inner_frame() -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x02, 0x99, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

fn vxlan_header(flags: u8, reserved: u8, vni: u32) -> [u8; 8] {
    let v = vni.to_be_bytes();
    [
        flags, reserved, reserved, reserved, v[1], v[2], v[3], reserved,
    ]
}

/// xorshift64: deterministic "garbage" without a rand dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Builds datagram number `seq` of `kind`; `vni` is used by the kinds that
/// carry a header.
pub fn craft(kind: InjectKind, vni: u32, seq: u64) -> Vec<u8> {
    match kind {
        InjectKind::Garbage => {
            let mut s = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let len = (next(&mut s) % 201) as usize;
            (0..len).map(|_| next(&mut s) as u8).collect()
        }
        InjectKind::UnknownVni | InjectKind::PlainVxlan => {
            let mut d = vxlan_header(VXLAN_FLAG_I, 0, vni).to_vec();
            d.extend(inner_frame());
            d
        }
        InjectKind::BadFlags => {
            let mut d = vxlan_header(0x80, 0xff, vni).to_vec();
            d.extend(inner_frame());
            d
        }
        InjectKind::Runt => {
            let mut d = vxlan_header(VXLAN_FLAG_I, 0, vni).to_vec();
            d.extend([0xff, 0xff, 0xff, 0xff]);
            d
        }
        InjectKind::RandomSpi => {
            let mut s = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed;
            let mut d = Vec::with_capacity(ESP_HEADER_AND_IV + 100 + ESP_ICV);
            // Never 0 (a control message) and never a VXLAN flags word.
            let spi = (next(&mut s) as u32 | 0x0100_0000) & 0xf7ff_ffff;
            d.extend(spi.to_be_bytes());
            let seq64 = seq + 1;
            d.extend((seq64 as u32).to_be_bytes());
            d.extend(seq64.to_be_bytes());
            d.extend((0..100 + ESP_ICV).map(|_| next(&mut s) as u8));
            d
        }
        InjectKind::Empty => Vec::new(),
        InjectKind::Control => {
            let mut s = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xc0de;
            let mut d = vec![0u8; 4];
            d.extend((0..120).map(|_| next(&mut s) as u8));
            d
        }
        // Without a capture there is nothing to replay: an ESP-shaped
        // datagram with a random SPI is the closest stand-in.
        InjectKind::Replay | InjectKind::Flip => craft(InjectKind::RandomSpi, vni, seq),
    }
}

/// Sends `count` datagrams of `kind` to `to`, from `src` if given (see
/// [`send_captured`]); returns how many were sent.
pub fn send(
    to: SocketAddr,
    src: Option<IpAddr>,
    kind: InjectKind,
    vni: u32,
    count: u64,
) -> Result<u64> {
    send_with(to, src, count, |seq| craft(kind, vni, seq))
}

/// Sends every captured datagram (altered as `kind` says) once, in order,
/// up to `count`; returns how many were sent. With `src`, the datagrams
/// carry that source address although this namespace does not own it
/// (`IP_TRANSPARENT`, needs CAP_NET_ADMIN): an adversary on the underlay
/// replaying a host's packets as that host.
pub fn send_captured(
    to: SocketAddr,
    src: Option<IpAddr>,
    kind: InjectKind,
    captured: &[Vec<u8>],
    count: u64,
) -> Result<u64> {
    let n = count.min(captured.len() as u64);
    send_with(to, src, n, |seq| {
        let d = usize::try_from(seq)
            .ok()
            .and_then(|i| captured.get(i))
            .map_or(&[][..], Vec::as_slice);
        alter_captured(kind, d, seq)
    })
}

fn send_with(
    to: SocketAddr,
    src: Option<IpAddr>,
    count: u64,
    mut make: impl FnMut(u64) -> Vec<u8>,
) -> Result<u64> {
    let sock = match src {
        None => {
            let bind: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            UdpSocket::bind(bind).context("binding the injection socket")?
        }
        Some(ip) => {
            let s = Socket::new(Domain::for_address(to), Type::DGRAM, Some(Protocol::UDP))?;
            if !ip.is_ipv4() {
                bail!("--src {ip}: only IPv4 sources can be spoofed");
            }
            s.set_ip_transparent(true)
                .context("IP_TRANSPARENT (needs CAP_NET_ADMIN)")?;
            s.bind(&SocketAddr::new(ip, 0).into())
                .with_context(|| format!("binding the injection socket to {ip}"))?;
            s.into()
        }
    };
    let mut sent = 0;
    for seq in 0..count {
        let d = make(seq);
        sock.send_to(&d, to)
            .with_context(|| format!("sending datagram {seq} to {to}"))?;
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_shapes() {
        let u = craft(InjectKind::UnknownVni, 0x00ab_cdef, 0);
        assert_eq!(&u[..8], &[0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
        assert_eq!(u.len(), 8 + 60);
        let b = craft(InjectKind::BadFlags, 4096, 0);
        assert_eq!(b[0] & VXLAN_FLAG_I, 0, "I flag must be clear");
        assert_eq!(&b[4..7], &[0x00, 0x10, 0x00]);
        let r = craft(InjectKind::Runt, 4096, 0);
        assert!(
            r.len() < 8 + 14,
            "runt must be shorter than VXLAN + Ethernet"
        );
        assert_eq!(r[0], VXLAN_FLAG_I);
        let g1 = craft(InjectKind::Garbage, 0, 1);
        let g2 = craft(InjectKind::Garbage, 0, 2);
        assert!(g1.len() <= 200 && g2.len() <= 200);
        assert_ne!(g1, g2);
        assert_eq!(g1, craft(InjectKind::Garbage, 0, 1), "deterministic");
        for k in InjectKind::value_variants() {
            let v = k.to_possible_value().unwrap();
            assert_eq!(v.get_name(), k.as_arg());
        }
    }

    #[test]
    fn esp_kinds() {
        let p = craft(InjectKind::PlainVxlan, 4097, 0);
        assert_eq!(&p[..8], &[0x08, 0, 0, 0, 0x00, 0x10, 0x01, 0]);
        let r1 = craft(InjectKind::RandomSpi, 0, 1);
        let r2 = craft(InjectKind::RandomSpi, 0, 2);
        assert_eq!(r1.len(), ESP_HEADER_AND_IV + 100 + ESP_ICV);
        assert_ne!(&r1[..4], &r2[..4], "SPIs differ");
        for r in [&r1, &r2] {
            assert_ne!(&r[..4], &[0, 0, 0, 0], "SPI 0 is a control message");
            assert_eq!(r[0] & VXLAN_FLAG_I, 0, "must not look like VXLAN");
        }
        // The IV carries the 64-bit sequence number, its low half on the wire.
        assert_eq!(&r1[4..8], &2u32.to_be_bytes());
        assert_eq!(&r1[8..16], &2u64.to_be_bytes());
    }

    #[test]
    fn captured_alterations() {
        let caps = parse_hex_lines("0a0b0c0d00000005\n\n0a:0b:0c:0d:00:00:00:06:00\n").unwrap();
        assert_eq!(caps.len(), 2);
        assert_eq!(caps[0], [0x0a, 0x0b, 0x0c, 0x0d, 0, 0, 0, 5]);
        assert_eq!(caps[1].len(), 9);
        assert!(parse_hex_lines("abc").is_err());
        assert!(parse_hex_lines("zz").is_err());

        let esp: Vec<u8> = (0..80u8).collect();
        assert_eq!(alter_captured(InjectKind::Replay, &esp, 3), esp);
        for seq in 0..200 {
            let f = alter_captured(InjectKind::Flip, &esp, seq);
            assert_eq!(f.len(), esp.len());
            let diff: u32 = f.iter().zip(&esp).map(|(a, b)| (a ^ b).count_ones()).sum();
            assert_eq!(diff, 2, "one sequence bit and one ciphertext bit");
            assert_eq!(&f[..4], &esp[..4], "SPI kept");
            assert_eq!(f[4], esp[4] ^ 1);
            assert_eq!(&f[f.len() - ESP_ICV..], &esp[esp.len() - ESP_ICV..]);
        }
        // Too short to be ESP: left alone rather than indexed out of range.
        assert_eq!(alter_captured(InjectKind::Flip, &[1, 2, 3], 0), [1, 2, 3]);
    }

    #[test]
    fn send_captured_sends_each_once() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let caps = vec![vec![1u8; 40], vec![2u8; 40]];
        assert_eq!(
            send_captured(to, None, InjectKind::Replay, &caps, 10).unwrap(),
            2
        );
        let mut buf = [0u8; 64];
        for c in &caps {
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], c.as_slice());
        }
    }

    #[test]
    fn send_reaches_a_local_socket() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        assert_eq!(send(to, None, InjectKind::Runt, 7, 3).unwrap(), 3);
        let mut buf = [0u8; 64];
        let (n, _) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], craft(InjectKind::Runt, 7, 0).as_slice());
    }

    #[test]
    fn empty_and_control_from_a_chosen_source() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let src: IpAddr = "127.0.0.9".parse().unwrap();
        match send(to, Some(src), InjectKind::Empty, 0, 1) {
            Ok(n) => assert_eq!(n, 1),
            // IP_TRANSPARENT needs CAP_NET_ADMIN.
            Err(e) if !crate::process::is_root() => {
                eprintln!("skipped (not root): {e:#}");
                return;
            }
            Err(e) => panic!("{e:#}"),
        }
        send(to, Some(src), InjectKind::Control, 0, 1).unwrap();
        let mut buf = [0u8; 256];
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!((n, from.ip()), (0, src), "an empty datagram from {src}");
        let (n, _) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..4], &[0; 4], "the control marker");
        assert_eq!(n, 124);
    }
}
