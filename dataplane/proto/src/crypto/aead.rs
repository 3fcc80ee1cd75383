//! The narrow seal/open trait over AES-GCM and its backends.
//!
//! Shaped like rustls' `MessageEncrypter`/`MessageDecrypter`: the caller owns
//! nonce construction (the ESP layer builds salt ‖ IV) and the buffer; the
//! backend only transforms bytes in place and produces or checks the 16-byte
//! tag. Keeping the trait this small is what lets `benches/benches/aead.rs`
//! compare backends through the exact code path the dataplane uses.
//!
//! Backends (cargo features of `vxnet-proto`):
//! - `ring` (default feature): `ring::aead::LessSafeKey`.
//! - `aws-lc`: `aws_lc_rs::aead::LessSafeKey` (same API family as ring).
//! - `rustcrypto`: RustCrypto `aes-gcm`.
//!
//! [`Backend::default`] picks the fastest compiled in, measured with
//! `cargo bench -p vxnet-benches --bench aead --features rustcrypto,aws-lc`
//! on the 2-core dev VM (AES-NI + PCLMULQDQ, shared, so ±10%), AES-128-GCM,
//! one core:
//!
//! | backend    | seal 1450 B | open 1450 B | seal 64 B | open 64 B |
//! |------------|-------------|-------------|-----------|-----------|
//! | ring       | 3.35 GiB/s  | 2.86 GiB/s  | 121 ns    | 145 ns    |
//! | aws-lc     | 2.34 GiB/s  | 1.99 GiB/s  | 207 ns    | 194 ns    |
//! | rustcrypto | 0.97 GiB/s  | 0.91 GiB/s  | 295 ns    | 286 ns    |
//!
//! So the order is ring, then aws-lc, then RustCrypto. (aws-lc-rs builds
//! offline here without cmake; its higher per-call cost shows at 64 B.)

use super::CryptoError;

/// AES-GCM nonce length (RFC 4106: 4-byte salt ‖ 8-byte IV).
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag (ESP ICV) length.
pub const TAG_LEN: usize = 16;

/// Authenticated encryption with a fixed key, in place, tag kept separate.
pub trait Aead: Send + Sync {
    /// Encrypts `in_out` in place and returns the tag over `aad` and the
    /// ciphertext.
    ///
    /// The nonce must never repeat under one key; the ESP layer guarantees
    /// that by using the never-reused sequence number as IV.
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> [u8; TAG_LEN];

    /// Verifies `tag` and decrypts `in_out` in place.
    ///
    /// On [`CryptoError::AuthFailed`] the contents of `in_out` are
    /// unspecified (some backends decrypt before comparing, others wipe) and
    /// must be dropped.
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError>;

    /// Which backend this is (for `vxnet dp sa` and the benches).
    fn backend(&self) -> Backend;
}

/// An AES-GCM implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `ring` (feature `ring`, default).
    Ring,
    /// `aws-lc-rs` (feature `aws-lc`).
    AwsLc,
    /// RustCrypto `aes-gcm` (feature `rustcrypto`).
    RustCrypto,
}

impl Backend {
    /// All backends compiled into this build, fastest first.
    pub fn compiled() -> &'static [Backend] {
        &[
            #[cfg(feature = "ring")]
            Backend::Ring,
            #[cfg(feature = "aws-lc")]
            Backend::AwsLc,
            #[cfg(feature = "rustcrypto")]
            Backend::RustCrypto,
        ]
    }

    /// Short lower-case name (`ring`, `aws-lc`, `rustcrypto`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Ring => "ring",
            Backend::AwsLc => "aws-lc",
            Backend::RustCrypto => "rustcrypto",
        }
    }
}

impl Default for Backend {
    /// The fastest backend compiled in. With no backend feature at all this
    /// still returns `Ring`, and [`new_aead`] then reports
    /// [`CryptoError::BackendUnavailable`].
    fn default() -> Self {
        Backend::compiled()
            .first()
            .copied()
            .unwrap_or(Backend::Ring)
    }
}

