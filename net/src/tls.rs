//! Cluster certificates. A cluster has one CA; every node holds a certificate
//! signed by it whose only subject name is `node-<id>.flotilla`, so the name
//! a certificate is valid for *is* the node id it may claim. Both sides of a
//! connection present one (mutual TLS, TLS 1.3 only) and check the other's
//! against the cluster CA; the server then checks that the client's
//! certificate names the node id the client claims in its hello.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use crate::NetError;

/// ALPN of flotilla's node-to-node protocol; a peer speaking anything else is refused.
pub const ALPN: &[u8] = b"flotilla/1";

/// The subject name a node's certificate carries.
pub fn node_name(node: u64) -> String {
    format!("node-{node}.flotilla")
}

/// A node's (or client's) certificate and private key, DER-encoded.
#[derive(Clone)]
pub struct Identity {
    /// The certificate chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The private key (PKCS#8).
    pub key: Vec<u8>,
}

impl Identity {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

/// A cluster certificate authority that can issue node certificates.
pub struct ClusterCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl ClusterCa {
    /// A new CA named `cluster`.
    pub fn generate(cluster: &str) -> Result<Self, NetError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("flotilla cluster {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(cert_error)?;
        let cert = params.self_signed(&key).map_err(cert_error)?;
        Ok(ClusterCa { cert, key })
    }

    /// The CA certificate, to trust.
    pub fn cert(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A certificate for node `node`, valid from now for ten years.
    pub fn issue(&self, node: u64) -> Result<Identity, NetError> {
        let params = CertificateParams::new(vec![node_name(node)]).map_err(cert_error)?;
        self.sign(params)
    }

    /// A certificate for `node` with an explicit validity window (for tests
    /// of expired certificates).
    pub fn issue_valid(
        &self,
        node: u64,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> Result<Identity, NetError> {
        let mut params = CertificateParams::new(vec![node_name(node)]).map_err(cert_error)?;
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Identity, NetError> {
        let key = KeyPair::generate().map_err(cert_error)?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(cert_error)?;
        Ok(Identity {
            certs: vec![cert.der().clone(), self.cert()],
            key: key.serialize_der(),
        })
    }
}

fn cert_error(e: rcgen::Error) -> NetError {
    NetError::Tls(format!("certificate generation failed: {e}"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, NetError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| NetError::Tls(format!("the cluster CA certificate is unusable: {e}")))?;
    Ok(Arc::new(roots))
}

/// TLS for accepting: our certificate, and a client certificate from the
/// cluster CA required of every peer.
pub(crate) fn server_config(
    identity: &Identity,
    ca: &CertificateDer<'static>,
) -> Result<rustls::ServerConfig, NetError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
        .build()
        .map_err(|e| NetError::Tls(format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.certs.clone(), identity.key())
        .map_err(|e| NetError::Tls(format!("our certificate or key is unusable: {e}")))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// TLS for connecting: the cluster CA as the only root, our certificate as
/// the client certificate.
pub(crate) fn client_config(
    identity: &Identity,
    ca: &CertificateDer<'static>,
) -> Result<rustls::ClientConfig, NetError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(identity.certs.clone(), identity.key())
        .map_err(|e| NetError::Tls(format!("our certificate or key is unusable: {e}")))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Checks, before anything starts, that `identity` can serve as node `node`
/// of the cluster whose CA certificate is `ca`: both parse, the key belongs
/// to the certificate, the certificate chains to the CA and is valid now,
/// and it names the node. Otherwise the node would start and every peer
/// would refuse it, which shows only in their logs.
pub fn check_identity(
    node: u64,
    identity: &Identity,
    ca: &CertificateDer<'static>,
) -> Result<(), NetError> {
    server_config(identity, ca)?;
    let (leaf, chain) = identity
        .certs
        .split_first()
        .ok_or_else(|| NetError::Tls("no certificate".into()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
        .build()
        .map_err(|e| NetError::Tls(format!("client verifier: {e}")))?;
    verifier
        .verify_client_cert(leaf, chain, rustls_pki_types::UnixTime::now())
        .map_err(|e| {
            NetError::Tls(format!(
                "the certificate is not valid under this cluster's CA: {e}"
            ))
        })?;
    if !names_node(leaf, node) {
        return Err(NetError::Tls(format!(
            "the certificate is not node {node}'s: it does not name {}",
            node_name(node)
        )));
    }
    Ok(())
}

/// Whether `cert` (already verified against the cluster CA during the
/// handshake) names node `node`.
pub(crate) fn names_node(cert: &CertificateDer<'_>, node: u64) -> bool {
    let Ok(parsed) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node_name(node)) else {
        return false;
    };
    parsed.verify_is_valid_for_subject_name(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_nodes_own_certificate_and_key_under_the_cluster_ca_pass() {
        let ca = ClusterCa::generate("test").expect("ca");
        let node1 = ca.issue(1).expect("node 1");
        assert!(check_identity(1, &node1, &ca.cert()).is_ok());

        let err = check_identity(2, &node1, &ca.cert()).expect_err("node 1's as node 2");
        assert!(err.to_string().contains("node-2.flotilla"), "{err}");

        let other = ClusterCa::generate("other").expect("ca");
        let foreign = other.issue(1).expect("foreign node 1");
        let err = check_identity(1, &foreign, &ca.cert()).expect_err("another CA's");
        assert!(
            err.to_string()
                .contains("not valid under this cluster's CA"),
            "{err}"
        );

        let node2 = ca.issue(2).expect("node 2");
        let mismatched = Identity {
            certs: node1.certs.clone(),
            key: node2.key.clone(),
        };
        assert!(
            check_identity(1, &mismatched, &ca.cert()).is_err(),
            "another key"
        );

        let expired = ca.issue_valid(1, (2001, 1, 1), (2002, 1, 1)).expect("old");
        assert!(check_identity(1, &expired, &ca.cert()).is_err(), "expired");

        let garbage = Identity {
            certs: vec![CertificateDer::from(vec![1, 2, 3])],
            key: node1.key.clone(),
        };
        assert!(
            check_identity(1, &garbage, &ca.cert()).is_err(),
            "not a certificate"
        );
    }
}
