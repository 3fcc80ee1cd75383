//! Receive-side coalescing (GRO for TAP writes): the from_wire half of the
//! offloads. This module owns merging the TCP segments that arrive in one
//! receive batch back into GSO frames, so the container's kernel sees a few
//! 64 KB writes instead of dozens of MTU-sized ones.
//!
//! Merge rules follow Linux's `tcp_gro_receive` and wireguard-go's
//! `tun/offload_linux.go`: same Ethernet header, addresses and ports; IPv4
//! with no options or fragments and the same TOS/TTL/DF, IPv6 with no
//! extension headers and the same traffic class/flow label/hop limit; TCP
//! with the same ACK number, header length and option bytes, flags ACK
//! (PSH allowed on the segment that closes the item), the next expected
//! sequence number, and equal payload sizes (a shorter one closes the item).
//! A segment of a flow that cannot join that flow's open item closes it, so
//! a flow's frames are never reordered.
//!
//! No copy of received payload: a frame pushed with its location in the
//! receive buffers ([`Coalescer::push_ref`]) is verified where it lies and
//! kept as a reference ([`BufRef`]). An item owns only the bytes it writes
//! itself (vnet header and the head segment's headers, fixed up at drain)
//! and hands out `own bytes ‖ references…` ([`TapWrite`]), which the I/O
//! layer turns into one `writev`. Frames without a location (TAP-to-TAP,
//! proxy replies, [`Coalescer::push_as_is`]) are copied, as are small frames
//! (a short copy is cheaper than the iovec a reference costs).
use super::{ETH_LEN, IpInfo, PROTO_TCP, tcp_header_len};
use crate::batch::{BufRef, FrameRef};
use crate::wire::checksum;
use crate::wire::vnet::{self, GsoType, VnetHdr};
use std::io::IoSlice;

const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
/// Largest IP payload (IPv6) or IP packet (IPv4) a merged frame may have.
const MAX_IP_LEN: usize = 65535;
/// How many recent items are searched for an open item of a flow; bounds
/// the per-packet cost with many flows in one batch.
const MAX_SCAN: usize = 64;
/// Frames up to this size are copied even when their location is known: a
/// pure ACK costs less to copy than to describe with an extra iovec.
const COPY_MAX: usize = 256;
/// Most receive-buffer references one item holds (a 64 KB item of 512-byte
/// segments); payloads beyond are copied. Bounds the iovecs of one write.
pub const MAX_REFS: usize = 128;
/// Most pieces one [`TapWrite`] has: own bytes merge when adjacent, so
/// they are at most one more than the references.
pub const MAX_PIECES: usize = 2 * MAX_REFS + 1;

/// Collects inner Ethernet frames bound for one TAP during a receive batch
/// and merges consecutive TCP segments of the same flow (IPv4 or IPv6) into
/// one GSO frame (gso_type TCPV4/TCPV6, NEEDS_CSUM with a pseudo-header
/// checksum), so that one TAP write carries up to 64 KB. Frames that cannot
/// be merged are kept as they are, in arrival order. Segments whose TCP
/// checksum does not verify are never merged (passed through unchanged).
/// No allocation once warmed up.
#[derive(Default)]
pub struct Coalescer {
    /// Item slots; `items[..len]` are in use. Slots and their buffers are
    /// kept across batches so that a warmed-up coalescer does not allocate.
    items: Vec<Item>,
    len: usize,
}

#[derive(Default)]
struct Item {
    /// What the item writes.
    w: Pieces,
    /// Header for items pushed as they are.
    hdr: Option<VnetHdr>,
    /// Merge state for TCP items.
    tcp: Option<TcpItem>,
}

/// The bytes of one TAP write: own bytes and references, in order.
#[derive(Default)]
struct Pieces {
    /// The bytes the item owns: `vnet header ‖ head frame` (written by
    /// `drain`), where a referenced head keeps only its headers, then any
    /// payload that had to be copied.
    buf: Vec<u8>,
    /// The write in order: ranges of `buf` and references. The first is
    /// always `buf` from 0, so the vnet header leads.
    chunks: Vec<Chunk>,
    /// References among `chunks`.
    refs: usize,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    Own { start: usize, end: usize },
    Ref(BufRef),
}

impl Pieces {
    fn clear(&mut self) {
        self.buf.clear();
        self.chunks.clear();
        self.refs = 0;
    }

    /// Appends `buf[start..]` (just written) to the write.
    #[inline]
    fn own_from(&mut self, start: usize) {
        let end = self.buf.len();
        if let Some(Chunk::Own { end: e, .. }) = self.chunks.last_mut() {
            if *e == start {
                *e = end;
                return;
            }
        }
        self.chunks.push(Chunk::Own { start, end });
    }

    #[inline]
    fn reference(&mut self, r: BufRef) {
        self.chunks.push(Chunk::Ref(r));
        self.refs += 1;
    }
}

#[derive(Debug, Clone, Copy)]
struct TcpItem {
    ip: IpInfo,
    tcp_hl: usize,
    /// Payload size of the first segment: the GSO size.
    seg_size: usize,
    /// Payload bytes of all segments so far.
    payload: usize,
    count: usize,
    next_seq: u32,
    /// More segments may join.
    open: bool,
    psh: bool,
}

