//! Malformed VXLAN datagrams for robustness tests, sent with a plain UDP
//! socket from inside a host namespace (`vxnet-testbed inject`, run with
//! `ip netns exec`).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::net::{SocketAddr, UdpSocket};

use anyhow::{Context, Result};
use clap::ValueEnum;

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
}

impl InjectKind {
    /// The `--kind` value naming this kind.
    pub fn as_arg(self) -> &'static str {
        match self {
            InjectKind::Garbage => "garbage",
            InjectKind::UnknownVni => "unknown-vni",
            InjectKind::BadFlags => "bad-flags",
            InjectKind::Runt => "runt",
        }
    }
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
        InjectKind::UnknownVni => {
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
    }
}

/// Sends `count` datagrams of `kind` to `to`; returns how many were sent.
pub fn send(to: SocketAddr, kind: InjectKind, vni: u32, count: u64) -> Result<u64> {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind).context("binding the injection socket")?;
    let mut sent = 0;
    for seq in 0..count {
        let d = craft(kind, vni, seq);
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
        for k in [
            InjectKind::Garbage,
            InjectKind::UnknownVni,
            InjectKind::BadFlags,
            InjectKind::Runt,
        ] {
            let v = k.to_possible_value().unwrap();
            assert_eq!(v.get_name(), k.as_arg());
        }
    }

    #[test]
    fn send_reaches_a_local_socket() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        assert_eq!(send(to, InjectKind::Runt, 7, 3).unwrap(), 3);
        let mut buf = [0u8; 64];
        let (n, _) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], craft(InjectKind::Runt, 7, 0).as_slice());
    }
}
