//! Limits on every request that sends mail or checks a secret, shared by
//! every account instance.
//!
//! Each action has its own allowances, so a flood of one never eats another's:
//! - per client (`ACCOUNT_RATE_LIMIT_CLIENT_PER_MINUTE`), for each action;
//! - per e-mail address (`ACCOUNT_RATE_LIMIT_ADDRESS_PER_HOUR`) for what
//!   sends mail to that address: sign-up, resend, forgotten password, and
//!   an e-mail change (keyed on the new address);
//! - per address AND client (`ACCOUNT_RATE_LIMIT_LOGIN_PER_HOUR`) for what
//!   guesses a secret: login, a signed-in user's current password (change
//!   password, change e-mail, delete account: the same allowance as login,
//!   so a stolen session gives no extra guesses) and the six-digit code.
//!   Failures from one client never stop the owner from another. (A limit
//!   per address alone let anyone keep a chosen user out with one request
//!   every few minutes.)
//!
//! The state lives in PostgreSQL (`rate_limits`, one row per key), so N
//! instances give one allowance, not N. Each check is one atomic upsert of
//! the GCRA ("generic cell rate algorithm", what `governor` does in memory):
//! a quota of `n` per `period` lets a burst of `n` through and gives one back
//! every `period / n`, and a refusal says exactly when the next one is due.

use std::time::Duration;

use diesel::sql_types::{Array, Bool, Bytea, Double};
use diesel_async::RunQueryDsl;
use sha2::{Digest, Sha256};

use crate::config::RateLimitSettings;
use crate::db::DbPool;

/// What a request asks for; each has its own allowances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Signup,
    Resend,
    /// A forgotten-password mail.
    Reset,
    /// A confirmation mail to a new address (keyed on that address).
    ChangeEmail,
    /// A password check: login, or a signed-in user's current password.
    Login,
    /// A six-digit verification code.
    Code,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Signup => "signup",
            Self::Resend => "resend",
            Self::Reset => "reset",
            Self::ChangeEmail => "change-email",
            Self::Login => "login",
            Self::Code => "code",
        }
    }
}

/// `count` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Quota {
    /// Time to earn back one request: `period / count`.
    step: Duration,
    /// The burst: `count * step`.
    span: Duration,
}

impl Quota {
    fn new(count: u32, period: Duration) -> Self {
        let count = count.max(1);
        let step = period / count;
        Self {
            step,
            span: step * count,
        }
    }
}

/// Why a request may not go ahead.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Over a limit: the next request is allowed after this long.
    #[error("over the limit; retry in {0:?}")]
    Limited(Duration),
    /// The limits could not be checked (the database is unreachable).
    #[error("the rate limits cannot be checked")]
    Unavailable(#[source] anyhow::Error),
}

/// The limits as configured, or none when turned off.
#[derive(Clone)]
pub struct Limits {
    inner: Option<Inner>,
}

#[derive(Clone)]
struct Inner {
    pool: DbPool,
    client: Quota,
    address: Quota,
    login: Quota,
}

#[derive(diesel::QueryableByName)]
struct Decision {
    #[diesel(sql_type = Bool)]
    allowed: bool,
    #[diesel(sql_type = Double)]
    wait_s: f64,
}

/// Counts one request against each key and says, per key, whether it was
/// allowed and when the next one would be. Keys are locked in byte order, so
/// two requests sharing keys never wait on each other in a cycle.
const CHECK: &str = "\
INSERT INTO rate_limits AS r (key, tat, step, span, allowed)
SELECT k.key, now() + make_interval(secs => k.step), make_interval(secs => k.step),
       make_interval(secs => k.span), true
