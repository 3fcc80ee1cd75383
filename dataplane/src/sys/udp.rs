//! The VXLAN UDP sockets: batched receive/send with GRO/GSO.
//!
//! A [`UdpIo`] owns one receive socket bound to the VXLAN port (with
//! SO_REUSEPORT so that every worker binds its own and the kernel spreads
//! flows over them) and a few send sockets on ephemeral ports of the same
//! address. Which send socket a message leaves from is chosen by the inner
//! flow's hash, so the outer UDP source port carries the flow entropy that
//! underlay routers hash on for ECMP (RFC 7348, section 5).
//!
//! Receive is one `recvmmsg` per call; with UDP_GRO the kernel hands us
//! several same-sized datagrams of one flow in one buffer and tells us the
//! segment size in a control message. Send is one `sendmmsg` per source
//! socket and per up to [`TX_SLOTS`] messages, with a UDP_SEGMENT control
//! message on every message that holds several datagrams, so that one
//! syscall and one pass down the stack carry up to 64 KB. Consecutive GSO
//! messages to the same VTEP with the same segment size are packed into
//! full-sized sends with an iovec per piece: a 64 KB TAP frame is 46
//! segments of which a send takes 44, and without packing every frame would
//! cost a second trip down the stack for its last 2 segments.
//!
//! A send the kernel refuses is retried before anything is dropped: a GSO
//! send refused for its segments' size (EMSGSIZE, a route whose MTU is
//! smaller than they are) is resent datagram by datagram, which the kernel
//! fragments; a refusal of GSO itself (EIO, EINVAL) turns GSO off for
//! [`GSO_REPROBE`] and resends the rest as datagrams. What is still lost is
//! counted by the errno it failed with (`udp_send_emsgsize`, ...).
//!
//! The scratch arrays the syscalls need (`mmsghdr`, `iovec`, addresses,
//! control buffers) are allocated once and reused: the hot path allocates
//! nothing. Their raw pointers are rewritten on every call and never read
//! across calls.
use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use vxnet_proto::batch::{RxBatch, RxMeta, TxBatch};
use vxnet_proto::stats::{Counter, Drop, Stats};

/// `IPPROTO_UDP` as a socket option level (linux/udp.h).
const SOL_UDP: libc::c_int = 17;
/// Per-message (cmsg) or per-socket GSO segment size, a `u16`.
const UDP_SEGMENT: libc::c_int = 103;
/// Enables GRO on receive; the cmsg carries the segment size as an `int`.
const UDP_GRO: libc::c_int = 104;

/// Kernels before 6.1 accept at most 64 segments per GSO send (later 128);
/// we use the lower limit everywhere rather than probe the version.
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Largest UDP payload of one IPv4 datagram; a GSO send is one datagram for
/// the stack until it is segmented, so its total payload is bounded too.
pub const MAX_GSO_BYTES: usize = 65_507;
/// How many `datagram`-byte datagrams one GSO send can carry.
pub fn segments_per_send(datagram: usize) -> usize {
    (MAX_GSO_BYTES / datagram.max(1)).clamp(1, MAX_GSO_SEGMENTS)
}

/// Messages per `sendmmsg` call at most (the kernel caps it at 1024).
pub const TX_SLOTS: usize = 256;
/// Socket buffer size we ask for (8 MiB): a burst of 64 KB GRO buffers
/// from several peers must not overflow while a worker is busy.
const SOCKET_BUFFER: usize = 8 << 20;
/// How often one `send_batch` waits for a full socket buffer to drain,
/// and for how long each time, before it drops what is left.
const SEND_WAITS: u32 = 8;
const SEND_WAIT_MS: libc::c_int = 1;
/// Control buffer per message: room for a UDP_GRO or UDP_SEGMENT cmsg and
/// something unexpected beside it.
const CMSG_CAP: usize = 64;
/// Batch messages one GSO send may gather (one iovec each).
const MAX_PIECES: usize = 8;
/// How long GSO stays off after the kernel refused it (EIO or EINVAL, as
/// with SO_NO_CHECK or a device without checksum offload) before it is
/// tried again: the refusal may have been a passing one (a segment too
/// big for a route whose MTU just shrank, on kernels that say EINVAL).
pub const GSO_REPROBE: Duration = Duration::from_secs(10);

/// A control-message buffer aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; CMSG_CAP]);

/// A slice of message `msg` of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    msg: usize,
    off: usize,
    len: usize,
}

