//! TAP devices (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) with offloads.
//! CONTRACT STUB: to be implemented.
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Offloads the kernel accepted with TUNSETOFFLOAD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    pub uso: bool,
}

pub struct Tap {
    _private: (),
}

impl Tap {
    /// Creates (or attaches to) a TAP named `name` in the calling thread's
    /// network namespace, non-blocking, with a 10-byte vnet header and as
    /// many offloads as the kernel accepts.
    pub fn create(name: &str) -> io::Result<Tap> {
        let _ = name;
        todo!()
    }
    pub fn name(&self) -> &str {
        todo!()
    }
    pub fn offloads(&self) -> Offloads {
        todo!()
    }
    /// Reads one `vnet header ‖ frame`; `WouldBlock` when the queue is empty.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let _ = buf;
        todo!()
    }
    /// Writes one `vnet header ‖ frame`.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let _ = buf;
        todo!()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        todo!()
    }
}
