//! `mailer` runs the worker; `mailer dead list` and `mailer dead requeue
//! --all | ID...` handle dead letters; `mailer render` previews a mail. Arguments are read first, so
//! `--help` and `--version` work whatever the environment holds.

use mailer::config::{Cli, Command};
use mailer::startup::Application;
use shared::config::{ConfigError, exit_with, parse_or_exit};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[tokio::main]
async fn main() {
    let cli: Cli = parse_or_exit();
    let settings = cli.settings.load().unwrap_or_else(|e| exit_with(e));
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    shared::telemetry::init(settings.log_json, "info");
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(settings).await,
        Command::Dead(cmd) => mailer::admin::dead(&settings, &cmd).await.map(|_| ()),
        Command::Render(args) => {
            if let Err(e) = mailer::preview::render(&settings, &args) {
                // A refusal is the answer the operator asked for, not a log line.
                eprintln!("mailer render: {:#}", exit_if_config(e));
                std::process::exit(1);
            }
            Ok(())
        }
    };
    if let Err(e) = result {
        tracing::error!(error = format!("{:#}", exit_if_config(e)), "mailer failed");
        std::process::exit(1);
    }
}

/// A configuration error (such as a template folder that does not compile)
/// stops the process with its one line naming the variable; others return.
fn exit_if_config(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<ConfigError>() {
        Ok(config) => exit_with(config),
        Err(e) => e,
    }
}

async fn run(settings: mailer::config::Settings) -> Result<(), anyhow::Error> {
    let app = Application::build(settings).await?;
    let (tx, rx) = watch::channel(0u32);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight mail"),
                _ = int.recv() => tracing::info!("SIGINT: finishing in-flight mail"),
            }
            tx.send_modify(|n| *n += 1);
        }
    });
    app.run(rx).await
}
