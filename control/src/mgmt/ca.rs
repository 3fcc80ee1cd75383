//! The swarm's certificate authority, held by the manager, and the node
//! identities it issues.
//!
//! The CA is an ECDSA P-256 key with a self-signed certificate. Its digest
//! (SHA-256 of the certificate DER, lowercase hex) goes into every join
//! token, so a joining host can pin the CA before it trusts the manager.
//!
//! Node certificates follow swarmkit: subject CN = node id, OU = the role
//! (`swarm-manager` / `swarm-worker`), the node id also as a DNS SAN, and
//! both TLS server and client usage, since every node can be either end of
//! a management connection. What a peer is allowed to do is read from its
//! certificate ([`identity_of`]) once TLS has verified the chain, so a
//! role is only as trustworthy as the CA's key.
//!
//! Keys and certificates leave this module as PEM text: the daemon keeps
//! the CA in its store ([`CaPem`]) and each node keeps its
//! [`NodeIdentity`] on disk. Nothing here reads the clock; callers pass
//! `now`.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::model::{Role, UnixTime, is_id};
use crate::store::Record;

/// The CA certificate is valid this long (seconds), as Docker's: 20 years.
pub const CA_VALIDITY_SECS: u64 = 20 * 365 * 24 * 60 * 60;
/// Node certificates are valid this long (seconds), as Docker's: 90 days.
pub const NODE_CERT_VALIDITY_SECS: u64 = 90 * 24 * 60 * 60;
/// Certificates start this long before `now`, so a peer whose clock is a
/// little behind still accepts them.
const CLOCK_SKEW_SECS: u64 = 60 * 60;

/// OU of a manager's certificate (swarmkit's value).
pub const OU_MANAGER: &str = "swarm-manager";
/// OU of a worker's certificate (swarmkit's value).
pub const OU_WORKER: &str = "swarm-worker";
const CA_COMMON_NAME: &str = "swarm-ca";
const ORGANIZATION: &str = "vxnet";

/// What went wrong with a key, certificate or signing request.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Key generation or signing failed inside the crypto library.
    #[error("certificate authority: cannot {what}: {source}")]
    Crypto {
        what: &'static str,
        source: rcgen::Error,
    },
    /// A stored or received PEM/DER object does not parse.
    #[error("certificate authority: {0}")]
    Malformed(String),
    /// A joining host's certificate signing request is not usable.
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
}

fn crypto(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Crypto { what, source }
}

/// Lowercase hex SHA-256 of a certificate's DER: the digest join tokens
/// carry.
pub fn ca_digest(cert_der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, cert_der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn role_ou(role: Role) -> &'static str {
    match role {
        Role::Manager => OU_MANAGER,
        Role::Worker => OU_WORKER,
    }
}

fn time_at(t: i128) -> Result<OffsetDateTime, CaError> {
    let secs =
        i64::try_from(t).map_err(|_| CaError::Malformed(format!("time {t} out of range")))?;
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| CaError::Malformed(format!("time {t} out of range: {e}")))
}

/// Validity window starting a little before `now`.
fn validity(p: &mut CertificateParams, now: UnixTime, lifetime_secs: u64) -> Result<(), CaError> {
    let now = i128::from(now);
    p.not_before = time_at(now - i128::from(CLOCK_SKEW_SECS))?;
    p.not_after = time_at(now + i128::from(lifetime_secs))?;
    Ok(())
}

/// A random positive 64-bit serial (RFC 5280 asks for uniqueness per CA;
/// randomness gives it without keeping a counter in the store).
fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 9];
    ring::rand::SystemRandom::new()
        .fill(&mut b[1..])
        .map_err(|_| CaError::Malformed("no system randomness for a serial number".into()))?;
    // Leading zero byte keeps the DER INTEGER positive.
    Ok(SerialNumber::from_slice(&b))
}

fn node_params(node_id: &str, role: Role, now: UnixTime) -> Result<CertificateParams, CaError> {
    if !is_id(node_id) {
        return Err(CaError::Malformed(format!(
            "'{node_id}' is not a node id (25 lowercase letters and digits)"
        )));
    }
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id);
    dn.push(DnType::OrganizationalUnitName, role_ou(role));
    dn.push(DnType::OrganizationName, ORGANIZATION);
    p.distinguished_name = dn;
    let san = node_id
        .to_owned()
        .try_into()
        .map_err(|e| CaError::Malformed(format!("node id as DNS name: {e}")))?;
    p.subject_alt_names = vec![SanType::DnsName(san)];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(random_serial()?);
    validity(&mut p, now, NODE_CERT_VALIDITY_SECS)?;
    Ok(p)
}