/// One `sendmmsg` entry: `pieces` (indices into `UdpIo::pieces`, slices of
/// consecutive batch messages to `dst`) that go out as `datagrams`
/// datagrams (several only when `segment != 0`). Every piece but the last
/// holds whole segments of `gso_size`, so the datagrams are the same
/// wherever the pieces are cut.
#[derive(Debug, Clone)]
struct Entry {
    dst: SocketAddr,
    pieces: std::ops::Range<usize>,
    len: usize,
    /// UDP_SEGMENT size to send with; 0 for a single datagram.
    segment: u16,
    /// Segment size of the messages the pieces come from.
    gso_size: u16,
    datagrams: usize,
}

/// Scratch for one `recvmmsg`/`sendmmsg` call.
struct Scratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<CmsgBuf>,
}

impl Scratch {
    fn new(n: usize) -> Scratch {
        Scratch::with_iovs(n, n)
    }

    /// `n` messages with `iovs` iovecs between them.
    fn with_iovs(n: usize, iovs: usize) -> Scratch {
        // SAFETY: these are plain C structs of integers and pointers for
        // which all-zero bytes are a valid (empty) value.
        let (hdr, iov, name) = unsafe {
            (
                std::mem::zeroed::<libc::mmsghdr>(),
                std::mem::zeroed::<libc::iovec>(),
                std::mem::zeroed::<libc::sockaddr_storage>(),
            )
        };
        Scratch {
            hdrs: vec![hdr; n],
            iovs: vec![iov; iovs],
            names: vec![name; n],
            cmsgs: vec![CmsgBuf([0; CMSG_CAP]); n],
        }
    }

    fn len(&self) -> usize {
        self.hdrs.len()
    }
}

pub struct UdpIo {
    rx: Socket,
    /// Send sockets; empty means send from `rx`.
    tx: Vec<Socket>,
    local: SocketAddr,
    tx_addrs: Vec<SocketAddr>,
    gso: bool,
    /// When the kernel last refused GSO (it is off until [`GSO_REPROBE`]
    /// later).
    gso_refused: Option<Instant>,
    gro: bool,
    rx_scratch: Scratch,
    tx_scratch: Scratch,
    entries: Vec<Entry>,
    pieces: Vec<Piece>,
    used: Vec<bool>,
}

// SAFETY: the only non-Send fields are the raw pointers inside the scratch
// arrays. They are rewritten before every syscall and never dereferenced
// outside `recv_batch`/`send_batch`, which take `&mut self`, so moving a
// UdpIo to another thread cannot let anything observe a stale pointer.
unsafe impl Send for UdpIo {}

