//! Receive-side coalescing (GRO for TAP writes). CONTRACT STUB.
use crate::wire::vnet;

/// Collects inner Ethernet frames bound for one TAP during a receive batch
/// and merges consecutive TCP segments of the same flow (IPv4 or IPv6) into
/// one GSO frame (gso_type TCPV4/TCPV6, NEEDS_CSUM with a pseudo-header
/// checksum), so that one TAP write carries up to 64 KB. Frames that cannot
/// be merged are kept as they are, in arrival order. Segments whose TCP
/// checksum does not verify are never merged (passed through unchanged).
/// No allocation once warmed up.
#[derive(Default)]
pub struct Coalescer {
    _private: (),
}

impl Coalescer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one inner Ethernet frame.
    pub fn push(&mut self, frame: &[u8]) {
        let _ = frame;
        todo!()
    }

    /// Adds a frame that must not be merged, with the vnet header it is to
    /// be written with (a TAP-to-TAP GSO frame, an ARP reply).
    pub fn push_as_is(&mut self, hdr: &vnet::VnetHdr, frame: &[u8]) {
        let _ = (hdr, frame);
        todo!()
    }

    pub fn is_empty(&self) -> bool {
        todo!()
    }

    /// Hands out every pending item as `vnet header (10 bytes) ‖ frame`,
    /// ready for one TAP write, in arrival order, and empties the coalescer.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) {
        let _ = &mut f;
        let _ = vnet::LEN;
        todo!()
    }
}
