//! `mailer` runs the worker; `mailer dead list` and `mailer dead requeue
//! --all | ID...` handle dead letters.

use mailer::config::{Outbound, Settings};
use mailer::worker::Worker;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str = "usage: mailer [run | dead list | dead requeue (--all | ID...)]";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    shared::telemetry::init(settings.log_json, "info");
    let result = match args.as_slice() {
        [] | ["run"] => run(settings).await,
        ["dead", "list"] => mailer::admin::dead(&settings, None).await.map(|_| ()),
        ["dead", "requeue", "--all"] => mailer::admin::dead(&settings, Some(None))
            .await
            .map(|n| eprintln!("{n} requeued")),
        ["dead", "requeue", ids @ ..] if !ids.is_empty() => {
            let ids = ids.iter().map(|s| s.to_string()).collect();
            mailer::admin::dead(&settings, Some(Some(ids)))
                .await
                .map(|n| eprintln!("{n} requeued"))
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        tracing::error!(error = format!("{e:#}"), "mailer failed");
        std::process::exit(1);
    }
}

async fn run(settings: Settings) -> Result<(), anyhow::Error> {
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    let metrics = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0, 300.0, 3600.0,
        ])?
        .install_recorder()?;
    let worker = Worker::new(settings.clone())?;
    mailer::metrics::describe(&worker);
    match worker.channel.check().await {
        Ok(()) => tracing::info!(
            channel = worker.channel.name(),
            "outbound mail is reachable"
        ),
        Err(e) => {
            tracing::warn!(channel = worker.channel.name(), error = %e, "outbound mail is not reachable yet; mail will wait in the retry queues")
        }
    }
    if let Outbound::Dir(dir) = &settings.outbound {
        tracing::info!(folder = %dir.display(), "no MAILER_SMTP_URL: mail is written to this folder as .eml files");
    }
    let (server, port) = mailer::http::serve(&settings.bind, worker.connected.clone(), metrics)?;
    tracing::info!(port, "health and metrics listening");
    let server_handle = server.handle();
    let server_task = tokio::spawn(server);

    let (tx, rx) = tokio::sync::watch::channel(false);
    let consumer = tokio::spawn(worker.run(rx));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight mail"),
        _ = int.recv() => tracing::info!("SIGINT: finishing in-flight mail"),
    }
    let _ = tx.send(true);
    // The worker bounds its drain by MAILER_SHUTDOWN_TIMEOUT; this bounds the
    // rest (a connect or declare hanging on a broker that vanished), and a
    // second signal stops waiting. Unacked mail returns to the queue when
    // the process and its connection end.
    let limit = settings.shutdown_timeout + std::time::Duration::from_secs(5);
    tokio::select! {
        r = tokio::time::timeout(limit, consumer) => if r.is_err() {
            tracing::warn!("the worker did not stop in time; exiting, unacked mail returns to the queue");
        },
        _ = term.recv() => tracing::warn!("second signal: exiting now; unacked mail returns to the queue"),
        _ = int.recv() => tracing::warn!("second signal: exiting now; unacked mail returns to the queue"),
    }
    server_handle.stop(true).await;
    let _ = server_task.await;
    Ok(())
}
