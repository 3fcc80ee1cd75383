//! Cluster keyring and the sealed gossip packet format.
//!
//! This module owns the AES-256-GCM keys every gossip packet (UDP) and
//! every state snapshot (TCP bulk sync) is sealed under, and the wire
//! format of a sealed packet. It reads no clock and draws no randomness:
//! the caller hands in the nonce.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  version (1)  |            key id (u32, big endian) ...       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  ... key id   |             nonce (12 bytes) ...              |
//! +-+-+-+-+-+-+-+-+                                               +
//! |                                                               |
//! +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                               |   ciphertext (variable) ...   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    tag (16 bytes, GCM ICV)                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The additional authenticated data is the 17-byte header followed by a
//! one-byte [`Context`], so a TCP snapshot can never be replayed as a UDP
//! gossip packet or the other way round, and no header bit can be flipped.
//!
//! Nonces are 96 random bits per packet (drawn by [`super::Membership`]
//! from a ChaCha stream seeded by the OS). A key carries at most a few
//! million packets in its 12-hour life, far below the 2^32 messages NIST
//! SP 800-38D allows for random nonces.
//!
//! # Rotation without loss
//! The keyring holds up to [`MAX_KEYS`] keys: it seals with the primary
//! and opens with any. A manager rotates in three steps, each spread to
//! every node before the next starts: `install_key(new)` everywhere, then
//! `set_primary(new)` everywhere, then `remove_key(old)` everywhere. While
//! step two spreads, some nodes seal with the old key and some with the
//! new, and every node can open both, so no packet is lost.
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// Version byte of the sealed packet format.
pub const WIRE_VERSION: u8 = 1;
/// Length of the cleartext header: version, key id, nonce.
pub const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// Length of the AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed packet adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Most keys a keyring holds (Docker keeps three too).
pub const MAX_KEYS: usize = 3;

/// Identifier of a cluster key, chosen by the manager that made it
/// (monotonic, like Docker's Lamport time on its keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u32);

/// What a sealed buffer carries; bound into the AAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Context {
    /// One SWIM datagram (UDP 7946).
    Datagram = 1,
    /// A full-state snapshot (TCP 7946 bulk sync).
    Snapshot = 2,
}

/// A 256-bit cluster key and its id.
#[derive(Clone)]
pub struct GossipKey {
    /// The key's id, carried in clear in every packet it seals.
    pub id: KeyId,
    /// The AES-256-GCM key.
    pub secret: [u8; 32],
}

impl core::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print the secret.
        f.debug_struct("GossipKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Errors of keyring management (caller mistakes, not wire input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// Already holding [`MAX_KEYS`] keys; remove one first.
    #[error("keyring already holds {MAX_KEYS} keys")]
    Full,
    /// A key with this id but another secret is installed.
    #[error("a different key with id {0:?} is installed")]
    IdConflict(KeyId),
    /// No key with this id is installed.
    #[error("no key with id {0:?}")]
    UnknownKey(KeyId),
    /// The primary key cannot be removed; switch the primary first.
    #[error("key {0:?} is the primary and cannot be removed")]
    RemovePrimary(KeyId),
}

/// Why a received buffer was not opened. Each maps to a counter in
/// [`super::GossipStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than header plus tag.
    #[error("truncated packet")]
    Truncated,
    /// Unknown version byte.
    #[error("unsupported version {0}")]
    BadVersion(u8),
    /// Sealed under a key this keyring does not hold.
    #[error("unknown key {0:?}")]
    UnknownKey(KeyId),
    /// Tag check failed: tampered, wrong context, or wrong key bytes.
    #[error("authentication failed")]
    AuthFailed,
}

/// Why a buffer could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The keyring has no primary key (it is empty).
    #[error("no primary key installed")]
    NoPrimary,
}

struct Slot {
    id: KeyId,
    secret: [u8; 32],
    key: LessSafeKey,
}

/// Up to three cluster keys; seals with the primary, opens with any.
#[derive(Default)]
pub struct Keyring {
    slots: Vec<Slot>,
    primary: Option<KeyId>,
}

impl core::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.key_ids())
            .field("primary", &self.primary)
            .finish()
    }
}

impl Keyring {
    /// An empty keyring (can open nothing, seal nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// A keyring holding `key` as its primary.
    pub fn with_primary(key: GossipKey) -> Self {
        let mut ring = Self::new();
        // An empty ring always has room and no conflicting id.
        let _ = ring.install_key(key);
        ring
    }

