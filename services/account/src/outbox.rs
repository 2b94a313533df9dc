//! The transactional outbox: events are written in the same transaction as the
//! state they describe, and a relay publishes them with publisher confirms.
//!
//! The relay is woken right after each commit (no polling delay on the happy
//! path) and sweeps periodically for the rest (broker outages, other
//! instances' rows). Rows are claimed with `FOR UPDATE SKIP LOCKED`, so
//! several instances never publish the same row concurrently; delivery is
//! at-least-once and the mailer de-duplicates on the event id.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use shared::topology::MAIL_SEND_ROUTING_KEY;
use shared::{AccountEvent, MailSend};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::broker::{Outgoing, Published, Publisher};
use crate::db::DbPool;
use crate::schema::outbox;

/// Rows one purge statement deletes at most.
const PURGE_BATCH: i64 = 5000;

/// Deletes published rows older than `retention`, a batch per statement so
/// none holds many locks, and returns how many. Unpublished rows stay
/// whatever their age: they are mail not yet sent.
pub async fn purge_published(
    conn: &mut AsyncPgConnection,
    retention: Duration,
) -> QueryResult<usize> {
    let Some(cutoff) = chrono::Duration::from_std(retention)
        .ok()
        .and_then(|r| Utc::now().checked_sub_signed(r))
    else {
        return Ok(0);
    };
    let mut total = 0;
    loop {
        let batch: Vec<Uuid> = outbox::table
            .select(outbox::id)
            .filter(outbox::published_at.lt(cutoff))
            .limit(PURGE_BATCH)
            .load(conn)
            .await?;
        if batch.is_empty() {
            return Ok(total);
        }
        total += diesel::delete(outbox::table.filter(outbox::id.eq_any(&batch)))
            .execute(conn)
            .await?;
        if (batch.len() as i64) < PURGE_BATCH {
            return Ok(total);
        }
    }
}

