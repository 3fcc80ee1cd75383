//! Batch buffers between the engine and the I/O layer.
//!
//! One receive batch is filled by one `recvmmsg`; one transmit batch is sent
//! with as few `sendmmsg` calls as the source-port spread allows. Both own
//! their memory for the lifetime of a worker, so the hot path allocates
//! nothing once warmed up.
//!
//! Received frames are not copied on their way to the TAPs: the engine
//! learns where each datagram lies ([`FrameRef`]), the coalescer keeps
//! references ([`BufRef`]) to the payload bytes, and the I/O layer resolves
//! them with [`RxBatch::resolve`] into the iovecs of one `writev`. That only
//! holds while the buffers are unchanged: the worker hands every TAP write
//! of a batch to the kernel before the next `recvmmsg` refills them.

use std::net::SocketAddr;
use std::ops::Range;

/// One UDP message to send: `len` bytes at `start` in the batch arena.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxMsg {
    pub dst: SocketAddr,
    pub range: Range<usize>,
    /// UDP_SEGMENT size: the message is several datagrams of this size (the
    /// last may be shorter). 0 means one datagram.
    pub segment: u16,
    /// Hash of the inner flow; the I/O layer picks the outer source port
    /// (socket) from it so that flows spread over underlay ECMP.
    pub entropy: u32,
}

impl TxMsg {
    /// How many datagrams this message becomes on the wire.
    pub fn datagrams(&self) -> usize {
        let len = self.range.len();
        if self.segment == 0 || len == 0 {
            1
        } else {
            len.div_ceil(self.segment as usize)
        }
    }
}

/// Outgoing UDP messages and the arena that holds their bytes.
pub struct TxBatch {
    arena: Vec<u8>,
    msgs: Vec<TxMsg>,
    max_bytes: usize,
    max_msgs: usize,
}

impl TxBatch {
    /// `max_bytes` is the arena size at which the batch reports full; it is
    /// allocated up front with room for one more 64 KB frame beyond it.
    pub fn new(max_bytes: usize, max_msgs: usize) -> TxBatch {
        TxBatch {
            arena: Vec::with_capacity(max_bytes + 2 * 65_536),
            msgs: Vec::with_capacity(max_msgs),
            max_bytes,
            max_msgs,
        }
    }

    /// The arena to append the next message's bytes to; call [`commit`]
    /// with the offset the message started at.
    ///
    /// [`commit`]: TxBatch::commit
    pub fn arena(&mut self) -> &mut Vec<u8> {
        &mut self.arena
    }

    /// Records the bytes from `start` to the arena's end as one message.
    pub fn commit(&mut self, dst: SocketAddr, start: usize, segment: u16, entropy: u32) {
        let range = start..self.arena.len();
        self.msgs.push(TxMsg {
            dst,
            range,
            segment,
            entropy,
        });
    }

    /// Sends the bytes of an already committed message to one more
    /// destination (flooding) without copying them.
    pub fn commit_again(
        &mut self,
        dst: SocketAddr,
        range: Range<usize>,
        segment: u16,
        entropy: u32,
    ) {
        self.msgs.push(TxMsg {
            dst,
            range,
            segment,
            entropy,
        });
    }

    /// Drops bytes appended after `start` that were not committed (an
    /// encapsulation that failed half-way).
    pub fn rollback(&mut self, start: usize) {
        self.arena.truncate(start);
    }

    pub fn msgs(&self) -> &[TxMsg] {
        &self.msgs
    }

    pub fn bytes(&self, msg: &TxMsg) -> &[u8] {
        &self.arena[msg.range.clone()]
    }

    /// Mutable access to a committed message (in-place encryption).
    pub fn bytes_mut(&mut self, range: Range<usize>) -> &mut [u8] {
        &mut self.arena[range]
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// True when the next frame might not fit: flush before adding more.
    pub fn is_full(&self) -> bool {
        self.arena.len() >= self.max_bytes || self.msgs.len() >= self.max_msgs
    }

    pub fn clear(&mut self) {
        self.arena.clear();
        self.msgs.clear();
    }
}

/// Where a received frame (or datagram) starts: byte `off` of receive
/// buffer `buf`. Carried through the engine to the coalescer, which turns
/// it into [`BufRef`]s; opaque to both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    pub buf: u32,
    pub off: u32,
}

impl FrameRef {
    /// The location `n` bytes further in the same buffer. Saturates: a
    /// location past any buffer fails to resolve instead of wrapping.
    pub fn advance(self, n: usize) -> FrameRef {
        FrameRef {
            buf: self.buf,
            off: self
                .off
                .saturating_add(u32::try_from(n).unwrap_or(u32::MAX)),
        }
    }

