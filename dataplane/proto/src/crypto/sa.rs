//! Security associations: one direction of one (peer, generation, VNI).
//!
//! An SA owns its AEAD instance, its 4-byte RFC 4106 salt, and either the
//! outbound sequence counter or the inbound replay window. It also keeps a
//! copy of its key bytes, solely so `vxnet dp sa --show-keys` can export them
//! for a dissector; that copy and the salt are wiped on drop. The AEAD
//! backends own their expanded key schedules: ring and aws-lc-rs free theirs
//! through their own allocators (aws-lc cleanses on free), RustCrypto's
//! `aes` crate is built without its `zeroize` feature here, so "wiped" means
//! our copies, not every round key a backend may have held.

use std::time::{Duration, Instant};

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::CryptoError;
use super::aead::{Aead, Backend, new_aead};
use super::replay::ReplayWindow;

/// The outbound SA refuses to seal once its next sequence number reaches
/// this. Sessions rekey at `SessionConfig::rekey_after_packets` (2^40 by
/// default), so this is a backstop that is never reached in operation.
pub const SEQ_HARD_LIMIT: u64 = 1 << 48;

/// Key bytes (16 or 32) plus the 4-byte salt, wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SaKey {
    bytes: [u8; 32],
    len: u8,
    salt: [u8; 4],
}

impl SaKey {
    /// Key of 16 or 32 bytes and the salt.
    pub fn new(key: &[u8], salt: [u8; 4]) -> Result<Self, CryptoError> {
        if key.len() != 16 && key.len() != 32 {
            return Err(CryptoError::BadKeyLength);
        }
        let mut bytes = [0u8; 32];
        bytes[..key.len()].copy_from_slice(key);
        Ok(SaKey {
            bytes,
            len: key.len() as u8,
            salt,
        })
    }

    /// The AES key.
    pub fn key(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The RFC 4106 salt (first 4 bytes of the nonce).
    pub fn salt(&self) -> [u8; 4] {
        self.salt
    }
}

impl core::fmt::Debug for SaKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print key material through Debug.
        f.debug_struct("SaKey")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// What identifies an SA within its session (for logs, `vxnet dp sa`, and
/// the engine's check that a decrypted VXLAN header carries the SA's VNI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SaId {
    /// Security Parameter Index (never 0, never 1..=255, never with the VXLAN I flag bit).
    pub spi: u32,
    /// VNI this SA protects.
    pub vni: u32,
    /// Key generation (handshake number) on the wire.
    pub generation: u32,
}

/// Sending side of an SA.
pub struct OutboundSa {
    id: SaId,
    // Unread under `cfg(fuzzing)`, where `esp::seal_in_place` skips the AEAD.
    #[cfg_attr(fuzzing, allow(dead_code))]
    aead: Box<dyn Aead>,
    key: SaKey,
    /// Next sequence number to use; starts at 1 and only grows.
    next_seq: u64,
    /// Packets sealed.
    pub packets: u64,
    /// Plaintext bytes sealed.
    pub bytes: u64,
    created: Instant,
}

impl OutboundSa {
    /// A fresh SA whose first packet will carry sequence number 1.
    pub fn new(id: SaId, key: SaKey, backend: Backend, now: Instant) -> Result<Self, CryptoError> {
        let aead = new_aead(backend, key.key())?;
        Ok(OutboundSa {
            id,
            aead,
            key,
            next_seq: 1,
            packets: 0,
            bytes: 0,
            created: now,
        })
    }

    /// SPI, VNI, generation.
    pub fn id(&self) -> SaId {
        self.id
    }

    /// SPI.
    pub fn spi(&self) -> u32 {
        self.id.spi
    }

