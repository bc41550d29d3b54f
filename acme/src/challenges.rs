//! The challenges of shared orders as this node sees them: a view fed by
//! the shared store's watch (any node may have published them), and the
//! TLS-ALPN-01 challenge certificate any node builds from a key
//! authorization (RFC 8737: the SHA-256 of the key authorization in the
//! `acmeIdentifier` extension).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rcgen::{CertificateParams, CustomExtension, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::shared::{ChallengeId, SharedEvent};
use crate::CertError;

/// Pending challenges (key authorizations) and the TLS-ALPN-01
/// certificates built for them.
#[derive(Debug, Default)]
pub(crate) struct Challenges {
    pending: Mutex<HashMap<ChallengeId, String>>,
    /// domain → (key authorization, its challenge certificate).
    alpn: Mutex<HashMap<String, (String, Arc<CertifiedKey>)>>,
}

impl Challenges {
    /// Applies a watch event (certificate events are not for this view).
    pub fn apply(&self, event: &SharedEvent) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        match event {
            SharedEvent::Up => pending.clear(),
            SharedEvent::Challenge { id, key_auth } => {
                pending.insert(id.clone(), key_auth.clone());
            }
            SharedEvent::ChallengeGone(id) => {
                pending.remove(id);
                if let (ChallengeId::TlsAlpn01(d), Ok(mut alpn)) = (id, self.alpn.lock()) {
                    alpn.remove(d);
                }
            }
            SharedEvent::Down | SharedEvent::Cert { .. } => {}
        }
    }

    /// Adds what this node itself published (before its watch reports it).
    pub fn insert(&self, id: ChallengeId, key_auth: String) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id, key_auth);
        }
    }

    /// The key authorization of `id`, if this node has seen it.
    pub fn get(&self, id: &ChallengeId) -> Option<String> {
        self.pending.lock().ok()?.get(id).cloned()
    }

    /// The TLS-ALPN-01 certificate for `domain` with `key_auth` (built once
    /// per key authorization: the CA dials several times).
    pub fn alpn_cert(&self, domain: &str, key_auth: &str) -> Result<Arc<CertifiedKey>, CertError> {
        if let Ok(alpn) = self.alpn.lock() {
            if let Some((k, cert)) = alpn.get(domain) {
                if k == key_auth {
                    return Ok(cert.clone());
                }
            }
        }
        let cert = tls_alpn_cert(domain, key_auth)?;
        if let Ok(mut alpn) = self.alpn.lock() {
            alpn.insert(domain.to_string(), (key_auth.to_string(), cert.clone()));
        }
        Ok(cert)
    }
}

/// The self-signed TLS-ALPN-01 challenge certificate for `domain`.
pub(crate) fn tls_alpn_cert(domain: &str, key_auth: &str) -> Result<Arc<CertifiedKey>, CertError> {
    let err = |source| CertError::SelfSigned {
        name: domain.to_string(),
        source,
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, key_auth.as_bytes());
    let mut params = CertificateParams::new(vec![domain.to_string()]).map_err(err)?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest.as_ref())];
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its key check parses the certificate,
    // and webpki refuses the critical acmeIdentifier extension.
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| CertError::Invalid {
            name: domain.to_string(),
            msg: e.to_string(),
        })?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_follows_events_and_alpn_certs_carry_the_digest() {
        let c = Challenges::default();
        let id = ChallengeId::TlsAlpn01("a.test".into());
        c.apply(&SharedEvent::Challenge {
            id: id.clone(),
            key_auth: "tok.thumb".into(),
        });
        assert_eq!(c.get(&id).as_deref(), Some("tok.thumb"));
        let cert = c.alpn_cert("a.test", "tok.thumb").expect("cert");
        assert!(Arc::ptr_eq(
            &cert,
            &c.alpn_cert("a.test", "tok.thumb").expect("again")
        ));
        let (_, x509) = x509_parser::parse_x509_certificate(cert.cert[0].as_ref()).expect("x509");
        let digest = ring::digest::digest(&ring::digest::SHA256, b"tok.thumb");
        // id-pe-acmeIdentifier 1.3.6.1.5.5.7.1.31, an OCTET STRING of the digest.
        let ext = x509
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], digest.as_ref());
        c.apply(&SharedEvent::ChallengeGone(id.clone()));
        assert_eq!(c.get(&id), None);
        c.insert(id.clone(), "x".into());
        c.apply(&SharedEvent::Up);
        assert_eq!(c.get(&id), None);
    }
}
