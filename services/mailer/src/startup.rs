//! Builds the mailer exactly as `main` runs it, so tests can build the same
//! thing in-process: the outlet, the pipeline, the consumer and the small
//! operations server.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::config::{Outbound, Settings};
use crate::consumer::Consumer;
use crate::outlet::Outlet;
use crate::pipeline::Pipeline;

/// The Prometheus recorder: global to the process, installed once.
pub fn metrics_handle() -> PrometheusHandle {
    shared::telemetry::prometheus(&[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 300.0, 3600.0,
    ])
}

/// A built mailer, not yet consuming.
pub struct Application {
    port: u16,
    settings: Arc<Settings>,
    consumer: Consumer,
    server: actix_web::dev::Server,
}

impl Application {
    /// Builds the outlet the settings describe and the rest around it.
    pub async fn build(settings: Settings) -> Result<Self, anyhow::Error> {
        let outlet = Outlet::from_settings(&settings)?;
        Self::build_with(settings, outlet).await
    }

    /// Builds the mailer around a given outlet (a stub in tests).
    pub async fn build_with(settings: Settings, outlet: Outlet) -> Result<Self, anyhow::Error> {
        for warning in settings.warnings() {
            tracing::warn!("{warning}");
        }
        let pipeline = Pipeline::new(&settings, outlet)?;
        match pipeline.outlet.check().await {
            Ok(()) => tracing::info!(
                outlet = pipeline.outlet.name(),
                "outbound mail is reachable"
            ),
            Err(e) => tracing::warn!(
                outlet = pipeline.outlet.name(),
                error = %e,
                "outbound mail is not reachable yet; mail will wait in the retry queues"
            ),
        }
        if let Outbound::Dir(dir) = &settings.outbound
            && matches!(pipeline.outlet, Outlet::Dir(..))
        {
            tracing::info!(folder = %dir.display(), "no MAILER_SMTP_URL: mail is written to this folder as .eml files");
        }
        let settings = Arc::new(settings);
        let consumer = Consumer::new(settings.clone(), pipeline);
        let metrics = metrics_handle();
        crate::metrics::describe(&consumer.pipeline.templates, &consumer.connected);
        let (server, port) = crate::http::serve(
            &settings.bind,
            consumer.connected.clone(),
            consumer.pipeline.outlet.clone(),
            metrics,
        )?;
        tracing::info!(port, "health and metrics listening");
        Ok(Self {
            port,
            settings,
            consumer,
            server,
        })
    }

    /// The port of the operations server (useful with `MAILER_BIND=127.0.0.1:0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the consumer holds a broker session (what `/readyz` reports).
    pub fn connected(&self) -> Arc<AtomicBool> {
        self.consumer.connected.clone()
    }

    /// The pipeline, e.g. to look at a stub outlet's mail.
    pub fn pipeline(&self) -> &crate::pipeline::Pipeline {
        &self.consumer.pipeline
    }

    /// Consumes until `stop` counts one request to stop, then finishes
    /// in-flight mail within MAILER_SHUTDOWN_TIMEOUT (+5 s for a broker that
    /// hangs); a second request stops waiting. Unacked mail returns to the
    /// queue when the connection ends.
    pub async fn run(self, mut stop: watch::Receiver<u32>) -> Result<(), anyhow::Error> {
        let server_handle = self.server.handle();
        let server_task = tokio::spawn(self.server);
        let (tx, rx) = watch::channel(false);
        let purge = self.consumer.pipeline.store.clone().map(|store| {
            tokio::spawn(async move {
                let mut hourly = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    hourly.tick().await;
                    match store.purge().await {
                        Ok(n) if n > 0 => {
                            tracing::info!(count = n, "purged old ids from the dedupe store")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "could not purge the dedupe store"),
                    }
                }
            })
        });
        let consumer = tokio::spawn(self.consumer.run(rx));
        let _ = stop.wait_for(|n| *n >= 1).await;
        let _ = tx.send(true);
        let limit = self.settings.shutdown_timeout + Duration::from_secs(5);
        tokio::select! {
            r = tokio::time::timeout(limit, consumer) => if r.is_err() {
                tracing::warn!("the worker did not stop in time; exiting, unacked mail returns to the queue");
            },
            _ = stop.wait_for(|n| *n >= 2) => tracing::warn!("second signal: exiting now; unacked mail returns to the queue"),
        }
        if let Some(purge) = purge {
            purge.abort();
        }
        server_handle.stop(true).await;
        let _ = server_task.await;
        Ok(())
    }
}