impl core::fmt::Display for Backend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Builds an AES-GCM instance for a 16-byte (AES-128) or 32-byte (AES-256) key.
pub fn new_aead(backend: Backend, key: &[u8]) -> Result<Box<dyn Aead>, CryptoError> {
    if key.len() != 16 && key.len() != 32 {
        return Err(CryptoError::BadKeyLength);
    }
    match backend {
        #[cfg(feature = "ring")]
        Backend::Ring => Ok(Box::new(ring_backend::RingAead::new(key)?)),
        #[cfg(feature = "aws-lc")]
        Backend::AwsLc => Ok(Box::new(aws_lc_backend::AwsLcAead::new(key)?)),
        #[cfg(feature = "rustcrypto")]
        Backend::RustCrypto => Ok(Box::new(rustcrypto_backend::RustCryptoAead::new(key)?)),
        #[allow(unreachable_patterns)]
        _ => Err(CryptoError::BackendUnavailable),
    }
}

#[cfg(feature = "ring")]
mod ring_backend {
    use super::{Aead, Backend, CryptoError, NONCE_LEN, TAG_LEN};
    use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

    pub(super) struct RingAead(LessSafeKey);

    impl RingAead {
        pub(super) fn new(key: &[u8]) -> Result<Self, CryptoError> {
            let alg = if key.len() == 32 {
                &AES_256_GCM
            } else {
                &AES_128_GCM
            };
            let key = UnboundKey::new(alg, key).map_err(|_| CryptoError::BadKeyLength)?;
            Ok(RingAead(LessSafeKey::new(key)))
        }
    }

    impl Aead for RingAead {
        fn seal_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            in_out: &mut [u8],
        ) -> [u8; TAG_LEN] {
            let nonce = Nonce::assume_unique_for_key(*nonce);
            match self
                .0
                .seal_in_place_separate_tag(nonce, Aad::from(aad), in_out)
            {
                Ok(tag) => {
                    let mut out = [0u8; TAG_LEN];
                    out.copy_from_slice(tag.as_ref());
                    out
                }
                // ring fails only for inputs longer than GCM's 2^36-byte
                // limit, impossible for a datagram. Fail closed anyway: never
                // leave plaintext in a buffer the caller is about to send, and
                // return a tag that will not verify.
                Err(_) => {
                    in_out.fill(0);
                    [0u8; TAG_LEN]
                }
            }
        }

        fn open_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            in_out: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), CryptoError> {
            let nonce = Nonce::assume_unique_for_key(*nonce);
            self.0
                .open_in_place_separate_tag(nonce, Aad::from(aad), Tag::from(*tag), in_out, 0..)
                .map(|_| ())
                .map_err(|_| CryptoError::AuthFailed)
        }

        fn backend(&self) -> Backend {
            Backend::Ring
        }
    }
}

#[cfg(feature = "aws-lc")]
mod aws_lc_backend {
    use super::{Aead, Backend, CryptoError, NONCE_LEN, TAG_LEN};
    use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

    pub(super) struct AwsLcAead(LessSafeKey);

    impl AwsLcAead {
        pub(super) fn new(key: &[u8]) -> Result<Self, CryptoError> {
            let alg = if key.len() == 32 {
                &AES_256_GCM
            } else {
                &AES_128_GCM
            };
            let key = UnboundKey::new(alg, key).map_err(|_| CryptoError::BadKeyLength)?;
            Ok(AwsLcAead(LessSafeKey::new(key)))
        }
    }

    impl Aead for AwsLcAead {
        fn seal_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            in_out: &mut [u8],
        ) -> [u8; TAG_LEN] {
            let nonce = Nonce::assume_unique_for_key(*nonce);
            match self
                .0
                .seal_in_place_separate_tag(nonce, Aad::from(aad), in_out)
            {
                Ok(tag) => {
                    let mut out = [0u8; TAG_LEN];
                    out.copy_from_slice(tag.as_ref());
                    out
                }
                // Only for absurd lengths; fail closed as in the ring backend.
                Err(_) => {
                    in_out.fill(0);
                    [0u8; TAG_LEN]
                }
            }
        }

        fn open_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            in_out: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), CryptoError> {
            let nonce = Nonce::assume_unique_for_key(*nonce);
            self.0
                .open_in_place_separate_tag(nonce, Aad::from(aad), tag, in_out)
                .map(|_| ())
                .map_err(|_| CryptoError::AuthFailed)
        }

        fn backend(&self) -> Backend {
            Backend::AwsLc
        }
    }
}

