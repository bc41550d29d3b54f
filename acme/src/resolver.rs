//! rustls resolvers over a store: SNI selection and TLS-ALPN-01 challenges.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::CertStore;

/// SNI resolver over the store's current snapshot.
#[derive(Debug)]
pub(crate) struct StoreResolver(pub Arc<CertStore>);

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.cert_for(hello.server_name()))
    }
}

/// Resolver of TLS-ALPN-01 challenge certificates.
#[derive(Debug)]
pub(crate) struct ChallengeResolver(pub Arc<CertStore>);

impl ResolvesServerCert for ChallengeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snap = self.0.snapshot.load();
        let sni = hello.server_name().map(crate::normalize_host)?;
        let entry = snap
            .entries
            .iter()
            .find(|e| e.acme_domains.contains(&sni))?;
        let acme = entry.challenge.load_full()?;
        acme.resolve(hello)
    }
}
