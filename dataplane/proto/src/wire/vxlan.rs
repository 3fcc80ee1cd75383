//! VXLAN header (RFC 7348): the 8 bytes between the outer UDP header and the
//! inner Ethernet frame. This module owns reading and writing them.
//!
//! ```text
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! RFC 7348 says reserved bits are zero on send and ignored on receive, so
//! [`Packet::new_checked`] only insists on the I flag (and on a VNI other
//! than 0, which vxnet never assigns).
use super::{Vni, WireError};

pub const HEADER_LEN: usize = 8;
/// The I flag: "the VNI is valid".
pub const FLAG_I: u8 = 0x08;

/// A VXLAN datagram (UDP payload) over a borrowed buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    vni: Vni,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks length, the I flag and a non-zero VNI.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        let h = b.get(..HEADER_LEN).ok_or(WireError::Truncated)?;
        if h[0] & FLAG_I == 0 {
            return Err(WireError::Malformed);
        }
        let raw = u32::from_be_bytes([0, h[4], h[5], h[6]]);
        let vni = Vni::new(raw).ok_or(WireError::Malformed)?;
        Ok(Packet { buffer, vni })
    }

    pub fn vni(&self) -> Vni {
        self.vni
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        // new_checked guaranteed at least HEADER_LEN bytes.
        self.buffer.as_ref().get(HEADER_LEN..).unwrap_or(&[])
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
}

/// Writes a VXLAN header with the I flag and `vni` into `buf[..8]`.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_LEN`] (a caller's sizing mistake).
#[inline]
pub fn write_header(buf: &mut [u8], vni: Vni) {
    let v = vni.get().to_be_bytes();
    buf[..HEADER_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// UDP payload of a VXLAN packet in the exact form the Linux vxlan
    /// driver sends (flags 0x08, VNI 4096), carrying an ARP request.
    const CAPTURED: [u8; 50] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, // VXLAN, VNI 4096
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0x0a, 0x00, 0x00, 0x02, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x42, 0x0a, 0x00, 0x00, 0x02, 0x0a, 0x00,
        0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x03,
    ];

    #[test]
    fn deconstruct_captured() {
        let p = Packet::new_checked(&CAPTURED[..]).unwrap();
        assert_eq!(p.vni().get(), 4096);
        assert_eq!(p.payload(), &CAPTURED[8..]);
        assert_eq!(&p.payload()[12..14], &[0x08, 0x06]);
    }

    #[test]
    fn construct_matches_capture() {
        let mut b = [0xaau8; 8];
        write_header(&mut b, Vni::new(4096).unwrap());
        assert_eq!(b, CAPTURED[..8]);
        let mut b = [0u8; 8];
        write_header(&mut b, Vni::new(Vni::MAX).unwrap());
        assert_eq!(b, [0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0]);
        assert_eq!(Packet::new_checked(&b[..]).unwrap().vni().get(), Vni::MAX);
    }

    #[test]
    fn check_len_and_flags() {
        assert_eq!(
            Packet::new_checked(&CAPTURED[..7]).unwrap_err(),
            WireError::Truncated
        );
        assert!(
            Packet::new_checked(&CAPTURED[..8])
                .unwrap()
                .payload()
                .is_empty()
        );
        let mut no_i = CAPTURED;
        no_i[0] = 0x00;
        assert_eq!(
            Packet::new_checked(&no_i[..]).unwrap_err(),
            WireError::Malformed
        );
        let mut vni0 = CAPTURED;
        vni0[4..7].copy_from_slice(&[0, 0, 0]);
        assert_eq!(
            Packet::new_checked(&vni0[..]).unwrap_err(),
            WireError::Malformed
        );
        // Reserved bits are ignored on receive (RFC 7348 section 5).
        let mut reserved = CAPTURED;
        reserved[0] = 0xff;
        reserved[1] = 0x12;
        reserved[7] = 0x34;
        assert_eq!(
            Packet::new_checked(&reserved[..]).unwrap().vni().get(),
            4096
        );
    }
}