    /// Adds a key for opening. The first key installed becomes the
    /// primary. Installing the same key twice is a no-op.
    pub fn install_key(&mut self, key: GossipKey) -> Result<(), KeyringError> {
        if let Some(slot) = self.slots.iter().find(|s| s.id == key.id) {
            return if slot.secret == key.secret {
                Ok(())
            } else {
                Err(KeyringError::IdConflict(key.id))
            };
        }
        if self.slots.len() >= MAX_KEYS {
            return Err(KeyringError::Full);
        }
        let unbound = UnboundKey::new(&AES_256_GCM, &key.secret)
            .map_err(|_| KeyringError::IdConflict(key.id))?;
        self.slots.push(Slot {
            id: key.id,
            secret: key.secret,
            key: LessSafeKey::new(unbound),
        });
        if self.primary.is_none() {
            self.primary = Some(key.id);
        }
        Ok(())
    }

    /// Makes an installed key the one new packets are sealed with.
    pub fn set_primary(&mut self, id: KeyId) -> Result<(), KeyringError> {
        if !self.slots.iter().any(|s| s.id == id) {
            return Err(KeyringError::UnknownKey(id));
        }
        self.primary = Some(id);
        Ok(())
    }

    /// Forgets a key; packets sealed under it are dropped from now on.
    pub fn remove_key(&mut self, id: KeyId) -> Result<(), KeyringError> {
        if self.primary == Some(id) {
            return Err(KeyringError::RemovePrimary(id));
        }
        let before = self.slots.len();
        self.slots.retain(|s| s.id != id);
        if self.slots.len() == before {
            return Err(KeyringError::UnknownKey(id));
        }
        Ok(())
    }

    /// The primary key's id, if any key is installed.
    pub fn primary(&self) -> Option<KeyId> {
        self.primary
    }

    /// Ids of all installed keys, in installation order.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.slots.iter().map(|s| s.id).collect()
    }

    /// Seals `plaintext` under the primary key with `nonce` (which must
    /// never repeat under one key) and returns the whole packet.
    pub fn seal(
        &self,
        context: Context,
        nonce: [u8; NONCE_LEN],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let primary = self.primary.ok_or(SealError::NoPrimary)?;
        let slot = self
            .slots
            .iter()
            .find(|s| s.id == primary)
            .ok_or(SealError::NoPrimary)?;
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.push(WIRE_VERSION);
        out.extend_from_slice(&primary.0.to_be_bytes());
        out.extend_from_slice(&nonce);
        let aad = aad(&out, context);
        let mut body = plaintext.to_vec();
        slot.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut body,
            )
            // ring fails only past 2^36 bytes of plaintext.
            .map_err(|_| SealError::NoPrimary)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Checks and decrypts a packet; returns the plaintext and the key id
    /// it was sealed under.
    pub fn open(&self, context: Context, packet: &[u8]) -> Result<(Vec<u8>, KeyId), OpenError> {
        let header = SealedHeader::parse(packet)?;
        let slot = self
            .slots
            .iter()
            .find(|s| s.id == header.key_id)
            .ok_or(OpenError::UnknownKey(header.key_id))?;
        let (head, body) = packet.split_at(HEADER_LEN);
        let aad = aad(head, context);
        let mut body = body.to_vec();
        let plain_len = slot
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(header.nonce),
                Aad::from(&aad[..]),
                &mut body,
            )
            .map_err(|_| OpenError::AuthFailed)?
            .len();
        body.truncate(plain_len);
        Ok((body, header.key_id))
    }
}

fn aad(header: &[u8], context: Context) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 1);
    aad.extend_from_slice(header);
    aad.push(context as u8);
    aad
}