/// Adds a `mail.send` event for `user_id`'s account to the outbox, inside
/// the caller's transaction.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    mail: &MailSend,
    user_id: Uuid,
) -> QueryResult<()> {
    let payload = serde_json::to_value(mail).expect("a MailSend always serializes");
    diesel::insert_into(outbox::table)
        .values((
            outbox::id.eq(mail.id),
            outbox::routing_key.eq(MAIL_SEND_ROUTING_KEY),
            outbox::payload.eq(payload),
            outbox::user_id.eq(user_id),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds an account event to the outbox, inside the caller's transaction
/// (the one that made the change it tells of).
pub async fn record(conn: &mut AsyncPgConnection, event: &AccountEvent) -> QueryResult<()> {
    let payload = serde_json::to_value(event).expect("an AccountEvent always serializes");
    diesel::insert_into(outbox::table)
        .values((
            outbox::id.eq(event.id),
            outbox::routing_key.eq(event.routing_key()),
            outbox::payload.eq(payload),
            outbox::user_id.eq(event.user_id),
        ))
        .execute(conn)
        .await?;
    metrics::counter!("account_events_total", "type" => event.kind.as_str()).increment(1);
    Ok(())
}

/// Deletes `user_id`'s mail not yet published (links of an account that
/// is going away); returns how many. Its account events stay: consumers
/// must still hear of it, in order.
pub async fn drop_pending(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<usize> {
    diesel::delete(
        outbox::table
            .filter(outbox::user_id.eq(user_id))
            .filter(outbox::routing_key.eq(MAIL_SEND_ROUTING_KEY))
            .filter(outbox::published_at.is_null()),
    )
    .execute(conn)
    .await
}

/// Whether a row of this routing key is an account event (ordered per user,
/// published to the account exchange).
pub fn is_account_event(routing_key: &str) -> bool {
    routing_key.starts_with(ACCOUNT_EVENT_PREFIX)
}

const ACCOUNT_EVENT_PREFIX: &str = "account.";

/// A row is claimable unless it is an account event with an earlier one of
/// the same user still unpublished: one user's events go out in order,
/// whatever the number of relays.
const IN_ORDER: &str = "NOT (outbox.routing_key LIKE 'account.%' AND EXISTS (\
    SELECT 1 FROM outbox AS earlier WHERE earlier.user_id = outbox.user_id \
    AND earlier.routing_key LIKE 'account.%' AND earlier.published_at IS NULL \
    AND earlier.seq < outbox.seq))";

/// The result of one relay step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcome {
    /// This many rows were published and marked.
    Published(usize),
    /// Rows were claimed but the broker refused all of them (e.g. unroutable).
    Refused,
    /// Nothing to publish.
    EmptyQueue,
}

/// Publishes outbox rows to the broker.
#[derive(Clone)]
pub struct Relay {
    pool: DbPool,
    publisher: Arc<Publisher>,
    notify: Arc<Notify>,
    batch_size: i64,
    sweep_interval: Duration,
}

type Row = (Uuid, String, serde_json::Value, DateTime<Utc>);

/// How long a batch in flight may still take once the service is stopping.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Longest wait for the broker's confirms of one batch.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

impl Relay {
    /// A relay over `pool`, publishing through `publisher`.
    pub fn new(pool: DbPool, publisher: Arc<Publisher>, sweep_interval: Duration) -> Self {
        Self {
            pool,
            publisher,
            notify: Arc::new(Notify::new()),
            batch_size: 200,
            sweep_interval,
        }
    }

    /// Wakes the relay: call after committing a transaction that enqueued events.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// The publisher, for readiness checks.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Claims a batch of unpublished rows, publishes them and marks them published.
    pub async fn try_execute_task(&self) -> Result<TaskOutcome, anyhow::Error> {
        let mut conn = self.pool.get().await?;
        let publisher = self.publisher.clone();
        let batch_size = self.batch_size;
        conn.transaction::<_, anyhow::Error, _>(async move |conn| {
            let rows: Vec<Row> = outbox::table
                .filter(outbox::published_at.is_null())
                .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(IN_ORDER))
                .order(outbox::seq)
                .limit(batch_size)
                .for_update()
                .skip_locked()
                .select((outbox::id, outbox::routing_key, outbox::payload, outbox::created_at))
                .load(conn)
                .await?;
            if rows.is_empty() {
                return Ok(TaskOutcome::EmptyQueue);
            }
            let bodies: Vec<Vec<u8>> = rows
                .iter()
                .map(|r| serde_json::to_vec(&r.2).expect("JSON values serialize"))
                .collect();
            let batch: Vec<Outgoing<'_>> = rows
                .iter()
                .zip(&bodies)
                .map(|(r, body)| Outgoing { id: r.0, routing_key: &r.1, payload: body })
                .collect();
            // A broker that accepts the connection but never confirms (e.g. a
            // memory alarm blocking publishers) must not hold the rows forever.
            let results = match tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish(&batch)).await {
                Ok(r) => r?,
                Err(_) => {
                    publisher.reset().await;
                    anyhow::bail!("the broker did not confirm within {PUBLISH_TIMEOUT:?}");
                }
            };
            let now = Utc::now();
            let mut confirmed = Vec::new();
            for (row, result) in rows.iter().zip(results) {
                match result {
                    Published::Confirmed => {
                        confirmed.push(row.0);
                        let lag = (now - row.3).to_std().unwrap_or_default();
                        metrics::histogram!("account_outbox_publish_latency_seconds")
                            .record(lag.as_secs_f64());
                    }
                    Published::Refused(reason) => {
                        tracing::warn!(event_id = %row.0, %reason, "the broker refused an outbox event; it stays queued");
                        diesel::update(outbox::table.find(row.0))
                            .set((
                                outbox::attempts.eq(outbox::attempts + 1),
                                outbox::last_error.eq(reason),
                            ))
                            .execute(conn)
                            .await?;
                    }
                }
            }
            if confirmed.is_empty() {
                return Ok(TaskOutcome::Refused);
            }
            // Once the broker has it, the row keeps no live link: `data` holds
            // the sealed token (a database dump or backup must not sign anyone
            // in) and `content` a publisher's mail. The rest stays for audit.
            diesel::update(outbox::table.filter(outbox::id.eq_any(&confirmed)))
                .set((
                    outbox::published_at.eq(now),
                    outbox::attempts.eq(outbox::attempts + 1),
                    outbox::last_error.eq(None::<String>),
                    outbox::payload.eq(diesel::dsl::sql::<diesel::sql_types::Jsonb>(
                        "payload - 'data' - 'content'",
                    )),
                ))
                .execute(conn)
                .await?;
            metrics::counter!("account_outbox_published_total").increment(confirmed.len() as u64);
            Ok(TaskOutcome::Published(confirmed.len()))
        })
        .await
    }

    /// Rows not yet published, and how long the oldest of them has waited
    /// (zero when none does).
    pub async fn backlog(&self) -> Result<(i64, Duration), anyhow::Error> {
        let mut conn = self.pool.get().await?;
        let (count, oldest): (i64, Option<chrono::DateTime<chrono::Utc>>) = outbox::table
            .filter(outbox::published_at.is_null())
            .select((
                diesel::dsl::count_star(),
                diesel::dsl::min(outbox::created_at),
            ))
            .get_result(&mut conn)
            .await?;
        let age = oldest
            .and_then(|t| (chrono::Utc::now() - t).to_std().ok())
            .unwrap_or_default();
        Ok((count, age))
    }

    /// Sets the gauges `account_outbox_backlog` and
    /// `account_outbox_oldest_seconds` (left as they were if the database
    /// cannot say).
    async fn report_backlog(&self) {
        if let Ok((n, age)) = self.backlog().await {
            metrics::gauge!("account_outbox_backlog").set(n as f64);
            metrics::gauge!("account_outbox_oldest_seconds").set(age.as_secs_f64());
        }
    }

    /// One relay step. Once `shutdown` turns true the step gets
    /// [`SHUTDOWN_GRACE`] to finish; then it is left: its transaction rolls
    /// back and its rows stay for the next start or another instance (at
    /// least once). A hung broker must not hold the process for the whole
    /// publish timeout, past an orchestrator's grace period.
    async fn step(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<TaskOutcome, anyhow::Error> {
        let mut task = Box::pin(self.try_execute_task());
        tokio::select! {
            done = &mut task => return done,
            _ = stopping(shutdown) => {}
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(done) => done,
            Err(_) => {
                // The publish holds the connection's lock: drop it first.
                drop(task);
                self.publisher.reset().await;
                anyhow::bail!(
                    "stopping: left a batch the broker did not confirm within {SHUTDOWN_GRACE:?}; it stays queued"
                )
            }
        }
    }

    /// Runs until `shutdown` turns true; the batch in flight gets
    /// [`SHUTDOWN_GRACE`] to finish.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        const FIRST_BACKOFF: Duration = Duration::from_millis(250);
        const MAX_BACKOFF: Duration = Duration::from_secs(30);
        let mut backoff = FIRST_BACKOFF;
        let mut sweep = tokio::time::interval(self.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*shutdown.borrow() {
            let pause = match self.step(&mut shutdown).await {
                // A full batch may leave more; any batch may have made a
                // user's next account event claimable: look again at once.
                Ok(TaskOutcome::Published(_)) => {
                    backoff = FIRST_BACKOFF;
                    continue;
                }
                Ok(TaskOutcome::EmptyQueue) => {
                    backoff = FIRST_BACKOFF;
                    None
                }
                Ok(TaskOutcome::Refused) => Some(backoff),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "could not publish the outbox; its events wait there, retrying (on the next broker node first)");
                    Some(backoff)
                }
            };
            if let Some(delay) = pause {
                // Mail is not leaving: exactly when the gauges matter.
                self.report_backlog().await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopping(&mut shutdown) => {}
                }
                continue;
            }
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = sweep.tick() => self.report_backlog().await,
                _ = stopping(&mut shutdown) => {}
            }
        }
        tracing::info!("outbox relay stopped");
    }
}

/// Resolves once `shutdown` is true (at once if it already is), or when
/// its sender is gone.
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
