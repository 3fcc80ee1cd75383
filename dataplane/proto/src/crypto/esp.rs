//! ESP (RFC 4303) with AES-GCM (RFC 4106), always with extended sequence
//! numbers, carried in UDP on the data port like RFC 3948 NAT-T.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |               Security Parameters Index (SPI)                 |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                Sequence Number (low 32 bits)                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          IV = full 64-bit sequence number, big-endian         |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ ---
//! |  inner UDP header (dst 4789) | VXLAN header | inner frame ... |  ^
//! +               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  | encrypted
//! |               | Padding 1,2,3 (0-3) | Pad Len | Next Hdr = 17 |  v
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ ---
//! |               ICV (16 bytes, AES-GCM tag)                     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! - Nonce = salt(4) ‖ IV(8) (RFC 4106 §4). Using the sequence number as IV
//!   makes nonces unique per key for free (the SA never reuses a number).
//! - AAD = SPI ‖ Seq high ‖ Seq low (RFC 4106 §5, ESN variant): the high half
//!   is authenticated though never sent.
//! - Padding is minimal so the ciphertext is a multiple of 4 (RFC 4303 §2.4),
//!   with the default pattern 1, 2, 3, which the receiver verifies.
//!
//! To decode with Wireshark/tshark, given an exported SA
//! (`vxnet dp sa --show-keys`): load `testbed/tshark/vxnet.lua`, which
//! hands UDP 4789 to the ESP or VXLAN dissector by the first word (decoding
//! the port as `udpencap` does not work: the decrypted payload is UDP to
//! 4789 again), enable `esp.enable_encryption_decode`, and add one SA per
//! direction with encryption "AES-GCM with 16 octet ICV [RFC4106]" and the
//! key followed by the salt as one hex string. Wireshark 4.0 has no ESN
//! setting, so it shows the ICV as unchecked; decryption does not need it.
//! The exact command is in the README.
//!
//! The first 32-bit word on the data port is classified by [`classify`]:
//! 0 marks a control message (like RFC 3948's non-ESP marker), any word with
//! the VXLAN I flag (0x08000000) a plain VXLAN header whatever its reserved
//! bits, 1..=255 a reserved SPI, anything else an SPI.

use core::ops::Range;

use super::CryptoError;
use super::replay::ReplayError;
use super::sa::{InboundSa, OutboundSa};

/// SPI + sequence low + IV.
pub const HEADER_LEN: usize = 16;
/// ICV length.
pub const ICV_LEN: usize = 16;
/// Most bytes [`seal_in_place`] appends after the payload: padding (≤ 3),
/// pad length, next header, ICV.
pub const MAX_TRAILER: usize = 3 + 2 + ICV_LEN;
/// Least possible ESP packet: header, pad length + next header, ICV.
pub const MIN_LEN: usize = HEADER_LEN + 2 + ICV_LEN;
/// Next header value: the protected payload is a UDP datagram.
pub const NEXT_HEADER_UDP: u8 = 17;
/// First word of a plain VXLAN header (I flag, reserved bits zero).
pub const VXLAN_FIRST_WORD: u32 = 0x0800_0000;
/// The VXLAN I flag. Any first word with it set is VXLAN (RFC 7348: the
/// other flag and reserved bits are ignored on receipt); no SPI we use has
/// it, so the two can never be confused.
pub const VXLAN_I_FLAG: u32 = 0x0800_0000;

/// What the first 32-bit word of a datagram on the data port says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classified {
    /// Word 0: a session control message (INIT / RESP / CONFIRM).
    Control,
    /// Plain VXLAN.
    Vxlan,
    /// ESP with this SPI.
    Esp(u32),
    /// SPI 1..=255, reserved by RFC 4303 §2.1: dropped.
    Reserved(u32),
}

/// Classifies a datagram by its first word; `None` if shorter than 4 bytes.
pub fn classify(datagram: &[u8]) -> Option<Classified> {
    let word = u32::from_be_bytes(datagram.get(..4)?.try_into().ok()?);
    Some(match word {
        0 => Classified::Control,
        w if w & VXLAN_I_FLAG != 0 => Classified::Vxlan,
        1..=255 => Classified::Reserved(word),
        spi => Classified::Esp(spi),
    })
}