impl TcpItem {
    /// End of the head's TCP header in the frame (after the vnet header in
    /// the item's `buf`).
    fn headers(&self) -> usize {
        self.ip.l4 + self.tcp_hl
    }
}

/// What `push` learnt about a TCP frame.
struct Segment {
    ip: IpInfo,
    tcp_hl: usize,
    payload: usize,
    seq: u32,
    flags: u8,
    /// Flags and headers simple enough to merge; the checksum is verified
    /// as the segment joins (see [`Coalescer::push_ref`]).
    mergeable: bool,
    /// Pseudo-header sum of the segment (valid when `mergeable`).
    pseudo: u64,
}

fn read_segment(frame: &[u8]) -> Option<Segment> {
    let ip = IpInfo::parse(frame).ok()?;
    if ip.proto != PROTO_TCP || ip.fragment {
        return None;
    }
    let tcp_hl = tcp_header_len(frame, ip.l4, ip.end).ok()?;
    let t = &frame[ip.l4..ip.end];
    let flags = t[13];
    let payload = t.len() - tcp_hl;
    let simple = (ip.v6 || ip.hl == 20)
        && flags & !TCP_PSH == TCP_ACK
        && payload > 0
        && ip.l4 - ETH_LEN + t.len() <= MAX_IP_LEN;
    let pseudo = if simple {
        ip.pseudo(frame, PROTO_TCP, t.len())
    } else {
        0
    };
    Some(Segment {
        ip,
        tcp_hl,
        payload,
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        flags,
        mergeable: simple,
        pseudo,
    })
}

/// Same IP version, addresses and ports.
fn same_flow(a: &[u8], ai: &IpInfo, b: &[u8], bi: &IpInfo) -> bool {
    if ai.v6 != bi.v6 {
        return false;
    }
    let addrs = if ai.v6 {
        ETH_LEN + 8..ETH_LEN + 40
    } else {
        ETH_LEN + 12..ETH_LEN + 20
    };
    a.get(addrs.clone()) == b.get(addrs) && a.get(ai.l4..ai.l4 + 4) == b.get(bi.l4..bi.l4 + 4)
}

/// Whether segment `n` (of frame `b`) may be appended to item `it` whose
/// head's headers are `a`. Both are known to be the same flow.
fn can_merge(it: &TcpItem, a: &[u8], b: &[u8], n: &Segment) -> bool {
    let l4 = it.ip.l4;
    let headers_match = a.get(..ETH_LEN) == b.get(..ETH_LEN)
        && if it.ip.v6 {
            // version/traffic class/flow label, hop limit
            a.get(14..18) == b.get(14..18) && a.get(21) == b.get(21)
        } else {
            // TOS, DF, TTL
            a.get(15) == b.get(15)
                && a.get(20).map(|x| x & 0x40) == b.get(20).map(|x| x & 0x40)
                && a.get(22) == b.get(22)
        }
        && n.tcp_hl == it.tcp_hl
        // ACK number
        && a.get(l4 + 8..l4 + 12) == b.get(l4 + 8..l4 + 12)
        // option bytes
        && a.get(l4 + 20..l4 + it.tcp_hl) == b.get(l4 + 20..l4 + it.tcp_hl);
    let merged_payload = it.payload + n.payload;
    let ip_len = if it.ip.v6 { 0 } else { it.ip.hl } + it.tcp_hl + merged_payload;
    headers_match && n.seq == it.next_seq && n.payload <= it.seg_size && ip_len <= MAX_IP_LEN
}