#[cfg(feature = "rustcrypto")]
mod rustcrypto_backend {
    use super::{Aead, Backend, CryptoError, NONCE_LEN, TAG_LEN};
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce, Tag};

    pub(super) enum RustCryptoAead {
        Aes128(Box<Aes128Gcm>),
        Aes256(Box<Aes256Gcm>),
    }

    impl RustCryptoAead {
        pub(super) fn new(key: &[u8]) -> Result<Self, CryptoError> {
            if key.len() == 32 {
                Aes256Gcm::new_from_slice(key)
                    .map(|k| RustCryptoAead::Aes256(Box::new(k)))
                    .map_err(|_| CryptoError::BadKeyLength)
            } else {
                Aes128Gcm::new_from_slice(key)
                    .map(|k| RustCryptoAead::Aes128(Box::new(k)))
                    .map_err(|_| CryptoError::BadKeyLength)
            }
        }
    }

    impl Aead for RustCryptoAead {
        fn seal_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            in_out: &mut [u8],
        ) -> [u8; TAG_LEN] {
            let nonce = Nonce::from_slice(nonce);
            let res = match self {
                RustCryptoAead::Aes128(k) => k.encrypt_in_place_detached(nonce, aad, in_out),
                RustCryptoAead::Aes256(k) => k.encrypt_in_place_detached(nonce, aad, in_out),
            };
            match res {
                Ok(tag) => tag.into(),
                // Only for lengths beyond GCM's limit; fail closed.
                Err(_) => {
                    in_out.fill(0);
                    [0u8; TAG_LEN]
                }
            }
        }

        fn open_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            in_out: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), CryptoError> {
            let nonce = Nonce::from_slice(nonce);
            let tag = Tag::from_slice(tag);
            let res = match self {
                RustCryptoAead::Aes128(k) => k.decrypt_in_place_detached(nonce, aad, in_out, tag),
                RustCryptoAead::Aes256(k) => k.decrypt_in_place_detached(nonce, aad, in_out, tag),
            };
            res.map_err(|_| CryptoError::AuthFailed)
        }

        fn backend(&self) -> Backend {
            Backend::RustCrypto
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    struct Vector {
        name: &'static str,
        key: &'static str,
        nonce: &'static str,
        aad: &'static str,
        pt: &'static str,
        ct: &'static str,
        tag: &'static str,
    }

    const GCM_PT: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                          1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";

    /// McGrew & Viega, "The Galois/Counter Mode of Operation", Appendix B
    /// (the test cases NIST's GCM page points to), plus the first ESP packet of
    /// draft-mcgrew-gcm-test-01 (the RFC 4106 test vectors: nonce = salt ‖
    /// IV, AAD = SPI ‖ 64-bit extended sequence number, as our ESP uses).
    const VECTORS: &[Vector] = &[
        Vector {
            name: "gcm-spec test case 1",
            key: "00000000000000000000000000000000",
            nonce: "000000000000000000000000",
            aad: "",
            pt: "",
            ct: "",
            tag: "58e2fccefa7e3061367f1d57a4e7455a",
        },
        Vector {
            name: "gcm-spec test case 2",
            key: "00000000000000000000000000000000",
            nonce: "000000000000000000000000",
            aad: "",
            pt: "00000000000000000000000000000000",
            ct: "0388dace60b6a392f328c2b971b2fe78",
            tag: "ab6e47d42cec13bdf53a67b21257bddf",
        },
        Vector {
            name: "gcm-spec test case 4",
            key: "feffe9928665731c6d6a8f9467308308",
            nonce: "cafebabefacedbaddecaf888",
            aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            pt: GCM_PT,
            ct: "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
                 21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
            tag: "5bc94fbc3221a5db94fae95ae7121a47",
        },
        Vector {
            name: "gcm-spec test case 16",
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            nonce: "cafebabefacedbaddecaf888",
            aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            pt: GCM_PT,
            ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                 8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            tag: "76fc6ece0f4e1768cddf8853bb2d551b",
        },
        Vector {
            name: "draft-mcgrew-gcm-test-01 ESP packet 1 (RFC 4106)",
            key: "4c80cdefbb5d10da906ac73c3613a634",
            // salt 2e443b68 ‖ IV 4956ed7e3b244cfe
            nonce: "2e443b684956ed7e3b244cfe",
            // SPI 0x4321 ‖ 64-bit (extended) sequence number 0x87654321_00000000
            aad: "000043218765432100000000",
            pt: "4500004869 9a000080114db7c0a80102c0a801010a9bf15638d30100000100\
                 0000000000045f73697004 5f756470037369700963796265726369747902646b\
                 0000210001 01020201",
            ct: "fecf537e729d5b07dc30df528dd22b768d1b98736696a6fd348509fa13ceac34\
                 cfa2436f14a3f3cf65925bf1f4a13c5d15b21e1884f5ff6247aeabb786b93bce\
                 61bc17d768fd9732",
            tag: "459018148f6cbe722fd04796562dfdb4",
        },
    ];

    #[test]
    fn published_vectors_every_backend() {
        assert!(!Backend::compiled().is_empty());
        for &backend in Backend::compiled() {
            for v in VECTORS {
                let aead = new_aead(backend, &hex(v.key)).unwrap();
                let nonce: [u8; 12] = hex(v.nonce).try_into().unwrap();
                let aad = hex(v.aad);
                let mut buf = hex(v.pt);
                let tag = aead.seal_in_place(&nonce, &aad, &mut buf);
                assert_eq!(buf, hex(v.ct), "{backend} {}: ciphertext", v.name);
                assert_eq!(tag.to_vec(), hex(v.tag), "{backend} {}: tag", v.name);
                aead.open_in_place(&nonce, &aad, &mut buf, &tag).unwrap();
                assert_eq!(buf, hex(v.pt), "{backend} {}: round trip", v.name);
            }
        }
    }

    #[test]
    fn flipped_bits_fail_to_open() {
        for &backend in Backend::compiled() {
            let v = &VECTORS[2];
            let aead = new_aead(backend, &hex(v.key)).unwrap();
            let nonce: [u8; 12] = hex(v.nonce).try_into().unwrap();
            let aad = hex(v.aad);
            let ct = hex(v.ct);
            let tag: [u8; 16] = hex(v.tag).try_into().unwrap();
            for bit in [0usize, 7, 100, ct.len() * 8 - 1] {
                let mut c = ct.clone();
                c[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    aead.open_in_place(&nonce, &aad, &mut c, &tag),
                    Err(CryptoError::AuthFailed)
                );
            }
            for bit in [0usize, 127] {
                let mut t = tag;
                t[bit / 8] ^= 1 << (bit % 8);
                let mut c = ct.clone();
                assert_eq!(
                    aead.open_in_place(&nonce, &aad, &mut c, &t),
                    Err(CryptoError::AuthFailed)
                );
            }
            let mut a = aad.clone();
            a[3] ^= 0x10;
            let mut c = ct.clone();
            assert_eq!(
                aead.open_in_place(&nonce, &a, &mut c, &tag),
                Err(CryptoError::AuthFailed)
            );
            let mut n = nonce;
            n[11] ^= 1;
            let mut c = ct.clone();
            assert_eq!(
                aead.open_in_place(&n, &aad, &mut c, &tag),
                Err(CryptoError::AuthFailed)
            );
            // The untouched packet still opens (the failures above were the flips).
            let mut c = ct.clone();
            aead.open_in_place(&nonce, &aad, &mut c, &tag).unwrap();
        }
    }

    #[test]
    fn bad_key_lengths_rejected() {
        for &backend in Backend::compiled() {
            for len in [0usize, 15, 24, 33] {
                assert_eq!(
                    new_aead(backend, &vec![0u8; len]).err(),
                    Some(CryptoError::BadKeyLength)
                );
            }
        }
    }

    #[test]
    fn default_backend_is_compiled_in() {
        assert!(Backend::compiled().contains(&Backend::default()));
        assert_eq!(
            new_aead(Backend::default(), &[7u8; 16]).unwrap().backend(),
            Backend::default()
        );
    }
}
