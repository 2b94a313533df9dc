//! PostgreSQL: the pool, database creation, embedded migrations.
//!
//! diesel-async without libpq. TLS (`sslmode=require|verify-ca|verify-full`)
//! goes through tokio-postgres-rustls, because `AsyncPgConnection::establish`
//! never uses TLS.

use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use url::Url;

/// The migrations in `migrations/`, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The connection pool.
pub type DbPool = Pool<AsyncPgConnection>;
/// A pooled connection.
pub type DbConn = Object<AsyncPgConnection>;

fn wants_tls(url: &str) -> bool {
    Url::parse(url).is_ok_and(|u| {
        u.query_pairs()
            .any(|(k, v)| k == "sslmode" && matches!(&*v, "require" | "verify-ca" | "verify-full"))
    })
}

fn establish(url: &str) -> BoxFuture<'_, Result<AsyncPgConnection, ConnectionError>> {
    async move {
        if !wants_tls(url) {
            return AsyncPgConnection::establish(url).await;
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(root_store())
                .with_no_client_auth(),
        );
        let (client, conn) = tokio_postgres::connect(url, tls)
            .await
            .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
        AsyncPgConnection::try_from_client_and_connection(client, conn).await
    }
    .boxed()
}

fn root_store() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    roots
}

/// Whether a query failed because the database went away (a connection
/// dropped by a restart, a failover or an operator) rather than because of
/// the query: the request may be retried, so it is a 503, not a 500.
///
/// diesel-async reports a connection it can no longer use as
/// `UnableToSendCommand` (also the rollback after a drop inside a
/// transaction); a lone query cut by the server gets the server's own
/// error, which diesel does not classify: it is told by PostgreSQL's
/// message for the SQLSTATEs 57P01-57P03 (administrator shutdown, crash of
/// another backend, shutting down) and 08006 (connection failure).
pub fn is_unavailable(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    const GONE: [&str; 5] = [
        "terminating connection due to administrator command",
        "terminating connection due to crash of another server process",
        "terminating connection due to unexpected postmaster exit",
        "the database system is shutting down",
        "server closed the connection unexpectedly",
    ];
    match e {
        Error::DatabaseError(
            DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection,
            _,
        )
        | Error::BrokenTransactionManager => true,
        Error::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            GONE.iter().any(|m| info.message().contains(m))
        }
        _ => false,
    }
}

/// A pool of at most `size` connections.
pub fn pool(url: &str, size: usize) -> Result<DbPool, anyhow::Error> {
    let mut config = ManagerConfig::default();
    config.custom_setup = Box::new(establish);
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    Ok(Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()?)
}

/// Creates the database named in `url` if it does not exist (connecting to `postgres`).
pub async fn create_database_if_missing(url: &str) -> Result<(), anyhow::Error> {
    let parsed = Url::parse(url)?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    if let Ok(_conn) = establish(url).await {
        return Ok(());
    }
    let mut admin = parsed.clone();
    admin.set_path("/postgres");
    let mut conn = establish(admin.as_str()).await?;
    let exists: Vec<String> =
        diesel::sql_query("SELECT datname FROM pg_database WHERE datname = $1")
            .bind::<diesel::sql_types::Text, _>(&name)
            .load::<DbName>(&mut conn)
            .await?
            .into_iter()
            .map(|d| d.datname)
            .collect();
    if exists.is_empty() {
        let quoted = name.replace('"', "\"\"");
        match diesel::sql_query(format!("CREATE DATABASE \"{quoted}\""))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created the database"),
            // Another instance created it at the same moment.
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => {}
            Err(e) if e.to_string().contains("already exists") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct DbName {
    #[diesel(sql_type = diesel::sql_types::Text)]
    datname: String,
}

/// Runs the pending migrations. Needs a multi-thread tokio runtime (diesel-async uses block_in_place).
pub async fn migrate(url: &str) -> Result<Vec<String>, anyhow::Error> {
    let mut conn = establish(url).await?;
    // Several instances may start at once: one migrates, the others wait.
    diesel::sql_query("SELECT pg_advisory_lock(7262890001)")
        .execute(&mut conn)
        .await?;
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map(|v| v.iter().map(|m| m.to_string()).collect::<Vec<_>>())
        .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
    Ok(applied)
}
