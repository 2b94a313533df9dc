//! The account operations behind both the JSON API and the pages. They take
//! parsed domain values and answer with domain results; the routes turn
//! those into HTTP.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use crate::config::Settings;
use crate::db::DbPool;
use crate::domain::{Email, Password};
use crate::i18n::Lang;
use crate::mails::Mails;
use crate::outbox::{self, Relay};
use crate::password::{HashError, Hasher};
use crate::schema::users;
use crate::sessions::{self, SessionToken, SessionUser};
use crate::token::{self, KeyRing, TokenError};

/// Why an account operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("invalid e-mail address or password")]
    BadCredentials,
    #[error("the e-mail address is not verified yet")]
    NotVerified,
    #[error("not signed in")]
    NoSession,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the link was already used or replaced by a newer one")]
    TokenUsed { email: String },
    #[error("a backing service is unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<diesel::result::Error> for AccountError {
    fn from(e: diesel::result::Error) -> Self {
        if crate::db::is_unavailable(&e) {
            return Self::Unavailable(e.into());
        }
        Self::Internal(e.into())
    }
}

impl From<deadpool::managed::PoolError<diesel_async::pooled_connection::PoolError>>
    for AccountError
{
    fn from(e: deadpool::managed::PoolError<diesel_async::pooled_connection::PoolError>) -> Self {
        Self::Unavailable(e.into())
    }
}

impl From<HashError> for AccountError {
    fn from(e: HashError) -> Self {
        Self::Internal(e.into())
    }
}

impl AccountError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadCredentials => "bad-credentials",
            Self::NotVerified => "not-verified",
            Self::NoSession => "no-session",
            Self::Token(TokenError::Expired(_)) => "token-expired",
            Self::Token(_) => "token-invalid",
            Self::TokenUsed { .. } => "token-used",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

/// What a sign-up did (for metrics only: the caller's answer is always the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignupOutcome {
    Created,
    Renewed,
    AlreadyVerified,
}

impl SignupOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Renewed => "renewed",
            Self::AlreadyVerified => "exists",
        }
    }
}

/// The columns of a user the operations work on.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
struct UserState {
    id: Uuid,
    email: String,
    email_key: String,
    password_hash: String,
    verified_at: Option<DateTime<Utc>>,
    verify_epoch: i32,
    verification_sent_at: Option<DateTime<Utc>>,
}

/// The account operations and what they need.
#[derive(Clone)]
pub struct Accounts {
    pool: DbPool,
    hasher: Hasher,
    keys: KeyRing,
    mails: Mails,
    relay: Relay,
    settings: Arc<Settings>,
}

impl Accounts {
    /// The operations over `pool`, hashing with `hasher`, sealing and opening
    /// links with `keys`, handing mail to `relay`.
    pub fn new(
        pool: DbPool,
        hasher: Hasher,
        keys: KeyRing,
        relay: Relay,
        settings: Arc<Settings>,
    ) -> Self {
        Self {
            mails: Mails::new(keys.clone(), settings.clone()),
            pool,
            hasher,
            keys,
            relay,
            settings,
        }
    }

    /// Registers an address, or mails the owner of an existing one. The caller answers 202 either way.
    pub async fn signup(
        &self,
        email: Email,
        password: Password,
        lang: Lang,
    ) -> Result<SignupOutcome, AccountError> {
        // Hash before taking a connection: the pool is not held during the slow part,
        // and existing and new addresses cost the same.
        let hash = self.hasher.hash(password).await?;
        let mut conn = self.pool.get().await?;
        let key = email.key();
        let mails = &self.mails;
        let outcome = conn
            .transaction::<_, AccountError, _>(async |conn| {
                let new_id = Uuid::new_v4();
                let inserted = diesel::insert_into(users::table)
                    .values((
                        users::id.eq(new_id),
                        users::email.eq(email.as_str()),
                        users::email_key.eq(&key),
                        users::password_hash.eq(&hash),
                        users::locale.eq(lang.tag()),
                        users::verification_sent_at.eq(Utc::now()),
                    ))
                    .on_conflict(users::email_key)
                    .do_nothing()
                    .execute(conn)
                    .await?;
                if inserted == 1 {
                    let mail = mails.verification(new_id, email.as_str(), 0, lang);
                    outbox::enqueue(conn, &mail).await?;
                    return Ok(SignupOutcome::Created);
                }
                let user: UserState = users::table
                    .filter(users::email_key.eq(&key))
                    .for_update()
                    .select(UserState::as_select())
                    .first(conn)
                    .await?;
                if user.verified_at.is_some() {
                    outbox::enqueue(conn, &mails.account_exists(&user.email, lang)).await?;
                    return Ok(SignupOutcome::AlreadyVerified);
                }
                // Still unverified: the newest sign-up wins. Its password replaces the
                // old one and the epoch moves on, so links from earlier sign-ups die
                // (they would otherwise sign someone into an account whose password
                // another person chose).
                let epoch = user.verify_epoch + 1;
                diesel::update(users::table.find(user.id))
                    .set((
                        users::password_hash.eq(&hash),
                        users::locale.eq(lang.tag()),
                        users::verify_epoch.eq(epoch),
                        users::verification_sent_at.eq(Utc::now()),
                    ))
                    .execute(conn)
                    .await?;
                let mail = mails.verification(user.id, &user.email, epoch, lang);
                outbox::enqueue(conn, &mail).await?;
                Ok(SignupOutcome::Renewed)
            })
            .await?;
        self.relay.wake();
        metrics::counter!("account_signups_total", "outcome" => outcome.label()).increment(1);
        Ok(outcome)
    }