impl UdpIo {
    /// Binds the receive socket to `local` (SO_REUSEPORT, so each worker may
    /// bind its own) and `src_ports` send sockets on ephemeral ports of the
    /// same address; enables UDP_GRO where the kernel has it. With
    /// `src_ports == 0` messages leave from the receive socket.
    pub fn bind(local: SocketAddr, src_ports: usize) -> io::Result<UdpIo> {
        let with_context =
            |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what} {local}: {e}"));
        let rx = new_socket(local).map_err(|e| with_context("socket for", e))?;
        rx.set_reuse_address(true)
            .and_then(|()| rx.set_reuse_port(true))
            .map_err(|e| with_context("SO_REUSEPORT on", e))?;
        rx.bind(&local.into())
            .map_err(|e| with_context("cannot bind", e))?;
        let gro = setsockopt_int(rx.as_raw_fd(), SOL_UDP, UDP_GRO, 1).is_ok();
        let local = rx
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("bound UDP socket has no IP address"))?;

        let mut tx = Vec::with_capacity(src_ports);
        let mut tx_addrs = Vec::with_capacity(src_ports);
        for _ in 0..src_ports {
            let s = new_socket(local).map_err(|e| with_context("socket for", e))?;
            let any_port = SocketAddr::new(local.ip(), 0);
            s.bind(&any_port.into())
                .map_err(|e| with_context("cannot bind send socket on", e))?;
            let addr = s
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("bound UDP socket has no IP address"))?;
            tx_addrs.push(addr);
            tx.push(s);
        }
        if tx_addrs.is_empty() {
            tx_addrs.push(local);
        }
        // Setting the per-socket segment size to 0 (its default) is
        // harmless and fails with ENOPROTOOPT where the kernel has no GSO.
        let probe = tx.first().unwrap_or(&rx).as_raw_fd();
        let gso = setsockopt_int(probe, SOL_UDP, UDP_SEGMENT, 0).is_ok();
        tracing::debug!(%local, src_ports, gso, gro, "UDP sockets bound");

        Ok(UdpIo {
            rx,
            tx,
            local,
            tx_addrs,
            gso,
            gso_refused: None,
            gro,
            rx_scratch: Scratch::new(64),
            tx_scratch: Scratch::with_iovs(TX_SLOTS, TX_SLOTS * MAX_PIECES),
            entries: Vec::with_capacity(TX_SLOTS),
            pieces: Vec::with_capacity(TX_SLOTS * MAX_PIECES),
            used: vec![false; src_ports.max(1)],
        })
    }

    pub fn rx_fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// The source address messages with this `entropy` leave from.
    pub fn source_addr(&self, entropy: u32) -> SocketAddr {
        let i = self.sock_index(entropy);
        self.tx_addrs.get(i).copied().unwrap_or(self.local)
    }

    /// Stops using UDP_SEGMENT: messages are sent as single datagrams.
    /// `send_batch` does this by itself for [`GSO_REPROBE`] when the kernel
    /// refuses GSO.
    pub fn disable_gso(&mut self) {
        self.gso = false;
        self.gso_refused = None;
    }

    /// Makes the kernel refuse UDP_SEGMENT sends on IPv4 (SO_NO_CHECK: GSO
    /// needs the UDP checksum) so tests can exercise the real fallback.
    #[doc(hidden)]
    pub fn test_refuse_gso(&self) -> io::Result<()> {
        for s in self.tx.iter().chain(self.tx.is_empty().then_some(&self.rx)) {
            setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_NO_CHECK, 1)?;
        }
        Ok(())
    }

    /// Shrinks the send sockets' buffers so tests can fill them.
    #[doc(hidden)]
    pub fn test_set_send_buffer(&self, bytes: usize) -> io::Result<()> {
        for s in self.tx.iter().chain(self.tx.is_empty().then_some(&self.rx)) {
            s.set_send_buffer_size(bytes)?;
        }
        Ok(())
    }

    /// One recvmmsg into `rx`; sets `rx.filled`; `WouldBlock` when empty.
    ///
    /// A datagram larger than its buffer (MSG_TRUNC) is reported with
    /// `len == 0` so that the caller drops it rather than parse half of it;
    /// with GRO on, buffers should be 64 KB.
    pub fn recv_batch(&mut self, rx: &mut RxBatch) -> io::Result<usize> {
        rx.filled = 0;
        let n = rx.bufs.len().min(rx.meta.len());
        if n == 0 {
            return Ok(0);
        }
        if self.rx_scratch.len() < n {
            // Only when a caller uses a bigger batch than ever before.
            self.rx_scratch = Scratch::new(n);
        }
        let s = &mut self.rx_scratch;
        for (i, buf) in rx.bufs.iter_mut().take(n).enumerate() {
            s.iovs[i] = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let h = &mut s.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut s.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut s.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = s.cmsgs[i].0.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CMSG_CAP as _;
            h.msg_hdr.msg_flags = 0;
        }
        let got = loop {
            // SAFETY: `hdrs[..n]` are initialised above; each points at its
            // own name, iovec (into `rx.bufs[i]`, with that buffer's length)
            // and control buffer, all of which outlive the call and are not
            // otherwise borrowed during it.
            let r = unsafe {
                libc::recvmmsg(
                    self.rx.as_raw_fd(),
                    s.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        for i in 0..got.min(n) {
            let h = &s.hdrs[i];
            let src = sockaddr_to_std(&s.names[i], h.msg_hdr.msg_namelen)
                .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
            let mut len = h.msg_len as usize;
            let mut segment = gro_segment(&h.msg_hdr);
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                len = 0;
            }
            if segment as usize >= len {
                segment = 0;
            }
            rx.meta[i] = RxMeta { src, len, segment };
        }
        rx.filled = got.min(n);
        Ok(rx.filled)
    }

    /// Sends every message of `tx` (sendmmsg per source socket, UDP_SEGMENT
    /// where `segment != 0`), falling back to plain sends where the kernel
    /// refuses GSO, and counts what it did in `stats`.
    ///
    /// Messages are grouped per source socket over the whole batch, not
    /// only where consecutive: with several source ports, consecutive
    /// messages of different flows rarely share a socket, and grouping only
    /// runs would cost one syscall per message. Order is kept within a
    /// socket, hence within a flow.
    pub fn send_batch(&mut self, tx: &TxBatch, stats: &Stats) {
        let msgs = tx.msgs();
        if msgs.is_empty() {
            return;
        }
        let mut waits_left = SEND_WAITS;
        if self.gso_refused.is_some_and(|t| t.elapsed() >= GSO_REPROBE) {
            self.gso = true;
            self.gso_refused = None;
        }
        self.used.iter_mut().for_each(|u| *u = false);
        for m in msgs {
            let i = self.sock_index(m.entropy);
            if let Some(u) = self.used.get_mut(i) {
                *u = true;
            }
        }
        for sock in 0..self.used.len() {
            if !self.used[sock] {
                continue;
            }
            self.entries.clear();
            for (idx, m) in msgs.iter().enumerate() {
                if self.sock_index(m.entropy) != sock {
                    continue;
                }
                if m.dst.is_ipv4() != self.local.is_ipv4() {
                    // An IPv6 VTEP behind an IPv4 socket (or the reverse):
                    // the kernel would refuse it with EINVAL, which must not
                    // be mistaken for a GSO refusal.
                    stats.drop_n(Drop::IoUdpSendFamily, m.datagrams() as u64);
                    continue;
                }
                self.push_entries(idx, m.range.len(), m.segment, m.dst);
            }
            self.flush(sock, tx, stats, &mut waits_left);
            self.pieces.clear();
        }
        self.entries.clear();
        self.pieces.clear();
    }

    pub fn gso_enabled(&self) -> bool {
        self.gso
    }

    pub fn gro_enabled(&self) -> bool {
        self.gro
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn sock_index(&self, entropy: u32) -> usize {
        if self.tx.is_empty() {
            0
        } else {
            entropy as usize % self.tx.len()
        }
    }

    fn fd(&self, sock: usize) -> RawFd {
        self.tx.get(sock).unwrap_or(&self.rx).as_raw_fd()
    }

    /// Cuts message `msg` (`len` bytes of `segment`-sized datagrams, to
    /// `dst`) into entries the kernel accepts: GSO sends of at most
    /// [`MAX_GSO_SEGMENTS`] segments and [`MAX_GSO_BYTES`] bytes, or single
    /// datagrams when GSO is off. With GSO, the message's first segments
    /// join the previous entry when that one goes to the same `dst` with the
    /// same segment size, ends on a whole segment and has room left.
    fn push_entries(&mut self, msg: usize, len: usize, segment: u16, dst: SocketAddr) {
        let seg = segment as usize;
        if seg == 0 || len <= seg {
            self.push_entry(dst, Piece { msg, off: 0, len }, 0);
            return;
        }
        let per_entry = if self.gso { segments_per_send(seg) } else { 1 };
        let cap = per_entry * seg;
        let mut off = 0;
        while off < len {
            let pieces_end = self.pieces.len();
            let room = match self.entries.last() {
                Some(e)
                    if self.gso
                        && e.gso_size == segment
                        && e.dst == dst
                        && e.len % seg == 0
                        && e.len < cap
                        && e.pieces.len() < MAX_PIECES
                        && e.pieces.end == pieces_end =>
                {
                    cap - e.len
                }
                _ => 0,
            };
            let chunk = if room > 0 { room } else { cap }.min(len - off);
            let piece = Piece {
                msg,
                off,
                len: chunk,
            };
            off += chunk;
            match self.entries.last_mut() {
                Some(e) if room > 0 => {
                    self.pieces.push(piece);
                    e.pieces.end += 1;
                    e.len += chunk;
                    e.datagrams = e.len.div_ceil(seg);
                    e.segment = if e.datagrams > 1 { segment } else { 0 };
                }
                _ => self.push_entry(dst, piece, segment),
            }
        }
    }

    /// Starts a new entry with one piece of `gso_size`-sized datagrams.
    fn push_entry(&mut self, dst: SocketAddr, piece: Piece, gso_size: u16) {
        let seg = gso_size as usize;
        let datagrams = if seg == 0 {
            1
        } else {
            piece.len.div_ceil(seg).max(1)
        };
        let first = self.pieces.len();
        self.pieces.push(piece);
        self.entries.push(Entry {
            dst,
            pieces: first..first + 1,
            len: piece.len,
            segment: if datagrams > 1 { gso_size } else { 0 },
            gso_size,
            datagrams,
        });
    }

    /// Sends `self.entries` from socket `sock`, in `sendmmsg` calls of up to
    /// [`TX_SLOTS`] entries, handling partial sends, full buffers and GSO
    /// refusals.
    fn flush(&mut self, sock: usize, tx: &TxBatch, stats: &Stats, waits_left: &mut u32) {
        let fd = self.fd(sock);
        let msgs = tx.msgs();
        let mut start = 0;
        while start < self.entries.len() {
            let n = (self.entries.len() - start).min(self.tx_scratch.len());
            let s = &mut self.tx_scratch;
            let mut iov = 0;
            for (j, e) in self.entries[start..start + n].iter().enumerate() {
                let first_iov = iov;
                for p in &self.pieces[e.pieces.clone()] {
                    let bytes = &tx.bytes(&msgs[p.msg])[p.off..p.off + p.len];
                    s.iovs[iov] = libc::iovec {
                        // The kernel only reads from a send buffer.
                        iov_base: bytes.as_ptr().cast_mut().cast(),
                        iov_len: bytes.len(),
                    };
                    iov += 1;
                }
                let namelen = write_sockaddr(&e.dst, &mut s.names[j]);
                let h = &mut s.hdrs[j];
                h.msg_len = 0;
                h.msg_hdr.msg_name = (&mut s.names[j] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = namelen;
                h.msg_hdr.msg_iov = &mut s.iovs[first_iov];
                h.msg_hdr.msg_iovlen = iov - first_iov;
                h.msg_hdr.msg_flags = 0;
                if e.segment != 0 {
                    write_segment_cmsg(&mut h.msg_hdr, &mut s.cmsgs[j], e.segment);
                } else {
                    h.msg_hdr.msg_control = std::ptr::null_mut();
                    h.msg_hdr.msg_controllen = 0;
                }
            }
            // SAFETY: `hdrs[..n]` were initialised above; their names,
            // iovecs and control buffers live in `self.tx_scratch` and their
            // data in `tx`'s arena, all of which outlive the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    s.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                stats.inc(Counter::UdpTxCalls);
                let sent = (r as usize).min(n);
                for e in &self.entries[start..start + sent] {
                    stats.add(Counter::UdpTxDatagrams, e.datagrams as u64);
                    stats.add(Counter::UdpTxBytes, e.len as u64);
                    if e.segment != 0 {
                        stats.inc(Counter::UdpTxGsoMessages);
                    }
                }
                // A partial send: the next call starts at the first message
                // the kernel did not take, and reports its error if any.
                start += sent;
                continue;
            }
            let err = if r == 0 {
                io::Error::from(io::ErrorKind::WouldBlock)
            } else {
                io::Error::last_os_error()
            };
            let head_segment = self.entries[start].segment;
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN | libc::ENOBUFS) | None if *waits_left > 0 => {
                    *waits_left -= 1;
                    wait_writable(fd, SEND_WAIT_MS);
                }
                Some(libc::EAGAIN | libc::ENOBUFS) | None => {
                    // Out of patience: drop the rest rather than stall the
                    // worker (and the TAPs it serves) behind a full queue.
                    let lost: usize = self.entries[start..].iter().map(|e| e.datagrams).sum();
                    stats.drop_n(Drop::IoUdpSendFull, lost as u64);
                    tracing::debug!(local = %self.local, lost, error = %err, "UDP send queue full, datagrams dropped");
                    break;
                }
                Some(libc::EIO | libc::EINVAL) if head_segment != 0 && self.gso => {
                    // The kernel refuses GSO here (no checksum offload on
                    // the route's device, SO_NO_CHECK, ...): stop asking and
                    // resend what is left as single datagrams.
                    tracing::warn!(local = %self.local, error = %err, "kernel refused UDP GSO, sending datagrams one by one");
                    self.gso = false;
                    self.gso_refused = Some(Instant::now());
                    stats.inc(Counter::GsoFallbacks);
                    let retried: usize = self.entries[start..]
                        .iter()
                        .filter(|e| e.segment != 0)
                        .map(|e| e.datagrams)
                        .sum();
                    stats.add(Counter::UdpTxRetried, retried as u64);
                    self.split_pending(start, msgs);
                }
                Some(libc::EMSGSIZE) if head_segment != 0 => {
                    // This GSO send was refused: a segment is larger than
                    // the route's MTU (the underlay's shrank, or a frame
                    // larger than the engine knew). Each datagram alone
                    // still goes (the kernel fragments it): retry them one
                    // by one before anything is dropped.
                    tracing::debug!(local = %self.local, dst = %self.entries[start].dst, error = %err, "UDP GSO send refused, retrying its datagrams one by one");
                    stats.inc(Counter::GsoFallbacks);
                    let n = self.split_entry(start);
                    stats.add(Counter::UdpTxRetried, n as u64);
                }
                Some(errno) => {
                    // This datagram cannot be sent (no route, too big, ...);
                    // the others may still go.
                    let e = &self.entries[start];
                    stats.drop_n(send_drop(errno), e.datagrams as u64);
                    tracing::debug!(local = %self.local, dst = %e.dst, error = %err, "UDP send failed, datagram dropped");
                    start += 1;
                }
            }
        }
        self.entries.clear();
    }

    /// Replaces entry `start`, a GSO send, by one entry per datagram, in
    /// place; returns how many. Allocates, but only after the kernel
    /// refused a send.
    fn split_entry(&mut self, start: usize) -> usize {
        let e = self.entries[start].clone();
        let first = self.entries.len();
        for i in e.pieces.clone() {
            self.push_datagrams(e.dst, self.pieces[i], usize::from(e.gso_size));
        }
        let singles: Vec<Entry> = self.entries.drain(first..).collect();
        let n = singles.len();
        self.entries.splice(start..=start, singles);
        n
    }

    /// Replaces the GSO entries from `start` on by single datagrams (GSO is
    /// off by now). Allocates, but runs at most once per `UdpIo`.
    fn split_pending(&mut self, start: usize, msgs: &[vxnet_proto::batch::TxMsg]) {
        let rest: Vec<Entry> = self.entries.drain(start..).collect();
        for e in rest {
            for i in e.pieces.clone() {
                let p = self.pieces[i];
                if e.segment == 0 {
                    self.push_entry(e.dst, p, 0);
                } else {
                    self.push_datagrams(e.dst, p, usize::from(e.gso_size));
                }
            }
        }
        debug_assert!(self.pieces.iter().all(|p| p.msg < msgs.len()));
    }

    /// Appends one single-datagram entry per `seg` bytes of piece `p`.
    /// Every piece but the last of a GSO entry holds whole segments, so
    /// cutting each piece gives exactly the datagrams GSO would have sent.
    fn push_datagrams(&mut self, dst: SocketAddr, p: Piece, seg: usize) {
        let seg = seg.max(1);
        let mut off = 0;
        while off < p.len {
            let len = seg.min(p.len - off);
            let piece = Piece {
                msg: p.msg,
                off: p.off + off,
                len,
            };
            self.push_entry(dst, piece, 0);
            off += len;
        }
    }
}

