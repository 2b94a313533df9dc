//! The account operations behind both the JSON API and the pages. They take
//! parsed domain values and answer with domain results; the routes turn
//! those into HTTP.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use shared::{AccountEvent, AccountEventType};
use uuid::Uuid;

use crate::code::{self, Code};
use crate::config::Settings;
use crate::db::DbPool;
use crate::domain::{Email, Password};
use crate::i18n::Lang;
use crate::mails::Mails;
use crate::outbox::{self, Relay};
use crate::password::{HashError, Hasher, StillThere};
use crate::schema::users;
use crate::sessions::{self, SessionInfo, SessionToken, SessionUser};
use crate::token::{self, BINDING_LEN, Claims, KeyRing, TokenError};

/// The browser an operation runs for: its session cookie, its link-binding
/// cookie, its user agent (kept with a new session, to show the person),
/// and whether its client is still connected (work for a client that left
/// is skipped).
#[derive(Clone, Default)]
pub struct Client {
    pub session: Option<String>,
    /// The binding cookie a sign-up set on this browser (see `binding`).
    pub binding: Option<String>,
    pub user_agent: Option<String>,
    pub still_there: Option<StillThere>,
}

/// What a verification did.
#[derive(Debug)]
pub struct Verified {
    pub user_id: Uuid,
    /// The address now verified.
    pub email: String,
    /// The new session, unless the browser was signed in as someone else.
    pub session: Option<SessionToken>,
    /// The address of the other user this browser stays signed in as.
    pub kept_session_of: Option<String>,
}

/// Why an account operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("invalid e-mail address or password")]
    BadCredentials,
    #[error("not signed in")]
    NoSession,
    #[error("no such resource")]
    NotFound,
    #[error("the code is wrong, expired or was tried too often")]
    CodeInvalid,
    #[error("the address belongs to another account")]
    EmailTaken,
    #[error("too much password work queued")]
    Busy(std::time::Duration),
    #[error("the client left before the work started")]
    Abandoned,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the link or code was already used, or a newer mail replaced it")]
    TokenUsed { email: String },
    /// A verification from a browser other than the sign-up's, without the
    /// sign-up's password (`wrong`: with another one). Nothing changed: the
    /// link or code stays good.
    #[error(
        "this browser did not sign up for the account: the password chosen at sign-up is needed"
    )]
    PasswordNeeded { wrong: bool },
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
        match e {
            HashError::Busy(wait) => Self::Busy(wait),
            HashError::Abandoned => Self::Abandoned,
            e @ HashError::Failed(_) => Self::Internal(e.into()),
        }
    }
}

impl AccountError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadCredentials => "bad-credentials",
            Self::NoSession => "no-session",
            Self::NotFound => "not-found",
            Self::CodeInvalid => "code-invalid",
            Self::EmailTaken => "email-taken",
            Self::Busy(_) => "busy",
            Self::Abandoned => "abandoned",
            Self::Token(TokenError::Expired(_)) => "token-expired",
            Self::Token(_) => "token-invalid",
            Self::TokenUsed { .. } => "token-used",
            Self::PasswordNeeded { wrong: false } => "password-needed",
            Self::PasswordNeeded { wrong: true } => "password-wrong",
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
    locale: String,
    verified_at: Option<DateTime<Utc>>,
    verify_epoch: i32,
    verification_sent_at: Option<DateTime<Utc>>,
    password_epoch: i32,
    email_epoch: i32,
    verify_code_hash: Option<Vec<u8>>,
    verify_code_attempts: i32,
    verify_binding: Option<Vec<u8>>,
    verify_code_wrong_total: i32,
}

impl UserState {
    /// The binding of the browser whose sign-up chose the pending password.
    fn binding(&self) -> Option<[u8; BINDING_LEN]> {
        self.verify_binding.as_deref()?.try_into().ok()
    }

    /// Whether `client` is the browser whose sign-up chose the pending
    /// password (it holds that sign-up's binding cookie).
    fn signed_up_in(&self, client: &Client) -> bool {
        crate::binding::matches(client.binding.as_deref(), self.binding().as_ref())
    }
}