/// The CA as stored: certificate and private key, PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaPem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CaPem {
    /// Key of the single CA record.
    pub const KEY: &'static str = "ca";
}

/// Kept in the manager's store beside the cluster record (one record, so a
/// Raft-replicated store later ships it to every manager).
impl Record for CaPem {
    const TABLE: &'static str = "ca";
    fn key(&self) -> String {
        Self::KEY.to_owned()
    }
}

impl fmt::Debug for CaPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("CaPem").finish_non_exhaustive()
    }
}

/// The swarm CA, ready to sign.
pub struct SwarmCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    digest: String,
}

impl fmt::Debug for SwarmCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwarmCa")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl SwarmCa {
    /// A new CA (at `swarm init`), valid [`CA_VALIDITY_SECS`] from `now`.
    pub fn generate(now: UnixTime) -> Result<Self, CaError> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto("generate a key"))?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        dn.push(DnType::OrganizationName, ORGANIZATION);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.serial_number = Some(random_serial()?);
        validity(&mut p, now, CA_VALIDITY_SECS)?;
        let cert = p.self_signed(&key).map_err(crypto("self-sign the CA"))?;
        let cert_der = cert.der().clone();
        Ok(Self {
            digest: ca_digest(&cert_der),
            cert_pem: cert.pem(),
            cert_der,
            issuer: Issuer::new(p, key),
        })
    }

    /// The CA back from what [`SwarmCa::to_pem`] gave. Refuses a key that
    /// does not belong to the certificate.
    pub fn from_pem(pem: &CaPem) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(&pem.key_pem)
            .map_err(|e| CaError::Malformed(format!("stored CA key: {e}")))?;
        let cert_der = CertificateDer::from_pem_slice(pem.cert_pem.as_bytes())
            .map_err(|e| CaError::Malformed(format!("stored CA certificate: {e}")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CaError::Malformed(format!("stored CA certificate: {e}")))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::Malformed(
                "stored CA key does not match the CA certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| CaError::Malformed(format!("stored CA certificate: {e}")))?;
        Ok(Self {
            digest: ca_digest(&cert_der),
            cert_pem: pem.cert_pem.clone(),
            cert_der,
            issuer,
        })
    }

    /// The CA for the store.
    pub fn to_pem(&self) -> CaPem {
        CaPem {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.issuer.key().serialize_pem(),
        }
    }

    /// SHA-256 of the CA certificate, hex: the digest for join tokens.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Checks a CSR (PEM) without signing it: its signature verifies and
    /// its key is ECDSA P-256.
    pub fn check_csr(csr_pem: &str) -> Result<(), CaError> {
        parse_csr(csr_pem).map(drop)
    }

    /// Signs a joining host's CSR (PEM) as `node_id` with `role`. Only the
    /// public key is taken from the request (its signature proves the host
    /// holds the private key); names and usages are the CA's choice.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        now: UnixTime,
    ) -> Result<String, CaError> {
        let csr = parse_csr(csr_pem)?;
        let p = node_params(node_id, role, now)?;
        let cert = p
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(crypto("sign a node certificate"))?;
        Ok(cert.pem())
    }

    /// A key and certificate for a node of this CA's own host (the manager
    /// itself at `swarm init`), without a CSR round trip.
    pub fn issue_identity(
        &self,
        node_id: &str,
        role: Role,
        now: UnixTime,
    ) -> Result<NodeIdentity, CaError> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto("generate a key"))?;
        let p = node_params(node_id, role, now)?;
        let cert = p
            .signed_by(&key, &self.issuer)
            .map_err(crypto("sign a node certificate"))?;
        Ok(NodeIdentity {
            node_id: node_id.to_owned(),
            role,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_cert_pem: self.cert_pem.clone(),
        })
    }
}

fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, CaError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| CaError::BadCsr(e.to_string()))?;
    if csr.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(CaError::BadCsr("the key must be ECDSA P-256".into()));
    }
    Ok(csr)
}

/// A fresh P-256 key and a CSR for it (PEM), made by a joining host. The
/// key never leaves the host; the manager signs the CSR.
pub fn new_key_and_csr() -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto("generate a key"))?;
    let mut p = CertificateParams::default();
    // The manager replaces the subject; this one only names the request.
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "vxnet-join-request");
    let csr = p.serialize_request(&key).map_err(crypto("make a CSR"))?;
    let pem = csr.pem().map_err(crypto("encode a CSR"))?;
    Ok((key.serialize_pem(), pem))
}

/// A node's credentials for management TLS: its certificate and key and
/// the swarm CA's certificate. The daemon keeps it in a file readable only
/// by root.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub node_id: String,
    pub role: Role,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_cert_pem: String,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Digest of the CA this identity belongs to.
    pub fn ca_digest(&self) -> Result<String, CaError> {
        let der = CertificateDer::from_pem_slice(self.ca_cert_pem.as_bytes())
            .map_err(|e| CaError::Malformed(format!("CA certificate: {e}")))?;
        Ok(ca_digest(&der))
    }
}

/// Node id and role named by a certificate this CA issued. Trust the
/// answer only for a certificate whose chain TLS has verified.
pub fn identity_of(cert_der: &[u8]) -> Result<(String, Role), CaError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| CaError::Malformed(format!("peer certificate: {e}")))?;
    let subject = x509.subject();
    fn one<'a>(
        mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
        what: &str,
    ) -> Result<String, CaError> {
        let v = it
            .next()
            .and_then(|a| a.as_str().ok())
            .ok_or_else(|| CaError::Malformed(format!("peer certificate has no {what}")))?;
        if it.next().is_some() {
            return Err(CaError::Malformed(format!(
                "peer certificate has more than one {what}"
            )));
        }
        Ok(v.to_owned())
    }
    let id = one(subject.iter_common_name(), "common name")?;
    if !is_id(&id) {
        return Err(CaError::Malformed(format!(
            "peer certificate names '{id}', which is not a node id"
        )));
    }
    let role = match one(subject.iter_organizational_unit(), "role (OU)")?.as_str() {
        OU_MANAGER => Role::Manager,
        OU_WORKER => Role::Worker,
        other => {
            return Err(CaError::Malformed(format!(
                "peer certificate has unknown role '{other}'"
            )));
        }
    };
    Ok((id, role))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::new_id;
    use crate::model::test_rng::TestRng;
    use x509_parser::prelude::X509Certificate;

    const NOW: UnixTime = 1_700_000_000;

    fn parse(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    fn signed_by(leaf_der: &[u8], ca_der: &[u8]) -> bool {
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(ca_der).unwrap();
        leaf.verify_signature(Some(ca.public_key())).is_ok() && leaf.issuer() == ca.subject()
    }

    fn x509(der: &[u8]) -> X509Certificate<'_> {
        x509_parser::parse_x509_certificate(der).unwrap().1
    }

    #[test]
    fn ca_is_a_p256_ca_and_its_digest_is_sha256_of_der() {
        let ca = SwarmCa::generate(NOW).unwrap();
        let d = ca.digest();
        assert_eq!(d.len(), 64);
        assert!(
            d.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(d, ca_digest(ca.cert_der()));
        assert_eq!(parse(ca.cert_pem()), ca.cert_der().to_vec());
        let c = x509(ca.cert_der());
        assert!(c.is_ca());
        assert!(signed_by(ca.cert_der(), ca.cert_der()), "self-signed");
        assert_eq!(
            c.validity().not_after.timestamp() - c.validity().not_before.timestamp(),
            (CA_VALIDITY_SECS + CLOCK_SKEW_SECS) as i64
        );
        // Two CAs never share a digest.
        assert_ne!(SwarmCa::generate(NOW).unwrap().digest(), d);
    }

    #[test]
    fn ca_survives_pem_round_trip_and_keeps_signing() {
        let ca = SwarmCa::generate(NOW).unwrap();
        let pem = ca.to_pem();
        assert!(pem.key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{pem:?}").contains("PRIVATE"));
        let back = SwarmCa::from_pem(&pem).unwrap();
        assert_eq!(back.digest(), ca.digest());
        assert_eq!(back.to_pem(), pem);
        // A certificate issued by the reloaded CA verifies under the original.
        let id = new_id(&mut TestRng(5));
        let ident = back.issue_identity(&id, Role::Worker, NOW).unwrap();
        assert!(signed_by(&parse(&ident.cert_pem), ca.cert_der()));

        // A key from another CA, or garbage, is refused.
        let other = SwarmCa::generate(NOW).unwrap().to_pem();
        let mixed = CaPem {
            cert_pem: pem.cert_pem.clone(),
            key_pem: other.key_pem,
        };
        assert!(
            SwarmCa::from_pem(&mixed)
                .unwrap_err()
                .to_string()
                .contains("does not match")
        );
        let junk = CaPem {
            cert_pem: "junk".into(),
            key_pem: pem.key_pem.clone(),
        };
        assert!(matches!(
            SwarmCa::from_pem(&junk),
            Err(CaError::Malformed(_))
        ));
    }

    #[test]
    fn issued_identities_name_node_and_role_and_chain_to_the_ca() {
        let ca = SwarmCa::generate(NOW).unwrap();
        let other = SwarmCa::generate(NOW).unwrap();
        for (seed, role) in [(1, Role::Manager), (2, Role::Worker)] {
            let id = new_id(&mut TestRng(seed));
            let ident = ca.issue_identity(&id, role, NOW).unwrap();
            let der = parse(&ident.cert_pem);
            assert_eq!(identity_of(&der).unwrap(), (id.clone(), role));
            assert!(signed_by(&der, ca.cert_der()));
            assert!(!signed_by(&der, other.cert_der()));
            assert_eq!(ident.ca_digest().unwrap(), ca.digest());
            let c = x509(&der);
            assert!(!c.is_ca());
            let san = c.subject_alternative_name().unwrap().unwrap();
            assert_eq!(
                format!("{:?}", san.value.general_names),
                format!("[DNSName(\"{id}\")]")
            );
            assert_eq!(
                c.validity().not_before.timestamp(),
                (NOW - CLOCK_SKEW_SECS) as i64
            );
            assert_eq!(
                c.validity().not_after.timestamp(),
                (NOW + NODE_CERT_VALIDITY_SECS) as i64
            );
            assert!(!format!("{ident:?}").contains("PRIVATE"));
        }
        assert!(ca.issue_identity("not an id", Role::Worker, NOW).is_err());
    }

    #[test]
    fn csr_is_signed_with_the_cas_names_not_the_requesters() {
        let ca = SwarmCa::generate(NOW).unwrap();
        let (key_pem, csr_pem) = new_key_and_csr().unwrap();
        SwarmCa::check_csr(&csr_pem).unwrap();
        let id = new_id(&mut TestRng(9));
        let cert = ca.sign_csr(&csr_pem, &id, Role::Worker, NOW).unwrap();
        let der = parse(&cert);
        assert_eq!(identity_of(&der).unwrap(), (id, Role::Worker));
        assert!(signed_by(&der, ca.cert_der()));
        // The certificate carries the requester's key.
        let key = KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(
            x509(&der).public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
    }

    #[test]
    fn bad_csrs_are_refused() {
        let ca = SwarmCa::generate(NOW).unwrap();
        let id = new_id(&mut TestRng(9));
        let (_, csr_pem) = new_key_and_csr().unwrap();
        // Flip a byte near the end of the DER: the signature no longer holds.
        let mut der =
            rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec();
        let n = der.len();
        der[n - 3] ^= 0x55;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
        );
        for bad in ["", "garbage", tampered.as_str(), ca.cert_pem()] {
            assert!(
                matches!(
                    ca.sign_csr(bad, &id, Role::Worker, NOW),
                    Err(CaError::BadCsr(_))
                ),
                "{bad}"
            );
            assert!(SwarmCa::check_csr(bad).is_err());
        }
    }

    #[test]
    fn identity_of_rejects_foreign_certificates() {
        assert!(identity_of(b"not der").is_err());
        // A certificate without our OU (the CA's own) names no node.
        let ca = SwarmCa::generate(NOW).unwrap();
        assert!(identity_of(ca.cert_der()).is_err());
    }
}
