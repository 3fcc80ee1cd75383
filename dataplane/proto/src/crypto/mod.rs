//! Sans-IO crypto core of the encrypted overlay (issue 3).
//!
//! This module owns everything between "a VXLAN datagram for peer P on VNI N"
//! and "the ESP bytes on the wire", and the key agreement that feeds it. It
//! opens no socket and reads no clock: time comes in as `now: Instant`
//! arguments and randomness through an `rand_core::CryptoRngCore` parameter,
//! so the whole rekey machinery runs in deterministic simulations.
//!
//! Layers, bottom up:
//! - [`aead`]: the narrow seal/open trait ([`aead::Aead`]) over AES-GCM and its
//!   backends (`ring` by default, RustCrypto `aes-gcm` and `aws-lc-rs` behind
//!   the `rustcrypto` / `aws-lc` features).
//! - [`replay`]: the 2048-packet anti-replay window with 64-bit extended
//!   sequence numbers (RFC 4303 Appendix A).
//! - [`sa`]: outbound and inbound security associations (SPI, AEAD, salt,
//!   sequence counter or replay window, counters); key copies are wiped on drop.
//! - [`esp`]: the ESP wire format (RFC 4303 + RFC 4106 AES-GCM, always with
//!   ESN) and the classifier of the first 32-bit word on the data port.
//! - [`keys`]: X25519 static keypairs, base64 public keys, and the HKDF
//!   derivation of per-pair, per-generation, per-VNI, per-direction keys,
//!   salts and SPIs.
//! - [`session`]: the per-peer rekey state machine (INIT / RESP / CONFIRM
//!   control messages on the data port, make-before-break rotation, grace
//!   period for the previous generation).
//!
//! Wire summary (inside outer IP | UDP dst 4789):
//!
//! ```text
//! first word 0x00000000  -> control message (see session.rs)
//! first word & 0x08000000 -> plain VXLAN (I flag set; reserved bits ignored)
//! first word 1..=255     -> reserved SPI, dropped
//! anything else          -> ESP, the word is the SPI:
//!   SPI(4) | Seq low(4) | IV = 64-bit seq(8) | AES-GCM( UDP hdr | VXLAN | frame
//!   | padding | pad len | next header 17 ) | ICV(16)
//! ```

pub mod aead;
pub mod esp;
pub mod keys;
pub mod replay;
pub mod sa;
pub mod session;

#[cfg(test)]
mod sim_tests;

/// The OS randomness source to hand to [`keys::StaticKeypair::generate`] and
/// [`session::Session::new`] in production (tests pass a seeded RNG).
pub use rand_core::OsRng;

#[cfg(test)]
mod tests {
    #[test]
    fn session_and_sas_can_move_to_worker_threads() {
        fn send<T: Send>() {}
        send::<super::session::Session>();
        send::<super::sa::OutboundSa>();
        send::<super::sa::InboundSa>();
    }

    #[test]
    fn os_rng_makes_distinct_keys() {
        let a = super::keys::StaticKeypair::generate(&mut super::OsRng);
        let b = super::keys::StaticKeypair::generate(&mut super::OsRng);
        assert_ne!(a.public(), b.public());
    }
}

/// Errors of the crypto layer. Every variant is a reason to drop a packet (or
/// a control message), so the engine can count drops by variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CryptoError {
    /// Key of a length the AEAD does not support (AES-GCM: 16 or 32 bytes).
    BadKeyLength,
    /// The requested backend is not compiled in.
    BackendUnavailable,
    /// The ICV (authentication tag) did not verify.
    AuthFailed,
    /// Packet too short, or its ciphertext not a multiple of 4 bytes.
    Truncated,
    /// Caller's buffer has no room for the ESP trailer.
    BufferTooSmall,
    /// SPI in the packet is not the SA's, or no SA has it.
    UnknownSpi,
    /// First word is a reserved SPI (1..=255).
    ReservedSpi,
    /// Sequence number already seen.
    Replay,
    /// Sequence number left of the anti-replay window.
    TooOld,
    /// Padding bytes or pad length malformed, or next header is not UDP.
    BadTrailer,
    /// The outbound SA reached its hard sequence limit; a rekey is overdue.
    SequenceExhausted,
    /// Malformed or unauthenticated control message.
    BadControlMessage,
    /// Authentic-looking control message that no longer matches the state:
    /// replayed or superseded INIT, RESP to an abandoned INIT. Expected in
    /// small numbers around collisions and retries.
    StaleControlMessage,
    /// No established SA (yet) for this VNI.
    NoSa,
}

impl core::fmt::Display for CryptoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            CryptoError::BadKeyLength => "bad key length",
            CryptoError::BackendUnavailable => "crypto backend not compiled in",
            CryptoError::AuthFailed => "authentication failed",
            CryptoError::Truncated => "truncated ESP packet",
            CryptoError::BufferTooSmall => "buffer too small for ESP trailer",
            CryptoError::UnknownSpi => "unknown SPI",
            CryptoError::ReservedSpi => "reserved SPI",
            CryptoError::Replay => "replayed sequence number",
            CryptoError::TooOld => "sequence number too old",
            CryptoError::BadTrailer => "bad ESP trailer",
            CryptoError::SequenceExhausted => "sequence numbers exhausted",
            CryptoError::BadControlMessage => "bad control message",
            CryptoError::StaleControlMessage => "stale control message",
            CryptoError::NoSa => "no security association",
        };
        f.write_str(s)
    }
}

impl std::error::Error for CryptoError {}
