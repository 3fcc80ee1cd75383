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
use super::{ETH_LEN, IpInfo, PROTO_TCP, tcp_header_len};
use crate::wire::checksum;
use crate::wire::vnet::{self, GsoType, VnetHdr};

const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
/// Largest IP payload (IPv6) or IP packet (IPv4) a merged frame may have.
const MAX_IP_LEN: usize = 65535;
/// How many recent items are searched for an open item of a flow; bounds
/// the per-packet cost with many flows in one batch.
const MAX_SCAN: usize = 64;

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
    /// `vnet header ‖ frame`; the header bytes are written by `drain`.
    buf: Vec<u8>,
    /// Header for items pushed as they are.
    hdr: Option<VnetHdr>,
    /// Merge state for TCP items.
    tcp: Option<TcpItem>,
}

#[derive(Debug, Clone, Copy)]
struct TcpItem {
    ip: IpInfo,
    tcp_hl: usize,
    /// Payload size of the first segment: the GSO size.
    seg_size: usize,
    count: usize,
    next_seq: u32,
    /// More segments may join.
    open: bool,
    psh: bool,
}

/// What `push` learnt about a TCP frame.
struct Segment {
    ip: IpInfo,
    tcp_hl: usize,
    payload: usize,
    seq: u32,
    flags: u8,
    /// Flags and headers simple enough to merge; the checksum is verified
    /// while the bytes are copied (see [`Coalescer::push`]).
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
/// head frame is `a`. Both are known to be the same flow.
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
    let merged_payload = a.len() - (l4 + it.tcp_hl) + n.payload;
    let ip_len = if it.ip.v6 { 0 } else { it.ip.hl } + it.tcp_hl + merged_payload;
    headers_match && n.seq == it.next_seq && n.payload <= it.seg_size && ip_len <= MAX_IP_LEN
}

impl Coalescer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next free slot, reusing its buffer.
    fn slot(&mut self) -> &mut Item {
        if self.len == self.items.len() {
            self.items.push(Item::default());
        }
        let it = &mut self.items[self.len];
        self.len += 1;
        it.buf.clear();
        it.hdr = None;
        it.tcp = None;
        it
    }

    /// Adds one inner Ethernet frame.
    pub fn push(&mut self, frame: &[u8]) {
        let Some(seg) = read_segment(frame) else {
            self.push_as_is(&VnetHdr::NONE, frame);
            return;
        };
        // The newest open item of this flow, if any.
        let lo = self.len.saturating_sub(MAX_SCAN);
        for it in self.items[lo..self.len].iter_mut().rev() {
            let Some(t) = it.tcp.as_mut() else { continue };
            let head = it.buf.get(vnet::LEN..).unwrap_or(&[]);
            if !t.open || !same_flow(head, &t.ip, frame, &seg.ip) {
                continue;
            }
            if seg.mergeable && can_merge(t, head, frame, &seg) {
                let l4 = seg.ip.l4;
                // Verify while appending: one pass over the payload instead
                // of a checksum pass and then a copy. A bad segment is taken
                // back out and passed through below, never merged.
                let before = it.buf.len();
                let hsum = checksum::sum(&frame[l4..l4 + seg.tcp_hl], seg.pseudo);
                let total =
                    checksum::copy_and_sum(&mut it.buf, &frame[l4 + seg.tcp_hl..seg.ip.end], hsum);
                if checksum::finish(total) != 0 {
                    it.buf.truncate(before);
                    t.open = false;
                    self.push_as_is(&VnetHdr::NONE, frame);
                    return;
                }
                // The newest window is the one the receiver should see.
                let w = vnet::LEN + t.ip.l4 + 14;
                it.buf[w..w + 2].copy_from_slice(&frame[l4 + 14..l4 + 16]);
                t.count += 1;
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
            self.push_as_is(&VnetHdr::NONE, frame);
            return;
        }
        let it = self.slot();
        it.buf.resize(vnet::LEN, 0);
        // Ethernet padding, if any, is dropped: lengths come from IP. The
        // checksum is summed from the copy, which is still in L1.
        let l4 = vnet::LEN + seg.ip.l4;
        it.buf.extend_from_slice(&frame[..seg.ip.end]);
        if checksum::finish(checksum::sum(&it.buf[l4..], seg.pseudo)) != 0 {
            // A bad checksum is the receiving kernel's to count and drop.
            self.len -= 1;
            self.push_as_is(&VnetHdr::NONE, frame);
            return;
        }
        it.tcp = Some(TcpItem {
            ip: seg.ip,
            tcp_hl: seg.tcp_hl,
            seg_size: seg.payload,
            count: 1,
            next_seq: seg.seq.wrapping_add(seg.payload as u32),
            open: seg.flags & TCP_PSH == 0,
            psh: seg.flags & TCP_PSH != 0,
        });
    }

    /// Adds a frame that must not be merged, with the vnet header it is to
    /// be written with (a TAP-to-TAP GSO frame, an ARP reply).
    pub fn push_as_is(&mut self, hdr: &vnet::VnetHdr, frame: &[u8]) {
        let it = self.slot();
        it.buf.resize(vnet::LEN, 0);
        it.buf.extend_from_slice(frame);
        it.hdr = Some(*hdr);
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pending items (TAP writes `drain` will hand out).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Hands out every pending item as `vnet header (10 bytes) ‖ frame`,
    /// ready for one TAP write, in arrival order, and empties the coalescer.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) {
        for it in &mut self.items[..self.len] {
            let hdr = match it.tcp {
                Some(t) if t.count > 1 => finalize(&t, &mut it.buf[vnet::LEN..]),
                Some(_) => VnetHdr::NONE,
                None => it.hdr.unwrap_or(VnetHdr::NONE),
            };
            hdr.emit(&mut it.buf[..vnet::LEN]);
            f(&it.buf);
        }
        self.len = 0;
    }
}

/// Fixes the head's headers for the merged length and returns the GSO
/// header the TAP needs to take the frame.
fn finalize(t: &TcpItem, frame: &mut [u8]) -> VnetHdr {
    let l4 = t.ip.l4;
    let l4_len = frame.len() - l4;
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
        c.drain(|b| v.push((VnetHdr::parse(b).unwrap(), b[vnet::LEN..].to_vec())));
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
        let mut c = Coalescer::new();
        let round = |c: &mut Coalescer| {
            segs.iter().for_each(|s| c.push(s));
            c.push(&[0; 60]);
            let mut n = 0;
            c.drain(|_| n += 1);
            n
        };
        assert_eq!(round(&mut c), 2);
        let ptrs: Vec<_> = c
            .items
            .iter()
            .map(|i| (i.buf.as_ptr(), i.buf.capacity()))
            .collect();
        assert_eq!(round(&mut c), 2);
        let again: Vec<_> = c
            .items
            .iter()
            .map(|i| (i.buf.as_ptr(), i.buf.capacity()))
            .collect();
        assert_eq!(ptrs, again);
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
}
