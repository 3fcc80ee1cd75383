//! Host keys and the derivation of per-pair, per-generation SA keys.
//!
//! Each host has one X25519 static keypair ([`StaticKeypair`]); peers know it
//! by its public key ([`PublicKey`], printed as 44-character standard
//! base64). Keys for ESP are never shared beyond a host pair:
//!
//! ```text
//! PRK   = HKDF-Extract(salt = "vxnet-esp-v1",
//!                      ikm  = DH(e_i, e_r) ‖ DH(s_i, s_r))
//! OKM   = HKDF-Expand(PRK, info = "vxnet-esp-v1 sa" ‖ S_i ‖ S_r
//!                                 ‖ generation(4, BE) ‖ VNI(4, BE)
//!                                 ‖ direction(1), L = key_len + 4 + 4)
//! key   = OKM[..key_len]   salt = next 4 bytes   SPI = last 4 bytes (BE)
//! ```
//!
//! `e_*` are the per-generation ephemeral secrets (forward secrecy: once they
//! and the PRK are wiped, a leaked static key does not decrypt recorded
//! traffic), `s_*` the static ones (authentication: only the two hosts can
//! compute the PRK), `S_*` the static public keys, `i`/`r` the initiator and
//! responder of that generation's handshake. The direction byte is 1 for
//! initiator → responder and 2 for the reverse. The SPI is derived too, so
//! both sides know it without another message; the VXLAN I flag bit is
//! cleared (so an SPI never looks like a VXLAN header) and values 0..=255
//! get the top bit set, which lands every SPI in the valid range.
//!
//! Control messages are authenticated with a key from the static-static DH
//! alone ([`control_key`]), since they are what establishes the ephemerals.

use core::fmt;
use core::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::Sha256;
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, Zeroizing};

use super::CryptoError;
use super::esp::is_valid_spi;
use super::sa::SaKey;

/// HKDF salt and label prefix; bump the version to change the derivation.
pub const PROTOCOL_LABEL: &[u8] = b"vxnet-esp-v1";

/// An X25519 public key (32 bytes), shown as standard base64 (44 chars).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct PublicKey([u8; 32]);

impl TryFrom<String> for PublicKey {
    type Error = KeyParseError;
    fn try_from(s: String) -> Result<Self, KeyParseError> {
        s.parse()
    }
}

impl From<PublicKey> for String {
    fn from(k: PublicKey) -> String {
        k.to_string()
    }
}

impl PublicKey {
    /// From raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }

    /// Raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn dalek(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// Why a public key string did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyParseError {
    /// Not standard base64.
    Base64,
    /// Decoded to something other than 32 bytes.
    Length,
}

impl fmt::Display for KeyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyParseError::Base64 => "public key is not valid base64",
            KeyParseError::Length => "public key is not 32 bytes",
        })
    }
}

impl std::error::Error for KeyParseError {}

impl FromStr for PublicKey {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|_| KeyParseError::Base64)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyParseError::Length)?;
        Ok(PublicKey(bytes))
    }
}

/// The host's X25519 static keypair. The secret is wiped on drop.
pub struct StaticKeypair {
    secret: StaticSecret,
    public: PublicKey,
}

impl StaticKeypair {
    /// A new random keypair (the dataplane passes `rand_core::OsRng`).
    pub fn generate(rng: &mut dyn CryptoRngCore) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *bytes);
        Self::from_bytes(*bytes)
    }

    /// From the 32 secret bytes stored in the key file.
    pub fn from_bytes(secret: [u8; 32]) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        StaticKeypair { secret, public }
    }

    /// The 32 secret bytes for the key file (wiped when the result drops).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The public key to give to peers.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// Static-static DH; `None` if the peer key is a low-order point.
    pub(crate) fn dh(&self, peer: &PublicKey) -> Option<Zeroizing<[u8; 32]>> {
        let shared = self.secret.diffie_hellman(&peer.dalek());
        shared
            .was_contributory()
            .then(|| Zeroizing::new(shared.to_bytes()))
    }
}

impl fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A per-generation ephemeral keypair; the secret is wiped on drop.
pub(crate) struct Ephemeral {
    secret: StaticSecret,
    pub(crate) public: PublicKey,
}

impl Ephemeral {
    pub(crate) fn generate(rng: &mut dyn CryptoRngCore) -> Self {
        let kp = StaticKeypair::generate(rng);
        Ephemeral {
            secret: kp.secret,
            public: kp.public,
        }
    }

