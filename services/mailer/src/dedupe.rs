//! Event ids already handed to SMTP. In this process (`Sent`): a redelivered
//! event (after a lost ack or a reconnect) is acked without a second mail;
//! bounded, oldest forgotten first. Across mailers (`Store`, optional): the
//! same for a redelivery to another mailer after this one died.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

/// A bounded set of recently sent event ids.
pub struct Sent {
    inner: Mutex<(HashSet<Uuid>, VecDeque<Uuid>)>,
    capacity: usize,
}

impl Sent {
    /// Remembers up to `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
            capacity: capacity.max(1),
        }
    }

    /// Whether `id` was sent by this process.
    pub fn contains(&self, id: &Uuid) -> bool {
        self.inner.lock().map(|g| g.0.contains(id)).unwrap_or(false)
    }

    /// Records `id` as sent.
    pub fn insert(&self, id: Uuid) {
        if let Ok(mut g) = self.inner.lock()
            && g.0.insert(id)
        {
            g.1.push_back(id);
            if g.1.len() > self.capacity
                && let Some(old) = g.1.pop_front()
            {
                g.0.remove(&old);
            }
        }
    }
}

/// The shared idempotency store (`MAILER_DEDUPE_URL`, PostgreSQL). Before
/// sending, a mailer claims the event id; right after the SMTP 250 it marks
/// it accepted. Another copy of the event (a redelivery after this mailer
/// died before its ack, or a second copy the outbox relay published after a
/// lost confirm) then finds it accepted and is acked without a mail, or
/// finds it claimed by a live sender and waits in a retry queue until that
/// one is done. A claim older than the lease is taken over: its mailer died
/// before the 250, and the mail must still go (at least once). What is left
/// is the moment between the server taking a mail and its 250 reaching the
/// mailer. Best effort: while the store is unreachable the mailer sends
/// anyway (a duplicate is better than a delay) and says so.
pub struct Store {
    url: SecretString,
    retention: Duration,
    client: tokio::sync::Mutex<Option<std::sync::Arc<tokio_postgres::Client>>>,
    /// When the last connection attempt failed: no storm of reconnects.
    failed_at: std::sync::Mutex<Option<Instant>>,
}

/// Longest a check or a record may take; the mail does not wait longer.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two connection attempts after a failure.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

const SCHEMA: &str = "SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS mailer_accepted (
    event_id    uuid PRIMARY KEY,
    -- when a mailer last claimed the event for sending
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    -- when the SMTP server accepted it (250); NULL while being sent
    accepted_at timestamptz
);
CREATE INDEX IF NOT EXISTS mailer_accepted_claimed ON mailer_accepted (claimed_at);";

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This mailer sends it (also when the store cannot be reached).
    Mine,
    /// A mailer already had it accepted by SMTP: do not send again.
    Accepted,
    /// Another mailer is sending it right now: ask again later.
    Busy,
}

/// Whether a PostgreSQL URL asks for TLS (`sslmode=require`, `verify-ca`
/// or `verify-full`).
fn wants_tls(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| {
        u.query_pairs()
            .any(|(k, v)| k == "sslmode" && matches!(&*v, "require" | "verify-ca" | "verify-full"))
    })
}

impl Store {
    /// A store at `url`, connected on first use; ids are kept `retention`.
    pub fn new(url: SecretString, retention: Duration) -> Self {
        Self {
            url,
            retention,
            client: tokio::sync::Mutex::new(None),
            failed_at: std::sync::Mutex::new(None),
        }
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, anyhow::Error> {
        let url = self.url.expose_secret();
        let client = if wants_tls(url) {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            );
            let (client, conn) = tokio_postgres::connect(url, tls).await?;
            tokio::spawn(conn);
            client
        } else {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client
        };
        client.batch_execute(SCHEMA).await?;
        Ok(client)
    }

