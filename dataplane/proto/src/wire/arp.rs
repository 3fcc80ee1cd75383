//! ARP over Ethernet for IPv4 (RFC 826), enough for the local ARP proxy.
//! CONTRACT STUB: to be implemented.
use super::{MacAddr, WireError};
use std::net::Ipv4Addr;

/// An ARP request "who has `target_ip`? tell `sender_ip`".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// Reads an ARP request from a whole Ethernet frame. `Ok(None)` when the
/// frame is valid ARP but not a request (a reply, say).
pub fn parse_request(frame: &[u8]) -> Result<Option<Request>, WireError> {
    let _ = frame;
    todo!()
}

/// Writes a complete Ethernet frame holding the reply "`req.target_ip` is at
/// `answer`" addressed to the requester; returns its length (42).
pub fn emit_reply(req: &Request, answer: MacAddr, out: &mut [u8]) -> usize {
    let _ = (req, answer, out);
    todo!()
}