    /// Ephemeral-ephemeral DH; `None` for a low-order peer point.
    pub(crate) fn dh(&self, peer: &PublicKey) -> Option<Zeroizing<[u8; 32]>> {
        let shared = self.secret.diffie_hellman(&peer.dalek());
        shared
            .was_contributory()
            .then(|| Zeroizing::new(shared.to_bytes()))
    }
}

/// Which way an SA carries traffic, relative to the generation's handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the handshake initiator to the responder.
    InitiatorToResponder,
    /// From the responder to the initiator.
    ResponderToInitiator,
}

impl Direction {
    fn byte(self) -> u8 {
        match self {
            Direction::InitiatorToResponder => 1,
            Direction::ResponderToInitiator => 2,
        }
    }
}

/// The HKDF PRK of one generation with its context; wiped on drop. Kept
/// while the generation is current so SAs for VNIs added later can be
/// derived, dropped when the generation retires.
pub struct GenerationSecret {
    prk: Zeroizing<[u8; 32]>,
    initiator: PublicKey,
    responder: PublicKey,
    generation: u32,
}

impl GenerationSecret {
    /// HKDF-Extract over DH(e_i, e_r) ‖ DH(s_i, s_r).
    pub fn new(
        dh_ee: &[u8; 32],
        dh_ss: &[u8; 32],
        initiator: PublicKey,
        responder: PublicKey,
        generation: u32,
    ) -> Self {
        let mut ikm = Zeroizing::new([0u8; 64]);
        ikm[..32].copy_from_slice(dh_ee);
        ikm[32..].copy_from_slice(dh_ss);
        let (prk, _) = Hkdf::<Sha256>::extract(Some(PROTOCOL_LABEL), &*ikm);
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&prk);
        // `prk` is a GenericArray on the stack; clear our view of it too.
        let mut prk = prk;
        prk.as_mut_slice().zeroize();
        GenerationSecret {
            prk: out,
            initiator,
            responder,
            generation,
        }
    }

    /// Wire generation number.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Key (16 or 32 bytes), salt and SPI of one SA.
    pub fn sa_material(
        &self,
        vni: u32,
        direction: Direction,
        key_len: usize,
    ) -> Result<(SaKey, u32), CryptoError> {
        if key_len != 16 && key_len != 32 {
            return Err(CryptoError::BadKeyLength);
        }
        let hk = Hkdf::<Sha256>::from_prk(&*self.prk).map_err(|_| CryptoError::BadKeyLength)?;
        let mut info = Vec::with_capacity(PROTOCOL_LABEL.len() + 3 + 64 + 9);
        info.extend_from_slice(PROTOCOL_LABEL);
        info.extend_from_slice(b" sa");
        info.extend_from_slice(self.initiator.as_bytes());
        info.extend_from_slice(self.responder.as_bytes());
        info.extend_from_slice(&self.generation.to_be_bytes());
        info.extend_from_slice(&vni.to_be_bytes());
        info.push(direction.byte());
        let mut okm = Zeroizing::new([0u8; 40]);
        let len = key_len + 8;
        hk.expand(&info, &mut okm[..len])
            .map_err(|_| CryptoError::BadKeyLength)?;
        let mut salt = [0u8; 4];
        salt.copy_from_slice(&okm[key_len..key_len + 4]);
        let mut spi = u32::from_be_bytes([
            okm[key_len + 4],
            okm[key_len + 5],
            okm[key_len + 6],
            okm[key_len + 7],
        ]);
        // Clear the bit that would make it look like VXLAN, and move the
        // reserved range 0..=255 out of the way.
        spi &= !super::esp::VXLAN_I_FLAG;
        if spi <= 255 {
            spi |= 0x8000_0000;
        }
        debug_assert!(is_valid_spi(spi));
        Ok((SaKey::new(&okm[..key_len], salt)?, spi))
    }
}