/// The cleartext header of a sealed packet, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedHeader {
    /// The key the packet claims to be sealed under.
    pub key_id: KeyId,
    /// The packet's nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl SealedHeader {
    /// Parses and length-checks the header of untrusted bytes (the packet
    /// must be long enough to also hold a tag).
    pub fn parse(packet: &[u8]) -> Result<Self, OpenError> {
        if packet.len() < OVERHEAD {
            return Err(OpenError::Truncated);
        }
        let (&version, rest) = packet.split_first().ok_or(OpenError::Truncated)?;
        if version != WIRE_VERSION {
            return Err(OpenError::BadVersion(version));
        }
        let (id, rest) = rest.split_at_checked(4).ok_or(OpenError::Truncated)?;
        let (nonce, _) = rest
            .split_at_checked(NONCE_LEN)
            .ok_or(OpenError::Truncated)?;
        let id: [u8; 4] = id.try_into().map_err(|_| OpenError::Truncated)?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError::Truncated)?;
        Ok(Self {
            key_id: KeyId(u32::from_be_bytes(id)),
            nonce,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32, fill: u8) -> GossipKey {
        GossipKey {
            id: KeyId(id),
            secret: [fill; 32],
        }
    }

    #[test]
    fn seal_open_round_trip_and_layout() {
        let ring = Keyring::with_primary(key(7, 0xaa));
        let packet = ring.seal(Context::Datagram, [3; 12], b"hello").unwrap();
        assert_eq!(packet.len(), OVERHEAD + 5);
        assert_eq!(packet[0], WIRE_VERSION);
        assert_eq!(&packet[1..5], &[0, 0, 0, 7]);
        assert_eq!(&packet[5..17], &[3; 12]);
        assert_ne!(&packet[17..22], b"hello", "payload must be encrypted");
        let (plain, id) = ring.open(Context::Datagram, &packet).unwrap();
        assert_eq!(plain, b"hello");
        assert_eq!(id, KeyId(7));
    }

    #[test]
    fn context_is_authenticated() {
        let ring = Keyring::with_primary(key(1, 1));
        let packet = ring.seal(Context::Snapshot, [0; 12], b"state").unwrap();
        assert_eq!(
            ring.open(Context::Datagram, &packet),
            Err(OpenError::AuthFailed)
        );
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let ring = Keyring::with_primary(key(1, 1));
        let packet = ring.seal(Context::Datagram, [9; 12], b"abc").unwrap();
        for byte in 0..packet.len() {
            for bit in 0..8 {
                let mut bad = packet.clone();
                bad[byte] ^= 1 << bit;
                assert!(ring.open(Context::Datagram, &bad).is_err(), "{byte}/{bit}");
            }
        }
    }

    #[test]
    fn truncation_version_and_unknown_key() {
        let ring = Keyring::with_primary(key(1, 1));
        let packet = ring.seal(Context::Datagram, [0; 12], b"").unwrap();
        for len in 0..packet.len() {
            assert_eq!(
                ring.open(Context::Datagram, &packet[..len]),
                Err(OpenError::Truncated)
            );
        }
        let mut v2 = packet.clone();
        v2[0] = 2;
        assert_eq!(
            ring.open(Context::Datagram, &v2),
            Err(OpenError::BadVersion(2))
        );
        let other = Keyring::with_primary(key(2, 1));
        assert_eq!(
            other.open(Context::Datagram, &packet),
            Err(OpenError::UnknownKey(KeyId(1)))
        );
        // Same id, other secret: the tag fails.
        let impostor = Keyring::with_primary(key(1, 2));
        assert_eq!(
            impostor.open(Context::Datagram, &packet),
            Err(OpenError::AuthFailed)
        );
    }

    #[test]
    fn rotation_rules() {
        let mut ring = Keyring::new();
        assert_eq!(
            ring.seal(Context::Datagram, [0; 12], b"x"),
            Err(SealError::NoPrimary)
        );
        ring.install_key(key(1, 1)).unwrap();
        assert_eq!(ring.primary(), Some(KeyId(1)));
        ring.install_key(key(1, 1)).unwrap();
        assert_eq!(
            ring.install_key(key(1, 9)),
            Err(KeyringError::IdConflict(KeyId(1)))
        );
        ring.install_key(key(2, 2)).unwrap();
        ring.install_key(key(3, 3)).unwrap();
        assert_eq!(ring.install_key(key(4, 4)), Err(KeyringError::Full));
        assert_eq!(
            ring.set_primary(KeyId(9)),
            Err(KeyringError::UnknownKey(KeyId(9)))
        );
        let old = ring.seal(Context::Datagram, [1; 12], b"old").unwrap();
        ring.set_primary(KeyId(2)).unwrap();
        let new = ring.seal(Context::Datagram, [1; 12], b"new").unwrap();
        assert_eq!(&new[1..5], &[0, 0, 0, 2]);
        assert_eq!(ring.open(Context::Datagram, &old).unwrap().0, b"old");
        assert_eq!(
            ring.remove_key(KeyId(2)),
            Err(KeyringError::RemovePrimary(KeyId(2)))
        );
        ring.remove_key(KeyId(1)).unwrap();
        assert_eq!(
            ring.remove_key(KeyId(1)),
            Err(KeyringError::UnknownKey(KeyId(1)))
        );
        assert_eq!(
            ring.open(Context::Datagram, &old),
            Err(OpenError::UnknownKey(KeyId(1)))
        );
        assert_eq!(ring.key_ids(), vec![KeyId(2), KeyId(3)]);
        assert!(!format!("{:?}", key(5, 0x5a)).contains("90"));
    }
}
