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

/// The shared idempotency store (`MAILER_DEDUPE_URL`, PostgreSQL): every
/// mailer records an event id as accepted right after the SMTP 250 and
/// checks it before sending. It narrows the window in which a mailer killed
/// between the 250 and its ack lets another mailer send the mail again, to
/// the time of one INSERT. Best effort: while the store is unreachable the
/// mailer sends anyway (a duplicate is better than a delay) and says so.
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

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS mailer_accepted (
    event_id    uuid PRIMARY KEY,
    accepted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS mailer_accepted_at ON mailer_accepted (accepted_at);";

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
        let wants_tls = url::Url::parse(url).is_ok_and(|u| {
            u.query_pairs().any(|(k, v)| {
                k == "sslmode" && matches!(&*v, "require" | "verify-ca" | "verify-full")
            })
        });
        let client = if wants_tls {
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

    /// Whether a mailer already recorded `id` as accepted by SMTP.
    pub async fn accepted(&self, id: Uuid) -> bool {
        let key = id.to_string();
        let found = tokio::time::timeout(
            STORE_TIMEOUT,
            self.run(async |c| {
                c.query_opt(
                    "SELECT 1 FROM mailer_accepted WHERE event_id = $1::text::uuid",
                    &[&key],
                )
                .await
            }),
        )
        .await;
        match found {
            Ok(Ok(row)) => row.is_some(),
            Ok(Err(e)) => {
                tracing::warn!(event_id = %id, error = %e, "the dedupe store is unreachable; sending without its check");
                false
            }
            Err(_) => {
                tracing::warn!(event_id = %id, "the dedupe store did not answer in time; sending without its check");
                false
            }
        }
    }

    /// Records `id` as accepted by SMTP.
    pub async fn record(&self, id: Uuid) {
        let key = id.to_string();
        let done = tokio::time::timeout(
            STORE_TIMEOUT,
            self.run(async |c| {
                c.execute(
                    "INSERT INTO mailer_accepted (event_id) VALUES ($1::text::uuid) \
                     ON CONFLICT DO NOTHING",
                    &[&key],
                )
                .await
            }),
        )
        .await;
        if !matches!(done, Ok(Ok(_))) {
            tracing::warn!(event_id = %id, "could not record the sent mail in the dedupe store; a redelivery to another mailer would send it again");
        }
    }

    /// Deletes ids older than the retention; returns how many.
    pub async fn purge(&self) -> Result<u64, anyhow::Error> {
        let keep = self.retention.as_secs_f64();
        self.run(async |c| {
            c.execute(
                "DELETE FROM mailer_accepted WHERE accepted_at < now() - make_interval(secs => $1)",
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