    /// The `len` bytes that start `at` bytes after this location.
    pub fn span(self, at: usize, len: usize) -> BufRef {
        let start = self.advance(at);
        BufRef {
            buf: start.buf,
            off: start.off,
            len: u32::try_from(len).unwrap_or(u32::MAX),
        }
    }
}

/// `len` bytes at `off` in receive buffer `buf`: a piece of a TAP write
/// that was left where `recvmmsg` put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufRef {
    pub buf: u32,
    pub off: u32,
    pub len: u32,
}

/// Metadata of one received UDP buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxMeta {
    pub src: SocketAddr,
    pub len: usize,
    /// UDP_GRO segment size: the buffer holds several datagrams of this size
    /// (the last may be shorter). 0 means one datagram.
    pub segment: u16,
}

/// Buffers for one `recvmmsg`: `bufs[i][..meta[i].len]` for `i < filled`.
pub struct RxBatch {
    pub bufs: Vec<Box<[u8]>>,
    pub meta: Vec<RxMeta>,
    pub filled: usize,
}

impl RxBatch {
    /// `count` buffers of `buf_len` bytes (64 KB when UDP GRO is on).
    pub fn new(count: usize, buf_len: usize) -> RxBatch {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        RxBatch {
            bufs: (0..count)
                .map(|_| vec![0u8; buf_len].into_boxed_slice())
                .collect(),
            meta: vec![
                RxMeta {
                    src: unspecified,
                    len: 0,
                    segment: 0
                };
                count
            ],
            filled: 0,
        }
    }

    /// The received length of buffer `i` and the size its datagrams are
    /// split at (the GRO segment size; the whole buffer without GRO).
    fn split(&self, i: usize) -> (usize, usize) {
        let meta = self.meta[i];
        let len = meta.len.min(self.bufs[i].len());
        let step = if meta.segment == 0 {
            len.max(1)
        } else {
            meta.segment as usize
        };
        (len, step)
    }

    /// The datagrams of received buffer `i`, split at the GRO segment size.
    /// A zero-length datagram is one empty slice, so that it is counted.
    pub fn datagrams(&self, i: usize) -> impl Iterator<Item = &[u8]> {
        let (len, step) = self.split(i);
        let mut rest = Some(&self.bufs[i][..len]);
        std::iter::from_fn(move || {
            let r = rest.take()?;
            if r.len() <= step {
                return Some(r);
            }
            let (d, tail) = r.split_at(step);
            rest = Some(tail);
            Some(d)
        })
    }

    /// The datagrams of received buffer `i`, split at the GRO segment size,
    /// mutable so that ESP can be decrypted in place. A zero-length
    /// datagram is one empty slice (`chunks_mut` would yield none, and the
    /// datagram would be counted nowhere).
    pub fn datagrams_mut(&mut self, i: usize) -> impl Iterator<Item = &mut [u8]> {
        let (len, step) = self.split(i);
        let mut rest = Some(&mut self.bufs[i][..len]);
        std::iter::from_fn(move || {
            let r = rest.take()?;
            if r.len() <= step {
                return Some(r);
            }
            let (d, tail) = r.split_at_mut(step);
            rest = Some(tail);
            Some(d)
        })
    }

    /// Like [`datagrams_mut`](RxBatch::datagrams_mut), with where each
    /// datagram starts, for [`Engine::from_wire_at`].
    ///
    /// [`Engine::from_wire_at`]: crate::engine::Engine::from_wire_at
    pub fn datagrams_at_mut(&mut self, i: usize) -> impl Iterator<Item = (FrameRef, &mut [u8])> {
        let start = FrameRef {
            buf: u32::try_from(i).unwrap_or(u32::MAX),
            off: 0,
        };
        let (_, step) = self.split(i);
        self.datagrams_mut(i)
            .enumerate()
            .map(move |(k, d)| (start.advance(k.saturating_mul(step)), d))
    }

