//! The mails the account service sends, as `mail.send` envelopes: each
//! link's token sealed here, its URL built on `ACCOUNT_PUBLIC_URL`. The
//! account operations decide *when* to send; this module knows *what*.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use shared::envelope::{
    AccountDeletedData, AccountExistsData, ConfirmEmailChangeData, EmailChangedData,
    PasswordChangedData, ResetPasswordData, TEMPLATE_ACCOUNT_DELETED, TEMPLATE_ACCOUNT_EXISTS,
    TEMPLATE_CONFIRM_EMAIL_CHANGE, TEMPLATE_EMAIL_CHANGED, TEMPLATE_PASSWORD_CHANGED,
    TEMPLATE_RESET_PASSWORD, TEMPLATE_VERIFY_EMAIL, VerifyEmailData,
};
use shared::{MailSend, Recipient};
use uuid::Uuid;

use crate::code::Code;
use crate::config::Settings;
use crate::i18n::Lang;
use crate::token::{self, BINDING_LEN, Claims, KeyRing};

/// The `source` of every envelope this service publishes.
pub const SOURCE: &str = "account";

/// Now, to the second (tokens carry whole seconds).
pub fn now_s() -> DateTime<Utc> {
    Utc.timestamp_opt(Utc::now().timestamp(), 0)
        .single()
        .unwrap_or_else(Utc::now)
}

/// Builds the service's mails.
#[derive(Clone)]
pub struct Mails {
    keys: KeyRing,
    settings: Arc<Settings>,
}

impl Mails {
    /// Mails sealed with the first key of `keys`, with links on the public URL.
    pub fn new(keys: KeyRing, settings: Arc<Settings>) -> Self {
        Self { keys, settings }
    }

    fn to(email: &str) -> Recipient {
        Recipient {
            email: email.to_owned(),
            name: None,
        }
    }

    /// A link's token for `purpose`, valid for `ttl` from now.
    fn seal(
        &self,
        purpose: &str,
        user_id: Uuid,
        email: &str,
        epoch: i32,
        ttl: std::time::Duration,
        binding: Option<[u8; BINDING_LEN]>,
    ) -> (String, DateTime<Utc>) {
        let issued_at = now_s();
        let expires_at =
            issued_at + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
        let token = self.keys.seal(
            purpose,
            &Claims {
                user_id,
                email: email.to_owned(),
                epoch,
                issued_at,
                expires_at,
                binding,
            },
        );
        (token, expires_at)
    }

    /// The verification mail: a link that verifies `email` for `user_id` at
    /// `epoch` and signs in, valid for `ACCOUNT_TOKEN_TTL`, bound to the
    /// browser whose binding cookie hashes to `binding` (if any), and the
    /// `code` that does the same when typed.
    pub fn verification(
        &self,
        user_id: Uuid,
        email: &str,
        epoch: i32,
        lang: Lang,
        binding: Option<[u8; BINDING_LEN]>,
        code: &Code,
    ) -> MailSend {
        let (token, expires_at) = self.seal(
            token::VERIFY_EMAIL,
            user_id,
            email,
            epoch,
            self.settings.token_ttl,
            binding,
        );
        let verify_url = self
            .settings
            .url(&format!("/verify?token={token}&lang={}", lang.tag()));
        MailSend::template(
            SOURCE,
            Self::to(email),
            lang.tag(),
            TEMPLATE_VERIFY_EMAIL,
            VerifyEmailData {
                verify_url,
                expires_at,
                code: Some(code.as_str().to_owned()),
            },
        )
    }

    /// "You already have an account": sent instead of an error, so a sign-up
    /// never tells whether an address is registered.
    pub fn account_exists(&self, email: &str, lang: Lang) -> MailSend {
        MailSend::template(
            SOURCE,
            Self::to(email),
            lang.tag(),
            TEMPLATE_ACCOUNT_EXISTS,
            AccountExistsData {
                login_url: self.settings.url(&format!("/login?lang={}", lang.tag())),
            },
        )
    }

    /// The password reset mail: a link to the new-password page for
    /// `user_id` at password `epoch`, valid for `ACCOUNT_RESET_TTL`.
    pub fn reset_password(&self, user_id: Uuid, email: &str, epoch: i32, lang: Lang) -> MailSend {
        let (token, expires_at) = self.seal(
            token::RESET_PASSWORD,
            user_id,
            email,
            epoch,
            self.settings.reset_ttl,
            None,
        );
        let reset_url = self.settings.url(&format!(
            "/password/reset?token={token}&lang={}",
            lang.tag()
        ));
        MailSend::template(
            SOURCE,
            Self::to(email),
            lang.tag(),
            TEMPLATE_RESET_PASSWORD,
            ResetPasswordData {
                reset_url,
                expires_at,
            },
        )
    }

    /// "Your password was changed", with the way back in if it was not you.
    pub fn password_changed(&self, email: &str, lang: Lang) -> MailSend {
        MailSend::template(
            SOURCE,
            Self::to(email),
            lang.tag(),
            TEMPLATE_PASSWORD_CHANGED,
            PasswordChangedData {
                changed_at: now_s(),
                forgot_url: self
                    .settings
                    .url(&format!("/password/forgot?lang={}", lang.tag())),
            },
        )
    }

    /// "Your account was deleted".
    pub fn account_deleted(&self, email: &str, lang: Lang) -> MailSend {
        MailSend::template(
            SOURCE,
            Self::to(email),
            lang.tag(),
            TEMPLATE_ACCOUNT_DELETED,
            AccountDeletedData {
                deleted_at: now_s(),
                signup_url: self.settings.url(&format!("/signup?lang={}", lang.tag())),
            },
        )
    }

    /// The mail to a new address: a link that makes it the account's,
    /// sealed with the account's email `epoch`.
    pub fn confirm_email_change(
        &self,
        user_id: Uuid,
        new_email: &str,
        epoch: i32,
        lang: Lang,
    ) -> MailSend {
        let (token, expires_at) = self.seal(
            token::CHANGE_EMAIL,
            user_id,
            new_email,
            epoch,
            self.settings.token_ttl,
            None,
        );
        let confirm_url = self
            .settings
            .url(&format!("/email/confirm?token={token}&lang={}", lang.tag()));
        MailSend::template(
            SOURCE,
            Self::to(new_email),
            lang.tag(),
            TEMPLATE_CONFIRM_EMAIL_CHANGE,
            ConfirmEmailChangeData {
                confirm_url,
                expires_at,
            },
        )
    }

    /// The notice to the old address, naming the new one masked.
    pub fn email_changed(&self, old_email: &str, new_email: &str, lang: Lang) -> MailSend {
        MailSend::template(
            SOURCE,
            Self::to(old_email),
            lang.tag(),
            TEMPLATE_EMAIL_CHANGED,
            EmailChangedData {
                new_email_masked: mask(new_email),
                changed_at: now_s(),
                login_url: self.settings.url(&format!("/login?lang={}", lang.tag())),
            },
        )
    }
}

/// `minsu@example.com` as `m***@example.com`: enough for the owner of the
/// old address to recognise, not enough to hand someone the new one.
pub fn mask(email: &str) -> String {
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_masked_address_keeps_its_first_letter_and_domain() {
        assert_eq!(super::mask("minsu@example.com"), "m***@example.com");
        assert_eq!(super::mask("m@example.com"), "m***@example.com");
        assert_eq!(super::mask("nobody"), "***");
    }
}
