//! Wire formats. Each module owns one format: field accessors over a borrowed
//! buffer, checked constructors for untrusted input, and emitters.

pub mod arp;
pub mod checksum;
pub mod icmp;
pub mod nd;
pub mod vnet;
pub mod vxlan;

use std::fmt;
use std::str::FromStr;

/// Why a buffer could not be read as the format it claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the fixed header or than a length field says.
    Truncated,
    /// A field holds a value the format forbids (flags, version, type).
    Malformed,
    /// Well formed, but a kind we do not handle (e.g. an unknown GSO type).
    Unsupported,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireError::Truncated => "truncated",
            WireError::Malformed => "malformed",
            WireError::Unsupported => "unsupported",
        })
    }
}

impl std::error::Error for WireError {}

/// A 24-bit VXLAN network identifier, 1..=16777215 (0 is reserved here).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vni(u32);

impl Vni {
    pub const MAX: u32 = (1 << 24) - 1;

    /// Returns `None` outside 1..=16777215.
    pub const fn new(v: u32) -> Option<Vni> {
        if v == 0 || v > Self::MAX {
            None
        } else {
            Some(Vni(v))
        }
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Vni {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        Vni::new(v).ok_or_else(|| format!("VNI {v} is outside 1..={}", Vni::MAX))
    }
}

impl From<Vni> for u32 {
    fn from(v: Vni) -> u32 {
        v.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An Ethernet MAC address.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// A locally administered unicast MAC derived from an IPv4/IPv6 address,
    /// the way Docker derives container MACs (02:42:...), so that the same
    /// address always gets the same MAC.
    pub fn from_ip(ip: std::net::IpAddr) -> MacAddr {
        let tail: [u8; 4] = match ip {
            std::net::IpAddr::V4(v4) => v4.octets(),
            std::net::IpAddr::V6(v6) => {
                let o = v6.octets();
                [o[12], o[13], o[14], o[15]]
            }
        };
        MacAddr([0x02, 0x42, tail[0], tail[1], tail[2], tail[3]])
    }

    /// Reads the destination MAC of an Ethernet frame.
    pub fn dst_of(frame: &[u8]) -> Option<MacAddr> {
        frame
            .get(0..6)
            .map(|b| MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]))
    }

    /// Reads the source MAC of an Ethernet frame.
    pub fn src_of(frame: &[u8]) -> Option<MacAddr> {
        frame
            .get(6..12)
            .map(|b| MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("'{s}' is not a MAC address; expected six hex pairs like 02:42:0a:00:00:02");
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_range() {
        assert!(Vni::new(0).is_none());
        assert!(Vni::new(1 << 24).is_none());
        assert_eq!(Vni::new(4096).map(Vni::get), Some(4096));
        assert!(serde_json_like_roundtrip());
    }

    fn serde_json_like_roundtrip() -> bool {
        Vni::try_from(16_777_215).is_ok() && Vni::try_from(16_777_216).is_err()
    }

    #[test]
    fn mac_parse_and_print() {
        let m: MacAddr = "02:42:0A:00:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:0a:00:00:02");
        for bad in [
            "",
            "02:42:0a:00:00",
            "02:42:0a:00:00:02:03",
            "zz:42:0a:00:00:02",
            "2:42:0a:00:00:02",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(!m.is_multicast());
    }
}
