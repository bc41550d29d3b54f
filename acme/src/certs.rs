//! Certificate material: parsing PEM files and ACME cache entries, making
//! self-signed certificates, and reading the facts shown by `certificates()`.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use crate::CertError;

/// Facts about a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertMeta {
    /// DNS and IP subject alternative names.
    pub sans: Vec<String>,
    /// Issuer common name, else organisation, else `""`.
    pub issuer: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
}

impl CertMeta {
    /// Parses a DER leaf certificate.
    pub fn parse(der: &[u8]) -> Option<CertMeta> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let issuer = cert
            .issuer()
            .iter_common_name()
            .chain(cert.issuer().iter_organization())
            .find_map(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(n) => sans.push(n.to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            sans.push(IpAddr::from(a).to_string());
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            sans.push(IpAddr::from(a).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(CertMeta {
            sans,
            issuer,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// A usable certificate plus what we know about it.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub meta: CertMeta,
    /// `"acme"`, `"static"` or `"self-signed"`.
    pub source: &'static str,
}

impl Loaded {
    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        source: &'static str,
        name: &str,
    ) -> Result<Loaded, CertError> {
        let invalid = |msg: String| CertError::Invalid {
            name: name.to_string(),
            msg,
        };
        let leaf = chain
            .first()
            .ok_or_else(|| invalid("no certificate".into()))?;
        let meta = CertMeta::parse(leaf).ok_or_else(|| invalid("unparsable X.509".into()))?;
        let key = CertifiedKey::from_der(chain, key, &crate::tls::provider())
            .map_err(|e| invalid(format!("key does not fit the certificate: {e}")))?;
        Ok(Loaded {
            key: Arc::new(key),
            meta,
            source,
        })
    }

    /// DER of the leaf certificate.
    pub fn leaf_der(&self) -> &[u8] {
        self.key
            .cert
            .first()
            .map(|c| c.as_ref())
            .unwrap_or_default()
    }
}

/// Hosts that can appear in a certificate's SANs (no `*` catch-all).
fn san_hosts(hosts: &[String]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| crate::normalize_host(h))
        .filter(|h| !h.is_empty() && h != "*")
        .collect()
}

/// The SANs of the self-signed certificate for `hosts`.
fn self_signed_sans(hosts: &[String]) -> Vec<String> {
    let mut sans = san_hosts(hosts);
    if sans.is_empty() {
        sans.push("duotone.invalid".into());
    }
    sans
}

/// A kept self-signed certificate is replaced this long before it expires.
const KEPT_RENEW_BEFORE_SECS: i64 = 30 * 24 * 3600;

/// The self-signed certificate for `hosts`, kept in `dir` (one file per set
/// of SANs: key and certificate PEM, 0600, written atomically) and reused
/// while it has more than 30 days left, so that a restart serves the same
/// certificate and clients that accepted it once keep accepting it. With
/// `dir` `None` the certificate lives only as long as the process; a file
/// that cannot be read or written is logged and a fresh one is served.
pub(crate) fn self_signed_kept(
    hosts: &[String],
    name: &str,
    dir: Option<&Path>,
) -> Result<Loaded, CertError> {
    let Some(dir) = dir else {
        return self_signed(hosts, name);
    };
    let sans = self_signed_sans(hosts);
    let file = dir.join(format!(
        "{}.pem",
        crate::cache::hashed_name("self_signed_", &sans, "")
    ));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match std::fs::read(&file) {
        Ok(pem) => match parse_key_and_chain(&pem, name, "self-signed") {
            Ok(kept)
                if kept.meta.sans == sans && kept.meta.not_after > now + KEPT_RENEW_BEFORE_SECS =>
            {
                return Ok(kept);
            }
            Ok(_) => {
                tracing::info!(cert = %name, file = %file.display(), "self-signed fallback certificate expires soon: making a new one")
            }
            Err(e) => {
                tracing::warn!(cert = %name, file = %file.display(), error = %e, "unusable self-signed fallback certificate: making a new one")
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(cert = %name, file = %file.display(), error = %e, "cannot read the self-signed fallback certificate: making a new one")
        }
    }
    let (loaded, pem) = self_signed_with_pem(hosts, name)?;
    if let Err(e) = crate::cache::write_private(&file, pem.as_bytes()) {
        tracing::warn!(cert = %name, file = %file.display(), error = %e, "cannot keep the self-signed fallback certificate; a restart will make another");
    }
    Ok(loaded)
}

/// A fresh self-signed ECDSA P-256 certificate for `hosts`, valid for a year.
pub(crate) fn self_signed(hosts: &[String], name: &str) -> Result<Loaded, CertError> {
    self_signed_with_pem(hosts, name).map(|(loaded, _)| loaded)
}

/// [`self_signed`], with its key and certificate as PEM (key first).
fn self_signed_with_pem(hosts: &[String], name: &str) -> Result<(Loaded, String), CertError> {
    let err = |source| CertError::SelfSigned {
        name: name.to_string(),
        source,
    };
    let sans = self_signed_sans(hosts);
    let mut params = CertificateParams::new(sans).map_err(err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Duotone self-signed");
    dn.push(DnType::OrganizationName, "Duotone");
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    let key_pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let cert = params.self_signed(&key_pair).map_err(err)?;
    let pem = format!("{}{}", key_pair.serialize_pem(), cert.pem());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    let loaded = Loaded::new(vec![cert.der().clone()], key, "self-signed", name)?;
    Ok((loaded, pem))
}

/// Loads a PEM certificate chain and private key from files.
pub(crate) fn load_static(cert: &Path, key: &Path, name: &str) -> Result<Loaded, CertError> {
    let cert_pem = std::fs::read(cert).map_err(|e| CertError::io(cert, e))?;
    let key_pem = std::fs::read(key).map_err(|e| CertError::io(key, e))?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            path: cert.into(),
            msg: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::Pem {
            path: cert.into(),
            msg: "no CERTIFICATE block".into(),
        });
    }
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| CertError::Pem {
            path: key.into(),
            msg: e.to_string(),
        })?
        .ok_or_else(|| CertError::Pem {
            path: key.into(),
            msg: "no PRIVATE KEY block".into(),
        })?;
    Loaded::new(chain, private, "static", name)
}

/// Parses a rustls-acme cache entry: a PKCS#8 key PEM followed by the chain.
pub(crate) fn parse_acme_pem(pem: &[u8], name: &str) -> Result<Loaded, CertError> {
    parse_key_and_chain(pem, name, "acme")
}

/// Parses a PKCS#8 key PEM followed by a certificate chain (the ACME cache
/// format, also used for kept self-signed certificates).
fn parse_key_and_chain(pem: &[u8], name: &str, source: &'static str) -> Result<Loaded, CertError> {
    let mut key = None;
    let mut chain = Vec::new();
    for item in rustls_pemfile::read_all(&mut &pem[..]) {
        match item {
            Ok(rustls_pemfile::Item::Pkcs8Key(k)) if key.is_none() => {
                key = Some(PrivateKeyDer::Pkcs8(k))
            }
            Ok(rustls_pemfile::Item::X509Certificate(c)) => chain.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(CertError::Invalid {
                    name: name.to_string(),
                    msg: format!("stored {source} certificate: {e}"),
                })
            }
        }
    }
    let key = key.ok_or_else(|| CertError::Invalid {
        name: name.to_string(),
        msg: format!("stored {source} certificate has no key"),
    })?;
    Loaded::new(chain, key, source, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_covers_hosts_and_skips_catch_all() {
        let hosts = vec![
            "Example.com".to_string(),
            "*.example.com".into(),
            "*".into(),
        ];
        let loaded = self_signed(&hosts, "example.com").expect("self-signed");
        assert_eq!(loaded.meta.sans, vec!["example.com", "*.example.com"]);
        assert_eq!(loaded.meta.issuer, "Duotone self-signed");
        assert!(loaded.meta.not_after > loaded.meta.not_before);
        assert_eq!(loaded.source, "self-signed");
    }

    #[test]
    fn ip_hosts_become_ip_sans() {
        let loaded = self_signed(&["127.0.0.1".to_string()], "ip").expect("self-signed");
        assert_eq!(loaded.meta.sans, vec!["127.0.0.1"]);
    }

    #[test]
    fn kept_self_signed_is_reused_while_valid() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = dir.path().join("self-signed");
        let hosts = vec!["a.test".to_string(), "www.a.test".into()];
        let first = self_signed_kept(&hosts, "a.test", Some(&kept)).expect("first");
        let files: Vec<_> = std::fs::read_dir(&kept)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&files[0]), 0o600);
        assert_eq!(mode(&kept), 0o700);
        // Reused, not remade.
        let again = self_signed_kept(&hosts, "a.test", Some(&kept)).expect("again");
        assert_eq!(again.leaf_der(), first.leaf_der());
        assert_eq!(again.source, "self-signed");
        // Other hosts, another certificate (and file).
        let other = self_signed_kept(&["b.test".to_string()], "b.test", Some(&kept)).expect("b");
        assert_eq!(other.meta.sans, vec!["b.test"]);
        assert_eq!(std::fs::read_dir(&kept).expect("dir").count(), 2);
        // A damaged file is replaced.
        std::fs::write(&files[0], "garbage").expect("damage");
        let fresh = self_signed_kept(&hosts, "a.test", Some(&kept)).expect("fresh");
        assert_ne!(fresh.leaf_der(), first.leaf_der());
        let reread = self_signed_kept(&hosts, "a.test", Some(&kept)).expect("reread");
        assert_eq!(reread.leaf_der(), fresh.leaf_der());
    }

    #[test]
    fn kept_self_signed_close_to_expiry_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts = vec!["a.test".to_string()];
        // A kept certificate with 10 days left, written where it is looked for.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::new(hosts.clone()).expect("params");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(355);
        params.not_after = now + time::Duration::days(10);
        let old = params.self_signed(&key).expect("cert");
        let file = dir.path().join(format!(
            "{}.pem",
            crate::cache::hashed_name("self_signed_", &hosts, "")
        ));
        std::fs::write(&file, format!("{}{}", key.serialize_pem(), old.pem())).expect("write");
        let kept = self_signed_kept(&hosts, "a.test", Some(dir.path())).expect("kept");
        assert_ne!(kept.leaf_der(), old.der().as_ref());
        assert!(kept.meta.not_after > (now + time::Duration::days(300)).unix_timestamp());
        // The new one is what the next start finds.
        let next = self_signed_kept(&hosts, "a.test", Some(dir.path())).expect("next");
        assert_eq!(next.leaf_der(), kept.leaf_der());
    }

    #[test]
    fn garbage_acme_pem_is_an_error() {
        assert!(parse_acme_pem(b"not a pem", "x").is_err());
    }
}
