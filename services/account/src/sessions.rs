//! Sessions: a 256-bit random token in the cookie, only its SHA-256 in the database.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::schema::{sessions, users};

/// The secret a browser holds. Never logged, never stored.
pub struct SessionToken(String);

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(***)")
    }
}

impl SessionToken {
    fn generate() -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS random source works");
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The cookie value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Creates a session for `user_id`, inside the caller's transaction.
pub async fn create(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    ttl: std::time::Duration,
) -> QueryResult<SessionToken> {
    let token = SessionToken::generate();
    let expires_at =
        Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(14));
    diesel::insert_into(sessions::table)
        .values((
            sessions::token_hash.eq(digest(token.as_str())),
            sessions::user_id.eq(user_id),
            sessions::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await?;
    Ok(token)
}

/// What `GET /me` shows.
#[derive(Debug, Clone, Queryable, serde::Serialize)]
pub struct SessionUser {
    pub id: Uuid,
    pub email: String,
    pub locale: String,
    pub verified_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The user of a live session, if the token is one.
pub async fn lookup(conn: &mut AsyncPgConnection, token: &str) -> QueryResult<Option<SessionUser>> {
    if token.len() != 43 {
        return Ok(None);
    }
    sessions::table
        .inner_join(users::table)
        .filter(sessions::token_hash.eq(digest(token)))
        .filter(sessions::expires_at.gt(Utc::now()))
        .select((
            users::id,
            users::email,
            users::locale,
            users::verified_at,
            users::created_at,
        ))
        .first(conn)
        .await
        .optional()
}

/// Ends a session (no error if it did not exist).
pub async fn delete(conn: &mut AsyncPgConnection, token: &str) -> QueryResult<()> {
    diesel::delete(sessions::table.filter(sessions::token_hash.eq(digest(token))))
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes expired sessions; returns how many.
pub async fn purge_expired(conn: &mut AsyncPgConnection) -> QueryResult<usize> {
    diesel::delete(sessions::table.filter(sessions::expires_at.le(Utc::now())))
        .execute(conn)
        .await
}
