//! Raw Ethernet frames in and out of a container's interface: an AF_PACKET
//! socket opened inside the container's namespace from the test process,
//! to send frames no socket API would build (ARP of every type, VLAN tags,
//! IP options) and to see every frame a container receives.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use vxnet_dataplane::sys::netns;

/// `ETH_P_ALL` in network byte order, as `socket` and `bind` take it.
fn all_protocols() -> u16 {
    (libc::ETH_P_ALL as u16).to_be()
}

/// A packet socket bound to one interface of one namespace.
pub struct RawPort {
    fd: OwnedFd,
}

impl RawPort {
    /// Opens a packet socket on `ifname` inside namespace `ns`. Frames
    /// already queued before the call are not seen.
    pub fn open(ns: &str, ifname: &str) -> anyhow::Result<RawPort> {
        let path = netns::resolve(ns)?;
        let ifname = std::ffi::CString::new(ifname)?;
        let port = netns::run_in(&path, move || -> io::Result<RawPort> {
            // SAFETY: plain syscalls with valid arguments; the descriptor
            // is owned by the OwnedFd at once.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    i32::from(all_protocols()),
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a new descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: `ifname` is a NUL-terminated string.
            let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
            if index == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: all-zero is a valid sockaddr_ll; the fields set next
            // make it a bind address for one interface.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = all_protocols();
            sll.sll_ifindex = index as i32;
            // SAFETY: `sll` lives across the call and its size is passed.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(RawPort { fd })
        })??;
        Ok(port)
    }

    /// Sends one whole Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for its length during the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Frames received (not sent) on the interface until none came for
    /// `quiet`, for at most `limit`, that `keep` accepts.
    pub fn received(
        &self,
        quiet: Duration,
        limit: Duration,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_536];
        let start = Instant::now();
        let mut last = Instant::now();
        while last.elapsed() < quiet && start.elapsed() < limit {
            // SAFETY: all-zero is a valid sockaddr_ll to be filled in.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are valid for the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            last = Instant::now();
            let frame = &buf[..n as usize];
            if from.sll_pkttype != libc::PACKET_OUTGOING && keep(frame) {
                out.push(frame.to_vec());
            }
        }
        out
    }
}
