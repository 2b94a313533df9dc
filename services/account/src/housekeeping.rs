//! What keeps the database small, on every instance: each
//! `ACCOUNT_HOUSEKEEPING_INTERVAL` (and at start) it forgets idle rate-limit
//! keys, deletes expired and idle sessions, accounts never verified past
//! `ACCOUNT_UNVERIFIED_TTL`, and published outbox rows past
//! `ACCOUNT_OUTBOX_RETENTION`. Several instances doing it at once
//! only repeat deletes.

use std::sync::Arc;

use tokio::sync::watch;

use crate::accounts::Accounts;
use crate::config::Settings;
use crate::db::DbPool;
use crate::ratelimit::Limits;

/// The housekeeping loop and what it needs.
pub struct Housekeeping {
    pub pool: DbPool,
    pub limits: Limits,
    pub settings: Arc<Settings>,
    pub accounts: Accounts,
}

impl Housekeeping {
    /// One round; a failure is logged and the next round tries again.
    pub async fn once(&self) {
        match self.limits.purge().await {
            Ok(n) if n > 0 => tracing::info!(count = n, "purged replenished rate-limit rows"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not purge the rate limits"),
        }
        let Ok(mut conn) = self.pool.get().await else {
            return;
        };
        let idle = self.settings.session_idle_ttl;
        match crate::sessions::purge_expired(&mut conn, idle).await {
            Ok(n) if n > 0 => tracing::info!(count = n, "purged expired sessions"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not purge expired sessions"),
        }
        match self.accounts.purge_unverified().await {
            Ok(n) if n > 0 => tracing::info!(count = n, "deleted accounts never verified"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not delete unverified accounts"),
        }
        let retention = self.settings.outbox_retention;
        if retention.is_zero() {
            return;
        }
        match crate::outbox::purge_published(&mut conn, retention).await {
            Ok(n) if n > 0 => tracing::info!(count = n, "purged published outbox rows"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not purge the outbox"),
        }
    }

    /// Runs a round every interval until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.settings.housekeeping_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.once().await;
        }
    }
}
