//! The mails the account service sends, as `mail.send` envelopes: each
//! link's token sealed here, its URL built on `ACCOUNT_PUBLIC_URL`. The
//! account operations decide *when* to send; this module knows *what*.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use shared::envelope::{
    AccountExistsData, TEMPLATE_ACCOUNT_EXISTS, TEMPLATE_VERIFY_EMAIL, VerifyEmailData,
};
use shared::{MailSend, Recipient};
use uuid::Uuid;

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

    /// The verification mail: a link that verifies `email` for `user_id` at
    /// `epoch` and signs in, valid for `ACCOUNT_TOKEN_TTL`, bound to the
    /// browser whose binding cookie hashes to `binding` (if any).
    pub fn verification(
        &self,
        user_id: Uuid,
        email: &str,
        epoch: i32,
        lang: Lang,
        binding: Option<[u8; BINDING_LEN]>,
    ) -> MailSend {
        let issued_at = now_s();
        let expires_at = issued_at
            + chrono::Duration::from_std(self.settings.token_ttl)
                .unwrap_or(chrono::Duration::hours(24));
        let token = self.keys.seal(
            token::VERIFY_EMAIL,
            &Claims {
                user_id,
                email: email.to_owned(),
                epoch,
                issued_at,
                expires_at,
                binding,
            },
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
}
