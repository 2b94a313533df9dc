//! The tokens in mailed links: AES-256-GCM over a small binary payload,
//! with the purpose as associated data and a key id so keys can rotate.
//!
//! Wire form: `v2.<kid>.<base64url(nonce || ciphertext || tag)>`.
//! Payload: user id (16 bytes) | epoch (u32) | issued-at (i64 s) |
//! expires-at (i64 s) | browser binding (16 bytes, zero when none) | e-mail (UTF-8).
//!
//! The binding is a hash of a cookie set on the browser that asked for the
//! link: only that browser is signed in without a click (see `binding`).
//! `v1` tokens (no binding field) still open, so links mailed before an
//! upgrade keep working; they count as unbound.
//!
//! The threats: a forged or altered token (GCM authenticates it), a token
//! made for one purpose used for another (the purpose is the associated
//! data), a leaked old key (drop it from the ring), hostile input (bounded
//! length, every malformation a clear error, never a panic).

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

/// The purpose of a verification link; a token sealed for another purpose never opens here.
pub const VERIFY_EMAIL: &str = "verify-email/v1";
/// The purpose of a password reset link.
pub const RESET_PASSWORD: &str = "reset-password/v1";
/// The purpose of a link that confirms a new address for an account.
pub const CHANGE_EMAIL: &str = "change-email/v1";
/// The purpose of the keyed hash of a verification code.
pub const VERIFY_CODE: &str = "verify-code/v1";

/// The version this code seals.
const VERSION: &str = "v2";
/// The version before the browser binding; still opened.
const VERSION_1: &str = "v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Length of the browser binding in a v2 payload.
pub const BINDING_LEN: usize = 16;
/// The fixed part of a v1 payload: user id, epoch, issued-at, expires-at.
const FIXED_LEN_V1: usize = 16 + 4 + 8 + 8;
/// The fixed part of a v2 payload: v1's and the binding.
const FIXED_LEN: usize = FIXED_LEN_V1 + BINDING_LEN;
/// Longest token we try to decode: keeps hostile input cheap.
const MAX_TOKEN_LEN: usize = 1024;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user_id: Uuid,
    /// The address the link was sent to.
    pub email: String,
    /// The user's epoch for this purpose when the link was made: a link whose
    /// epoch the user has moved past is used or superseded.
    pub epoch: i32,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// A hash of the binding cookie of the browser that asked for the link.
    pub binding: Option<[u8; BINDING_LEN]>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not of the token's form: truncated, bad base64, wrong version.
    #[error("the token is malformed")]
    Malformed,
    /// The key id is not in the ring (retired, or never ours).
    #[error("the token's key is unknown")]
    UnknownKey,
    /// Authentication failed: tampered, wrong key, or sealed for another purpose.
    #[error("the token does not authenticate")]
    Forged,
    /// Authentic but past its expiry; the claims let us offer a resend.
    #[error("the token has expired")]
    Expired(Box<Claims>),
}

/// An error in the key ring configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyRingError {
    #[error("empty key ring; expected kid:base64key,...")]
    Empty,
    #[error("entry {0} is not kid:base64key")]
    Entry(usize),
    #[error("key id {0:?} must be 1-32 of A-Z, a-z, 0-9, '_' or '-'")]
    KeyId(String),
    #[error("key {0:?} is not base64 of 32 bytes")]
    Key(String),
    #[error("key id {0:?} appears twice")]
    Duplicate(String),
}

/// The configured keys: the first seals, all open.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<(String, Aes256Gcm)>,
    /// Per key, a MAC key derived from it (keyed hashes of short secrets
    /// such as verification codes): SHA-256 of a label and the key.
    macs: Vec<[u8; 32]>,
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("KeyRing")
            .field("kids", &ids)
            .finish_non_exhaustive()
    }
}

fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 32
        && kid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl KeyRing {
    /// Parses `kid:base64key,kid:base64key,...` (standard or URL-safe base64, 32-byte keys).
    pub fn parse(spec: &str) -> Result<Self, KeyRingError> {
        let mut keys: Vec<(String, Aes256Gcm)> = Vec::new();
        let mut macs = Vec::new();
        for (i, entry) in spec
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (kid, key) = entry.split_once(':').ok_or(KeyRingError::Entry(i + 1))?;
            let (kid, key) = (kid.trim(), key.trim());
            if !valid_kid(kid) {
                return Err(KeyRingError::KeyId(kid.to_owned()));
            }
            if keys.iter().any(|(k, _)| k == kid) {
                return Err(KeyRingError::Duplicate(kid.to_owned()));
            }
            let bytes = STANDARD
                .decode(key)
                .or_else(|_| URL_SAFE.decode(key))
                .or_else(|_| URL_SAFE_NO_PAD.decode(key))
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| KeyRingError::Key(kid.to_owned()))?;
            let cipher =
                Aes256Gcm::new_from_slice(&bytes).map_err(|_| KeyRingError::Key(kid.to_owned()))?;
            keys.push((kid.to_owned(), cipher));
            let mut derive = <sha2::Sha256 as sha2::Digest>::new();
            sha2::Digest::update(&mut derive, b"signup-mac-key/v1\0");
            sha2::Digest::update(&mut derive, &bytes);
            macs.push(sha2::Digest::finalize(derive).into());
        }
        if keys.is_empty() {
            return Err(KeyRingError::Empty);
        }
        Ok(Self { keys, macs })
    }

    /// A ring of one fresh random key, for a process without configured keys.
    pub fn ephemeral() -> Self {
        Self::parse(&generate_key_spec("ephemeral")).expect("a generated key parses")
    }

    fn hmac(key: &[u8; 32], purpose: &str, msg: &[u8]) -> HmacSha256 {
        use hmac::Mac;
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(msg);
        mac
    }

    /// A keyed hash of `msg` for `purpose`, with the first key: what the
    /// database keeps of a short secret, useless without the key ring.
    pub fn mac(&self, purpose: &str, msg: &[u8]) -> Vec<u8> {
        use hmac::Mac;
        Self::hmac(&self.macs[0], purpose, msg)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Whether `tag` is the keyed hash of `msg` under any key of the ring,
    /// compared in constant time.
    pub fn mac_matches(&self, purpose: &str, msg: &[u8], tag: &[u8]) -> bool {
        use hmac::Mac;
        self.macs
            .iter()
            .any(|key| Self::hmac(key, purpose, msg).verify_slice(tag).is_ok())
    }

    /// The id of the sealing key.
    pub fn current_kid(&self) -> &str {
        &self.keys[0].0
    }

    /// Encrypts claims for `purpose` with the first key.
    pub fn seal(&self, purpose: &str, claims: &Claims) -> String {
        let (kid, cipher) = &self.keys[0];
        let mut plain = Vec::with_capacity(FIXED_LEN + claims.email.len());
        plain.extend_from_slice(claims.user_id.as_bytes());
        plain.extend_from_slice(&claims.epoch.to_be_bytes());
        plain.extend_from_slice(&claims.issued_at.timestamp().to_be_bytes());
        plain.extend_from_slice(&claims.expires_at.timestamp().to_be_bytes());
        plain.extend_from_slice(&claims.binding.unwrap_or([0; BINDING_LEN]));
        plain.extend_from_slice(claims.email.as_bytes());
        let nonce = Nonce::generate();
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: &aad(VERSION, purpose),
                },
            )
            .expect("AES-GCM encryption of a small buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{VERSION}.{kid}.{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// Decrypts and authenticates a token sealed for `purpose`, and checks its expiry at `now`.
    pub fn open(
        &self,
        purpose: &str,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Claims, TokenError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.splitn(3, '.');
        let (Some(version), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let fixed = match version {
            VERSION => FIXED_LEN,
            VERSION_1 => FIXED_LEN_V1,
            _ => return Err(TokenError::Malformed),
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        if bytes.len() < NONCE_LEN + TAG_LEN + fixed {
            return Err(TokenError::Malformed);
        }
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| k == kid)
            .ok_or(TokenError::UnknownKey)?;
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| TokenError::Malformed)?;
        let plain = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: &aad(version, purpose),
                },
            )
            .map_err(|_| TokenError::Forged)?;
        let claims = decode_claims(&plain, fixed).ok_or(TokenError::Forged)?;
        if now >= claims.expires_at {
            return Err(TokenError::Expired(Box::new(claims)));
        }
        Ok(claims)
    }
}

