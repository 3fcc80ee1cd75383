//! rustls configuration for the management port, on the `ring` provider.
//!
//! Server side: the node's certificate chain (its certificate, then the CA
//! certificate, so a joiner can find the CA to pin), and client
//! certificates verified against the swarm CA but optional at the TLS
//! layer, because a joining host has none yet; the RPC layer then refuses
//! every request but `Join` from a client without one.
//!
//! Client side: `ManagerVerifier` replaces hostname checks (managers are
//! reached by IP, and their certificates name node ids) with what matters
//! here: the chain ends at *this swarm's* CA and the leaf is a manager's.
//! Before join the CA is found in the chain the server sent and pinned by
//! the token's digest; after join it is the CA certificate received then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore,
    ServerConfig, SignatureScheme,
};

use super::ca::{CaError, NodeIdentity, ca_digest, identity_of};
use crate::model::Role;

/// ALPN protocol id: a peer offering another protocol on 2377 fails the
/// handshake instead of misreading frames.
pub const ALPN: &[u8] = b"vxnet-mgmt/1";

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad(what: &str) -> impl FnOnce(rustls::pki_types::pem::Error) -> CaError + '_ {
    move |e| CaError::Malformed(format!("{what}: {e}"))
}

/// The identity's certificate chain (leaf, CA) and key.
fn chain_and_key(
    id: &NodeIdentity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
    let leaf =
        CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).map_err(bad("node certificate"))?;
    let ca = ca_cert(id)?;
    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).map_err(bad("node key"))?;
    Ok((vec![leaf, ca], key))
}

fn ca_cert(id: &NodeIdentity) -> Result<CertificateDer<'static>, CaError> {
    CertificateDer::from_pem_slice(id.ca_cert_pem.as_bytes()).map_err(bad("CA certificate"))
}

fn tls_err(what: &str) -> impl FnOnce(TlsError) -> CaError + '_ {
    move |e| CaError::Malformed(format!("{what}: {e}"))
}

/// The server's TLS configuration for a node identity.
pub fn server_config(id: &NodeIdentity) -> Result<Arc<ServerConfig>, CaError> {
    let (chain, key) = chain_and_key(id)?;
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert(id)?).map_err(tls_err("CA certificate"))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| CaError::Malformed(format!("client verifier: {e}")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("TLS versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err("node certificate"))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// How the client recognizes the swarm's CA.
#[derive(Clone, Debug)]
pub(crate) enum CaPin {
    /// Before join: a certificate in the server's chain with this digest.
    Digest(String),
    /// After join: this CA certificate.
    Cert(CertificateDer<'static>),
}

/// Accepts exactly a manager certificate chaining to the pinned CA.
#[derive(Debug)]
pub(crate) struct ManagerVerifier {
    pin: CaPin,
    provider: Arc<CryptoProvider>,
    /// Set when the server's chain did not lead to the pinned CA, so the
    /// caller can tell "wrong swarm" from network and protocol errors.
    mismatch: Arc<AtomicBool>,
}

impl ManagerVerifier {
    pub(crate) fn new(pin: CaPin) -> (Arc<Self>, Arc<AtomicBool>) {
        let mismatch = Arc::new(AtomicBool::new(false));
        let v = Arc::new(Self {
            pin,
            provider: provider(),
            mismatch: mismatch.clone(),
        });
        (v, mismatch)
    }

    fn fail(&self, e: CertificateError) -> TlsError {
        self.mismatch.store(true, Ordering::Relaxed);
        TlsError::InvalidCertificate(e)
    }
}

impl ServerCertVerifier for ManagerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let ca = match &self.pin {
            CaPin::Digest(d) => intermediates
                .iter()
                .find(|c| ca_digest(c) == *d)
                .ok_or_else(|| self.fail(CertificateError::UnknownIssuer))?
                .clone()
                .into_owned(),
            CaPin::Cert(c) => c.clone(),
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca)
            .map_err(|_| self.fail(CertificateError::BadEncoding))?;
        let leaf = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(|e| {
            // A chain that does not lead to the pinned CA is the wrong swarm
            // (or an impostor); expiry and the like are reported as they are.
            if matches!(
                e,
                TlsError::InvalidCertificate(
                    CertificateError::UnknownIssuer
                        | CertificateError::BadSignature
                        | CertificateError::BadEncoding
                )
            ) {
                self.mismatch.store(true, Ordering::Relaxed);
            }
            e
        })?;
        // Only a manager serves the management port to other nodes.
        match identity_of(end_entity) {
            Ok((_, Role::Manager)) => Ok(ServerCertVerified::assertion()),
            _ => Err(TlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration verifying the manager with `verifier`, and
/// presenting `identity` when there is one (every call but join).
pub(crate) fn client_config(
    verifier: Arc<ManagerVerifier>,
    identity: Option<&NodeIdentity>,
) -> Result<Arc<ClientConfig>, CaError> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("TLS versions"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match identity {
        Some(id) => {
            let (chain, key) = chain_and_key(id)?;
            b.with_client_auth_cert(chain, key)
                .map_err(tls_err("node certificate"))?
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// The CA pin for an identity's calls after join.
pub(crate) fn pin_of(identity: &NodeIdentity) -> Result<CaPin, CaError> {
    Ok(CaPin::Cert(ca_cert(identity)?))
}