    /// Sends a fresh verification link to an unverified address, at most once per cooldown.
    /// Returns whether a mail was queued; the caller answers 202 either way.
    pub async fn resend(&self, email: Email, lang: Lang) -> Result<bool, AccountError> {
        let mut conn = self.pool.get().await?;
        let key = email.key();
        let cooldown =
            chrono::Duration::from_std(self.settings.resend_cooldown).unwrap_or_default();
        let mails = &self.mails;
        let sent = conn
            .transaction::<_, AccountError, _>(async |conn| {
                let user: Option<UserState> = users::table
                    .filter(users::email_key.eq(&key))
                    .for_update()
                    .select(UserState::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                let Some(user) = user.filter(|u| u.verified_at.is_none()) else {
                    return Ok(false);
                };
                let now = Utc::now();
                if user
                    .verification_sent_at
                    .is_some_and(|t| now - t < cooldown)
                {
                    return Ok(false);
                }
                diesel::update(users::table.find(user.id))
                    .set(users::verification_sent_at.eq(now))
                    .execute(conn)
                    .await?;
                let mail = mails.verification(user.id, &user.email, user.verify_epoch, lang);
                outbox::enqueue(conn, &mail).await?;
                Ok(true)
            })
            .await?;
        if sent {
            self.relay.wake();
        }
        metrics::counter!("account_resends_total", "sent" => if sent { "yes" } else { "no" })
            .increment(1);
        Ok(sent)
    }

    /// Consumes a verification token: marks the address verified and opens a session.
    pub async fn verify(&self, token: &str) -> Result<(Uuid, SessionToken), AccountError> {
        let result = self.verify_inner(token).await;
        let outcome = match &result {
            Ok(_) => "verified",
            Err(e) => e.label(),
        };
        metrics::counter!("account_verifications_total", "outcome" => outcome).increment(1);
        result
    }

    async fn verify_inner(&self, token: &str) -> Result<(Uuid, SessionToken), AccountError> {
        let claims = self.keys.open(token::VERIFY_EMAIL, token, Utc::now())?;
        let mut conn = self.pool.get().await?;
        let ttl = self.settings.session_ttl;
        conn.transaction::<_, AccountError, _>(async |conn| {
            let user: Option<UserState> = users::table
                .find(claims.user_id)
                .for_update()
                .select(UserState::as_select())
                .first(conn)
                .await
                .optional()?;
            let Some(user) = user else {
                return Err(AccountError::Token(TokenError::Forged));
            };
            if user.email_key != claims.email.to_lowercase() || user.verify_epoch != claims.epoch {
                return Err(AccountError::TokenUsed { email: user.email });
            }
            diesel::update(users::table.find(user.id))
                .set((
                    users::verified_at.eq(user.verified_at.unwrap_or_else(Utc::now)),
                    users::verify_epoch.eq(user.verify_epoch + 1),
                ))
                .execute(conn)
                .await?;
            let session = sessions::create(conn, user.id, ttl).await?;
            Ok((user.id, session))
        })
        .await
    }

    /// Checks a password and opens a session. Unknown addresses cost the same time as known ones.
    pub async fn login(
        &self,
        email: Email,
        password: Password,
    ) -> Result<SessionToken, AccountError> {
        let user: Option<UserState> = {
            let mut conn = self.pool.get().await?;
            users::table
                .filter(users::email_key.eq(email.key()))
                .select(UserState::as_select())
                .first(&mut conn)
                .await
                .optional()?
        };
        let ok = self
            .hasher
            .verify(password, user.as_ref().map(|u| u.password_hash.clone()))
            .await?;
        let outcome = match (&user, ok) {
            (Some(u), true) if u.verified_at.is_some() => "ok",
            (Some(_), true) => "not-verified",
            _ => "bad-credentials",
        };
        metrics::counter!("account_logins_total", "outcome" => outcome).increment(1);
        match (user, ok) {
            (Some(u), true) if u.verified_at.is_some() => {
                let mut conn = self.pool.get().await?;
                Ok(sessions::create(&mut conn, u.id, self.settings.session_ttl).await?)
            }
            (Some(_), true) => Err(AccountError::NotVerified),
            _ => Err(AccountError::BadCredentials),
        }
    }

    /// The user a session token belongs to.
    pub async fn me(&self, session: &str) -> Result<SessionUser, AccountError> {
        let mut conn = self.pool.get().await?;
        sessions::lookup(&mut conn, session)
            .await?
            .ok_or(AccountError::NoSession)
    }

    /// Ends a session (nothing if it did not exist).
    pub async fn logout(&self, session: &str) -> Result<(), AccountError> {
        let mut conn = self.pool.get().await?;
        sessions::delete(&mut conn, session).await?;
        Ok(())
    }
}
