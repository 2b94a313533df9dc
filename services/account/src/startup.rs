//! Builds the application exactly as `main` runs it, so tests run the same thing.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::error::{JsonPayloadError, UrlencodedError};
use actix_web::middleware::{Condition, DefaultHeaders, from_fn};
use actix_web::{App, HttpServer, ResponseError, web};
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::accounts::Accounts;
use crate::broker::Publisher;
use crate::config::Settings;
use crate::db;
use crate::error::AppError;
use crate::health::Health;
use crate::housekeeping::Housekeeping;
use crate::outbox::Relay;
use crate::password::Hasher;
use crate::ratelimit::Limits;
use crate::routes::{api, openapi, ops, pages};
use crate::state::AppState;
use crate::telemetry;
use crate::token::KeyRing;
use crate::views::Views;

/// Largest request body accepted (JSON or form).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The Prometheus recorder: global to the process, installed once.
pub fn metrics_handle() -> PrometheusHandle {
    shared::telemetry::prometheus(&[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// A running service: the public and admin HTTP servers plus the outbox relay.
pub struct Application {
    port: u16,
    admin_port: u16,
    server: actix_web::dev::Server,
    admin: actix_web::dev::Server,
    relay_task: JoinHandle<()>,
    housekeeping: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

/// Prepares the database: creates it if missing (retrying while PostgreSQL starts) and migrates.
pub async fn prepare_database(settings: &Settings) -> Result<(), anyhow::Error> {
    let url = settings.database_url.expose_secret();
    let mut delay = Duration::from_millis(250);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match db::create_database_if_missing(url).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, retry_in = ?delay, "database not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.context("the database is unreachable")),
        }
    }
    let applied = db::migrate(url).await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied migrations");
    }
    Ok(())
}

impl Application {
    /// Prepares the database, binds the listener and starts the relay.
    pub async fn build(settings: Settings) -> Result<Self, anyhow::Error> {
        prepare_database(&settings).await?;
        let settings = Arc::new(settings);
        let pool = db::pool(
            settings.database_url.expose_secret(),
            settings.database_pool_size as usize,
        )?;
        let keys = match &settings.token_keys {
            Some(keys) => keys.clone(),
            None => {
                tracing::warn!(
                    "ACCOUNT_TOKEN_KEYS is not set: verification links are sealed with a random key \
                     that dies with this process; set ACCOUNT_TOKEN_KEYS (see `account keygen`) in production"
                );
                KeyRing::ephemeral()
            }
        };
        let publisher = Arc::new(Publisher::new(
            settings.amqp_url.clone(),
            settings.topology.clone(),
        ));
        let relay = Relay::new(
            pool.clone(),
            publisher.clone(),
            settings.outbox_sweep_interval,
        );
        let limits = Limits::new(settings.rate_limits, pool.clone());
        let listener = TcpListener::bind(&settings.bind)
            .map_err(|e| anyhow::anyhow!("cannot listen on ACCOUNT_BIND={}: {e}", settings.bind))?;
        let port = listener.local_addr()?.port();
        let admin_listener = TcpListener::bind(&settings.admin_bind).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on ACCOUNT_ADMIN_BIND={}: {e}",
                settings.admin_bind
            )
        })?;
        let admin_port = admin_listener.local_addr()?.port();
        let hasher = Hasher::new(
            settings.argon2,
            settings.hash_concurrency(),
            settings.hash_queue,
        );
        let accounts = Accounts::new(pool.clone(), hasher, keys, relay.clone(), settings.clone());
        let state = web::Data::new(AppState {
            accounts: accounts.clone(),
            limits: limits.clone(),
            views: Views::new(settings.brand.clone()),
            health: Health::new(pool.clone(), publisher),
            metrics: {
                let handle = metrics_handle();
                crate::metrics::describe();
                handle
            },
            settings: settings.clone(),
        });

        let public_state = state.clone();
        let hsts = settings.cookie_secure;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(public_state.clone())
                .app_data(json_config())
                .app_data(form_config())
                .app_data(query_config())
                // Only over HTTPS (what Secure cookies mean): browsers then
                // refuse plain HTTP to this host for two years.
                .wrap(Condition::new(
                    hsts,
                    DefaultHeaders::new().add((
                        "strict-transport-security",
                        "max-age=63072000; includeSubDomains",
                    )),
                ))
                .wrap(from_fn(telemetry::observe))
                // Before the /api/v1 scope, which answers 404 for what it lacks.
                .configure(openapi::configure)
                .configure(api::configure)
                .configure(pages::configure)
                .configure(ops::probes)
                .default_service(web::to(not_found))
        })
        .on_connect(crate::routes::peer::on_connect)
        .workers(settings.workers())
        .shutdown_timeout(30)
        .listen(listener)?
        .run();
        // The admin listener: one worker, its own signals off (the public
        // server's handle stops it).
        let admin = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(from_fn(telemetry::observe))
                .configure(ops::admin)
                .default_service(web::to(not_found))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(5)
        .listen(admin_listener)?
        .run();

        let (shutdown, rx) = watch::channel(false);
        let relay_task = tokio::spawn(relay.run(rx.clone()));
        let housekeeping = tokio::spawn(
            Housekeeping {
                pool,
                limits,
                settings: settings.clone(),
                accounts,
            }
            .run(rx),
        );
        Ok(Self {
            port,
            admin_port,
            server,
            admin,
            relay_task,
            housekeeping,
            shutdown,
        })
    }

    /// The bound port (useful with `ACCOUNT_BIND=127.0.0.1:0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin listener's port (`/metrics`, probes).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// A handle that stops the server gracefully.
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT/SIGTERM (or the handle stops it), then stops the relay after its batch.
    pub async fn run_until_stopped(self) -> Result<(), anyhow::Error> {
        let admin = self.admin.handle();
        let admin_task = tokio::spawn(self.admin);
        let served = self.server.await;
        admin.stop(true).await;
        let _ = admin_task.await;
        let _ = self.shutdown.send(true);
        let _ = self.relay_task.await;
        let _ = self.housekeeping.await;
        served?;
        Ok(())
    }
}

async fn not_found() -> actix_web::HttpResponse {
    AppError::NotFound.error_response()
}

/// A bad body or query as the route's kind of answer: problem+json under
/// `/api/`, the site's error page elsewhere (never actix's text/plain).
fn bad_input(req: &actix_web::HttpRequest, err: AppError) -> actix_web::Error {
    if req.path().starts_with("/api/") {
        return err.into();
    }
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return err.into();
    };
    let page = crate::routes::forms::page(req, state);
    let response = state.views.error_page(&page, err);
    actix_web::error::InternalError::from_response("bad input", response).into()
}

fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, req| {
        bad_input(req, AppError::BadRequest(format!("invalid query: {err}")))
    })
}

fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_BODY_BYTES)
        .error_handler(|err, _req| {
            match err {
                JsonPayloadError::OverflowKnownLength { .. }
                | JsonPayloadError::Overflow { .. } => AppError::PayloadTooLarge,
                JsonPayloadError::ContentType => AppError::UnsupportedMediaType,
                other => AppError::BadRequest(format!("invalid JSON body: {other}")),
            }
            .into()
        })
}

fn form_config() -> web::FormConfig {
    web::FormConfig::default()
        .limit(MAX_BODY_BYTES)
        .error_handler(|err, req| {
            let err = match err {
                UrlencodedError::Overflow { .. } => AppError::PayloadTooLarge,
                UrlencodedError::ContentType => AppError::UnsupportedMediaType,
                other => AppError::BadRequest(format!("invalid form body: {other}")),
            };
            bad_input(req, err)
        })
}
