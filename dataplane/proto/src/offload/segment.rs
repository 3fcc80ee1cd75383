//! GSO segmentation. CONTRACT STUB: to be implemented.
use super::OffloadError;
use crate::wire::vnet::VnetHdr;

/// The shape of what [`segment`] appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmented {
    /// Number of segments written.
    pub count: usize,
    /// Length of each segment including prefix and tailroom, except the last
    /// which may be shorter: exactly what UDP_SEGMENT wants.
    pub stride: usize,
    /// Total bytes appended.
    pub total: usize,
}

/// Cuts the GSO `frame` (Ethernet + IPv4/IPv6 + TCP/UDP + payload as read
/// from a TAP, described by `hdr`) into frames of at most `hdr.gso_size`
/// payload bytes with fixed-up headers (IP length/ID/checksum, TCP seq,
/// flags, complete L4 checksum) and appends each to `out` as
/// `prefix ‖ frame ‖ tailroom zero bytes`.
/// A frame with gso_type None is appended as one segment (its checksum
/// completed if NEEDS_CSUM). On error nothing is appended.
pub fn segment(
    hdr: &VnetHdr,
    frame: &[u8],
    prefix: &[u8],
    tailroom: usize,
    out: &mut Vec<u8>,
) -> Result<Segmented, OffloadError> {
    let _ = (hdr, frame, prefix, tailroom, out);
    todo!()
}

/// Completes the partial checksum of a non-GSO frame (NEEDS_CSUM) in place.
pub fn complete_checksum(hdr: &VnetHdr, frame: &mut [u8]) -> Result<(), OffloadError> {
    let _ = (hdr, frame);
    todo!()
}
