//! IPv6 neighbour discovery (RFC 4861): neighbour solicitation in, neighbour
//! advertisement out, for the local ND proxy. CONTRACT STUB: to be implemented.
use super::{MacAddr, WireError};
use std::net::Ipv6Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Solicit {
    pub src_mac: MacAddr,
    /// Source IPv6 address (may be unspecified for DAD).
    pub src_ip: Ipv6Addr,
    pub target: Ipv6Addr,
}

/// Reads a neighbour solicitation from a whole Ethernet frame (Ethernet,
/// IPv6 with hop limit 255, ICMPv6 type 135). `Ok(None)` for other valid
/// IPv6 frames.
pub fn parse_solicit(frame: &[u8]) -> Result<Option<Solicit>, WireError> {
    let _ = frame;
    todo!()
}

/// Writes a complete Ethernet frame holding a solicited neighbour
/// advertisement for `sol.target` at `answer` (with target link-layer
/// address option and a valid ICMPv6 checksum); returns its length.
pub fn emit_advert(sol: &Solicit, answer: MacAddr, out: &mut [u8]) -> usize {
    let _ = (sol, answer, out);
    todo!()
}
