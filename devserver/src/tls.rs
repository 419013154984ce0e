//! A throwaway test CA and a server certificate for localhost, made fresh at every start.

use std::io;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The TLS material of a running server.
pub struct TlsMaterial {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub config: Arc<rustls::ServerConfig>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("test TLS setup failed: {e}"))
}

/// A throwaway certificate authority that can sign several localhost leaves, so one CA PEM trusts both
/// the devserver and Azurite (see [`crate::ServerConfig::tls_ca`] and [`crate::azurite::AzuriteOptions`]).
#[derive(Clone)]
pub struct TestCa {
    params: CertificateParams,
    key: Arc<KeyPair>,
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A leaf for `localhost`, `127.0.0.1` and `::1`, signed by a [`TestCa`].
pub struct Leaf {
    /// The leaf, then the CA.
    pub chain_pem: String,
    /// PKCS#8 private key PEM.
    pub key_pem: String,
    pub config: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn generate() -> io::Result<TestCa> {
        let ca_key = KeyPair::generate().map_err(other)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(other)?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kusto-devserver test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(other)?;
        Ok(TestCa {
            params: ca_params,
            key: Arc::new(ca_key),
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
        })
    }

    /// Sign a fresh leaf for localhost.
    pub fn issue_localhost(&self) -> io::Result<Leaf> {
        let leaf_key = KeyPair::generate().map_err(other)?;
        let mut leaf_params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .map_err(other)?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = Issuer::from_params(&self.params, &*self.key);
        let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer).map_err(other)?;

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(other)?
            .with_no_client_auth()
            .with_single_cert(vec![leaf_cert.der().clone(), self.ca_der.clone()], key)
            .map_err(other)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Leaf {
            chain_pem: format!("{}{}", leaf_cert.pem(), self.ca_pem),
            key_pem: leaf_key.serialize_pem(),
            config: Arc::new(config),
        })
    }

    /// A leaf and the server's TLS material.
    pub fn material(&self) -> io::Result<TlsMaterial> {
        let leaf = self.issue_localhost()?;
        Ok(TlsMaterial {
            ca_pem: self.ca_pem.clone(),
            ca_der: self.ca_der.clone(),
            config: leaf.config,
        })
    }
}

/// Generate a CA and a leaf for `localhost`, `127.0.0.1` and `::1`, and a rustls server config.
pub fn generate() -> io::Result<TlsMaterial> {
    TestCa::generate()?.material()
}