/// The associated data: the purpose, and from v2 on the version too, so a
/// token relabelled as another version does not authenticate.
fn aad(version: &str, purpose: &str) -> Vec<u8> {
    if version == VERSION_1 {
        return purpose.as_bytes().to_vec();
    }
    format!("{version}|{purpose}").into_bytes()
}

/// The claims of a payload whose fixed part is `fixed` bytes (v1 or v2).
fn decode_claims(plain: &[u8], fixed: usize) -> Option<Claims> {
    if plain.len() < fixed {
        return None;
    }
    let user_id = Uuid::from_slice(&plain[0..16]).ok()?;
    let epoch = i32::from_be_bytes(plain[16..20].try_into().ok()?);
    let iat = i64::from_be_bytes(plain[20..28].try_into().ok()?);
    let exp = i64::from_be_bytes(plain[28..36].try_into().ok()?);
    let binding: Option<[u8; BINDING_LEN]> = if fixed == FIXED_LEN {
        Some(plain[FIXED_LEN_V1..FIXED_LEN].try_into().ok()?).filter(|b| *b != [0; BINDING_LEN])
    } else {
        None
    };
    let email = std::str::from_utf8(&plain[fixed..]).ok()?.to_owned();
    Some(Claims {
        user_id,
        email,
        epoch,
        issued_at: Utc.timestamp_opt(iat, 0).single()?,
        expires_at: Utc.timestamp_opt(exp, 0).single()?,
        binding,
    })
}

