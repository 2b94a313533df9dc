//! The six-digit code in every verification mail: the same proof as the
//! link, for people whose link was mangled or used up by a mail scanner,
//! and for apps where typing is easier than clicking. The database keeps
//! only a keyed hash (HMAC under the token key ring) of user and code, so a
//! dump gives nothing to try; a wrong guess costs one of five tries; the
//! code dies with its link (a newer mail replaces it, and a verification
//! by either leaves nothing to verify).

use uuid::Uuid;

use crate::token::{KeyRing, VERIFY_CODE};

/// Wrong guesses an address gets before its code is dead.
pub const MAX_ATTEMPTS: i32 = 5;

/// Wrong guesses an address gets in all, over every code it is sent, before
/// the code path is closed to it until it is verified (the link still
/// works). New mails bring new codes; this does not start again.
pub const MAX_WRONG_IN_ALL: i32 = 10;

/// Six ASCII digits. Never logged, never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Code(String);

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Code(***)")
    }
}

impl Code {
    /// A fresh code, uniform over 000000..=999999.
    pub fn generate() -> Self {
        // Rejection sampling: 4_294_000_000 is the largest multiple of a
        // million below 2^32, so every code is equally likely.
        loop {
            let mut b = [0u8; 4];
            getrandom::fill(&mut b).expect("the OS random source works");
            let n = u32::from_le_bytes(b);
            if n < 4_294_000_000 {
                return Self(format!("{:06}", n % 1_000_000));
            }
        }
    }

    /// A code as typed: spaces and dashes are ignored ("123 456").
    pub fn parse(raw: &str) -> Option<Self> {
        let digits: String = raw.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        (digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(Self(digits))
    }

    /// The digits, for the mail.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn message(&self, user_id: Uuid) -> Vec<u8> {
        let mut m = Vec::with_capacity(16 + 6);
        m.extend_from_slice(user_id.as_bytes());
        m.extend_from_slice(self.0.as_bytes());
        m
    }

    /// What the database keeps: the keyed hash for `user_id`.
    pub fn hash(&self, keys: &KeyRing, user_id: Uuid) -> Vec<u8> {
        keys.mac(VERIFY_CODE, &self.message(user_id))
    }

    /// Whether this is `user_id`'s code whose hash is `stored` (constant time).
    pub fn matches(&self, keys: &KeyRing, user_id: Uuid, stored: &[u8]) -> bool {
        keys.mac_matches(VERIFY_CODE, &self.message(user_id), stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_parsed_leniently_and_bound_to_their_user() {
        let c = Code::generate();
        assert_eq!(c.as_str().len(), 6);
        assert!(c.as_str().bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(format!("{c:?}"), "Code(***)");
        assert_eq!(Code::parse("123 456"), Code::parse("123-456"));
        for bad in ["12345", "1234567", "12a456", "", "１２３４５６"] {
            assert!(Code::parse(bad).is_none(), "{bad}");
        }
        let keys = KeyRing::ephemeral();
        let user = Uuid::new_v4();
        let code = Code::parse("000042").unwrap();
        let stored = code.hash(&keys, user);
        assert!(code.matches(&keys, user, &stored));
        assert!(
            !code.matches(&keys, Uuid::new_v4(), &stored),
            "another user"
        );
        let other = Code::parse("000043").unwrap();
        assert!(!other.matches(&keys, user, &stored));
        // The hash says nothing without the key.
        assert!(!code.matches(&KeyRing::ephemeral(), user, &stored));
    }

    #[test]
    fn generated_codes_spread_over_the_whole_range() {
        let mut first_digits = [0u32; 10];
        for _ in 0..2000 {
            let d = Code::generate().as_str().as_bytes()[0] - b'0';
            first_digits[d as usize] += 1;
        }
        // Each leading digit about 200 times; a stuck or biased generator fails.
        assert!(
            first_digits.iter().all(|&n| (100..=320).contains(&n)),
            "{first_digits:?}"
        );
    }
}
