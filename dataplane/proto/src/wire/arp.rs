//! ARP over Ethernet for IPv4 (RFC 826), enough for the local ARP proxy:
//! this module reads requests from whole Ethernet frames and writes replies,
//! and the gratuitous requests (RFC 5227 announcements) that tell
//! neighbours an address moved.
//!
//! ```text
//!  0       6      12  14   16   18 19 20   22        28     32        38     42
//! +-------+-------+----+----+----+--+--+----+---------+------+---------+------+
//! |eth dst|eth src|0806|htyp|ptyp|hl|pl|oper|sndr mac |sndrip|tgt mac  |tgt ip|
//! +-------+-------+----+----+----+--+--+----+---------+------+---------+------+
//! ```
use super::{MacAddr, WireError};
use std::net::Ipv4Addr;

pub const ETHERTYPE: u16 = 0x0806;
/// Ethernet header + ARP body for Ethernet/IPv4.
pub const FRAME_LEN: usize = 42;
const OP_REQUEST: u16 = 1;
const OP_REPLY: u16 = 2;

/// An ARP request "who has `target_ip`? tell `sender_ip`".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

impl Request {
    /// A gratuitous ARP announces the sender's own address; nobody answers it.
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }
}

fn mac(b: &[u8]) -> MacAddr {
    MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// Reads an ARP request from a whole Ethernet frame. `Ok(None)` when the
/// frame is valid ARP but not a request (a reply, say), and for frames that
/// are not ARP at all (another EtherType), so the caller may try it on any
/// frame. Errors for ARP frames that are cut short or are not
/// Ethernet/IPv4 ARP.
pub fn parse_request(frame: &[u8]) -> Result<Option<Request>, WireError> {
    let eth = frame.get(..14).ok_or(WireError::Truncated)?;
    if u16::from_be_bytes([eth[12], eth[13]]) != ETHERTYPE {
        return Ok(None);
    }
    // Trailing Ethernet padding (frames are padded to 60 bytes) is ignored.
    let a = frame.get(14..FRAME_LEN).ok_or(WireError::Truncated)?;
    let htype = u16::from_be_bytes([a[0], a[1]]);
    let ptype = u16::from_be_bytes([a[2], a[3]]);
    if htype != 1 || ptype != 0x0800 || a[4] != 6 || a[5] != 4 {
        return Err(WireError::Unsupported);
    }
    match u16::from_be_bytes([a[6], a[7]]) {
        OP_REQUEST => {}
        OP_REPLY => return Ok(None),
        _ => return Err(WireError::Malformed),
    }
    let sender_mac = mac(&a[8..14]);
    if sender_mac.is_multicast() {
        return Err(WireError::Malformed);
    }
    Ok(Some(Request {
        sender_mac,
        sender_ip: Ipv4Addr::new(a[14], a[15], a[16], a[17]),
        target_ip: Ipv4Addr::new(a[24], a[25], a[26], a[27]),
    }))
}

/// Writes a complete Ethernet frame holding the reply "`req.target_ip` is at
/// `answer`" addressed to the requester; returns its length (42).
///
/// # Panics
/// If `out` is shorter than [`FRAME_LEN`] (a caller's sizing mistake).
pub fn emit_reply(req: &Request, answer: MacAddr, out: &mut [u8]) -> usize {
    let f = &mut out[..FRAME_LEN];
    f[0..6].copy_from_slice(&req.sender_mac.0);
    f[6..12].copy_from_slice(&answer.0);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, OP_REPLY as u8]);
    f[22..28].copy_from_slice(&answer.0);
    f[28..32].copy_from_slice(&req.target_ip.octets());
    f[32..38].copy_from_slice(&req.sender_mac.0);
    f[38..42].copy_from_slice(&req.sender_ip.octets());
    FRAME_LEN
}