impl Coalescer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next free slot, reusing its buffers.
    fn slot(&mut self) -> &mut Item {
        if self.len == self.items.len() {
            self.items.push(Item::default());
        }
        let it = &mut self.items[self.len];
        self.len += 1;
        it.w.clear();
        it.hdr = None;
        it.tcp = None;
        it
    }

    /// Adds one inner Ethernet frame, copying it.
    pub fn push(&mut self, frame: &[u8]) {
        self.push_at(frame, None);
    }

    /// Adds one inner Ethernet frame that lies at `at` in the caller's
    /// receive buffers. `frame` is those very bytes (read to parse and
    /// verify); the write [`drain`](Coalescer::drain) hands out refers to
    /// them by location instead of copying them, so they must stay in place
    /// and unchanged until the items are drained.
    pub fn push_ref(&mut self, frame: &[u8], at: FrameRef) {
        self.push_at(frame, Some(at));
    }

    fn push_at(&mut self, frame: &[u8], at: Option<FrameRef>) {
        let at = at.filter(|_| frame.len() > COPY_MAX);
        let Some(seg) = read_segment(frame) else {
            return self.pass(&VnetHdr::NONE, frame, at);
        };
        // The newest open item of this flow, if any.
        let lo = self.len.saturating_sub(MAX_SCAN);
        for it in self.items[lo..self.len].iter_mut().rev() {
            let Item {
                w, tcp: Some(t), ..
            } = it
            else {
                continue;
            };
            let head = w.buf.get(vnet::LEN..vnet::LEN + t.headers());
            let head = head.unwrap_or(&[]);
            if !t.open || !same_flow(head, &t.ip, frame, &seg.ip) {
                continue;
            }
            if seg.mergeable && can_merge(t, head, frame, &seg) {
                let l4 = seg.ip.l4;
                let body = l4 + seg.tcp_hl;
                let payload = &frame[body..seg.ip.end];
                let hsum = checksum::sum(&frame[l4..body], seg.pseudo);
                // A bad segment is never merged: it is passed through below.
                let good = match at {
                    Some(at) if w.refs < MAX_REFS => {
                        // Verified where it lies; only the location is kept.
                        let good = checksum::finish(checksum::sum(payload, hsum)) == 0;
                        if good {
                            w.reference(at.span(body, payload.len()));
                        }
                        good
                    }
                    _ => {
                        // Verify while appending: one pass over the payload
                        // instead of a checksum pass and then a copy; a bad
                        // segment is taken back out.
                        let before = w.buf.len();
                        let total = checksum::copy_and_sum(&mut w.buf, payload, hsum);
                        let good = checksum::finish(total) == 0;
                        if good {
                            w.own_from(before);
                        } else {
                            w.buf.truncate(before);
                        }
                        good
                    }
                };
                if !good {
                    t.open = false;
                    return self.pass(&VnetHdr::NONE, frame, at);
                }
                // The newest window is the one the receiver should see.
                let win = vnet::LEN + t.ip.l4 + 14;
                w.buf[win..win + 2].copy_from_slice(&frame[l4 + 14..l4 + 16]);
                t.count += 1;
                t.payload += seg.payload;
                t.next_seq = t.next_seq.wrapping_add(seg.payload as u32);
                if seg.flags & TCP_PSH != 0 {
                    t.psh = true;
                    t.open = false;
                }
                if seg.payload < t.seg_size {
                    t.open = false;
                }
                return;
            }
            // Keep the flow's order: nothing may join the older item now.
            t.open = false;
            break;
        }
        if !seg.mergeable {
            return self.pass(&VnetHdr::NONE, frame, at);
        }
        let l4 = seg.ip.l4;
        let body = l4 + seg.tcp_hl;
        let good = match at {
            Some(at) => {
                if checksum::finish(checksum::sum(&frame[l4..seg.ip.end], seg.pseudo)) != 0 {
                    false
                } else {
                    // The headers are copied (drain rewrites them), the
                    // payload stays where it is.
                    let w = &mut self.slot().w;
                    w.buf.resize(vnet::LEN, 0);
                    w.buf.extend_from_slice(&frame[..body]);
                    w.own_from(0);
                    w.reference(at.span(body, seg.ip.end - body));
                    true
                }
            }
            None => {
                // Ethernet padding, if any, is dropped: lengths come from
                // IP. The checksum is summed from the copy, still in L1.
                let w = &mut self.slot().w;
                w.buf.resize(vnet::LEN, 0);
                w.buf.extend_from_slice(&frame[..seg.ip.end]);
                if checksum::finish(checksum::sum(&w.buf[vnet::LEN + l4..], seg.pseudo)) != 0 {
                    self.len -= 1;
                    false
                } else {
                    w.own_from(0);
                    true
                }
            }
        };
        if !good {
            // A bad checksum is the receiving kernel's to count and drop.
            return self.pass(&VnetHdr::NONE, frame, at);
        }
        self.items[self.len - 1].tcp = Some(TcpItem {
            ip: seg.ip,
            tcp_hl: seg.tcp_hl,
            seg_size: seg.payload,
            payload: seg.payload,
            count: 1,
            next_seq: seg.seq.wrapping_add(seg.payload as u32),
            open: seg.flags & TCP_PSH == 0,
            psh: seg.flags & TCP_PSH != 0,
        });
    }

    /// Adds a frame that must not be merged, with the vnet header it is to
    /// be written with (a TAP-to-TAP GSO frame, an ARP reply). Copied.
    pub fn push_as_is(&mut self, hdr: &vnet::VnetHdr, frame: &[u8]) {
        self.pass(hdr, frame, None);
    }

    /// A frame written as it is: by reference when `at` is known.
    fn pass(&mut self, hdr: &VnetHdr, frame: &[u8], at: Option<FrameRef>) {
        let it = self.slot();
        let w = &mut it.w;
        w.buf.resize(vnet::LEN, 0);
        match at {
            Some(at) => {
                w.own_from(0);
                w.reference(at.span(0, frame.len()));
            }
            None => {
                w.buf.extend_from_slice(frame);
                w.own_from(0);
            }
        }
        it.hdr = Some(*hdr);
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pending items (TAP writes `drain` will hand out).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Hands out every pending item as one TAP write (`vnet header (10
    /// bytes) ‖ frame`, in pieces), in arrival order, and empties the
    /// coalescer. References in the writes point into the receive buffers
    /// the frames were pushed from: resolve them before those change.
    pub fn drain(&mut self, mut f: impl FnMut(TapWrite<'_>)) {
        for it in &mut self.items[..self.len] {
            let hdr = match it.tcp {
                Some(t) if t.count > 1 => {
                    finalize(&t, &mut it.w.buf[vnet::LEN..vnet::LEN + t.headers()])
                }
                Some(_) => VnetHdr::NONE,
                None => it.hdr.unwrap_or(VnetHdr::NONE),
            };
            hdr.emit(&mut it.w.buf[..vnet::LEN]);
            f(TapWrite {
                buf: &it.w.buf,
                chunks: &it.w.chunks,
            });
        }
        self.len = 0;
    }
}

/// One TAP write handed out by [`Coalescer::drain`]: `vnet header ‖ frame`
/// as a sequence of [`Piece`]s.
#[derive(Clone, Copy)]
pub struct TapWrite<'a> {
    buf: &'a [u8],
    chunks: &'a [Chunk],
}

