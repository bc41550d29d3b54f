//! Per-route basic auth (bcrypt hashes, as `htpasswd -nbB` writes them) and
//! client IP allow lists.

use arc_swap::ArcSwap;
use base64::Engine;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// How many verified `Authorization` values a route remembers, so bcrypt
/// runs once per credential rather than once per request.
const REMEMBERED: usize = 32;

/// Basic auth for one route.
pub struct BasicAuth {
    users: Vec<(String, String)>,
    verified: ArcSwap<Vec<Vec<u8>>>,
}

/// Outcome of checking a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Ask for credentials (401).
    Challenge,
}

impl BasicAuth {
    /// Builds the checker for a route's `user:hash` pairs.
    pub fn new(users: Vec<(String, String)>) -> Self {
        BasicAuth {
            users,
            verified: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// Checks an `Authorization` header value. bcrypt runs on a blocking
    /// thread; a verified value is remembered.
    pub async fn check(&self, header: Option<&[u8]>) -> Verdict {
        let Some(value) = header else {
            return Verdict::Challenge;
        };
        if self
            .verified
            .load()
            .iter()
            .any(|v| bool::from(v.as_slice().ct_eq(value)))
        {
            return Verdict::Allow;
        }
        let Some(b64) = value.strip_prefix(b"Basic ") else {
            return Verdict::Challenge;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return Verdict::Challenge;
        };
        let Ok(pair) = String::from_utf8(decoded) else {
            return Verdict::Challenge;
        };
        let Some((user, pass)) = pair.split_once(':') else {
            return Verdict::Challenge;
        };
        // An unknown user costs the same bcrypt run as a wrong password, so
        // response times do not tell which user names exist.
        let (known, hash) = match self.users.iter().find(|(u, _)| u == user) {
            Some((_, h)) => (true, h.clone()),
            None => (
                false,
                self.users
                    .first()
                    .map(|(_, h)| h.clone())
                    .unwrap_or_default(),
            ),
        };
        let pass = pass.to_string();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
            && known;
        if !ok {
            return Verdict::Challenge;
        }
        let value = value.to_vec();
        self.verified.rcu(|old| {
            let mut v: Vec<Vec<u8>> = old
                .iter()
                .rev()
                .take(REMEMBERED - 1)
                .rev()
                .cloned()
                .collect();
            v.push(value.clone());
            Arc::new(v)
        });
        Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_bcrypt_and_remembers() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = BasicAuth::new(vec![("alice".into(), hash)]);
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
        );
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:nope")
        );
        let who = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("bob:s3cret")
        );
        assert_eq!(auth.check(None).await, Verdict::Challenge);
        assert_eq!(auth.check(Some(bad.as_bytes())).await, Verdict::Challenge);
        assert_eq!(auth.check(Some(who.as_bytes())).await, Verdict::Challenge);
        assert_eq!(auth.check(Some(b"Bearer x")).await, Verdict::Challenge);
        assert_eq!(auth.check(Some(good.as_bytes())).await, Verdict::Allow);
        assert_eq!(auth.verified.load().len(), 1);
        assert_eq!(auth.check(Some(good.as_bytes())).await, Verdict::Allow);
        assert_eq!(auth.verified.load().len(), 1);
    }
}