/// An account event about `user` (its address and language as stored).
fn event(kind: AccountEventType, user: &UserState) -> AccountEvent {
    AccountEvent::new(kind, user.id, &user.email, &user.locale)
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

    /// Registers an address, or mails the owner of an existing one. The
    /// caller answers 202 either way. The link is bound to `binding`.
    pub async fn signup(
        &self,
        email: Email,
        password: Password,
        lang: Lang,
        binding: Option<[u8; BINDING_LEN]>,
        client: &Client,
    ) -> Result<SignupOutcome, AccountError> {
        // Hash before taking a connection: the pool is not held during the slow part,
        // and existing and new addresses cost the same.
        let hash = self
            .hasher
            .hash(password, client.still_there.clone())
            .await?;
        let mut conn = self.pool.get().await?;
        let key = email.key();
        let mails = &self.mails;
        let keys = &self.keys;
        let outcome = conn
            .transaction::<_, AccountError, _>(async |conn| {
                let new_id = Uuid::new_v4();
                let code = Code::generate();
                let inserted = diesel::insert_into(users::table)
                    .values((
                        users::id.eq(new_id),
                        users::email.eq(email.as_str()),
                        users::email_key.eq(&key),
                        users::password_hash.eq(&hash),
                        users::locale.eq(lang.tag()),
                        users::verification_sent_at.eq(Utc::now()),
                        users::verify_code_hash.eq(code.hash(keys, new_id)),
                        users::verify_binding.eq(binding.map(|b| b.to_vec())),
                    ))
                    .on_conflict(users::email_key)
                    .do_nothing()
                    .execute(conn)
                    .await?;
                if inserted == 1 {
                    let mail = mails.verification(new_id, email.as_str(), 0, lang, binding, &code);
                    outbox::enqueue(conn, &mail, new_id).await?;
                    let created = AccountEvent::new(
                        AccountEventType::Created,
                        new_id,
                        email.as_str(),
                        lang.tag(),
                    );
                    outbox::record(conn, &created).await?;
                    return Ok(SignupOutcome::Created);
                }
                let user = Self::lock_by_key(conn, &key).await?;
                let Some(user) = user else {
                    // Deleted between the insert and the read: the next try inserts.
                    return Err(AccountError::Unavailable(anyhow::anyhow!(
                        "the address changed hands during the sign-up"
                    )));
                };
                if user.verified_at.is_some() {
                    let mail = mails.account_exists(&user.email, lang);
                    outbox::enqueue(conn, &mail, user.id).await?;
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
                        // This browser chose the password now: only it
                        // verifies without typing it.
                        users::verify_binding.eq(binding.map(|b| b.to_vec())),
                    ))
                    .execute(conn)
                    .await?;
                let code = Self::new_code(conn, keys, user.id).await?;
                let mail = mails.verification(user.id, &user.email, epoch, lang, binding, &code);
                outbox::enqueue(conn, &mail, user.id).await?;
                Ok(SignupOutcome::Renewed)
            })
            .await?;
        self.relay.wake();
        metrics::counter!("account_signups_total", "outcome" => outcome.label()).increment(1);
        Ok(outcome)
    }

    /// A fresh code for `user_id`'s next verification mail: its keyed hash
    /// replaces the last one, its tries start again.
    async fn new_code(
        conn: &mut diesel_async::AsyncPgConnection,
        keys: &KeyRing,
        user_id: Uuid,
    ) -> Result<Code, AccountError> {
        let code = Code::generate();
        diesel::update(users::table.find(user_id))
            .set((
                users::verify_code_hash.eq(code.hash(keys, user_id)),
                users::verify_code_attempts.eq(0),
            ))
            .execute(conn)
            .await?;
        Ok(code)
    }

    /// The user with `key`, locked for the transaction.
    async fn lock_by_key(
        conn: &mut diesel_async::AsyncPgConnection,
        key: &str,
    ) -> Result<Option<UserState>, AccountError> {
        Ok(users::table
            .filter(users::email_key.eq(key))
            .for_update()
            .select(UserState::as_select())
            .first(conn)
            .await
            .optional()?)
    }

    /// Sends a fresh verification link to an unverified address, at most once per cooldown.
    /// Returns whether a mail was queued; the caller answers 202 either way.
    /// The link is bound to the sign-up's browser, not to the one asking:
    /// asking proves nothing about the password.
    pub async fn resend(&self, email: Email, lang: Lang) -> Result<bool, AccountError> {
        self.resend_key(&email.key(), Some(lang)).await
    }

    /// The resend behind [`Self::resend`] and a login with an unverified
    /// address; `lang` `None` mails in the account's own language.
    async fn resend_key(&self, key: &str, lang: Option<Lang>) -> Result<bool, AccountError> {
        let mut conn = self.pool.get().await?;
        let cooldown =
            chrono::Duration::from_std(self.settings.resend_cooldown).unwrap_or_default();
        let mails = &self.mails;
        let sent = conn
            .transaction::<_, AccountError, _>(async |conn| {
                let user = Self::lock_by_key(conn, key).await?;
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
                let lang = lang
                    .or_else(|| Lang::from_tag(&user.locale))
                    .unwrap_or(self.settings.default_locale);
                let code = Self::new_code(conn, &self.keys, user.id).await?;
                let mail = mails.verification(
                    user.id,
                    &user.email,
                    user.verify_epoch,
                    lang,
                    user.binding(),
                    &code,
                );
                outbox::enqueue(conn, &mail, user.id).await?;
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

    /// What a reset link says, if it opens (no database read).
    pub fn reset_claims(&self, token: &str) -> Result<Claims, AccountError> {
        Ok(self.keys.open(token::RESET_PASSWORD, token, Utc::now())?)
    }

    /// What a verification link says, if it opens (no database read).
    pub fn verification_claims(&self, token: &str) -> Result<Claims, AccountError> {
        Ok(self.keys.open(token::VERIFY_EMAIL, token, Utc::now())?)
    }

    /// Opens a verification link and checks it is still the live one,
    /// changing nothing (what a page shows before the person confirms).
    pub async fn inspect_verification(&self, token: &str) -> Result<Claims, AccountError> {
        Ok(self
            .inspect_verification_by(token, &Client::default())
            .await?
            .0)
    }

    /// [`Self::inspect_verification`], and whether `client` is the browser
    /// whose sign-up chose the password (the one the link alone verifies
    /// for; by the binding stored with the account, as `verify` decides).
    pub async fn inspect_verification_by(
        &self,
        token: &str,
        client: &Client,
    ) -> Result<(Claims, bool), AccountError> {
        let claims = self.keys.open(token::VERIFY_EMAIL, token, Utc::now())?;
        let mut conn = self.pool.get().await?;
        let user: Option<UserState> = users::table
            .find(claims.user_id)
            .select(UserState::as_select())
            .first(&mut conn)
            .await
            .optional()?;
        let user = Self::check_verification(user, &claims)?;
        let signed_up_here = user.signed_up_in(client);
        Ok((claims, signed_up_here))
    }

    /// The account a verification link is for, if the link is its live one.
    fn check_verification(
        user: Option<UserState>,
        claims: &Claims,
    ) -> Result<UserState, AccountError> {
        match user {
            None => Err(AccountError::Token(TokenError::Forged)),
            Some(u)
                if u.email_key != claims.email.to_ascii_lowercase()
                    || u.verify_epoch != claims.epoch =>
            {
                Err(AccountError::TokenUsed { email: u.email })
            }
            Some(u) => Ok(u),
        }
    }

    /// Consumes a verification token: marks the address verified and opens a
    /// session, unless the browser holds a live session of another user,
    /// which it keeps (a link someone else sent must not swap the account a
    /// person is signed in to). Only the browser whose sign-up chose the
    /// password verifies with the link alone; anywhere else `password`
    /// must be that password, or nothing happens (`PasswordNeeded`): a
    /// stranger who signed up someone else's address cannot have it
    /// verified with the stranger's password by its owner's click.
    pub async fn verify(
        &self,
        token: &str,
        password: Option<Password>,
        client: &Client,
    ) -> Result<Verified, AccountError> {
        let result = self.verify_inner(token, password, client).await;
        let outcome = match &result {
            Ok(_) => "verified",
            Err(e) => e.label(),
        };
        metrics::counter!("account_verifications_total", "outcome" => outcome).increment(1);
        result
    }

    async fn verify_inner(
        &self,
        token: &str,
        password: Option<Password>,
        client: &Client,
    ) -> Result<Verified, AccountError> {
        let claims = self.keys.open(token::VERIFY_EMAIL, token, Utc::now())?;
        // The password check (slow) runs before the transaction, so no row
        // lock waits on it; the epoch check inside catches a sign-up that
        // replaced the password meanwhile.
        let user: Option<UserState> = users::table
            .find(claims.user_id)
            .select(UserState::as_select())
            .first(&mut self.pool.get().await?)
            .await
            .optional()?;
        let user = Self::check_verification(user, &claims)?;
        if !user.signed_up_in(client) {
            let Some(password) = password else {
                return Err(AccountError::PasswordNeeded { wrong: false });
            };
            let hash = Some(user.password_hash.clone());
            if !self
                .hasher
                .verify(password, hash, client.still_there.clone())
                .await?
            {
                return Err(AccountError::PasswordNeeded { wrong: true });
            }
        }
        let mut conn = self.pool.get().await?;
        let settings = &self.settings;
        conn.transaction::<_, AccountError, _>(async |conn| {
            let locked = Self::lock(conn, claims.user_id).await?;
            let locked = Self::check_verification(locked, &claims)?;
            if locked.password_hash != user.password_hash {
                return Err(AccountError::TokenUsed {
                    email: locked.email,
                });
            }
            Self::mark_verified(conn, &locked, client, settings).await
        })
        .await
    }

    /// Marks `user` verified (a link or a code proved the address: both
    /// die), and opens a session for the browser unless it is signed in as
    /// someone else.
    async fn mark_verified(
        conn: &mut diesel_async::AsyncPgConnection,
        user: &UserState,
        client: &Client,
        settings: &Settings,
    ) -> Result<Verified, AccountError> {
        diesel::update(users::table.find(user.id))
            .set((
                users::verified_at.eq(user.verified_at.unwrap_or_else(Utc::now)),
                users::verify_epoch.eq(user.verify_epoch + 1),
            ))
            .execute(conn)
            .await?;
        if user.verified_at.is_none() {
            outbox::record(conn, &event(AccountEventType::Verified, user)).await?;
        }
        let current = match &client.session {
            Some(s) => sessions::lookup(conn, s, settings.session_idle_ttl).await?,
            None => None,
        };
        if let Some(other) = current.filter(|c| c.id != user.id) {
            return Ok(Verified {
                user_id: user.id,
                email: user.email.clone(),
                session: None,
                kept_session_of: Some(other.email),
            });
        }
        let session = Self::rotate(conn, user.id, settings, client).await?;
        Ok(Verified {
            user_id: user.id,
            email: user.email.clone(),
            session: Some(session),
            kept_session_of: None,
        })
    }

    /// Verifies an address by the code of its newest verification mail,
    /// like the link (same session rules, same password rule: outside the
    /// sign-up's browser `password` must be the sign-up's). Unknown
    /// addresses, wrong codes and dead codes (five wrong tries, a newer
    /// mail) all answer `CodeInvalid`; only the right code of a used mail
    /// says `TokenUsed`. A right code without the password it needs stays
    /// good and counts no try.
    pub async fn verify_code(
        &self,
        email: Email,
        code: &str,
        password: Option<Password>,
        client: &Client,
    ) -> Result<Verified, AccountError> {
        let result = self.verify_code_inner(email, code, password, client).await;
        let outcome = match &result {
            Ok(_) => "verified-by-code",
            Err(e) => e.label(),
        };
        metrics::counter!("account_verifications_total", "outcome" => outcome).increment(1);
        result
    }

    async fn verify_code_inner(
        &self,
        email: Email,
        code: &str,
        password: Option<Password>,
        client: &Client,
    ) -> Result<Verified, AccountError> {
        let code = Code::parse(code).ok_or(AccountError::CodeInvalid)?;
        let key = email.key();
        // A typed password is checked first, outside the transaction (it is
        // slow), against the hash it must still be inside; an unknown
        // address costs the same.
        let typed = match password {
            None => None,
            Some(password) => {
                let hash: Option<String> = users::table
                    .filter(users::email_key.eq(&key))
                    .select(users::password_hash)
                    .first(&mut self.pool.get().await?)
                    .await
                    .optional()?;
                let right = self
                    .hasher
                    .verify(password, hash.clone(), client.still_there.clone())
                    .await?;
                Some(hash.filter(|_| right))
            }
        };
        let mut conn = self.pool.get().await?;
        let (keys, settings) = (&self.keys, &self.settings);
        // A wrong guess must count even though the answer is an error, so
        // the transaction answers Ok with the outcome and the error is
        // raised after the commit.
        conn.transaction::<_, AccountError, _>(async |conn| {
            let Some(user) = Self::lock_by_key(conn, &key).await? else {
                return Ok(Err(AccountError::CodeInvalid));
            };
            let Some(stored) = &user.verify_code_hash else {
                return Ok(Err(AccountError::CodeInvalid));
            };
            let right = code.matches(keys, user.id, stored);
            if user.verified_at.is_some() {
                return Ok(Err(if right {
                    AccountError::TokenUsed {
                        email: user.email.clone(),
                    }
                } else {
                    AccountError::CodeInvalid
                }));
            }
            if user.verify_code_attempts >= code::MAX_ATTEMPTS
                || user.verify_code_wrong_total >= code::MAX_WRONG_IN_ALL
            {
                return Ok(Err(AccountError::CodeInvalid));
            }
            if !right {
                diesel::update(users::table.find(user.id))
                    .set((
                        users::verify_code_attempts.eq(user.verify_code_attempts + 1),
                        users::verify_code_wrong_total.eq(user.verify_code_wrong_total + 1),
                    ))
                    .execute(conn)
                    .await?;
                return Ok(Err(AccountError::CodeInvalid));
            }
            if !user.signed_up_in(client) {
                match &typed {
                    None => return Ok(Err(AccountError::PasswordNeeded { wrong: false })),
                    Some(proven) if proven.as_deref() != Some(user.password_hash.as_str()) => {
                        return Ok(Err(AccountError::PasswordNeeded { wrong: true }));
                    }
                    Some(_) => {}
                }
            }
            Ok(Ok(Self::mark_verified(conn, &user, client, settings).await?))
        })
        .await?
    }

    /// A new session for `user_id` that replaces the browser's current one
    /// (a session id never survives a sign-in: no fixation).
    async fn rotate(
        conn: &mut diesel_async::AsyncPgConnection,
        user_id: Uuid,
        settings: &Settings,
        client: &Client,
    ) -> Result<SessionToken, AccountError> {
        if let Some(old) = &client.session {
            sessions::delete(conn, old).await?;
        }
        Ok(sessions::create(
            conn,
            user_id,
            settings.session_ttl,
            client.user_agent.as_deref(),
        )
        .await?)
    }

    /// Checks a password and opens a session. Unknown addresses, wrong
    /// passwords and unverified accounts all answer `BadCredentials` at the
    /// same cost; an unverified account with the right password is sent a
    /// new link (within the resend cooldown), so its owner can get in.
    pub async fn login(
        &self,
        email: Email,
        password: Password,
        client: &Client,
    ) -> Result<SessionToken, AccountError> {
        let key = email.key();
        let user: Option<UserState> = {
            let mut conn = self.pool.get().await?;
            users::table
                .filter(users::email_key.eq(&key))
                .select(UserState::as_select())
                .first(&mut conn)
                .await
                .optional()?
        };
        let ok = self
            .hasher
            .verify(
                password,
                user.as_ref().map(|u| u.password_hash.clone()),
                client.still_there.clone(),
            )
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
                let settings = &self.settings;
                conn.transaction::<_, AccountError, _>(async |conn| {
                    Self::rotate(conn, u.id, settings, client).await
                })
                .await
            }
            (Some(_), true) => {
                // Off the request's path, so this answer takes as long as a
                // wrong password's.
                let this = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.resend_key(&key, None).await {
                        tracing::warn!(error = %e, "could not re-send a verification link at login");
                    }
                });
                Err(AccountError::BadCredentials)
            }
            _ => Err(AccountError::BadCredentials),
        }
    }

    /// The user a session token belongs to.
    pub async fn me(&self, session: &str) -> Result<SessionUser, AccountError> {
        let mut conn = self.pool.get().await?;
        sessions::lookup(&mut conn, session, self.settings.session_idle_ttl)
            .await?
            .ok_or(AccountError::NoSession)
    }

    /// Ends a session (nothing if it did not exist).
    pub async fn logout(&self, session: &str) -> Result<(), AccountError> {
        let mut conn = self.pool.get().await?;
        sessions::delete(&mut conn, session).await?;
        Ok(())
    }

    /// Ends every session of the session's user; returns how many.
    pub async fn logout_all(&self, session: &str) -> Result<usize, AccountError> {
        let user = self.me(session).await?;
        let mut conn = self.pool.get().await?;
        Ok(sessions::delete_all(&mut conn, user.id).await?)
    }

    /// The user with `id`, locked for the transaction.
    async fn lock(
        conn: &mut diesel_async::AsyncPgConnection,
        id: Uuid,
    ) -> Result<Option<UserState>, AccountError> {
        Ok(users::table
            .find(id)
            .for_update()
            .select(UserState::as_select())
            .first(conn)
            .await
            .optional()?)
    }

    /// The account's own language, for mail to it.
    fn lang_of(&self, user: &UserState) -> Lang {
        Lang::from_tag(&user.locale).unwrap_or(self.settings.default_locale)
    }

    /// Mails a reset link to the address if it has an account (in the
    /// account's language); nothing otherwise. The caller answers 202
    /// either way; returns whether a mail was queued.
    pub async fn forgot(&self, email: Email) -> Result<bool, AccountError> {
        let mut conn = self.pool.get().await?;
        let key = email.key();
        let mails = &self.mails;
        let sent = conn
            .transaction::<_, AccountError, _>(async |conn| {
                let Some(user) = Self::lock_by_key(conn, &key).await? else {
                    return Ok(false);
                };
                let lang = self.lang_of(&user);
                let mail = mails.reset_password(user.id, &user.email, user.password_epoch, lang);
                outbox::enqueue(conn, &mail, user.id).await?;
                Ok(true)
            })
            .await?;
        if sent {
            self.relay.wake();
        }
        metrics::counter!("account_password_resets_total", "step" => if sent { "mailed" } else { "unknown" })
            .increment(1);
        Ok(sent)
    }

    /// Opens a reset link and checks it is still the live one, changing
    /// nothing (the new-password page names the account).
    pub async fn inspect_reset(&self, token: &str) -> Result<Claims, AccountError> {
        let claims = self.keys.open(token::RESET_PASSWORD, token, Utc::now())?;
        let mut conn = self.pool.get().await?;
        let user: Option<UserState> = users::table
            .find(claims.user_id)
            .select(UserState::as_select())
            .first(&mut conn)
            .await
            .optional()?;
        Self::check_reset(user.as_ref(), &claims)?;
        Ok(claims)
    }

    fn check_reset(user: Option<&UserState>, claims: &Claims) -> Result<(), AccountError> {
        match user {
            None => Err(AccountError::Token(TokenError::Forged)),
            Some(u)
                if u.email_key != claims.email.to_ascii_lowercase()
                    || u.password_epoch != claims.epoch =>
            {
                Err(AccountError::TokenUsed {
                    email: u.email.clone(),
                })
            }
            Some(_) => Ok(()),
        }
    }

    /// Sets a new password through a reset link: ends every session of the
    /// account, signs this browser in, marks the address verified (the mail
    /// proved it), kills every other reset and verification link, and
    /// mails a notice.
    pub async fn reset_password(
        &self,
        token: &str,
        password: Password,
        client: &Client,
    ) -> Result<SessionToken, AccountError> {
        // A used, replaced or forged link answers before the (slow) hash:
        // otherwise any old link of one's own is a free argon2 sink. The
        // check is made again under the row lock below.
        let claims = self.inspect_reset(token).await?;
        let hash = self
            .hasher
            .hash(password, client.still_there.clone())
            .await?;
        let mut conn = self.pool.get().await?;
        let (mails, settings) = (&self.mails, &self.settings);
        let session = conn
            .transaction::<_, AccountError, _>(async |conn| {
                let user = Self::lock(conn, claims.user_id).await?;
                Self::check_reset(user.as_ref(), &claims)?;
                let user = user.expect("checked above");
                diesel::update(users::table.find(user.id))
                    .set((
                        users::password_hash.eq(&hash),
                        users::password_epoch.eq(user.password_epoch + 1),
                        users::verified_at.eq(user.verified_at.unwrap_or_else(Utc::now)),
                        users::verify_epoch.eq(user.verify_epoch + 1),
                    ))
                    .execute(conn)
                    .await?;
                sessions::delete_all(conn, user.id).await?;
                let mail = mails.password_changed(&user.email, self.lang_of(&user));
                outbox::enqueue(conn, &mail, user.id).await?;
                if user.verified_at.is_none() {
                    // The reset mail proved the address.
                    outbox::record(conn, &event(AccountEventType::Verified, &user)).await?;
                }
                outbox::record(conn, &event(AccountEventType::PasswordChanged, &user)).await?;
                Ok(sessions::create(
                    conn,
                    user.id,
                    settings.session_ttl,
                    client.user_agent.as_deref(),
                )
                .await?)
            })
            .await?;
        self.relay.wake();
        metrics::counter!("account_password_resets_total", "step" => "reset").increment(1);
        Ok(session)
    }

    /// The signed-in user's account row, with the password check a
    /// sensitive change needs: a wrong password is `BadCredentials`.
    async fn reauthenticate(
        &self,
        session: &str,
        password: Password,
        client: &Client,
    ) -> Result<UserState, AccountError> {
        let me = self.me(session).await?;
        let mut conn = self.pool.get().await?;
        let user: UserState = users::table
            .find(me.id)
            .select(UserState::as_select())
            .first(&mut conn)
            .await
            .optional()?
            .ok_or(AccountError::NoSession)?;
        drop(conn);
        let ok = self
            .hasher
            .verify(
                password,
                Some(user.password_hash.clone()),
                client.still_there.clone(),
            )
            .await?;
        if !ok {
            metrics::counter!("account_logins_total", "outcome" => "bad-credentials").increment(1);
            return Err(AccountError::BadCredentials);
        }
        Ok(user)
    }

    /// Changes the signed-in user's password: needs the current one, ends
    /// every other session, kills pending reset links, mails a notice.
    pub async fn change_password(
        &self,
        session: &str,
        current: Password,
        new: Password,
        client: &Client,
    ) -> Result<(), AccountError> {
        let user = self.reauthenticate(session, current, client).await?;
        let hash = self.hasher.hash(new, client.still_there.clone()).await?;
        let mut conn = self.pool.get().await?;
        let mails = &self.mails;
        let keep = sessions::digest(session);
        conn.transaction::<_, AccountError, _>(async |conn| {
            let Some(locked) = Self::lock(conn, user.id).await? else {
                return Err(AccountError::NoSession);
            };
            diesel::update(users::table.find(user.id))
                .set((
                    users::password_hash.eq(&hash),
                    users::password_epoch.eq(locked.password_epoch + 1),
                ))
                .execute(conn)
                .await?;
            sessions::delete_others(conn, user.id, &keep).await?;
            let mail = mails.password_changed(&locked.email, self.lang_of(&locked));
            outbox::enqueue(conn, &mail, user.id).await?;
            outbox::record(conn, &event(AccountEventType::PasswordChanged, &locked)).await?;
            Ok(())
        })
        .await?;
        self.relay.wake();
        metrics::counter!("account_password_changes_total").increment(1);
        Ok(())
    }

    /// The signed-in user's sessions, this one marked.
    pub async fn sessions(&self, session: &str) -> Result<Vec<SessionInfo>, AccountError> {
        let me = self.me(session).await?;
        let mut conn = self.pool.get().await?;
        Ok(sessions::list(&mut conn, me.id, session, self.settings.session_idle_ttl).await?)
    }

    /// Ends one of the signed-in user's sessions; another user's id, or an
    /// unknown one, is `NotFound`.
    pub async fn end_session(&self, session: &str, id: Uuid) -> Result<(), AccountError> {
        let me = self.me(session).await?;
        let mut conn = self.pool.get().await?;
        match sessions::delete_by_id(&mut conn, me.id, id).await? {
            0 => Err(AccountError::NotFound),
            _ => Ok(()),
        }
    }

    /// Deletes the signed-in user's account after checking the password:
    /// the user row, its sessions and its unsent mail go; a notice is
    /// mailed; the address can sign up afresh.
    pub async fn delete_account(
        &self,
        session: &str,
        password: Password,
        client: &Client,
    ) -> Result<(), AccountError> {
        let user = self.reauthenticate(session, password, client).await?;
        let mut conn = self.pool.get().await?;
        let mails = &self.mails;
        conn.transaction::<_, AccountError, _>(async |conn| {
            let Some(locked) = Self::lock(conn, user.id).await? else {
                return Err(AccountError::NoSession);
            };
            outbox::drop_pending(conn, user.id).await?;
            // Sessions go with the row (ON DELETE CASCADE).
            diesel::delete(users::table.find(user.id))
                .execute(conn)
                .await?;
            let mail = mails.account_deleted(&locked.email, self.lang_of(&locked));
            outbox::enqueue(conn, &mail, user.id).await?;
            outbox::record(conn, &event(AccountEventType::Deleted, &locked)).await?;
            Ok(())
        })
        .await?;
        self.relay.wake();
        metrics::counter!("account_deletions_total").increment(1);
        Ok(())
    }

    /// Deletes accounts never verified whose last link went out more than
    /// `ACCOUNT_UNVERIFIED_TTL` ago; returns how many.
    pub async fn purge_unverified(&self) -> Result<usize, AccountError> {
        let Some(cutoff) = chrono::Duration::from_std(self.settings.unverified_ttl)
            .ok()
            .and_then(|ttl| Utc::now().checked_sub_signed(ttl))
        else {
            return Ok(0);
        };
        let mut conn = self.pool.get().await?;
        let gone = conn
            .transaction::<_, AccountError, _>(async |conn| {
                let gone: Vec<(Uuid, String, String)> = diesel::delete(
                    users::table
                        .filter(users::verified_at.is_null())
                        .filter(users::created_at.lt(cutoff))
                        .filter(
                            users::verification_sent_at
                                .is_null()
                                .or(users::verification_sent_at.lt(cutoff)),
                        ),
                )
                .returning((users::id, users::email, users::locale))
                .get_results(conn)
                .await?;
                for (id, email, locale) in &gone {
                    // Their links die with them; consumers hear they are gone.
                    outbox::drop_pending(conn, *id).await?;
                    let deleted = AccountEvent::new(AccountEventType::Deleted, *id, email, locale);
                    outbox::record(conn, &deleted).await?;
                }
                Ok(gone.len())
            })
            .await?;
        if gone > 0 {
            self.relay.wake();
        }
        Ok(gone)
    }

    /// Asks to move the signed-in account to `new_email` (the password
    /// required). The new address gets a link; a taken one gets "account
    /// exists" instead, so the answer never tells whether it is taken.
    pub async fn request_email_change(
        &self,
        session: &str,
        new_email: Email,
        password: Password,
        client: &Client,
    ) -> Result<(), AccountError> {
        let user = self.reauthenticate(session, password, client).await?;
        let new_key = new_email.key();
        if new_key == user.email_key {
            return Ok(());
        }
        let mut conn = self.pool.get().await?;
        let mails = &self.mails;
        conn.transaction::<_, AccountError, _>(async |conn| {
            let Some(me) = Self::lock(conn, user.id).await? else {
                return Err(AccountError::NoSession);
            };
            let taken: Option<UserState> = users::table
                .filter(users::email_key.eq(&new_key))
                .select(UserState::as_select())
                .first(conn)
                .await
                .optional()?;
            let mail = match &taken {
                Some(owner) => mails.account_exists(new_email.as_str(), self.lang_of(owner)),
                None => mails.confirm_email_change(
                    me.id,
                    new_email.as_str(),
                    me.email_epoch,
                    self.lang_of(&me),
                ),
            };
            outbox::enqueue(conn, &mail, me.id).await?;
            Ok(())
        })
        .await?;
        self.relay.wake();
        metrics::counter!("account_email_changes_total", "step" => "requested").increment(1);
        Ok(())
    }

    /// Opens an address-change link and checks it is the live one, changing
    /// nothing; returns the claims (the new address) and the current address.
    pub async fn inspect_email_change(
        &self,
        token: &str,
    ) -> Result<(Claims, String), AccountError> {
        let claims = self.keys.open(token::CHANGE_EMAIL, token, Utc::now())?;
        let mut conn = self.pool.get().await?;
        let user: Option<UserState> = users::table
            .find(claims.user_id)
            .select(UserState::as_select())
            .first(&mut conn)
            .await
            .optional()?;
        let user = Self::check_email_change(user, &claims)?;
        Ok((claims, user.email))
    }

    fn check_email_change(
        user: Option<UserState>,
        claims: &Claims,
    ) -> Result<UserState, AccountError> {
        match user {
            None => Err(AccountError::Token(TokenError::Forged)),
            Some(u) if u.email_epoch != claims.epoch => {
                Err(AccountError::TokenUsed { email: u.email })
            }
            Some(u) => Ok(u),
        }
    }

    /// Makes the link's new address the account's: sessions stay, older
    /// change, reset and verification links die (they name the old
    /// address or epoch), the old address gets a notice. Returns the old
    /// and the new address.
    /// Only a browser signed in as the account that asked may confirm
    /// (`NoSession` otherwise): the link goes to an address its account
    /// does not own yet, and its owner, clicking a mail they never asked
    /// for, would otherwise hand that address to whoever asked.
    pub async fn confirm_email_change(
        &self,
        token: &str,
        session: Option<&str>,
    ) -> Result<(String, String), AccountError> {
        let claims = self.keys.open(token::CHANGE_EMAIL, token, Utc::now())?;
        let new_email =
            Email::parse(&claims.email).map_err(|_| AccountError::Token(TokenError::Forged))?;
        let mut conn = self.pool.get().await?;
        let (mails, settings) = (&self.mails, &self.settings);
        let changed = conn
            .transaction::<_, AccountError, _>(async |conn| {
                let user = Self::lock(conn, claims.user_id).await?;
                let user = Self::check_email_change(user, &claims)?;
                let signed_in = match session {
                    Some(s) => sessions::lookup(conn, s, settings.session_idle_ttl).await?,
                    None => None,
                };
                if signed_in.map(|u| u.id) != Some(user.id) {
                    return Err(AccountError::NoSession);
                }
                let updated = diesel::update(users::table.find(user.id))
                    .set((
                        users::email.eq(new_email.as_str()),
                        users::email_key.eq(new_email.key()),
                        users::email_epoch.eq(user.email_epoch + 1),
                        users::verify_epoch.eq(user.verify_epoch + 1),
                        users::verified_at.eq(user.verified_at.unwrap_or_else(Utc::now)),
                    ))
                    .execute(conn)
                    .await;
                match updated {
                    Err(diesel::result::Error::DatabaseError(
                        diesel::result::DatabaseErrorKind::UniqueViolation,
                        _,
                    )) => return Err(AccountError::EmailTaken),
                    other => other?,
                };
                let mail =
                    mails.email_changed(&user.email, new_email.as_str(), self.lang_of(&user));
                outbox::enqueue(conn, &mail, user.id).await?;
                let mut changed = AccountEvent::new(
                    AccountEventType::EmailChanged,
                    user.id,
                    new_email.as_str(),
                    &user.locale,
                );
                changed.previous_email = Some(user.email.clone());
                outbox::record(conn, &changed).await?;
                Ok((user.email, new_email.as_str().to_owned()))
            })
            .await?;
        self.relay.wake();
        metrics::counter!("account_email_changes_total", "step" => "confirmed").increment(1);
        Ok(changed)
    }
}
