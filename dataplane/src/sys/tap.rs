//! TAP devices (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) with offloads.
//!
//! This module owns the TAP file descriptor and the ioctls that configure
//! it. Every read and write carries a 10-byte virtio-net header in front of
//! the Ethernet frame (parsed by `vxnet_proto::wire::vnet`), which is what
//! lets the kernel hand us 64 KB TCP/UDP super-frames (TSO/USO) with the
//! checksum left to us, instead of one MTU-sized frame per syscall.
use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Size of the virtio-net header we ask for (`struct virtio_net_hdr`,
/// without the `num_buffers` field of the mergeable-buffers variant).
pub const VNET_HDR_LEN: usize = 10;

/// `struct ifreq` as TUNSETIFF reads and writes it: the name, the flags,
/// and padding to the size of the kernel's union (40 bytes on 64-bit).
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Offloads the kernel accepted with TUNSETOFFLOAD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    pub uso: bool,
}

impl Offloads {
    fn flags(self) -> libc::c_uint {
        let mut f = 0;
        if self.csum {
            f |= libc::TUN_F_CSUM;
        }
        if self.tso4 {
            f |= libc::TUN_F_TSO4;
        }
        if self.tso6 {
            f |= libc::TUN_F_TSO6;
        }
        if self.uso {
            f |= libc::TUN_F_USO4 | libc::TUN_F_USO6;
        }
        f
    }
}

/// An open TAP queue.
pub struct Tap {
    file: File,
    name: String,
    offloads: Offloads,
}

impl Tap {
    /// Creates (or attaches to) a TAP named `name` in the calling thread's
    /// network namespace, non-blocking, with a 10-byte vnet header and as
    /// many offloads as the kernel accepts.
    pub fn create(name: &str) -> io::Result<Tap> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['\0', '/']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "invalid TAP name '{name}' (1 to {} bytes, no '/' or NUL)",
                    libc::IFNAMSIZ - 1
                ),
            ));
        }
        // std opens with O_CLOEXEC already.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/net/tun: {e}")))?;
        let fd = file.as_raw_fd();

        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its
        // layout and size and lives across the call.
        let rc = unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req as *mut IfReqFlags) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
        }
        // The kernel writes back the final name (it expands patterns like
        // `tap%d`); the array is NUL-terminated because the name is shorter
        // than IFNAMSIZ.
        // SAFETY: `req.name` is a NUL-terminated C string of IFNAMSIZ bytes
        // (the kernel never fills all 16 bytes without a terminator).
        let actual = unsafe { CStr::from_ptr(req.name.as_ptr()) }
            .to_string_lossy()
            .into_owned();

        let hdr_len: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        let rc = unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &hdr_len as *const libc::c_int) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("TUNSETVNETHDRSZ {actual}: {e}"),
            ));
        }

        let offloads = negotiate_offloads(fd, &actual)?;
        Ok(Tap {
            file,
            name: actual,
            offloads,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// Reads one `vnet header ‖ frame`; `WouldBlock` when the queue is empty.
    /// `buf` should hold 10 + 65 535 + 14 bytes, or a GSO frame is cut.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
            let n =
                unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Writes one `vnet header ‖ frame` gathered from `bufs` (the kernel
    /// copies from the whole iovec array into one packet), so that frames
    /// can be written from where they were received. At most `UIO_MAXIOV`
    /// pieces: more would be cut into several writes, hence several bogus
    /// packets, and are refused.
    pub fn writev(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if bufs.len() > libc::UIO_MAXIOV as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more iovecs than one writev takes",
            ));
        }
        loop {
            // `File::write_vectored` is writev(2) on Linux.
            match (&self.file).write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Writes one `vnet header ‖ frame`.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
            let n = unsafe { libc::write(self.file.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Asks for checksum offload, TSO and USO, dropping what an older kernel
/// refuses (USO came in Linux 6.2; it answers EINVAL for unknown flags).
fn negotiate_offloads(fd: RawFd, name: &str) -> io::Result<Offloads> {
    let wishes = [
        Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            uso: true,
        },
        Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            uso: false,
        },
        Offloads {
            csum: true,
            ..Offloads::default()
        },
        Offloads::default(),
    ];
    let mut last = None;
    for want in wishes {
        // SAFETY: TUNSETOFFLOAD takes its flags by value, not by pointer.
        let rc = unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, want.flags() as libc::c_ulong) };
        if rc == 0 {
            return Ok(want);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(io::Error::new(
                e.kind(),
                format!("TUNSETOFFLOAD {name}: {e}"),
            ));
        }
        last = Some(e);
    }
    let e = last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL));
    Err(io::Error::new(
        e.kind(),
        format!("TUNSETOFFLOAD {name}: {e}"),
    ))
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
    }

    #[test]
    fn rejects_bad_names_without_touching_the_kernel() {
        for bad in ["", "0123456789abcdef", "a/b", "a\0b"] {
            let err = Tap::create(bad).err().map(|e| e.kind());
            assert_eq!(err, Some(io::ErrorKind::InvalidInput), "{bad:?}");
        }
    }

    #[test]
    fn offload_flags() {
        let all = Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            uso: true,
        };
        assert_eq!(all.flags(), 0x01 | 0x02 | 0x04 | 0x20 | 0x40);
        assert_eq!(Offloads::default().flags(), 0);
    }
}