/// The drop reason of a send that failed with `errno`, also when sent as
/// a single datagram.
fn send_drop(errno: i32) -> Drop {
    match errno {
        libc::EMSGSIZE => Drop::IoUdpSendTooBig,
        libc::EINVAL => Drop::IoUdpSendInvalid,
        libc::ENETUNREACH | libc::EHOSTUNREACH => Drop::IoUdpSendUnreachable,
        libc::EPERM => Drop::IoUdpSendDenied,
        libc::EAGAIN | libc::ENOBUFS => Drop::IoUdpSendFull,
        _ => Drop::IoUdpSend,
    }
}

/// A non-blocking UDP socket of `local`'s family with large buffers.
fn new_socket(local: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    if local.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    // As root, the FORCE variants go beyond net.core.[rw]mem_max.
    if setsockopt_int(
        s.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        SOCKET_BUFFER as libc::c_int,
    )
    .is_err()
    {
        s.set_recv_buffer_size(SOCKET_BUFFER)?;
    }
    if setsockopt_int(
        s.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        SOCKET_BUFFER as libc::c_int,
    )
    .is_err()
    {
        s.set_send_buffer_size(SOCKET_BUFFER)?;
    }
    Ok(s)
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to an int that lives across the call, with
    // its size; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to `ms` for `fd` to become writable.
fn wait_writable(fd: RawFd, ms: libc::c_int) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1. The result does not matter: the
    // caller retries the send either way.
    let _ = unsafe { libc::poll(&mut p, 1, ms) };
}