/// Key authenticating control messages between two hosts: HKDF over the
/// static-static DH, independent of which side speaks (the message AAD
/// carries sender and receiver).
pub fn control_key(dh_ss: &[u8; 32], a: &PublicKey, b: &PublicKey) -> Zeroizing<[u8; 16]> {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let hk = Hkdf::<Sha256>::new(Some(PROTOCOL_LABEL), dh_ss);
    let mut info = Vec::with_capacity(PROTOCOL_LABEL.len() + 8 + 64);
    info.extend_from_slice(PROTOCOL_LABEL);
    info.extend_from_slice(b" control");
    info.extend_from_slice(lo.as_bytes());
    info.extend_from_slice(hi.as_bytes());
    let mut key = Zeroizing::new([0u8; 16]);
    // 16 bytes is far below HKDF-SHA256's 8160-byte output limit.
    if hk.expand(&info, &mut *key).is_err() {
        key.fill(0);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn public_key_base64_round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let kp = StaticKeypair::generate(&mut rng);
        let s = kp.public().to_string();
        assert_eq!(s.len(), 44);
        assert!(s.ends_with('='));
        assert_eq!(s.parse::<PublicKey>(), Ok(kp.public()));
        assert_eq!(
            "not base64!".parse::<PublicKey>(),
            Err(KeyParseError::Base64)
        );
        assert_eq!("AAAA".parse::<PublicKey>(), Err(KeyParseError::Length));
    }

    #[test]
    fn keypair_bytes_round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let kp = StaticKeypair::generate(&mut rng);
        let kp2 = StaticKeypair::from_bytes(*kp.to_bytes());
        assert_eq!(kp.public(), kp2.public());
        // RFC 7748 §6.1 test vector: Alice's public key from her secret.
        let alice = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let alice_pub = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(
            StaticKeypair::from_bytes(alice).public().as_bytes(),
            &alice_pub
        );
    }

    fn hex32(s: &str) -> [u8; 32] {
        crate::crypto::aead::tests::hex(s).try_into().unwrap()
    }

    #[test]
    fn both_sides_derive_the_same_material_and_directions_differ() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let si = StaticKeypair::generate(&mut rng);
        let sr = StaticKeypair::generate(&mut rng);
        let ei = Ephemeral::generate(&mut rng);
        let er = Ephemeral::generate(&mut rng);
        let gi = GenerationSecret::new(
            &ei.dh(&er.public).unwrap(),
            &si.dh(&sr.public()).unwrap(),
            si.public(),
            sr.public(),
            7,
        );
        let gr = GenerationSecret::new(
            &er.dh(&ei.public).unwrap(),
            &sr.dh(&si.public()).unwrap(),
            si.public(),
            sr.public(),
            7,
        );
        let (ki, spi_i) = gi
            .sa_material(100, Direction::InitiatorToResponder, 16)
            .unwrap();
        let (kr, spi_r) = gr
            .sa_material(100, Direction::InitiatorToResponder, 16)
            .unwrap();
        assert_eq!(ki.key(), kr.key());
        assert_eq!(ki.salt(), kr.salt());
        assert_eq!(spi_i, spi_r);
        assert!(is_valid_spi(spi_i));
        let (k2, spi2) = gi
            .sa_material(100, Direction::ResponderToInitiator, 16)
            .unwrap();
        assert_ne!(k2.key(), ki.key());
        assert_ne!(spi2, spi_i);
        let (k3, _) = gi
            .sa_material(101, Direction::InitiatorToResponder, 16)
            .unwrap();
        assert_ne!(k3.key(), ki.key());
        let (k32, _) = gi
            .sa_material(100, Direction::InitiatorToResponder, 32)
            .unwrap();
        assert_eq!(k32.key().len(), 32);
        assert_eq!(
            gi.sa_material(100, Direction::InitiatorToResponder, 24)
                .err(),
            Some(CryptoError::BadKeyLength)
        );
        // A different generation number (same DH) gives different keys.
        let g8 = GenerationSecret::new(
            &ei.dh(&er.public).unwrap(),
            &si.dh(&sr.public()).unwrap(),
            si.public(),
            sr.public(),
            8,
        );
        assert_ne!(
            g8.sa_material(100, Direction::InitiatorToResponder, 16)
                .unwrap()
                .0
                .key(),
            ki.key()
        );
    }

    #[test]
    fn low_order_points_rejected() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let kp = StaticKeypair::generate(&mut rng);
        assert!(kp.dh(&PublicKey::from_bytes([0u8; 32])).is_none());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(kp.dh(&PublicKey::from_bytes(one)).is_none());
    }

    #[test]
    fn control_key_is_symmetric() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let a = StaticKeypair::generate(&mut rng);
        let b = StaticKeypair::generate(&mut rng);
        let ka = control_key(&a.dh(&b.public()).unwrap(), &a.public(), &b.public());
        let kb = control_key(&b.dh(&a.public()).unwrap(), &b.public(), &a.public());
        assert_eq!(*ka, *kb);
    }
}
