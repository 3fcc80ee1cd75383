//! Offloads done in userspace: the TAP hands us 64 KB TCP (or UDP) GSO
//! frames that we cut into wire-sized frames ([`segment`]), and received
//! TCP segments of one flow are merged back into one GSO frame per TAP write
//! ([`coalesce`]).

pub mod coalesce;
pub mod segment;

/// Why a frame from the TAP could not be segmented or checksummed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// vnet header offsets point outside the frame or are inconsistent.
    BadHeader,
    /// GSO type we do not implement.
    Unsupported,
    /// Frame headers could not be parsed as Ethernet/IP/TCP|UDP.
    Malformed,
}