/// A fresh `kid:base64key` entry for the key ring (`account keygen`).
pub fn generate_key_spec(kid: &str) -> String {
    let key = aes_gcm::Key::<Aes256Gcm>::generate();
    format!("{kid}:{}", STANDARD.encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn claims(now: DateTime<Utc>) -> Claims {
        Claims {
            user_id: Uuid::new_v4(),
            email: "지민@example.com".into(),
            epoch: 3,
            issued_at: now,
            expires_at: now + Duration::hours(24),
            binding: Some([7; BINDING_LEN]),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(Utc::now().timestamp(), 0).unwrap()
    }

    #[test]
    fn seals_and_opens() {
        let ring = KeyRing::ephemeral();
        let c = claims(now());
        let token = ring.seal(VERIFY_EMAIL, &c);
        assert!(token.starts_with("v2.ephemeral."));
        assert!(
            token
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
        );
        assert_eq!(ring.open(VERIFY_EMAIL, &token, now()).unwrap(), c);
        // A fresh nonce every time: the same claims never give the same token.
        assert_ne!(token, ring.seal(VERIFY_EMAIL, &c));
    }

    #[test]
    fn every_kind_of_bad_token_is_refused() {
        let ring = KeyRing::ephemeral();
        let c = claims(now());
        let token = ring.seal(VERIFY_EMAIL, &c);

        // Tampered: flip one character of the body.
        let mut chars: Vec<char> = token.chars().collect();
        let i = chars.len() - 10;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.into_iter().collect();
        assert_eq!(
            ring.open(VERIFY_EMAIL, &tampered, now()),
            Err(TokenError::Forged)
        );
        // Truncated.
        let (head, body) = token.rsplit_once('.').unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
        let cut = format!(
            "{head}.{}",
            URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() - 3])
        );
        assert_eq!(
            ring.open(VERIFY_EMAIL, &cut, now()),
            Err(TokenError::Forged)
        );
        assert!(
            ring.open(VERIFY_EMAIL, &token[..token.len() - 1], now())
                .is_err()
        );
        assert_eq!(
            ring.open(VERIFY_EMAIL, &token[..20], now()),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            ring.open(VERIFY_EMAIL, "", now()),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            ring.open(VERIFY_EMAIL, "v3.x.y", now()),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            ring.open(VERIFY_EMAIL, &"v1.a.".repeat(400), now()),
            Err(TokenError::Malformed)
        );
        // Wrong purpose.
        let other = ring.seal("reset-password/v1", &c);
        assert_eq!(
            ring.open(VERIFY_EMAIL, &other, now()),
            Err(TokenError::Forged)
        );
        // Wrong key under the same id.
        let impostor = KeyRing::ephemeral().seal(VERIFY_EMAIL, &c);
        assert_eq!(
            ring.open(VERIFY_EMAIL, &impostor, now()),
            Err(TokenError::Forged)
        );
        // Unknown key id.
        let foreign = KeyRing::parse(&generate_key_spec("other"))
            .unwrap()
            .seal(VERIFY_EMAIL, &c);
        assert_eq!(
            ring.open(VERIFY_EMAIL, &foreign, now()),
            Err(TokenError::UnknownKey)
        );
        // Expired.
        let later = now() + Duration::hours(25);
        assert_eq!(
            ring.open(VERIFY_EMAIL, &token, later),
            Err(TokenError::Expired(Box::new(c)))
        );
    }

    #[test]
    fn tokens_up_to_the_length_bound_open_and_longer_ones_are_refused_unread() {
        let ring = KeyRing::ephemeral();
        // Grow the address until the token is exactly MAX_TOKEN_LEN long.
        let sized = |local: usize| {
            let c = Claims {
                email: format!("{}@example.com", "a".repeat(local)),
                ..claims(now())
            };
            (ring.seal(VERIFY_EMAIL, &c), c)
        };
        let (at_bound, c) = (1..MAX_TOKEN_LEN)
            .map(sized)
            .find(|(t, _)| t.len() == MAX_TOKEN_LEN)
            .expect("some address gives a token of exactly the bound");
        assert_eq!(ring.open(VERIFY_EMAIL, &at_bound, now()), Ok(c.clone()));
        // One byte more in the address and it is refused before decoding,
        // although it is authentic.
        let over = ring.seal(
            VERIFY_EMAIL,
            &Claims {
                email: format!("a{}", c.email),
                ..c
            },
        );
        assert!(over.len() > MAX_TOKEN_LEN);
        assert_eq!(
            ring.open(VERIFY_EMAIL, &over, now()),
            Err(TokenError::Malformed)
        );
        // The shortest body the decoder takes: nonce, tag and the fixed
        // fields, nothing after them (no code seals an empty address, but
        // the bound is exact).
        let empty = Claims {
            email: String::new(),
            ..claims(now())
        };
        let shortest = ring.seal(VERIFY_EMAIL, &empty);
        let body = URL_SAFE_NO_PAD
            .decode(shortest.rsplit_once('.').unwrap().1)
            .unwrap();
        assert_eq!(body.len(), NONCE_LEN + TAG_LEN + FIXED_LEN);
        assert_eq!(ring.open(VERIFY_EMAIL, &shortest, now()), Ok(empty));
    }

    /// A v1 token as the previous release sealed it (no binding field).
    fn seal_v1(ring: &KeyRing, purpose: &str, c: &Claims) -> String {
        let (kid, cipher) = &ring.keys[0];
        let mut plain = Vec::new();
        plain.extend_from_slice(c.user_id.as_bytes());
        plain.extend_from_slice(&c.epoch.to_be_bytes());
        plain.extend_from_slice(&c.issued_at.timestamp().to_be_bytes());
        plain.extend_from_slice(&c.expires_at.timestamp().to_be_bytes());
        plain.extend_from_slice(c.email.as_bytes());
        let nonce = Nonce::generate();
        let payload = Payload {
            msg: &plain,
            aad: purpose.as_bytes(),
        };
        let mut out = nonce.to_vec();
        out.extend_from_slice(&cipher.encrypt(&nonce, payload).unwrap());
        format!("v1.{kid}.{}", URL_SAFE_NO_PAD.encode(out))
    }

    #[test]
    fn links_mailed_before_the_binding_still_open_unbound() {
        let ring = KeyRing::ephemeral();
        let c = claims(now());
        let old = seal_v1(&ring, VERIFY_EMAIL, &c);
        let opened = ring.open(VERIFY_EMAIL, &old, now()).unwrap();
        assert_eq!(
            opened,
            Claims {
                binding: None,
                ..c.clone()
            }
        );
        // A v1 body under a v2 label is not a token.
        let relabelled = old.replacen("v1.", "v2.", 1);
        assert!(ring.open(VERIFY_EMAIL, &relabelled, now()).is_err());
        // An unbound v2 token opens without a binding.
        let unbound = Claims { binding: None, ..c };
        let t = ring.seal(VERIFY_EMAIL, &unbound);
        assert_eq!(ring.open(VERIFY_EMAIL, &t, now()).unwrap().binding, None);
    }

    #[test]
    fn retired_keys_still_open_while_in_the_ring() {
        let old = generate_key_spec("2026a");
        let new = generate_key_spec("2026b");
        let before = KeyRing::parse(&old).unwrap();
        let token = before.seal(VERIFY_EMAIL, &claims(now()));
        let after = KeyRing::parse(&format!("{new},{old}")).unwrap();
        assert_eq!(after.current_kid(), "2026b");
        assert!(after.open(VERIFY_EMAIL, &token, now()).is_ok());
        assert!(
            after
                .seal(VERIFY_EMAIL, &claims(now()))
                .starts_with("v2.2026b.")
        );
        let dropped = KeyRing::parse(&new).unwrap();
        assert_eq!(
            dropped.open(VERIFY_EMAIL, &token, now()),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn keyed_hashes_check_under_any_key_of_the_ring_and_nothing_else() {
        let old = generate_key_spec("a");
        let new = generate_key_spec("b");
        let before = KeyRing::parse(&old).unwrap();
        let tag = before.mac(VERIFY_CODE, b"user|3|123456");
        assert_eq!(tag.len(), 32);
        let rotated = KeyRing::parse(&format!("{new},{old}")).unwrap();
        assert!(rotated.mac_matches(VERIFY_CODE, b"user|3|123456", &tag));
        assert!(!rotated.mac_matches(VERIFY_CODE, b"user|3|123457", &tag));
        assert!(!rotated.mac_matches("other/v1", b"user|3|123456", &tag));
        assert!(
            !KeyRing::parse(&new)
                .unwrap()
                .mac_matches(VERIFY_CODE, b"user|3|123456", &tag)
        );
        assert!(!rotated.mac_matches(VERIFY_CODE, b"user|3|123456", &tag[..31]));
    }

    #[test]
    fn key_ring_errors_are_specific() {
        assert_eq!(KeyRing::parse("").unwrap_err(), KeyRingError::Empty);
        assert_eq!(
            KeyRing::parse("nocolon").unwrap_err(),
            KeyRingError::Entry(1)
        );
        assert!(matches!(
            KeyRing::parse("a.b:AAAA").unwrap_err(),
            KeyRingError::KeyId(_)
        ));
        assert!(matches!(
            KeyRing::parse("k:AAAA").unwrap_err(),
            KeyRingError::Key(_)
        ));
        let k = generate_key_spec("k");
        assert!(matches!(
            KeyRing::parse(&format!("{k},{k}")).unwrap_err(),
            KeyRingError::Duplicate(_)
        ));
        // Debug never shows key material, only the key ids.
        let ring = KeyRing::parse(&k).unwrap();
        let shown = format!("{ring:?}");
        assert!(!shown.contains(k.split(':').nth(1).unwrap()));
        assert!(shown.contains("kids: [\"k\"]"), "{shown}");
    }
}