/// Writes a complete Ethernet frame holding a gratuitous ARP request
/// ("`ip` is at `mac`", an ARP announcement of RFC 5227 section 2.3:
/// sender and target IP both `ip`, target hardware address zero) to the
/// broadcast address; returns its length (42). Linux replaces the MAC of
/// an existing neighbour entry on it at once (`arp_is_garp`).
///
/// # Panics
/// If `out` is shorter than [`FRAME_LEN`] (a caller's sizing mistake).
pub fn emit_gratuitous(ip: Ipv4Addr, mac: MacAddr, out: &mut [u8]) -> usize {
    let f = &mut out[..FRAME_LEN];
    f[0..6].copy_from_slice(&MacAddr::BROADCAST.0);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, OP_REQUEST as u8]);
    f[22..28].copy_from_slice(&mac.0);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&[0; 6]);
    f[38..42].copy_from_slice(&ip.octets());
    FRAME_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Who has 10.0.0.3? Tell 10.0.0.2" from a container (02:42:0a:00:00:02),
    /// as the kernel sends it (not padded; the NIC pads on a real wire).
    pub(crate) const REQUEST: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0x0a, 0x00, 0x00, 0x02, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x42, 0x0a, 0x00, 0x00, 0x02, 0x0a, 0x00,
        0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x03,
    ];

    #[test]
    fn parse_captured_request() {
        let r = parse_request(&REQUEST).unwrap().unwrap();
        assert_eq!(r.sender_mac, "02:42:0a:00:00:02".parse().unwrap());
        assert_eq!(r.sender_ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(r.target_ip, Ipv4Addr::new(10, 0, 0, 3));
        assert!(!r.is_gratuitous());
        // Padded to the Ethernet minimum: same answer.
        let mut padded = REQUEST.to_vec();
        padded.resize(60, 0);
        assert_eq!(parse_request(&padded).unwrap(), Some(r));
    }

    #[test]
    fn reply_roundtrip_and_etherparse() {
        let r = parse_request(&REQUEST).unwrap().unwrap();
        let answer: MacAddr = "02:42:0a:00:00:03".parse().unwrap();
        let mut out = [0u8; 64];
        assert_eq!(emit_reply(&r, answer, &mut out), 42);
        let f = &out[..42];
        assert_eq!(&f[0..6], &r.sender_mac.0);
        assert_eq!(&f[6..12], &answer.0);
        // A reply is valid ARP but not a request.
        assert_eq!(parse_request(f), Ok(None));
        // etherparse 0.16 has no ARP; check the fields against RFC 826.
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(
            &f[14..22],
            &[0, 1, 0x08, 0, 6, 4, 0, 2],
            "Ethernet/IPv4 reply"
        );
        assert_eq!(&f[22..28], &answer.0, "sender hw = answer");
        assert_eq!(&f[28..32], &[10, 0, 0, 3], "sender ip = asked-for ip");
        assert_eq!(&f[32..38], &r.sender_mac.0, "target hw = requester");
        assert_eq!(&f[38..42], &[10, 0, 0, 2], "target ip = requester");
    }

    #[test]
    fn gratuitous_request_announces_itself() {
        let mac: MacAddr = "02:42:0a:00:00:09".parse().unwrap();
        let ip = Ipv4Addr::new(10, 0, 0, 3);
        let mut out = [0u8; FRAME_LEN];
        assert_eq!(emit_gratuitous(ip, mac, &mut out), FRAME_LEN);
        let r = parse_request(&out).unwrap().unwrap();
        assert!(r.is_gratuitous());
        assert_eq!((r.sender_mac, r.sender_ip, r.target_ip), (mac, ip, ip));
        assert_eq!(&out[0..6], &[0xff; 6]);
        assert_eq!(&out[32..38], &[0; 6], "target hardware address unknown");
    }

    #[test]
    fn malformed() {
        for n in 0..42 {
            let e = parse_request(&REQUEST[..n]);
            assert_eq!(e, Err(WireError::Truncated), "len {n}");
        }
        let mut ipv6 = REQUEST;
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(parse_request(&ipv6), Ok(None));
        let mut bad_htype = REQUEST;
        bad_htype[15] = 6;
        assert_eq!(parse_request(&bad_htype), Err(WireError::Unsupported));
        let mut bad_op = REQUEST;
        bad_op[21] = 9;
        assert_eq!(parse_request(&bad_op), Err(WireError::Malformed));
        let mut mcast_sender = REQUEST;
        mcast_sender[22] = 0x01;
        assert_eq!(parse_request(&mcast_sender), Err(WireError::Malformed));
    }
}