FROM unnest($1::bytea[], $2::float8[], $3::float8[]) AS k(key, step, span)
ORDER BY k.key
ON CONFLICT (key) DO UPDATE SET
    allowed = GREATEST(r.tat, now()) + EXCLUDED.step <= now() + EXCLUDED.span,
    tat = CASE WHEN GREATEST(r.tat, now()) + EXCLUDED.step <= now() + EXCLUDED.span
               THEN GREATEST(r.tat, now()) + EXCLUDED.step ELSE r.tat END,
    step = EXCLUDED.step,
    span = EXCLUDED.span
RETURNING allowed,
    EXTRACT(EPOCH FROM GREATEST(tat, now()) + step - span - now())::float8 AS wait_s";

impl Limits {
    /// The limits `settings` describe, kept in the database behind `pool`.
    pub fn new(settings: RateLimitSettings, pool: DbPool) -> Self {
        const MINUTE: Duration = Duration::from_secs(60);
        const HOUR: Duration = Duration::from_secs(3600);
        Self {
            inner: settings.enabled.then(|| Inner {
                pool,
                client: Quota::new(settings.client_per_minute, MINUTE),
                address: Quota::new(settings.address_per_hour, HOUR),
                login: Quota::new(settings.login_per_hour, HOUR),
            }),
        }
    }

    /// Counts a request of `action` from `client` about `address` (its
    /// lower-cased key): `Err(Limited(wait))` when one of its limits is spent.
    pub async fn check(&self, action: Action, client: &str, address: &str) -> Result<(), Refusal> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let mut ids = Vec::new();
        let mut steps = Vec::new();
        let mut spans = Vec::new();
        for (key, quota) in inner.keys(action, client, address) {
            ids.push(Sha256::digest(key.as_bytes()).to_vec());
            steps.push(quota.step.as_secs_f64());
            spans.push(quota.span.as_secs_f64());
        }
        let mut conn = inner
            .pool
            .get()
            .await
            .map_err(|e| Refusal::Unavailable(e.into()))?;
        let decisions: Vec<Decision> = diesel::sql_query(CHECK)
            .bind::<Array<Bytea>, _>(ids)
            .bind::<Array<Double>, _>(steps)
            .bind::<Array<Double>, _>(spans)
            .load(&mut conn)
            .await
            .map_err(|e| Refusal::Unavailable(e.into()))?;
        let wait = decisions
            .iter()
            .filter(|d| !d.allowed)
            .map(|d| d.wait_s.max(0.0))
            .reduce(f64::max);
        match wait {
            None => Ok(()),
            Some(w) => Err(Refusal::Limited(Duration::from_secs_f64(w))),
        }
    }

    /// Deletes the rows of keys that have fully replenished (they mean the
    /// same as no row); returns how many.
    pub async fn purge(&self) -> Result<usize, anyhow::Error> {
        let Some(inner) = &self.inner else {
            return Ok(0);
        };
        let mut conn = inner.pool.get().await?;
        Ok(
            diesel::sql_query("DELETE FROM rate_limits WHERE tat < now()")
                .execute(&mut conn)
                .await?,
        )
    }
}

impl Inner {
    /// The keys one request counts against, with their quotas.
    fn keys(&self, action: Action, client: &str, address: &str) -> Vec<(String, Quota)> {
        let a = action.name();
        let client_key = (format!("{a}:client:{client}"), self.client);
        match action {
            Action::Signup | Action::Resend | Action::Reset | Action::ChangeEmail => {
                vec![client_key, (format!("{a}:address:{address}"), self.address)]
            }
            // A space cannot occur in an address, so `address client` is unambiguous.
            Action::Login | Action::Code => vec![
                client_key,
                (format!("{a}:address-client:{address} {client}"), self.login),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_gives_one_request_back_every_period_over_count() {
        let q = Quota::new(10, Duration::from_secs(3600));
        assert_eq!(q.step, Duration::from_secs(360));
        assert_eq!(q.span, Duration::from_secs(3600));
        let q = Quota::new(30, Duration::from_secs(60));
        assert_eq!(
            (q.step, q.span),
            (Duration::from_secs(2), Duration::from_secs(60))
        );
    }
}