/// Part of a [`TapWrite`]: bytes the coalescer owns, or a reference into a
/// receive buffer for the caller to resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Bytes(&'a [u8]),
    Ref(BufRef),
}

impl<'a> TapWrite<'a> {
    /// The pieces, in order; at most [`MAX_PIECES`], the first holding the
    /// vnet header.
    pub fn pieces(&self) -> impl Iterator<Item = Piece<'a>> + use<'a> {
        let buf = self.buf;
        self.chunks.iter().map(move |c| match *c {
            Chunk::Own { start, end } => Piece::Bytes(&buf[start..end]),
            Chunk::Ref(r) => Piece::Ref(r),
        })
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> usize {
        self.chunks.len()
    }

    /// The vnet header the write starts with.
    pub fn vnet_header(&self) -> &'a [u8] {
        self.buf.get(..vnet::LEN).unwrap_or(&[])
    }

    /// A GSO frame (the kernel segments it again).
    pub fn is_gso(&self) -> bool {
        self.vnet_header().get(1).is_some_and(|t| *t != 0)
    }

    /// Bytes of the whole write, vnet header included.
    pub fn size(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| match *c {
                Chunk::Own { start, end } => end - start,
                Chunk::Ref(r) => r.len as usize,
            })
            .sum()
    }

    /// The whole write when it is one piece of own bytes (nothing to
    /// resolve).
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self.chunks {
            [Chunk::Own { start, end }] => self.buf.get(*start..*end),
            _ => None,
        }
    }

    /// Fills `iov` with the pieces, references resolved by `resolve`, for
    /// one `writev`; returns how many slots it used. `None` when a
    /// reference does not resolve or `iov` is too short: the write must be
    /// dropped, not cut.
    pub fn iovecs<'x>(
        &self,
        mut resolve: impl FnMut(BufRef) -> Option<&'x [u8]>,
        iov: &mut [IoSlice<'x>],
    ) -> Option<usize>
    where
        'a: 'x,
    {
        let mut n = 0;
        for p in self.pieces() {
            let bytes = match p {
                Piece::Bytes(b) => b,
                Piece::Ref(r) => resolve(r)?,
            };
            *iov.get_mut(n)? = IoSlice::new(bytes);
            n += 1;
        }
        Some(n)
    }

    /// The write as one buffer, references resolved by `resolve`; `None`
    /// when one does not resolve. For tests and tools: the data path hands
    /// the pieces to `writev` instead.
    pub fn to_vec<'b>(
        &self,
        mut resolve: impl FnMut(BufRef) -> Option<&'b [u8]>,
    ) -> Option<Vec<u8>> {
        let mut v = Vec::with_capacity(self.size());
        for p in self.pieces() {
            match p {
                Piece::Bytes(b) => v.extend_from_slice(b),
                Piece::Ref(r) => v.extend_from_slice(resolve(r)?),
            }
        }
        Some(v)
    }
}