    /// The received bytes `r` refers to, if they are within what the last
    /// receive filled (`None` for a reference that outlived its batch into
    /// a shorter one, or that is simply wrong: the caller drops the write).
    pub fn resolve(&self, r: BufRef) -> Option<&[u8]> {
        let i = usize::try_from(r.buf).ok()?;
        if i >= self.filled {
            return None;
        }
        let filled = self.meta.get(i)?.len;
        let start = usize::try_from(r.off).ok()?;
        let end = start.checked_add(usize::try_from(r.len).ok()?)?;
        if end > filled {
            return None;
        }
        self.bufs.get(i)?.get(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_commit_and_flood() {
        let mut tx = TxBatch::new(1024, 4);
        let dst: SocketAddr = "192.0.2.1:4789".parse().unwrap();
        let start = tx.arena().len();
        tx.arena().extend_from_slice(&[1, 2, 3]);
        tx.commit(dst, start, 0, 7);
        let range = tx.msgs()[0].range.clone();
        tx.commit_again("192.0.2.2:4789".parse().unwrap(), range, 0, 7);
        assert_eq!(tx.msgs().len(), 2);
        assert_eq!(tx.bytes(&tx.msgs()[1]), &[1, 2, 3]);
        let start = tx.arena().len();
        tx.arena().extend_from_slice(&[9; 10]);
        tx.rollback(start);
        assert_eq!(tx.arena().len(), 3);
        assert!(!tx.is_full());
        tx.clear();
        assert!(tx.is_empty());
    }

    #[test]
    fn tx_datagram_count() {
        let m = |len: usize, segment| TxMsg {
            dst: "[::1]:1".parse().unwrap(),
            range: 0..len,
            segment,
            entropy: 0,
        };
        assert_eq!(m(100, 0).datagrams(), 1);
        assert_eq!(m(100, 50).datagrams(), 2);
        assert_eq!(m(101, 50).datagrams(), 3);
    }

    #[test]
    fn rx_split_by_segment() {
        let mut rx = RxBatch::new(1, 64);
        rx.meta[0].len = 25;
        rx.meta[0].segment = 10;
        let lens: Vec<usize> = rx.datagrams(0).map(<[u8]>::len).collect();
        assert_eq!(lens, vec![10, 10, 5]);
        rx.meta[0].segment = 0;
        assert_eq!(rx.datagrams(0).count(), 1);
        rx.meta[0].len = 20;
        rx.meta[0].segment = 10;
        let lens: Vec<usize> = rx.datagrams_mut(0).map(|d| d.len()).collect();
        assert_eq!(lens, vec![10, 10], "no empty tail after a whole segment");
    }

    #[test]
    fn rx_empty_datagram_is_one_empty_slice() {
        let mut rx = RxBatch::new(1, 64);
        rx.filled = 1;
        for segment in [0, 10] {
            rx.meta[0].len = 0;
            rx.meta[0].segment = segment;
            let lens: Vec<usize> = rx.datagrams(0).map(<[u8]>::len).collect();
            assert_eq!(lens, vec![0]);
            assert_eq!(
                rx.datagrams_mut(0).map(|d| d.len()).collect::<Vec<_>>(),
                [0]
            );
            let at: Vec<_> = rx
                .datagrams_at_mut(0)
                .map(|(at, d)| (at, d.len()))
                .collect();
            assert_eq!(at, vec![(FrameRef { buf: 0, off: 0 }, 0)]);
        }
    }

    #[test]
    fn rx_locations_and_resolution() {
        let mut rx = RxBatch::new(2, 64);
        rx.bufs[1][..25].copy_from_slice(&[7; 25]);
        rx.meta[1].len = 25;
        rx.meta[1].segment = 10;
        rx.filled = 2;
        let at: Vec<(FrameRef, usize)> = rx
            .datagrams_at_mut(1)
            .map(|(at, d)| (at, d.len()))
            .collect();
        let r = |off, len| FrameRef { buf: 1, off }.span(0, len);
        assert_eq!(
            at,
            vec![
                (FrameRef { buf: 1, off: 0 }, 10),
                (FrameRef { buf: 1, off: 10 }, 10),
                (FrameRef { buf: 1, off: 20 }, 5)
            ]
        );
        assert_eq!(rx.resolve(r(20, 5)), Some(&[7u8; 5][..]));
        assert_eq!(rx.resolve(r(0, 0)), Some(&[][..]));
        // Past what was received, past the buffer, an overflowing offset,
        // a buffer the last receive did not fill, a buffer that is not there.
        assert_eq!(rx.resolve(r(20, 6)), None);
        assert_eq!(rx.resolve(r(60, 10)), None);
        assert_eq!(rx.resolve(r(u32::MAX, 2)), None);
        assert_eq!(
            rx.resolve(
                FrameRef {
                    buf: 1,
                    off: u32::MAX
                }
                .advance(9)
                .span(0, 1)
            ),
            None
        );
        rx.filled = 1;
        assert_eq!(rx.resolve(r(0, 1)), None);
        rx.filled = 2;
        assert_eq!(rx.resolve(FrameRef { buf: 5, off: 0 }.span(0, 1)), None);
        // One datagram per buffer without GRO.
        rx.meta[1].segment = 0;
        assert_eq!(rx.datagrams_at_mut(1).count(), 1);
    }
}