/// The UDP_GRO segment size from a received message's control data, or 0.
fn gro_segment(hdr: &libc::msghdr) -> u16 {
    if hdr.msg_control.is_null() || hdr.msg_controllen < size_of::<libc::cmsghdr>() as _ {
        return 0;
    }
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of
    // well-formed cmsgs (it never reports more than the buffer we gave it);
    // CMSG_FIRSTHDR/CMSG_NXTHDR stay within that length and return null at
    // its end; the int payload is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_UDP
                && (*c).cmsg_type == UDP_GRO
                && (*c).cmsg_len as usize
                    >= libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize
            {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return u16::try_from(size).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    0
}

/// Points `hdr` at `buf` holding one UDP_SEGMENT cmsg of `segment`.
fn write_segment_cmsg(hdr: &mut libc::msghdr, buf: &mut CmsgBuf, segment: u16) {
    hdr.msg_control = buf.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    debug_assert!(space <= CMSG_CAP);
    hdr.msg_controllen = space as _;
    // SAFETY: `buf` is 8-aligned and CMSG_CAP >= `space` bytes long, so the
    // first cmsghdr and its u16 payload fit inside it; CMSG_FIRSTHDR is
    // non-null because msg_controllen >= size_of::<cmsghdr>().
    unsafe {
        let c = libc::CMSG_FIRSTHDR(hdr);
        (*c).cmsg_level = SOL_UDP;
        (*c).cmsg_type = UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
    }
}

/// Writes `addr` as a C socket address into `out`; returns its length.
fn write_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and at least as
            // aligned as sockaddr_in.
            unsafe {
                (out as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in>()
                    .write(sin)
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and at least as
            // aligned as sockaddr_in6.
            unsafe {
                (out as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads a C socket address the kernel wrote (`len` bytes of `ss`).
fn sockaddr_to_std(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, it
            // is long enough, and sockaddr_storage is aligned for it.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).into())
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(
                SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )
                .into(),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        for a in [
            "192.0.2.7:4789".parse::<SocketAddr>().unwrap(),
            "[2001:db8::1]:4789".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 9, 0, 3)),
        ] {
            let len = write_sockaddr(&a, &mut ss);
            assert_eq!(sockaddr_to_std(&ss, len), Some(a));
            // A truncated length is not trusted.
            assert_eq!(sockaddr_to_std(&ss, len - 1), None);
        }
        ss.ss_family = libc::AF_UNIX as libc::sa_family_t;
        assert_eq!(sockaddr_to_std(&ss, 128), None);
    }

    #[test]
    fn segment_cmsg_is_read_back_by_the_gro_parser_layout() {
        // SAFETY: all-zero is a valid msghdr.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        let mut buf = CmsgBuf([0; CMSG_CAP]);
        write_segment_cmsg(&mut hdr, &mut buf, 1400);
        // SAFETY: reading back the cmsg written just above.
        let (level, ty, data) = unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (
                (*c).cmsg_level,
                (*c).cmsg_type,
                std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u16>()),
            )
        };
        assert_eq!((level, ty, data), (SOL_UDP, UDP_SEGMENT, 1400));
        // Not a UDP_GRO cmsg: the receive parser ignores it.
        assert_eq!(gro_segment(&hdr), 0);
        // No control data at all.
        // SAFETY: all-zero is a valid msghdr.
        let empty: libc::msghdr = unsafe { std::mem::zeroed() };
        assert_eq!(gro_segment(&empty), 0);
    }

    fn io_for_split() -> UdpIo {
        UdpIo::bind("127.0.0.1:0".parse().unwrap(), 0).unwrap()
    }

    fn dst() -> SocketAddr {
        "192.0.2.12:4789".parse().unwrap()
    }

    /// (offset of the first piece, len, segment, datagrams) per entry.
    fn shape(io: &UdpIo) -> Vec<(usize, usize, u16, usize)> {
        io.entries
            .iter()
            .map(|e| (io.pieces[e.pieces.start].off, e.len, e.segment, e.datagrams))
            .collect()
    }

    #[test]
    fn gso_messages_are_split_at_kernel_limits() {
        let mut io = io_for_split();
        io.gso = true;
        // 100 segments of 100 bytes: more than 64 segments.
        io.push_entries(0, 10_000, 100, dst());
        assert_eq!(shape(&io), vec![(0, 6400, 100, 64), (6400, 3600, 100, 36)]);
        // Large segments: bounded by 65 507 bytes (45 x 1450).
        io.entries.clear();
        io.push_entries(0, 50 * 1450 + 10, 1450, dst());
        let lens: Vec<(usize, usize)> = io.entries.iter().map(|e| (e.len, e.datagrams)).collect();
        assert_eq!(lens, vec![(45 * 1450, 45), (5 * 1450 + 10, 6)]);
        // A trailing chunk of one datagram carries no UDP_SEGMENT.
        io.entries.clear();
        io.push_entries(0, 6400 + 50, 100, dst());
        assert_eq!(io.entries[1].segment, 0);
        assert_eq!(io.entries[1].datagrams, 1);
        // One datagram, or no segment size: one plain entry.
        io.entries.clear();
        io.push_entries(0, 80, 100, dst());
        io.push_entries(1, 3000, 0, dst());
        assert!(
            io.entries
                .iter()
                .all(|e| e.segment == 0 && e.datagrams == 1)
        );
        // GSO off: one entry per datagram covering the same bytes.
        io.entries.clear();
        io.pieces.clear();
        io.gso = false;
        io.push_entries(0, 250, 100, dst());
        let parts: Vec<(usize, usize)> = io
            .entries
            .iter()
            .map(|e| (io.pieces[e.pieces.start].off, e.len))
            .collect();
        assert_eq!(parts, vec![(0, 100), (100, 100), (200, 50)]);
    }

    #[test]
    fn consecutive_gso_messages_are_packed_into_full_sends() {
        let mut io = io_for_split();
        io.gso = true;
        // Three 64 KB TAP frames' worth: 46 segments of 1472 each (44 fit
        // one send). Unpacked: 44+2, 44+2, 44+2 = 6 sends; packed: 44, 44,
        // 44, 6 = 4 sends.
        for m in 0..3 {
            io.push_entries(m, 46 * 1472, 1472, dst());
        }
        let segs: Vec<usize> = io.entries.iter().map(|e| e.datagrams).collect();
        assert_eq!(segs, vec![44, 44, 44, 6]);
        assert!(io.entries.iter().all(|e| e.segment == 1472));
        let pieces = |e: &Entry| -> Vec<Piece> { io.pieces[e.pieces.clone()].to_vec() };
        assert_eq!(
            pieces(&io.entries[1]),
            vec![
                Piece {
                    msg: 0,
                    off: 44 * 1472,
                    len: 2 * 1472
                },
                Piece {
                    msg: 1,
                    off: 0,
                    len: 42 * 1472
                },
            ]
        );
        assert_eq!(
            pieces(&io.entries[3]),
            vec![Piece {
                msg: 2,
                off: 40 * 1472,
                len: 6 * 1472
            }]
        );
        // Every byte of every message is sent once, in order.
        let flat: Vec<Piece> = io.pieces.clone();
        let mut next = [0usize; 3];
        for p in flat {
            assert_eq!(p.off, next[p.msg], "{p:?}");
            next[p.msg] += p.len;
            assert!(next[..p.msg].iter().all(|&n| n == 46 * 1472), "order");
        }
        assert_eq!(next, [46 * 1472; 3]);
    }

    #[test]
    fn packing_stops_at_short_segments_other_sizes_and_destinations() {
        let mut io = io_for_split();
        io.gso = true;
        let other: SocketAddr = "192.0.2.13:4789".parse().unwrap();
        // Ends on a short segment: nothing may follow in the same send.
        io.push_entries(0, 3 * 1000 + 10, 1000, dst());
        io.push_entries(1, 3000, 1000, dst());
        // Another segment size, then another destination.
        io.push_entries(2, 3000, 900, dst());
        io.push_entries(3, 3000, 1000, other);
        // A single datagram in between.
        io.push_entries(4, 500, 0, other);
        io.push_entries(5, 3000, 1000, other);
        // Same size and destination: packed.
        io.push_entries(6, 2000, 1000, other);
        let shape: Vec<(usize, usize)> = io
            .entries
            .iter()
            .map(|e| (e.pieces.len(), e.datagrams))
            .collect();
        assert_eq!(shape, vec![(1, 4), (1, 3), (1, 4), (1, 3), (1, 1), (2, 5)]);
    }

    #[test]
    fn packing_respects_the_iovec_limit_and_split_keeps_datagrams() {
        let mut io = io_for_split();
        io.gso = true;
        // 2-segment messages: 8 of them fill MAX_PIECES, the rest start a
        // new send.
        for m in 0..10 {
            io.push_entries(m, 200, 100, dst());
        }
        let shape: Vec<(usize, usize)> = io
            .entries
            .iter()
            .map(|e| (e.pieces.len(), e.datagrams))
            .collect();
        assert_eq!(shape, vec![(MAX_PIECES, 16), (2, 4)]);
        // GSO refused: the same datagrams, one per entry, in order.
        io.gso = false;
        let msgs: Vec<vxnet_proto::batch::TxMsg> = (0..10)
            .map(|m| vxnet_proto::batch::TxMsg {
                dst: dst(),
                range: m * 200..(m + 1) * 200,
                segment: 100,
                entropy: 0,
            })
            .collect();
        io.split_pending(0, &msgs);
        let singles: Vec<(usize, usize, usize)> = io
            .entries
            .iter()
            .map(|e| {
                let p = io.pieces[e.pieces.start];
                assert_eq!((e.pieces.len(), e.segment, e.datagrams), (1, 0, 1));
                (p.msg, p.off, p.len)
            })
            .collect();
        let want: Vec<(usize, usize, usize)> =
            (0..10).flat_map(|m| [(m, 0, 100), (m, 100, 100)]).collect();
        assert_eq!(singles, want);
    }
}
