//! The account operations behind both the JSON API and the pages.

use chrono::{DateTime, TimeZone, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use shared::envelope::{
    AccountExistsData, TEMPLATE_ACCOUNT_EXISTS, TEMPLATE_VERIFY_EMAIL, VerifyEmailData,
};
use shared::{MailSend, Recipient};
use uuid::Uuid;

use crate::domain::{Email, Password};
use crate::error::AppError;
use crate::i18n::Lang;
use crate::outbox;
use crate::schema::users;
use crate::sessions::{self, SessionToken};
use crate::startup::AppState;
use crate::token::{self, Claims, TokenError};

const SOURCE: &str = "account";

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

#[derive(Debug, Queryable)]
struct UserState {
    id: Uuid,
    email: String,
    email_key: String,
    password_hash: String,
    verified_at: Option<DateTime<Utc>>,
    verify_epoch: i32,
    verification_sent_at: Option<DateTime<Utc>>,
}

type UserStateColumns = (
    users::id,
    users::email,
    users::email_key,
    users::password_hash,
    users::verified_at,
    users::verify_epoch,
    users::verification_sent_at,
);
const USER_STATE: UserStateColumns = (
    users::id,
    users::email,
    users::email_key,
    users::password_hash,
    users::verified_at,
    users::verify_epoch,
    users::verification_sent_at,
);

/// Now, to the second (tokens carry whole seconds).
fn now_s() -> DateTime<Utc> {
    Utc.timestamp_opt(Utc::now().timestamp(), 0)
        .single()
        .unwrap_or_else(Utc::now)
}

fn verification_mail(
    state: &AppState,
    user_id: Uuid,
    email: &str,
    epoch: i32,
    lang: Lang,
) -> MailSend {
    let issued_at = now_s();
    let expires_at = issued_at
        + chrono::Duration::from_std(state.settings.token_ttl)
            .unwrap_or(chrono::Duration::hours(24));
    let token = state.keys.seal(
        token::VERIFY_EMAIL,
        &Claims {
            user_id,
            email: email.to_owned(),
            epoch,
            issued_at,
            expires_at,
        },
    );
    let verify_url = state
        .settings
        .url(&format!("/verify?token={token}&lang={}", lang.tag()));
    MailSend::template(
        SOURCE,
        Recipient {
            email: email.to_owned(),
            name: None,
        },
        lang.tag(),
        TEMPLATE_VERIFY_EMAIL,
        VerifyEmailData {
            verify_url,
            expires_at,
        },
    )
}

/// Registers an address, or mails the owner of an existing one. The caller answers 202 either way.
pub async fn signup(
    state: &AppState,
    email: Email,
    password: Password,
    lang: Lang,
) -> Result<SignupOutcome, AppError> {
    // Hash before taking a connection: the pool is not held during the slow part,
    // and existing and new addresses cost the same.
    let hash = state.hasher.hash(password).await?;
    let mut conn = state.pool.get().await?;
    let key = email.key();
    let outcome = conn
        .transaction::<_, AppError, _>(async |conn| {
            let now = Utc::now();
            let new_id = Uuid::new_v4();
            let inserted = diesel::insert_into(users::table)
                .values((
                    users::id.eq(new_id),
                    users::email.eq(email.as_str()),
                    users::email_key.eq(&key),
                    users::password_hash.eq(&hash),
                    users::locale.eq(lang.tag()),
                    users::verification_sent_at.eq(now),
                ))
                .on_conflict(users::email_key)
                .do_nothing()
                .execute(conn)
                .await?;
            if inserted == 1 {
                outbox::enqueue(
                    conn,
                    &verification_mail(state, new_id, email.as_str(), 0, lang),
                )
                .await?;
                return Ok(SignupOutcome::Created);
            }
            let user: UserState = users::table
                .filter(users::email_key.eq(&key))
                .for_update()
                .select(USER_STATE)
                .first(conn)
                .await?;
            if user.verified_at.is_some() {
                let mail = MailSend::template(
                    SOURCE,
                    Recipient {
                        email: user.email.clone(),
                        name: None,
                    },
                    lang.tag(),
                    TEMPLATE_ACCOUNT_EXISTS,
                    AccountExistsData {
                        login_url: state.settings.url(&format!("/login?lang={}", lang.tag())),
                    },
                );
                outbox::enqueue(conn, &mail).await?;
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
                    users::verification_sent_at.eq(now),
                ))
                .execute(conn)
                .await?;
            outbox::enqueue(
                conn,
                &verification_mail(state, user.id, &user.email, epoch, lang),
            )
            .await?;
            Ok(SignupOutcome::Renewed)
        })
        .await?;
    state.relay.wake();
    metrics::counter!("account_signups_total", "outcome" => outcome.label()).increment(1);
    Ok(outcome)
}

/// Sends a fresh verification link to an unverified address, at most once per cooldown.
/// Returns whether a mail was queued; the caller answers 202 either way.
pub async fn resend(state: &AppState, email: Email, lang: Lang) -> Result<bool, AppError> {
    let mut conn = state.pool.get().await?;
    let key = email.key();
    let cooldown = chrono::Duration::from_std(state.settings.resend_cooldown).unwrap_or_default();
    let sent = conn
        .transaction::<_, AppError, _>(async |conn| {
            let user: Option<UserState> = users::table
                .filter(users::email_key.eq(&key))
                .for_update()
                .select(USER_STATE)
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
            outbox::enqueue(
                conn,
                &verification_mail(state, user.id, &user.email, user.verify_epoch, lang),
            )
            .await?;
            Ok(true)
        })
        .await?;
    if sent {
        state.relay.wake();
    }
    metrics::counter!("account_resends_total", "sent" => if sent { "yes" } else { "no" })
        .increment(1);
    Ok(sent)
}

/// Consumes a verification token: marks the address verified and opens a session.
pub async fn verify(state: &AppState, token: &str) -> Result<(Uuid, SessionToken), AppError> {
    let result = verify_inner(state, token).await;
    let outcome = match &result {
        Ok(_) => "verified",
        Err(e) => e.kind(),
    };
    metrics::counter!("account_verifications_total", "outcome" => outcome).increment(1);
    result
}

async fn verify_inner(state: &AppState, token: &str) -> Result<(Uuid, SessionToken), AppError> {
    let claims = state.keys.open(token::VERIFY_EMAIL, token, Utc::now())?;
    let mut conn = state.pool.get().await?;
    let ttl = state.settings.session_ttl;
    conn.transaction::<_, AppError, _>(async |conn| {
        let user: Option<UserState> = users::table
            .find(claims.user_id)
            .for_update()
            .select(USER_STATE)
            .first(conn)
            .await
            .optional()?;
        let Some(user) = user else {
            return Err(AppError::Token(TokenError::Forged));
        };
        if user.email_key != claims.email.to_lowercase() || user.verify_epoch != claims.epoch {
            return Err(AppError::TokenUsed { email: user.email });
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
    state: &AppState,
    email: Email,
    password: Password,
) -> Result<SessionToken, AppError> {
    let user: Option<UserState> = {
        let mut conn = state.pool.get().await?;
        users::table
            .filter(users::email_key.eq(email.key()))
            .select(USER_STATE)
            .first(&mut conn)
            .await
            .optional()?
    };
    let ok = state
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
            let mut conn = state.pool.get().await?;
            Ok(sessions::create(&mut conn, u.id, state.settings.session_ttl).await?)
        }
        (Some(_), true) => Err(AppError::NotVerified),
        _ => Err(AppError::BadCredentials),
    }
}
