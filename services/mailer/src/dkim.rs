//! Optional DKIM signing (RFC 6376, RSA-SHA256; RFC 8463, Ed25519-SHA256)
//! with lettre's `dkim` feature, for teams that relay through their own
//! server. Naver signs mail sent through smtp.naver.com itself: leave the
//! `MAILER_DKIM_*` variables unset there.
//!
//! The key is read once at start, in the formats the usual tools write: RSA
//! as PKCS#1 (`openssl genrsa -traditional`) or PKCS#8 PEM (`openssl
//! genpkey`), Ed25519 as PKCS#8 PEM (`openssl genpkey -algorithm ed25519`) or
//! the base64 seed that dkimpy's `dknewkey` writes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use lettre::Message;
use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
    DkimSigningKey,
};
use lettre::message::header::HeaderName;
use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
use rsa::pkcs8::DecodePrivateKey;

/// The DER of an Ed25519 PKCS#8 private key (RFC 8410) before its 32-byte seed.
const ED25519_PKCS8: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Headers the signature covers: those that say who, to whom, what and
/// when. Content-Type is lettre's body's own header, out of its reach.
const SIGNED: [&str; 7] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Auto-Submitted",
];

/// Signs messages for one domain and selector.
pub struct Signer {
    config: DkimConfig,
    /// `d=`, `s=` and the algorithm, for logs (the key never is).
    pub domain: String,
    pub selector: String,
    pub algorithm: &'static str,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    STANDARD.decode(body).ok()
}

/// The key in `text` as lettre takes it.
fn signing_key(text: &str) -> Result<(DkimSigningKey, &'static str), String> {
    let text = text.trim();
    let bad = |what: &str| format!("not a usable {what} key");
    let rsa = |pkcs1: &str| {
        DkimSigningKey::new(pkcs1, DkimSigningAlgorithm::Rsa)
            .map(|k| (k, "rsa"))
            .map_err(|_| bad("RSA"))
    };
    let ed25519 = |seed: &[u8]| {
        DkimSigningKey::new(&STANDARD.encode(seed), DkimSigningAlgorithm::Ed25519)
            .map(|k| (k, "ed25519"))
            .map_err(|_| bad("Ed25519"))
    };
    if text.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
        return rsa(text);
    }
    if text.starts_with("-----BEGIN PRIVATE KEY-----") {
        let der = pem_body(text).ok_or_else(|| bad("PEM"))?;
        if let Some(seed) = der.strip_prefix(&ED25519_PKCS8[..]) {
            return ed25519(seed);
        }
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(text).map_err(|_| bad("PKCS#8 RSA"))?;
        let pkcs1 = key.to_pkcs1_pem(LineEnding::LF).map_err(|_| bad("RSA"))?;
        return rsa(&pkcs1);
    }
    match STANDARD.decode(text) {
        Ok(seed) if seed.len() == 32 => ed25519(&seed),
        _ => Err("expected an RSA key (PKCS#1 or PKCS#8 PEM) or an Ed25519 key (PKCS#8 PEM or a base64 seed)".into()),
    }
}

impl Signer {
    /// A signer for `domain` and `selector` with the private key in `key`.
    pub fn new(domain: &str, selector: &str, key: &str) -> Result<Self, String> {
        let (private_key, algorithm) = signing_key(key)?;
        let headers = SIGNED
            .iter()
            .map(|h| HeaderName::new_from_ascii_str(h))
            .collect();
        // Relaxed headers: relays that refold a long Subject or From keep the
        // signature valid.
        let canonicalization = DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        };
        Ok(Self {
            config: DkimConfig::new(
                selector.to_owned(),
                domain.to_owned(),
                private_key,
                headers,
                canonicalization,
            ),
            domain: domain.to_owned(),
            selector: selector.to_owned(),
            algorithm,
        })
    }

    /// Adds the DKIM-Signature header.
    pub fn sign(&self, message: &mut Message) {
        message.sign(&self.config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_the_usual_formats_are_read_and_nothing_else() {
        let seed = [7u8; 32];
        let mut pkcs8 = ED25519_PKCS8.to_vec();
        pkcs8.extend_from_slice(&seed);
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(&pkcs8)
        );
        assert_eq!(signing_key(&pem).unwrap().1, "ed25519");
        assert_eq!(signing_key(&STANDARD.encode(seed)).unwrap().1, "ed25519");
        for bad in [
            "",
            "not a key",
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
        ] {
            let e = signing_key(bad).unwrap_err();
            assert!(!e.contains("AAAA"), "the key stays out of errors: {e}");
        }
        let signer = Signer::new("example.com", "s1", &pem).unwrap();
        assert!(!format!("{signer:?}").contains(&STANDARD.encode(seed)));
    }
}
