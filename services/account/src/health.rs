//! Readiness: can this instance reach its database and its broker?

use std::sync::Arc;
use std::time::Duration;

use diesel_async::RunQueryDsl;

use crate::broker::Publisher;
use crate::db::DbPool;

/// The dependencies `/readyz` checks.
#[derive(Clone)]
pub struct Health {
    pool: DbPool,
    publisher: Arc<Publisher>,
}

/// What `/readyz` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub database: bool,
    pub broker: bool,
}

impl Readiness {
    /// Both dependencies answer.
    pub fn ready(&self) -> bool {
        self.database && self.broker
    }
}

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Health {
    /// Probes over `pool` and `publisher`.
    pub fn new(pool: DbPool, publisher: Arc<Publisher>) -> Self {
        Self { pool, publisher }
    }

    /// Checks both dependencies, each within two seconds.
    pub async fn check(&self) -> Readiness {
        let db = async {
            let mut conn = self.pool.get().await.ok()?;
            diesel::sql_query("SELECT 1").execute(&mut conn).await.ok()
        };
        let database = tokio::time::timeout(PROBE_TIMEOUT, db)
            .await
            .ok()
            .flatten()
            .is_some();
        let broker = self.publisher.is_connected()
            || tokio::time::timeout(PROBE_TIMEOUT, self.publisher.ensure_connected())
                .await
                .is_ok_and(|r| r.is_ok());
        Readiness { database, broker }
    }
}
