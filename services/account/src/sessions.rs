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

/// What the database keeps of a session token.
pub fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// How stale `last_seen_at` may get before a request writes it again: the
/// idle timeout is this coarse, and a busy session costs one write a minute.
const SEEN_RESOLUTION: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// Longest user agent kept (it is shown back to the person, nothing more).
const USER_AGENT_MAX: usize = 200;

fn delta(d: std::time::Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)
}

/// Creates a session for `user_id`, inside the caller's transaction.
pub async fn create(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    ttl: std::time::Duration,
    user_agent: Option<&str>,
) -> QueryResult<SessionToken> {
    let token = SessionToken::generate();
    let expires_at = Utc::now() + delta(ttl);
    let user_agent = user_agent.map(|ua| ua.chars().take(USER_AGENT_MAX).collect::<String>());
    diesel::insert_into(sessions::table)
        .values((
            sessions::token_hash.eq(digest(token.as_str())),
            sessions::user_id.eq(user_id),
            sessions::expires_at.eq(expires_at),
            sessions::user_agent.eq(user_agent),
        ))
        .execute(conn)
        .await?;
    Ok(token)
}

/// What `GET /me` shows.
#[derive(Debug, Clone, Queryable, serde::Serialize, utoipa::ToSchema)]
pub struct SessionUser {
    pub id: Uuid,
    pub email: String,
    pub locale: String,
    pub verified_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The user of a live session, if the token is one: not past its absolute
/// expiry, and used within `idle` (each use moves that on).
pub async fn lookup(
    conn: &mut AsyncPgConnection,
    token: &str,
    idle: std::time::Duration,
) -> QueryResult<Option<SessionUser>> {
    if token.len() != 43 {
        return Ok(None);
    }
    let now = Utc::now();
    let hash = digest(token);
    let found: Option<(SessionUser, DateTime<Utc>)> = sessions::table
        .inner_join(users::table)
        .filter(sessions::token_hash.eq(&hash))
        .filter(sessions::expires_at.gt(now))
        .filter(sessions::last_seen_at.gt(now - delta(idle)))
        .select((
            (
                users::id,
                users::email,
                users::locale,
                users::verified_at,
                users::created_at,
            ),
            sessions::last_seen_at,
        ))
        .first(conn)
        .await
        .optional()?;
    let Some((user, seen)) = found else {
        return Ok(None);
    };
    if now - seen > SEEN_RESOLUTION {
        diesel::update(sessions::table.filter(sessions::token_hash.eq(&hash)))
            .set(sessions::last_seen_at.eq(now))
            .execute(conn)
            .await?;
    }
    Ok(Some(user))
}

/// Ends a session (no error if it did not exist).
pub async fn delete(conn: &mut AsyncPgConnection, token: &str) -> QueryResult<()> {
    diesel::delete(sessions::table.filter(sessions::token_hash.eq(digest(token))))
        .execute(conn)
        .await?;
    Ok(())
}

/// One of a user's sessions, as the person sees it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SessionInfo {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    /// The session of the request that asked.
    pub current: bool,
}

/// `user_id`'s live sessions, newest use first; `current` marks `token`'s.
pub async fn list(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    token: &str,
    idle: std::time::Duration,
) -> QueryResult<Vec<SessionInfo>> {
    let now = Utc::now();
    let mine = digest(token);
    type Row = (Uuid, DateTime<Utc>, DateTime<Utc>, Option<String>, Vec<u8>);
    let rows: Vec<Row> = sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::expires_at.gt(now))
        .filter(sessions::last_seen_at.gt(now - delta(idle)))
        .order(sessions::last_seen_at.desc())
        .select((
            sessions::id,
            sessions::created_at,
            sessions::last_seen_at,
            sessions::user_agent,
            sessions::token_hash,
        ))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, created_at, last_seen_at, user_agent, hash)| SessionInfo {
                id,
                created_at,
                last_seen_at,
                user_agent,
                current: hash == mine,
            },
        )
        .collect())
}

/// Ends `user_id`'s session `id`; 0 when it is not theirs (or not there).
pub async fn delete_by_id(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
) -> QueryResult<usize> {
    diesel::delete(
        sessions::table
            .filter(sessions::id.eq(id))
            .filter(sessions::user_id.eq(user_id)),
    )
    .execute(conn)
    .await
}

/// Ends every session of `user_id` but the one whose hash is `keep`.
pub async fn delete_others(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    keep: &[u8],
) -> QueryResult<usize> {
    diesel::delete(
        sessions::table
            .filter(sessions::user_id.eq(user_id))
            .filter(sessions::token_hash.ne(keep)),
    )
    .execute(conn)
    .await
}

/// Ends every session of `user_id`; returns how many.
pub async fn delete_all(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<usize> {
    diesel::delete(sessions::table.filter(sessions::user_id.eq(user_id)))
        .execute(conn)
        .await
}

/// Deletes expired and idle sessions; returns how many.
pub async fn purge_expired(
    conn: &mut AsyncPgConnection,
    idle: std::time::Duration,
) -> QueryResult<usize> {
    let now = Utc::now();
    diesel::delete(
        sessions::table.filter(
            sessions::expires_at
                .le(now)
                .or(sessions::last_seen_at.le(now - delta(idle))),
        ),
    )
    .execute(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_token_never_shows_in_debug_output() {
        let token = SessionToken::generate();
        assert_eq!(token.as_str().len(), 43);
        let shown = format!("{token:?}");
        assert_eq!(shown, "SessionToken(***)");
        assert!(!shown.contains(token.as_str()));
    }
}
