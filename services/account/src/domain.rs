//! Input types that can only hold valid values: parse at the edge, never re-check.

/// A trimmed, syntactically valid, deliverable-as-ASCII e-mail address: the
/// local part is ASCII (almost no provider, Naver included, accepts SMTPUTF8
/// mailboxes) and the domain is in its IDNA ASCII form, so two look-alike
/// spellings of one address (`\u{212A}im@` and `kim@`) cannot be two
/// accounts, nor one account's mail go to the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

/// A field-level input error for a 422: which field, what is wrong in
/// English (the API), and the key of the same sentence in the pages'
/// translations (`i18n/*.json`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: &'static str,
    pub key: &'static str,
}

impl FieldError {
    /// The field is missing or empty.
    pub fn required(field: &'static str) -> Self {
        Self {
            field,
            message: "is required",
            key: "err_required",
        }
    }
}

impl Email {
    /// Trims and validates an address.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let err = |message, key| FieldError {
            field: "email",
            message,
            key,
        };
        let invalid = || err("is not a valid e-mail address", "err_email_invalid");
        let email = raw.trim();
        if email.is_empty() {
            return Err(FieldError::required("email"));
        }
        if email.len() > 254 {
            return Err(err("is longer than 254 characters", "err_email_too_long"));
        }
        if email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        {
            return Err(invalid());
        }
        let Some((local, domain)) = email.rsplit_once('@') else {
            return Err(invalid());
        };
        if !local.is_ascii() {
            return Err(err(
                "must have an ASCII part before the @",
                "err_email_ascii",
            ));
        }
        // UTS 46 processing as browsers and resolvers do: 한국.kr becomes
        // xn--3e0b707e.kr, and compatibility forms fold to their letters.
        let domain = idna::domain_to_ascii(domain).map_err(|_| invalid())?;
        let email = format!("{local}@{domain}");
        if email.len() > 254 {
            return Err(err("is longer than 254 characters", "err_email_too_long"));
        }
        if !email_address::EmailAddress::is_valid(&email) || domain.is_empty() {
            return Err(invalid());
        }
        Ok(Self(email))
    }

    /// An address read back from the database: it was parsed on the way in
    /// (or before this parser's rules, so it is not parsed again).
    pub fn stored(address: String) -> Self {
        Self(address)
    }

    /// The address to mail: the local part as typed, the domain in ASCII.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The uniqueness key: the address in ASCII lower case.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

/// A password that meets the policy: 8 to 128 characters.
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Longest password accepted, in characters (bounds hashing work and memory).
pub const PASSWORD_MAX_CHARS: usize = 128;
/// Shortest password accepted, in characters.
pub const PASSWORD_MIN_CHARS: usize = 8;

fn too_long() -> FieldError {
    FieldError {
        field: "password",
        message: "must be at most 128 characters",
        key: "err_password_too_long",
    }
}

impl Password {
    /// Checks a new password against the policy.
    pub fn parse_new(raw: String) -> Result<Self, FieldError> {
        let err = |message, key| FieldError {
            field: "password",
            message,
            key,
        };
        let n = raw.chars().count();
        if n < PASSWORD_MIN_CHARS {
            return Err(err(
                "must be at least 8 characters",
                "err_password_too_short",
            ));
        }
        if n > PASSWORD_MAX_CHARS || raw.len() > 4 * PASSWORD_MAX_CHARS {
            return Err(too_long());
        }
        if raw.trim().is_empty() {
            return Err(err("must not be only spaces", "err_password_blank"));
        }
        Ok(Self(raw))
    }

    /// A password typed at login: only bounded, so a policy change never locks anyone out.
    pub fn parse_login(raw: String) -> Result<Self, FieldError> {
        if raw.is_empty() {
            return Err(FieldError::required("password"));
        }
        if raw.len() > 4 * PASSWORD_MAX_CHARS {
            return Err(too_long());
        }
        Ok(Self(raw))
    }

    /// The bytes to hash.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_checked() {
        let e = Email::parse("  Kim.MinSu@Example.COM \n").unwrap();
        // The local part as typed, the domain in its (lower-case) ASCII form.
        assert_eq!(e.as_str(), "Kim.MinSu@example.com");
        assert_eq!(e.key(), "kim.minsu@example.com");
        for bad in [
            "",
            "   ",
            "no-at-sign",
            "a@",
            "@b.c",
            "a b@c.d",
            "A <a@b.c>",
            "a@b.c\r\nBcc: x@y.z",
        ] {
            assert_eq!(Email::parse(bad).unwrap_err().field, "email", "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn look_alike_addresses_never_share_a_key_with_another_mailbox() {
        // The Kelvin sign lower-cases to "k": once it made a second key for
        // kim@example.com's row. A non-ASCII local part is refused.
        let kelvin = Email::parse("\u{212A}im@example.com").unwrap_err();
        assert_eq!((kelvin.field, kelvin.key), ("email", "err_email_ascii"));
        assert!(Email::parse("김민수@example.com").is_err());
        assert!(Email::parse("ﬀ@example.com").is_err(), "a ligature");
        // Domains go to their IDNA ASCII form: one mailbox, one key.
        let idn = Email::parse("Kim@한국.KR").unwrap();
        assert_eq!(idn.as_str(), "Kim@xn--3e0b707e.kr");
        assert_eq!(idn.key(), "kim@xn--3e0b707e.kr");
        assert_eq!(
            Email::parse("kim@xn--3e0b707e.kr").unwrap().key(),
            idn.key()
        );
        // A compatibility form in the domain folds to the same name DNS resolves.
        assert_eq!(
            Email::parse("kim@EXAMPLE.\u{212A}R").unwrap().key(),
            "kim@example.kr"
        );
        // Distinct mailboxes keep distinct keys.
        assert_ne!(
            Email::parse("kim@example.com").unwrap().key(),
            Email::parse("kim.@example.com")
                .map(|e| e.key())
                .unwrap_or_default()
        );
        assert!(Email::parse("a@bad..domain").is_err());
        assert!(Email::parse("a@xn--").is_err());
    }

    #[test]
    fn password_policy() {
        assert!(Password::parse_new("short".into()).is_err());
        assert!(Password::parse_new("        ".into()).is_err());
        assert!(Password::parse_new("비밀번호는여덟자".into()).is_ok());
        assert!(Password::parse_new("x".repeat(128)).is_ok());
        assert!(Password::parse_new("x".repeat(129)).is_err());
        assert!(Password::parse_login("short".into()).is_ok());
        assert_eq!(
            format!("{:?}", Password::parse_login("secret".into()).unwrap()),
            "Password(***)"
        );
    }
}