    /// The sequence number the next sealed packet will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// When the SA was installed.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Age at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.created)
    }

    /// Key and salt (for export to a dissector).
    pub fn key(&self) -> &SaKey {
        &self.key
    }

    #[cfg_attr(fuzzing, allow(dead_code))]
    pub(crate) fn aead(&self) -> &dyn Aead {
        &*self.aead
    }

    #[cfg_attr(fuzzing, allow(dead_code))]
    pub(crate) fn salt(&self) -> [u8; 4] {
        self.key.salt
    }

    /// Takes the next sequence number, never handing one out twice.
    pub(crate) fn take_seq(&mut self) -> Result<u64, CryptoError> {
        if self.next_seq >= SEQ_HARD_LIMIT {
            return Err(CryptoError::SequenceExhausted);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    #[cfg(test)]
    pub(crate) fn set_next_seq(&mut self, seq: u64) {
        self.next_seq = seq;
    }
}

impl core::fmt::Debug for OutboundSa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OutboundSa")
            .field("id", &self.id)
            .field("next_seq", &self.next_seq)
            .field("packets", &self.packets)
            .finish_non_exhaustive()
    }
}

/// Receiving side of an SA.
pub struct InboundSa {
    id: SaId,
    // Unread under `cfg(fuzzing)`, where `esp::open` skips the ICV check.
    #[cfg_attr(fuzzing, allow(dead_code))]
    aead: Box<dyn Aead>,
    key: SaKey,
    /// Anti-replay window (64-bit ESN).
    pub replay: ReplayWindow,
    /// Packets opened successfully.
    pub packets: u64,
    /// Plaintext bytes opened.
    pub bytes: u64,
    created: Instant,
    /// Session-local handshake id, distinct from the wire generation (which
    /// a restarted peer may reuse).
    pub(crate) local_gen: u64,
}

impl InboundSa {
    /// A fresh SA with an empty replay window.
    pub fn new(id: SaId, key: SaKey, backend: Backend, now: Instant) -> Result<Self, CryptoError> {
        let aead = new_aead(backend, key.key())?;
        Ok(InboundSa {
            id,
            aead,
            key,
            replay: ReplayWindow::new(),
            packets: 0,
            bytes: 0,
            created: now,
            local_gen: 0,
        })
    }

    /// SPI, VNI, generation.
    pub fn id(&self) -> SaId {
        self.id
    }

    /// SPI.
    pub fn spi(&self) -> u32 {
        self.id.spi
    }

    /// VNI this SA protects.
    pub fn vni(&self) -> u32 {
        self.id.vni
    }

    /// When the SA was installed.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Age at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.created)
    }

    /// Key and salt (for export to a dissector).
    pub fn key(&self) -> &SaKey {
        &self.key
    }

    #[cfg_attr(fuzzing, allow(dead_code))]
    pub(crate) fn aead(&self) -> &dyn Aead {
        &*self.aead
    }

    #[cfg_attr(fuzzing, allow(dead_code))]
    pub(crate) fn salt(&self) -> [u8; 4] {
        self.key.salt
    }
}

impl core::fmt::Debug for InboundSa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("InboundSa")
            .field("id", &self.id)
            .field("replay", &self.replay)
            .field("packets", &self.packets)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_starts_at_one_and_stops_at_limit() {
        let id = SaId {
            spi: 0x1234_5678,
            vni: 42,
            generation: 1,
        };
        let key = SaKey::new(&[1u8; 16], [2; 4]).unwrap();
        let mut sa = OutboundSa::new(id, key, Backend::default(), Instant::now()).unwrap();
        assert_eq!(sa.take_seq(), Ok(1));
        assert_eq!(sa.take_seq(), Ok(2));
        sa.set_next_seq(SEQ_HARD_LIMIT - 1);
        assert_eq!(sa.take_seq(), Ok(SEQ_HARD_LIMIT - 1));
        assert_eq!(sa.take_seq(), Err(CryptoError::SequenceExhausted));
        assert_eq!(sa.take_seq(), Err(CryptoError::SequenceExhausted));
    }

    #[test]
    fn sa_key_lengths_and_debug_hides_key() {
        assert_eq!(
            SaKey::new(&[0u8; 20], [0; 4]).err(),
            Some(CryptoError::BadKeyLength)
        );
        let k = SaKey::new(&[0xabu8; 32], [9; 4]).unwrap();
        assert_eq!(k.key(), &[0xabu8; 32][..]);
        assert_eq!(k.salt(), [9; 4]);
        assert!(!format!("{k:?}").contains("171"));
        let mut k2 = k.clone();
        k2.zeroize();
        assert_eq!(k2.key(), &[] as &[u8]);
    }
}