/// The SPI of an ESP datagram, or `None` for anything that is not ESP.
pub fn peek_spi(datagram: &[u8]) -> Option<u32> {
    match classify(datagram)? {
        Classified::Esp(spi) => Some(spi),
        _ => None,
    }
}

/// Whether `spi` may be used: not 0, not reserved (1..=255), and without
/// the VXLAN I flag bit, so that it never looks like a VXLAN header.
pub fn is_valid_spi(spi: u32) -> bool {
    spi > 255 && spi & VXLAN_I_FLAG == 0
}

/// Read-only view of an ESP packet's fixed header (smoltcp style).
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps without checking; accessors may panic on short buffers.
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, CryptoError> {
        let p = Packet { buffer };
        p.check_len()?;
        Ok(p)
    }

    /// Long enough for header, minimal trailer and ICV, and the ciphertext a
    /// multiple of 4 bytes (RFC 4303 §2.4).
    pub fn check_len(&self) -> Result<(), CryptoError> {
        let len = self.buffer.as_ref().len();
        if len < MIN_LEN || (len - HEADER_LEN - ICV_LEN) % 4 != 0 {
            return Err(CryptoError::Truncated);
        }
        Ok(())
    }

    fn word(&self, at: usize) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// Security Parameters Index.
    pub fn spi(&self) -> u32 {
        self.word(0)
    }

    /// Low 32 bits of the sequence number.
    pub fn seq_low(&self) -> u32 {
        self.word(4)
    }

    /// The explicit 8-byte IV.
    pub fn iv(&self) -> [u8; 8] {
        let mut iv = [0u8; 8];
        iv.copy_from_slice(&self.buffer.as_ref()[8..16]);
        iv
    }

    /// Ciphertext length (payload + padding + 2).
    pub fn ciphertext_len(&self) -> usize {
        self.buffer.as_ref().len() - HEADER_LEN - ICV_LEN
    }
}

/// Padding to add after `payload_len` bytes.
fn pad_len(payload_len: usize) -> usize {
    (4 - (payload_len + 2) % 4) % 4
}

/// Total ESP length for a payload of `payload_len` bytes.
pub fn sealed_len(payload_len: usize) -> usize {
    HEADER_LEN + payload_len + pad_len(payload_len) + 2 + ICV_LEN
}

fn nonce(salt: [u8; 4], iv: [u8; 8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&salt);
    n[4..].copy_from_slice(&iv);
    n
}

fn aad(spi: u32, seq: u64) -> [u8; 12] {
    let mut a = [0u8; 12];
    a[..4].copy_from_slice(&spi.to_be_bytes());
    a[4..8].copy_from_slice(&((seq >> 32) as u32).to_be_bytes());
    a[8..].copy_from_slice(&(seq as u32).to_be_bytes());
    a
}

