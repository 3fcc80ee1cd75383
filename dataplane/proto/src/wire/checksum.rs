//! Internet checksum (RFC 1071) helpers. CONTRACT STUB: to be implemented.
use std::net::{Ipv4Addr, Ipv6Addr};

/// One's-complement sum of `data` added to `initial`, not folded.
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let _ = (data, initial);
    todo!()
}

/// Folds a sum to 16 bits and complements it.
pub fn finish(sum: u64) -> u16 {
    let _ = sum;
    todo!()
}

/// Sum of the IPv4 pseudo header.
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u64 {
    let _ = (src, dst, proto, len);
    todo!()
}

/// Sum of the IPv6 pseudo header.
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: u32) -> u64 {
    let _ = (src, dst, proto, len);
    todo!()
}