    /// Runs `query` on the shared connection, (re)connecting as needed.
    async fn run<T>(
        &self,
        query: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, anyhow::Error> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = None;
            let recent = self
                .failed_at
                .lock()
                .ok()
                .and_then(|f| *f)
                .is_some_and(|t| t.elapsed() < RECONNECT_PAUSE);
            if recent {
                anyhow::bail!("the store was unreachable a moment ago");
            }
            match self.connect().await {
                Ok(c) => *guard = Some(std::sync::Arc::new(c)),
                Err(e) => {
                    if let Ok(mut f) = self.failed_at.lock() {
                        *f = Some(Instant::now());
                    }
                    return Err(e);
                }
            }
        }
        let client = guard.as_ref().expect("connected just above").clone();
        drop(guard);
        Ok(query(&client).await?)
    }

    /// Claims `id` for sending, unless a mailer had it accepted or holds a
    /// claim younger than `lease`.
    pub async fn claim(&self, id: Uuid, lease: Duration) -> Claim {
        let key = id.to_string();
        let lease = lease.as_secs_f64();
        let found = tokio::time::timeout(
            STORE_TIMEOUT,
            self.run(async |c| {
                let mine = c
                    .query_opt(
                        "INSERT INTO mailer_accepted AS a (event_id) VALUES ($1::text::uuid)
                         ON CONFLICT (event_id) DO UPDATE SET claimed_at = now()
                         WHERE a.accepted_at IS NULL
                           AND a.claimed_at < now() - make_interval(secs => $2)
                         RETURNING 1",
                        &[&key, &lease],
                    )
                    .await?;
                if mine.is_some() {
                    return Ok(Claim::Mine);
                }
                let accepted = c
                    .query_opt(
                        "SELECT 1 FROM mailer_accepted
                         WHERE event_id = $1::text::uuid AND accepted_at IS NOT NULL",
                        &[&key],
                    )
                    .await?;
                Ok(if accepted.is_some() {
                    Claim::Accepted
                } else {
                    Claim::Busy
                })
            }),
        )
        .await;
        match found {
            Ok(Ok(claim)) => claim,
            Ok(Err(e)) => {
                tracing::warn!(event_id = %id, error = %e, "the dedupe store is unreachable; sending without its check");
                Claim::Mine
            }
            Err(_) => {
                tracing::warn!(event_id = %id, "the dedupe store did not answer in time; sending without its check");
                Claim::Mine
            }
        }
    }

    /// Gives a claim up after a failed send, so a retry is not kept waiting.
    pub async fn release(&self, id: Uuid) {
        let sql = "DELETE FROM mailer_accepted
                   WHERE event_id = $1::text::uuid AND accepted_at IS NULL";
        let _ = self.execute(sql, id).await;
    }

    /// Records `id` as accepted by SMTP.
    pub async fn record(&self, id: Uuid) {
        let sql = "INSERT INTO mailer_accepted (event_id, accepted_at)
                   VALUES ($1::text::uuid, now())
                   ON CONFLICT (event_id) DO UPDATE SET accepted_at = now()";
        if !self.execute(sql, id).await {
            tracing::warn!(event_id = %id, "could not record the sent mail in the dedupe store; a redelivery to another mailer would send it again");
        }
    }

    /// Runs one statement about `id`, within the store's time bound.
    async fn execute(&self, sql: &str, id: Uuid) -> bool {
        let key = id.to_string();
        let run = self.run(async |c| c.execute(sql, &[&key]).await);
        matches!(tokio::time::timeout(STORE_TIMEOUT, run).await, Ok(Ok(_)))
    }

    /// Deletes ids older than the retention; returns how many.
    pub async fn purge(&self) -> Result<u64, anyhow::Error> {
        let keep = self.retention.as_secs_f64();
        self.run(async |c| {
            c.execute(
                "DELETE FROM mailer_accepted WHERE claimed_at < now() - make_interval(secs => $1)",
                &[&keep],
            )
            .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_only_when_the_url_asks_for_it() {
        for (url, tls) in [
            ("postgres://u@db/x", false),
            ("postgres://u@db/x?sslmode=disable", false),
            ("postgres://u@db/x?sslmode=prefer", false),
            ("postgres://u@db/x?application_name=require", false),
            ("postgres://u@db/x?sslmode=require", true),
            (
                "postgres://u@db/x?connect_timeout=5&sslmode=verify-full",
                true,
            ),
            ("postgres://u@db/x?sslmode=verify-ca", true),
            ("not a url", false),
        ] {
            assert_eq!(wants_tls(url), tls, "{url}");
        }
    }

    #[test]
    fn remembers_the_most_recent_ids() {
        let s = Sent::new(2);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        s.insert(a);
        s.insert(b);
        s.insert(b);
        assert!(s.contains(&a) && s.contains(&b));
        s.insert(c);
        assert!(!s.contains(&a) && s.contains(&b) && s.contains(&c));
    }
}
