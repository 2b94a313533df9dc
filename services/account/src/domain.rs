//! Input types that can only hold valid values: parse at the edge, never re-check.

/// A trimmed, syntactically valid e-mail address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

/// A field-level input error: which field, and what is wrong, for a 422 problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: &'static str,
}

impl Email {
    /// Trims and validates an address.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let err = |message| FieldError {
            field: "email",
            message,
        };
        let email = raw.trim();
        if email.is_empty() {
            return Err(err("is required"));
        }
        if email.len() > 254 {
            return Err(err("is longer than 254 characters"));
        }
        if email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        {
            return Err(err("is not a valid e-mail address"));
        }
        if !email_address::EmailAddress::is_valid(email) {
            return Err(err("is not a valid e-mail address"));
        }
        Ok(Self(email.to_owned()))
    }

    /// The address as the user typed it (trimmed).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The uniqueness key: the address in lower case.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
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

impl Password {
    /// Checks a new password against the policy.
    pub fn parse_new(raw: String) -> Result<Self, FieldError> {
        let err = |message| FieldError {
            field: "password",
            message,
        };
        let n = raw.chars().count();
        if n < PASSWORD_MIN_CHARS {
            return Err(err("must be at least 8 characters"));
        }
        if n > PASSWORD_MAX_CHARS || raw.len() > 4 * PASSWORD_MAX_CHARS {
            return Err(err("must be at most 128 characters"));
        }
        if raw.trim().is_empty() {
            return Err(err("must not be only spaces"));
        }
        Ok(Self(raw))
    }

    /// A password typed at login: only bounded, so a policy change never locks anyone out.
    pub fn parse_login(raw: String) -> Result<Self, FieldError> {
        if raw.is_empty() {
            return Err(FieldError {
                field: "password",
                message: "is required",
            });
        }
        if raw.len() > 4 * PASSWORD_MAX_CHARS {
            return Err(FieldError {
                field: "password",
                message: "must be at most 128 characters",
            });
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
        assert_eq!(e.as_str(), "Kim.MinSu@Example.COM");
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