/// Fixes the head's headers (`frame`: Ethernet to the end of the TCP
/// header) for the merged length and returns the GSO header the TAP needs
/// to take the frame.
fn finalize(t: &TcpItem, frame: &mut [u8]) -> VnetHdr {
    let l4 = t.ip.l4;
    let l4_len = t.tcp_hl + t.payload;
    if t.ip.v6 {
        frame[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    } else {
        let total = (t.ip.hl + l4_len) as u16;
        frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
        frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&[0, 0]);
        let c = checksum::ipv4_header(&frame[ETH_LEN..ETH_LEN + t.ip.hl]);
        frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
    }
    if t.psh {
        frame[l4 + 13] |= TCP_PSH;
    }
    // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum and the
    // kernel (or whoever segments it again) completes it.
    let pseudo = t.ip.pseudo(frame, PROTO_TCP, l4_len);
    frame[l4 + 16..l4 + 18].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: if t.ip.v6 {
            GsoType::TcpV6
        } else {
            GsoType::TcpV4
        },
        gso_ecn: false,
        hdr_len: (l4 + t.tcp_hl) as u16,
        gso_size: t.seg_size as u16,
        csum_start: l4 as u16,
        csum_offset: 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::segment::{complete_checksum, segment};
    use crate::offload::testutil::{assert_valid, payload, tcp};

    /// Drains into (vnet header, frame) pairs.
    fn drain(c: &mut Coalescer) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut v = Vec::new();
        c.drain(|w| {
            let b = w.as_bytes().expect("a copied item is one piece");
            v.push((VnetHdr::parse(b).unwrap(), b[vnet::LEN..].to_vec()))
        });
        assert!(c.is_empty());
        v
    }

    fn gso_frame(v6: bool, data: &[u8], mss: u16) -> (VnetHdr, Vec<u8>) {
        let mut frame = tcp(v6, 4242, data, true);
        let ip = IpInfo::parse(&frame).unwrap();
        let p = ip.pseudo(&frame, PROTO_TCP, ip.end - ip.l4);
        frame[ip.l4 + 16..ip.l4 + 18].copy_from_slice(&checksum::fold(p).to_be_bytes());
        let hdr = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 },
            gso_ecn: false,
            hdr_len: (ip.l4 + 32) as u16,
            gso_size: mss,
            csum_start: ip.l4 as u16,
            csum_offset: 16,
        };
        (hdr, frame)
    }

    fn roundtrip(v6: bool) {
        let data = payload(if v6 { 65535 - 32 } else { 65535 - 52 });
        let (hdr, frame) = gso_frame(v6, &data, 1398);
        let mut segs = Vec::new();
        let s = segment(&hdr, &frame, &[], 0, &mut segs).unwrap();
        assert_eq!(s.count, data.len().div_ceil(1398));
        let mut c = Coalescer::new();
        for seg in segs.chunks(s.stride) {
            c.push(seg);
        }
        assert_eq!(c.len(), 1, "one flow, one item");
        let items = drain(&mut c);
        let (h, mut merged) = items.into_iter().next().unwrap();
        let l4 = if v6 { 54 } else { 34 };
        assert_eq!(h.flags, vnet::F_NEEDS_CSUM);
        assert_eq!(h.gso_type, hdr.gso_type);
        assert_eq!(h.gso_size, 1398);
        assert_eq!(h.hdr_len as usize, l4 + 32);
        assert_eq!(h.csum_start as usize, l4);
        assert_eq!(h.csum_offset, 16);
        // The merged frame is the original GSO frame, partial checksum
        // included...
        assert_eq!(merged, frame);
        // ...and segmenting it again gives the same segments.
        let mut again = Vec::new();
        segment(&h, &merged, &[], 0, &mut again).unwrap();
        assert_eq!(again, segs);
        // Completing the checksum yields a valid packet with all the data.
        complete_checksum(&h, &mut merged).unwrap();
        assert_eq!(assert_valid(&merged), data);
    }

    #[test]
    fn segment_then_coalesce_v4() {
        roundtrip(false);
    }

    #[test]
    fn segment_then_coalesce_v6() {
        roundtrip(true);
    }

    /// Consecutive segments of one flow, each with a valid checksum.
    fn flow(v6: bool, sizes: &[usize]) -> Vec<Vec<u8>> {
        let mut seq = 1u32;
        sizes
            .iter()
            .map(|&n| {
                let f = tcp(v6, seq, &payload(n), false);
                seq += n as u32;
                f
            })
            .collect()
    }

    #[test]
    fn single_frame_keeps_zero_header_and_bytes() {
        let f = tcp(false, 1, &payload(100), true);
        let mut c = Coalescer::new();
        c.push(&f);
        let items = drain(&mut c);
        assert_eq!(items, vec![(VnetHdr::NONE, f)]);
    }

    #[test]
    fn short_segment_closes_item() {
        let segs = flow(false, &[1000, 1000, 500, 1000]);
        let mut c = Coalescer::new();
        segs.iter().for_each(|s| c.push(s));
        let items = drain(&mut c);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].0.gso_size, 1000);
        assert_eq!(items[0].1.len(), segs[0].len() + 1500);
        assert_eq!(items[1], (VnetHdr::NONE, segs[3].clone()));
    }

    #[test]
    fn bad_checksum_is_passed_through_in_order() {
        let mut segs = flow(true, &[800, 800, 800, 800]);
        let last = segs[1].len() - 1;
        segs[1][last] ^= 0xff;
        let mut c = Coalescer::new();
        segs.iter().for_each(|s| c.push(s));
        let items = drain(&mut c);
        // seg0 alone (seg1 closed it), seg1 untouched, seg2+seg3 merged.
        assert_eq!(items.len(), 3);
        assert_eq!(items[0], (VnetHdr::NONE, segs[0].clone()));
        assert_eq!(items[1], (VnetHdr::NONE, segs[1].clone()));
        assert_eq!(items[2].0.gso_type, GsoType::TcpV6);
        let mut merged = items[2].1.clone();
        complete_checksum(&items[2].0, &mut merged).unwrap();
        assert_eq!(assert_valid(&merged).len(), 1600);
    }

    #[test]
    fn bad_checksum_on_first_and_last_segment() {
        // The first segment fails while starting an item, the last while
        // being appended: neither is merged, the good ones in between are.
        let mut segs = flow(false, &[700, 700, 700, 700]);
        for i in [0, 3] {
            let at = segs[i].len() - 10;
            segs[i][at] ^= 0x5a;
        }
        let mut c = Coalescer::new();
        segs.iter().for_each(|s| c.push(s));
        let items = drain(&mut c);
        assert_eq!(items.len(), 3);
        assert_eq!(items[0], (VnetHdr::NONE, segs[0].clone()));
        assert_eq!(items[1].0.gso_type, GsoType::TcpV4);
        let mut merged = items[1].1.clone();
        complete_checksum(&items[1].0, &mut merged).unwrap();
        let mut want = payload(700);
        want.extend_from_slice(&payload(700));
        assert_eq!(assert_valid(&merged), want);
        assert_eq!(items[2], (VnetHdr::NONE, segs[3].clone()));
    }

    #[test]
    fn interleaved_flows_merge_separately() {
        let a = flow(false, &[1000; 4]);
        let b = flow(true, &[900; 4]);
        let mut c = Coalescer::new();
        for i in 0..4 {
            c.push(&a[i]);
            c.push(&b[i]);
        }
        let items = drain(&mut c);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].0.gso_type, GsoType::TcpV4);
        assert_eq!(items[1].0.gso_type, GsoType::TcpV6);
        for (h, f) in items {
            let mut f = f;
            complete_checksum(&h, &mut f).unwrap();
            assert_eq!(assert_valid(&f).len(), 4 * h.gso_size as usize);
        }
    }

    #[test]
    fn refuses_gaps_flags_and_option_changes() {
        // A sequence gap.
        let mut segs = flow(false, &[1000; 3]);
        segs.remove(1);
        let mut c = Coalescer::new();
        segs.iter().for_each(|s| c.push(s));
        assert_eq!(c.len(), 2);
        // PSH closes the item: the next segment starts a new one.
        let mut c = Coalescer::new();
        c.push(&tcp(false, 1, &payload(1000), false));
        c.push(&tcp(false, 1001, &payload(1000), true));
        c.push(&tcp(false, 2001, &payload(1000), false));
        let items = drain(&mut c);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].1[34 + 13] & TCP_PSH, TCP_PSH, "PSH carried over");
        // Different TTL, different timestamp option, a FIN.
        for (i, v) in [(22usize, 63u8), (34 + 29, 9), (34 + 13, 0x11)] {
            let segs = flow(false, &[1000; 2]);
            let mut second = segs[1].clone();
            second[i] = v;
            fix_checksums(&mut second);
            let mut c = Coalescer::new();
            c.push(&segs[0]);
            c.push(&second);
            assert_eq!(c.len(), 2, "byte {i} = {v}");
        }
    }

    fn fix_checksums(f: &mut [u8]) {
        let ip = IpInfo::parse(f).unwrap();
        f[24..26].copy_from_slice(&[0, 0]);
        let c = checksum::ipv4_header(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f[ip.l4 + 16..ip.l4 + 18].copy_from_slice(&[0, 0]);
        let p = ip.pseudo(f, PROTO_TCP, ip.end - ip.l4);
        let c = checksum::finish(checksum::sum(&f[ip.l4..ip.end], p));
        f[ip.l4 + 16..ip.l4 + 18].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn as_is_and_non_tcp_keep_order_and_header() {
        let gso = VnetHdr {
            flags: 1,
            gso_type: GsoType::TcpV4,
            gso_ecn: false,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let segs = flow(false, &[1000; 2]);
        let mut c = Coalescer::new();
        c.push(&segs[0]);
        c.push_as_is(&gso, b"not really a frame");
        c.push(&[1, 2, 3]);
        c.push(&segs[1]);
        let items = drain(&mut c);
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].0.gso_type, GsoType::TcpV4);
        assert_eq!(items[1], (gso, b"not really a frame".to_vec()));
        assert_eq!(items[2], (VnetHdr::NONE, vec![1, 2, 3]));
    }

    #[test]
    fn no_allocation_after_warm_up() {
        let segs = flow(false, &[1400; 40]);
        let mut frames = segs.clone();
        frames.push(vec![0; 600]);
        let (bufs, at) = RxBufs::place(&frames);
        let mut c = Coalescer::new();
        // Copies, then references; both reuse the same slots.
        let round = |c: &mut Coalescer| {
            segs.iter().for_each(|s| c.push(s));
            c.push(&[0; 60]);
            for (f, at) in frames.iter().zip(&at) {
                c.push_ref(bufs.frame(*at, f.len()), *at);
            }
            let mut n = 0;
            c.drain(|_| n += 1);
            n
        };
        let footprint = |c: &Coalescer| -> Vec<_> {
            c.items
                .iter()
                .map(|i| {
                    (
                        i.w.buf.as_ptr(),
                        i.w.buf.capacity(),
                        i.w.chunks.as_ptr(),
                        i.w.chunks.capacity(),
                    )
                })
                .collect()
        };
        assert_eq!(round(&mut c), 4);
        let ptrs = footprint(&c);
        assert_eq!(round(&mut c), 4);
        assert_eq!(ptrs, footprint(&c));
    }

    #[test]
    fn respects_64k_limit() {
        let segs = flow(false, &[1448; 60]);
        let mut c = Coalescer::new();
        segs.iter().for_each(|s| c.push(s));
        let items = drain(&mut c);
        assert_eq!(items.len(), 2);
        for (h, mut f) in items {
            assert!(f.len() - 14 <= 65535);
            complete_checksum(&h, &mut f).unwrap();
            assert_valid(&f);
        }
    }

    /// Receive buffers for the reference path: frames back to back at odd
    /// offsets after a stand-in for the VXLAN header, three per buffer, the
    /// way GRO lays datagrams out.
    struct RxBufs(Vec<Vec<u8>>);

    impl RxBufs {
        fn place(frames: &[Vec<u8>]) -> (RxBufs, Vec<FrameRef>) {
            let mut bufs = RxBufs(Vec::new());
            let mut at = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                if i % 3 == 0 {
                    bufs.0.push(vec![0xee; 5]);
                }
                let buf = (bufs.0.len() - 1) as u32;
                let b = bufs.0.last_mut().unwrap();
                at.push(FrameRef {
                    buf,
                    off: b.len() as u32,
                });
                b.extend_from_slice(f);
                b.extend_from_slice(&[0xee; 3]);
            }
            (bufs, at)
        }

        fn resolve(&self, r: BufRef) -> Option<&[u8]> {
            let start = r.off as usize;
            self.0
                .get(r.buf as usize)?
                .get(start..start + r.len as usize)
        }

        fn frame(&self, at: FrameRef, len: usize) -> &[u8] {
            self.resolve(at.span(0, len)).unwrap()
        }
    }

    /// How a frame is handed to the coalescer on the reference path.
    enum In {
        Ref(Vec<u8>),
        Copy(Vec<u8>),
        AsIs(VnetHdr, Vec<u8>),
    }

    fn refs(frames: Vec<Vec<u8>>) -> Vec<In> {
        frames.into_iter().map(In::Ref).collect()
    }

    /// What one coalescer write looked like on the reference path.
    struct Write {
        hdr: VnetHdr,
        frame: Vec<u8>,
        /// Bytes in own pieces (vnet header included).
        own: usize,
        pieces: usize,
    }

    /// Feeds `inputs` to two coalescers, one copying every frame, one as
    /// given (references for `Ref`), and checks that their TAP writes are
    /// byte for byte the same.
    fn same_as_copying(inputs: &[In]) -> Vec<Write> {
        let mut copied = Coalescer::new();
        for i in inputs {
            match i {
                In::Ref(f) | In::Copy(f) => copied.push(f),
                In::AsIs(h, f) => copied.push_as_is(h, f),
            }
        }
        let want = drain(&mut copied);
        let frames: Vec<Vec<u8>> = inputs
            .iter()
            .map(|i| match i {
                In::Ref(f) | In::Copy(f) | In::AsIs(_, f) => f.clone(),
            })
            .collect();
        let (bufs, at) = RxBufs::place(&frames);
        let mut c = Coalescer::new();
        for (k, i) in inputs.iter().enumerate() {
            match i {
                In::Ref(f) => c.push_ref(bufs.frame(at[k], f.len()), at[k]),
                In::Copy(f) => c.push(f),
                In::AsIs(h, f) => c.push_as_is(h, f),
            }
        }
        let mut got = Vec::new();
        c.drain(|w| {
            assert!(w.piece_count() <= MAX_PIECES);
            let b = w.to_vec(|r| bufs.resolve(r)).expect("references resolve");
            assert_eq!(b.len(), w.size());
            assert_eq!(w.vnet_header(), &b[..vnet::LEN]);
            assert_eq!(w.is_gso(), b[1] != 0);
            let own = w
                .pieces()
                .map(|p| match p {
                    Piece::Bytes(b) => b.len(),
                    Piece::Ref(_) => 0,
                })
                .sum();
            got.push(Write {
                hdr: VnetHdr::parse(&b).unwrap(),
                frame: b[vnet::LEN..].to_vec(),
                own,
                pieces: w.piece_count(),
            });
        });
        assert!(c.is_empty());
        let pairs: Vec<_> = got.iter().map(|w| (w.hdr, w.frame.clone())).collect();
        assert_eq!(pairs, want, "references give the same TAP writes as copies");
        got
    }

    fn ref_roundtrip(v6: bool) {
        let data = payload(if v6 { 65535 - 32 } else { 65535 - 52 });
        let (hdr, frame) = gso_frame(v6, &data, 1398);
        let mut out = Vec::new();
        let s = segment(&hdr, &frame, &[], 0, &mut out).unwrap();
        let segs: Vec<Vec<u8>> = out.chunks(s.stride).map(<[u8]>::to_vec).collect();
        let w = same_as_copying(&refs(segs));
        assert_eq!(w.len(), 1, "one flow, one item");
        assert_eq!(w[0].frame, frame, "the original GSO frame");
        // Nothing of the payload was copied: the item owns the vnet header
        // and the head's headers, and refers to every segment's payload.
        let l4 = if v6 { 54 } else { 34 };
        assert_eq!(w[0].own, vnet::LEN + l4 + 32);
        assert_eq!(w[0].pieces, 1 + s.count);
    }

    #[test]
    fn references_segment_then_coalesce_v4() {
        ref_roundtrip(false);
    }

    #[test]
    fn references_segment_then_coalesce_v6() {
        ref_roundtrip(true);
    }

    #[test]
    fn references_with_bad_checksums() {
        for v6 in [false, true] {
            // Bad first (starting an item), middle, and last (appending).
            let mut segs = flow(v6, &[700; 6]);
            for i in [0, 2, 5] {
                let at = segs[i].len() - 10;
                segs[i][at] ^= 0x5a;
            }
            let w = same_as_copying(&refs(segs.clone()));
            // seg0, seg1, seg2, seg3+seg4, seg5.
            assert_eq!(w.len(), 5);
            assert_eq!(w[0].frame, segs[0], "passed through untouched");
            assert_eq!(w[0].own, vnet::LEN, "and by reference");
            assert_eq!(w[3].hdr.gso_size, 700);
            let mut merged = w[3].frame.clone();
            complete_checksum(&w[3].hdr, &mut merged).unwrap();
            assert_eq!(assert_valid(&merged).len(), 1400);
            assert_eq!(w[4].frame, segs[5]);
        }
    }

    #[test]
    fn references_with_interleaved_flows() {
        let a = flow(false, &[1000; 5]);
        let b = flow(true, &[900; 5]);
        let mut inputs = Vec::new();
        for i in 0..5 {
            inputs.push(In::Ref(a[i].clone()));
            inputs.push(In::Ref(b[i].clone()));
        }
        let w = same_as_copying(&inputs);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].hdr.gso_type, GsoType::TcpV4);
        assert_eq!(w[1].hdr.gso_type, GsoType::TcpV6);
        assert!(w.iter().all(|w| w.pieces == 6));
    }

    #[test]
    fn references_mixed_with_copies_and_as_is_frames() {
        let gso = gso_frame(false, &payload(3000), 1000);
        let segs = flow(false, &[1000; 8]);
        let mut padded = tcp(true, 77, &payload(500), false);
        padded.extend_from_slice(&[0; 6]);
        let inputs = vec![
            In::Ref(segs[0].clone()),
            In::Copy(segs[1].clone()),
            In::Copy(segs[2].clone()),
            In::Ref(segs[3].clone()),
            // A small and a non-TCP frame in between are not in the flow.
            In::Ref(tcp(true, 1, &payload(10), false)),
            In::Ref(vec![0x42; 300]),
            In::Ref(segs[4].clone()),
            In::AsIs(gso.0, gso.1),
            In::Copy(segs[5].clone()),
            In::Ref(segs[6].clone()),
            In::Ref(segs[7].clone()),
            // Ethernet padding is left out of a merged item either way.
            In::Ref(padded.clone()),
            In::Ref(tcp(true, 577, &payload(500), false)),
            In::Ref(vec![0x43; 100]),
        ];
        let w = same_as_copying(&inputs);
        assert_eq!(w.len(), 6);
        // The flow is one item: own bytes where a copy was asked for.
        assert_eq!(w[0].hdr.gso_size, 1000);
        assert_eq!(w[0].frame.len(), 66 + 8000);
        assert_eq!(w[0].own, vnet::LEN + 66 + 3000);
        // Headers, ref0, seg1+seg2 (adjacent own bytes merge), ref3, ref4,
        // seg5, ref6, ref7.
        assert_eq!(w[0].pieces, 8);
        assert_eq!(
            w[1].frame,
            tcp(true, 1, &payload(10), false),
            "small: copied"
        );
        assert_eq!(w[1].own, vnet::LEN + w[1].frame.len());
        assert_eq!(w[2].own, vnet::LEN, "non-TCP: referenced");
        assert_eq!(w[4].hdr.gso_type, GsoType::TcpV6);
        assert_eq!(w[4].frame.len(), 86 + 1000);
        assert_eq!(w[5].own, vnet::LEN + 100);
    }

    #[test]
    fn references_respect_64k_limit() {
        let w = same_as_copying(&refs(flow(false, &[1448; 60])));
        assert_eq!(w.len(), 2);
        for mut w in w {
            assert!(w.frame.len() - 14 <= 65535);
            complete_checksum(&w.hdr, &mut w.frame).unwrap();
            assert_valid(&w.frame);
        }
    }

    #[test]
    fn references_per_item_are_bounded() {
        // 300-byte payloads: a 64 KB item holds 218 of them, more than
        // MAX_REFS references; the payloads past that are copied.
        let w = same_as_copying(&refs(flow(false, &[300; 230])));
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].pieces, 1 + MAX_REFS + 1);
        assert_eq!(w[0].frame.len(), 66 + 300 * 218);
        assert_eq!(w[0].own, vnet::LEN + 66 + 300 * (218 - MAX_REFS));
        assert_eq!(w[1].pieces, 1 + 12);
    }

    #[test]
    fn iovecs_resolve_every_piece_or_refuse_the_write() {
        let segs = flow(false, &[1000; 3]);
        let (bufs, at) = RxBufs::place(&segs);
        let mut c = Coalescer::new();
        for (s, at) in segs.iter().zip(&at) {
            c.push_ref(bufs.frame(*at, s.len()), *at);
        }
        // A reference to bytes that are not there (a stale location).
        c.push_ref(&[0; 600], FrameRef { buf: 9, off: 0 });
        let mut seen = Vec::new();
        c.drain(|w| {
            let mut iov = [IoSlice::new(&[]); 8];
            let n = w.iovecs(|r| bufs.resolve(r), &mut iov);
            let mut short = [IoSlice::new(&[]); 2];
            let cut = w.iovecs(|r| bufs.resolve(r), &mut short);
            let gathered = n.map(|n| iov[..n].iter().flat_map(|s| s.to_vec()).collect());
            seen.push((n, cut, gathered, w.to_vec(|r| bufs.resolve(r))));
        });
        assert_eq!(seen.len(), 2);
        let (n, cut, gathered, whole) = &seen[0];
        assert_eq!(*n, Some(4), "headers and three payloads");
        assert_eq!(*cut, None, "too few slots: refused, not cut");
        assert_eq!(gathered, whole);
        assert_eq!(seen[1].0, None, "unresolvable: refused");
        assert_eq!(seen[1].3, None);
    }
}
