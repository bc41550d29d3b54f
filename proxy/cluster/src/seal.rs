//! Private keys never reach etcd in clear: [`seal`] encrypts a value with
//! AES-256-GCM under the cluster's `secret_key`, bound to the etcd key it is
//! stored at (as associated data, so a value copied to another key does not
//! open). Layout: `b"dtseal1"`, 12-byte random nonce, ciphertext and tag.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const MAGIC: &[u8] = b"dtseal1";

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// Not a sealed value (e.g. written by something else).
    #[error("not a sealed value")]
    NotSealed,
    /// Wrong key, wrong etcd key, or altered data.
    #[error("cannot decrypt: another secret_key, or the value was altered")]
    Decrypt,
    /// The system's random source failed.
    #[error("no randomness for a nonce")]
    Random,
}

/// Encrypts `plain` with `key`, bound to `name` (the etcd key).
pub fn seal(key: &[u8; 32], name: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SealError::Random)?;
    let k = aead_key(key)?;
    let mut buf = plain.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(name.as_bytes()),
        &mut buf,
    )
    .map_err(|_| SealError::Decrypt)?;
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + buf.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Decrypts a value made by [`seal`] with the same `key` and `name`.
pub fn open(key: &[u8; 32], name: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    let rest = sealed.strip_prefix(MAGIC).ok_or(SealError::NotSealed)?;
    if rest.len() < NONCE_LEN {
        return Err(SealError::NotSealed);
    }
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::NotSealed)?;
    let mut buf = ct.to_vec();
    let plain = aead_key(key)?
        .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buf)
        .map_err(|_| SealError::Decrypt)?;
    Ok(plain.to_vec())
}

fn aead_key(key: &[u8; 32]) -> Result<LessSafeKey, SealError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| SealError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = [7u8; 32];
        let s = seal(&key, "/d/acme/certs/a", b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!s.windows(11).any(|w| w == b"PRIVATE KEY"));
        assert_eq!(
            open(&key, "/d/acme/certs/a", &s).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert_eq!(
            open(&[8u8; 32], "/d/acme/certs/a", &s),
            Err(SealError::Decrypt)
        );
        assert_eq!(open(&key, "/d/acme/certs/b", &s), Err(SealError::Decrypt));
        let mut t = s.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(open(&key, "/d/acme/certs/a", &t), Err(SealError::Decrypt));
        assert_eq!(open(&key, "x", b"plain"), Err(SealError::NotSealed));
        // Two seals of the same value differ (fresh nonce).
        assert_ne!(
            s,
            seal(&key, "/d/acme/certs/a", b"-----BEGIN PRIVATE KEY-----").unwrap()
        );
    }
}