/// Encrypts in place: `packet[HEADER_LEN..HEADER_LEN + payload_len]` holds
/// the plaintext (inner UDP header + VXLAN datagram); the header is written
/// in front and the trailer + ICV after it. Returns the ESP length, at most
/// `HEADER_LEN + payload_len + MAX_TRAILER`.
pub fn seal_in_place(
    sa: &mut OutboundSa,
    packet: &mut [u8],
    payload_len: usize,
) -> Result<usize, CryptoError> {
    let pad = pad_len(payload_len);
    let ct_len = payload_len + pad + 2;
    let total = HEADER_LEN + ct_len + ICV_LEN;
    if packet.len() < total {
        return Err(CryptoError::BufferTooSmall);
    }
    let seq = sa.take_seq()?;
    let spi = sa.spi();
    let iv = seq.to_be_bytes();
    packet[0..4].copy_from_slice(&spi.to_be_bytes());
    packet[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
    packet[8..16].copy_from_slice(&iv);
    let trailer = HEADER_LEN + payload_len;
    for (i, b) in packet[trailer..trailer + pad].iter_mut().enumerate() {
        *b = (i + 1) as u8;
    }
    packet[trailer + pad] = pad as u8;
    packet[trailer + pad + 1] = NEXT_HEADER_UDP;
    #[cfg(not(fuzzing))]
    let tag = sa.aead().seal_in_place(
        &nonce(sa.salt(), iv),
        &aad(spi, seq),
        &mut packet[HEADER_LEN..HEADER_LEN + ct_len],
    );
    // Fuzzing: no AEAD either way (`open` skips it too), so what one host
    // seals the other opens, and the fuzzer writes trailers directly.
    #[cfg(fuzzing)]
    let tag = [0u8; ICV_LEN];
    packet[HEADER_LEN + ct_len..total].copy_from_slice(&tag);
    sa.packets += 1;
    sa.bytes += payload_len as u64;
    Ok(total)
}

/// Authenticates and decrypts an ESP packet in place for the inbound SA the
/// caller looked up (by peer and [`peek_spi`]). Returns the range of the
/// plaintext (inner UDP header + VXLAN datagram) within `packet`.
///
/// Order: length, SPI, replay pre-check, ICV, trailer, then the replay
/// window moves: only authenticated packets move it.
pub fn open_in_place(sa: &mut InboundSa, packet: &mut [u8]) -> Result<Range<usize>, CryptoError> {
    let p = Packet::new_checked(&*packet)?;
    if p.spi() != sa.spi() {
        return Err(CryptoError::UnknownSpi);
    }
    let seq = sa.replay.check(p.seq_low()).map_err(replay_err)?;
    let iv = p.iv();
    let ct_len = p.ciphertext_len();
    let mut tag = [0u8; ICV_LEN];
    tag.copy_from_slice(&packet[HEADER_LEN + ct_len..]);
    let ct = &mut packet[HEADER_LEN..HEADER_LEN + ct_len];
    #[cfg(not(fuzzing))]
    sa.aead()
        .open_in_place(&nonce(sa.salt(), iv), &aad(sa.spi(), seq), ct, &tag)?;
    // Fuzzing: skip the ICV so the fuzzer reaches the trailer and replay code.
    #[cfg(fuzzing)]
    let _ = (ct.len(), iv, tag);
    let next_header = packet[HEADER_LEN + ct_len - 1];
    let pad = usize::from(packet[HEADER_LEN + ct_len - 2]);
    if next_header != NEXT_HEADER_UDP || pad + 2 > ct_len {
        return Err(CryptoError::BadTrailer);
    }
    let payload_len = ct_len - 2 - pad;
    let padding = &packet[HEADER_LEN + payload_len..HEADER_LEN + payload_len + pad];
    if padding
        .iter()
        .enumerate()
        .any(|(i, &b)| usize::from(b) != i + 1)
    {
        return Err(CryptoError::BadTrailer);
    }
    sa.replay.accept(seq).map_err(replay_err)?;
    sa.packets += 1;
    sa.bytes += payload_len as u64;
    Ok(HEADER_LEN..HEADER_LEN + payload_len)
}

fn replay_err(e: ReplayError) -> CryptoError {
    match e {
        ReplayError::Duplicate => CryptoError::Replay,
        ReplayError::TooOld => CryptoError::TooOld,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::aead::{Backend, new_aead};
    use crate::crypto::sa::{SaId, SaKey};
    use std::time::Instant;

    const SPI: u32 = 0x823c_0f11;

    fn pair(backend: Backend) -> (OutboundSa, InboundSa) {
        let id = SaId {
            spi: SPI,
            vni: 4096,
            generation: 1,
        };
        let key = SaKey::new(&[0x42; 16], [0xde, 0xad, 0xbe, 0xef]).unwrap();
        let now = Instant::now();
        (
            OutboundSa::new(id, key.clone(), backend, now).unwrap(),
            InboundSa::new(id, key, backend, now).unwrap(),
        )
    }

    fn sealed(out: &mut OutboundSa, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN + payload.len() + MAX_TRAILER];
        buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        let n = seal_in_place(out, &mut buf, payload.len()).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn classify_first_word() {
        assert_eq!(classify(&[0, 0, 0, 0, 1]), Some(Classified::Control));
        assert_eq!(
            classify(&[8, 0, 0, 0, 0, 0, 0x10, 0]),
            Some(Classified::Vxlan)
        );
        assert_eq!(classify(&[0, 0, 0, 7]), Some(Classified::Reserved(7)));
        assert_eq!(classify(&[0, 0, 1, 0]), Some(Classified::Esp(256)));
        // The I flag makes it VXLAN whatever the reserved bits (RFC 7348).
        assert_eq!(classify(&[8, 0, 0, 1]), Some(Classified::Vxlan));
        assert_eq!(classify(&[0x0c, 0, 0, 0]), Some(Classified::Vxlan));
        assert_eq!(
            classify(&[0x80, 0, 0, 1]),
            Some(Classified::Esp(0x8000_0001))
        );
        assert_eq!(classify(&[8, 0, 0]), None);
        assert_eq!(peek_spi(&SPI.to_be_bytes()), Some(SPI));
        assert_eq!(peek_spi(&[8, 0, 0, 0]), None);
        assert_eq!(peek_spi(&[0, 0, 0, 0]), None);
        assert!(!is_valid_spi(0) && !is_valid_spi(255) && !is_valid_spi(VXLAN_FIRST_WORD));
        assert!(!is_valid_spi(0x0800_0001) && !is_valid_spi(0xffff_ffff));
        assert!(is_valid_spi(256));
    }

    #[test]
    fn round_trip_all_padding_lengths_every_backend() {
        for &backend in Backend::compiled() {
            let (mut out, mut inb) = pair(backend);
            for len in [0usize, 1, 2, 3, 4, 5, 63, 64, 1450] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                let mut pkt = sealed(&mut out, &payload);
                assert_eq!(pkt.len(), sealed_len(len));
                assert!(pkt.len() <= HEADER_LEN + len + MAX_TRAILER);
                assert_eq!((pkt.len() - HEADER_LEN - ICV_LEN) % 4, 0);
                assert_eq!(peek_spi(&pkt), Some(SPI));
                let r = open_in_place(&mut inb, &mut pkt).unwrap();
                assert_eq!(&pkt[r], &payload[..], "{backend} len {len}");
            }
            assert_eq!(out.packets, 9);
            assert_eq!(inb.packets, 9);
        }
    }

    #[test]
    fn header_layout_and_trailer_bytes() {
        // Known answer against the AEAD directly: our framing must be
        // exactly RFC 4303/4106 so a standard dissector decodes it.
        let (mut out, _) = pair(Backend::default());
        out.set_next_seq((7u64 << 32) | 9);
        let payload = [0xaau8; 5]; // 5 + 2 = 7 -> 1 padding byte
        let pkt = sealed(&mut out, &payload);
        assert_eq!(&pkt[0..4], &SPI.to_be_bytes());
        assert_eq!(&pkt[4..8], &9u32.to_be_bytes());
        assert_eq!(&pkt[8..16], &((7u64 << 32) | 9).to_be_bytes());
        assert_eq!(pkt.len(), 16 + 8 + 16);
        let aead = new_aead(Backend::default(), &[0x42; 16]).unwrap();
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        nonce[4..].copy_from_slice(&pkt[8..16]);
        let mut aad = Vec::new();
        aad.extend_from_slice(&SPI.to_be_bytes());
        aad.extend_from_slice(&7u32.to_be_bytes());
        aad.extend_from_slice(&9u32.to_be_bytes());
        let mut ct = pkt[16..24].to_vec();
        let tag: [u8; 16] = pkt[24..].try_into().unwrap();
        aead.open_in_place(&nonce, &aad, &mut ct, &tag).unwrap();
        assert_eq!(ct, [0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 1, 1, NEXT_HEADER_UDP]);
    }

    #[test]
    fn tamper_anywhere_fails() {
        let (mut out, mut inb) = pair(Backend::default());
        let pkt = sealed(&mut out, &[0x55; 100]);
        // Every byte after the SPI: seq/IV changes AAD/nonce, rest is ct/ICV.
        for i in 4..pkt.len() {
            let mut p = pkt.clone();
            p[i] ^= 0x01;
            let err = open_in_place(&mut inb, &mut p).unwrap_err();
            assert!(
                matches!(err, CryptoError::AuthFailed | CryptoError::TooOld),
                "byte {i}: {err:?}"
            );
        }
        let mut p = pkt.clone();
        p[0] ^= 0x80;
        assert_eq!(
            open_in_place(&mut inb, &mut p),
            Err(CryptoError::UnknownSpi)
        );
        // None of the failures moved the window: the real packet still opens.
        let mut p = pkt.clone();
        assert!(open_in_place(&mut inb, &mut p).is_ok());
    }

    #[test]
    fn replay_and_too_old_rejected() {
        let (mut out, mut inb) = pair(Backend::default());
        let first = sealed(&mut out, b"first");
        let mut p = first.clone();
        open_in_place(&mut inb, &mut p).unwrap();
        let mut p = first.clone();
        assert_eq!(open_in_place(&mut inb, &mut p), Err(CryptoError::Replay));
        let mut later = Vec::new();
        for _ in 0..3000 {
            later = sealed(&mut out, b"x");
        }
        let mut l = later.clone();
        open_in_place(&mut inb, &mut l).unwrap();
        let mut p = first.clone();
        // Seq 1 is now left of the window.
        assert_eq!(open_in_place(&mut inb, &mut p), Err(CryptoError::TooOld));
        assert_eq!(inb.packets, 2);
    }

    #[test]
    fn short_and_misaligned_rejected() {
        let (mut out, mut inb) = pair(Backend::default());
        let pkt = sealed(&mut out, &[1, 2, 3, 4, 5, 6]);
        for len in 0..pkt.len() {
            let mut p = pkt[..len].to_vec();
            assert!(open_in_place(&mut inb, &mut p).is_err(), "len {len}");
        }
        let mut p = pkt.clone();
        p.push(0);
        assert_eq!(open_in_place(&mut inb, &mut p), Err(CryptoError::Truncated));
    }

    #[test]
    fn bad_trailer_rejected_even_when_authentic() {
        // Build packets whose trailer is wrong but whose ICV is valid.
        let key = [0x42u8; 16];
        let salt = [0xde, 0xad, 0xbe, 0xef];
        let aead = new_aead(Backend::default(), &key).unwrap();
        let cases: [&[u8]; 3] = [
            &[9, 9, 1, 2, 2, 4],  // next header 4 (IPv4), not 17
            &[9, 9, 1, 3, 2, 17], // padding 1,3 instead of 1,2
            &[9, 9, 9, 9, 9, 17], // pad length 9 > ciphertext
        ];
        for (i, pt) in cases.iter().enumerate() {
            let (_, mut inb) = pair(Backend::default());
            let seq = i as u64 + 1;
            let mut pkt = Vec::new();
            pkt.extend_from_slice(&SPI.to_be_bytes());
            pkt.extend_from_slice(&(seq as u32).to_be_bytes());
            pkt.extend_from_slice(&seq.to_be_bytes());
            // Pad the plaintext to a multiple of 4 by prefixing payload bytes.
            let mut body = vec![0x77u8; (4 - pt.len() % 4) % 4];
            body.extend_from_slice(pt);
            let tag =
                aead.seal_in_place(&nonce(salt, seq.to_be_bytes()), &aad(SPI, seq), &mut body);
            pkt.extend_from_slice(&body);
            pkt.extend_from_slice(&tag);
            assert_eq!(
                open_in_place(&mut inb, &mut pkt),
                Err(CryptoError::BadTrailer),
                "case {i}"
            );
            assert_eq!(
                inb.replay.top(),
                0,
                "a bad trailer must not move the window"
            );
        }
    }

    #[test]
    fn buffer_too_small() {
        let (mut out, _) = pair(Backend::default());
        let mut buf = vec![0u8; HEADER_LEN + 10 + 2 + ICV_LEN - 1];
        assert_eq!(
            seal_in_place(&mut out, &mut buf, 10),
            Err(CryptoError::BufferTooSmall)
        );
        assert_eq!(
            out.next_seq(),
            1,
            "a refused seal must not burn a sequence number"
        );
    }
}
