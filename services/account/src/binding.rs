//! The browser binding of a verification link. Sign-up (and resend) set a
//! random value in a short-lived HttpOnly cookie on the browser that asked
//! for the link, and seal a hash of it into the token. Only that browser is
//! signed in by the link without a click; any other browser, a link scanner
//! or a victim sent an attacker's link, sees the address and must press a
//! button that names it (login CSRF through the verification link).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::token::BINDING_LEN;

/// The cookie value: 256 random bits. Never logged, never stored.
pub struct Binding(String);

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Binding(***)")
    }
}

/// The hash a token carries for `cookie`.
pub fn hash(cookie: &str) -> [u8; BINDING_LEN] {
    let digest = Sha256::digest(cookie.as_bytes());
    let mut out = [0u8; BINDING_LEN];
    out.copy_from_slice(&digest[..BINDING_LEN]);
    out
}

/// Whether `cookie` is the one whose hash a token carries (constant time).
pub fn matches(cookie: Option<&str>, sealed: Option<&[u8; BINDING_LEN]>) -> bool {
    match (cookie, sealed) {
        (Some(c), Some(h)) => bool::from(hash(c).ct_eq(h)),
        _ => false,
    }
}

impl Binding {
    /// A fresh binding.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS random source works");
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The cookie value.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hash sealed into the link.
    pub fn hash(&self) -> [u8; BINDING_LEN] {
        hash(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_cookie_matches() {
        let a = Binding::generate();
        let b = Binding::generate();
        assert_ne!(a.as_str(), b.as_str());
        assert!(matches(Some(a.as_str()), Some(&a.hash())));
        assert!(!matches(Some(b.as_str()), Some(&a.hash())));
        assert!(!matches(None, Some(&a.hash())));
        assert!(!matches(Some(a.as_str()), None));
        assert_eq!(format!("{a:?}"), "Binding(***)");
    }
}
