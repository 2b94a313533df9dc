//! `account [serve|migrate|keygen]`: reads arguments and configuration, sets
//! up logging, runs.

use account::config::{Cli, Command};
use account::startup::{Application, prepare_database};
use account::token::{KeyRing, generate_key_spec};
use shared::config::{exit_with, parse_or_exit};

// Tokio's multi-thread runtime, not actix's: diesel-async's migration harness
// runs on `block_in_place`, which a current-thread runtime refuses.
#[tokio::main]
async fn main() {
    let cli: Cli = parse_or_exit();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Keygen { kid } = command {
        let kid = kid.unwrap_or_else(|| chrono::Utc::now().format("k%Y%m%d").to_string());
        let spec = generate_key_spec(&kid);
        if let Err(e) = KeyRing::parse(&spec) {
            eprintln!("account keygen: {e}");
            std::process::exit(2);
        }
        println!("{spec}");
        return;
    }
    let settings = cli.settings.load().unwrap_or_else(|e| exit_with(e));
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    shared::telemetry::init(settings.log_json, "info,account=info");
    let result = match command {
        Command::Migrate => prepare_database(&settings).await,
        _ => serve(settings).await,
    };
    if let Err(e) = result {
        tracing::error!(error = format!("{e:#}"), "account service failed");
        std::process::exit(1);
    }
}

async fn serve(settings: account::config::Settings) -> Result<(), anyhow::Error> {
    let public = settings.public_url.clone();
    let app = Application::build(settings).await?;
    tracing::info!(
        port = app.port(),
        admin_port = app.admin_port(),
        signup = %format!("{}signup", public),
        "account service listening"
    );
    app.run_until_stopped().await
}
