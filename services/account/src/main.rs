//! `account [serve|migrate|keygen]`: reads configuration, sets up logging, runs.

use account::config::Settings;
use account::startup::{Application, prepare_database};
use account::token::generate_key_spec;

const USAGE: &str = "usage: account [serve | migrate | keygen [KID]]";

// Tokio's multi-thread runtime, not actix's: diesel-async's migration harness
// needs block_in_place (see shared CRATES notes).
#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("serve");
    if command == "keygen" {
        let kid = args
            .get(1)
            .cloned()
            .unwrap_or_else(|| chrono::Utc::now().format("k%Y%m%d").to_string());
        println!("{}", generate_key_spec(&kid));
        return;
    }
    if !matches!(command, "serve" | "migrate") {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    shared::telemetry::init(settings.log_json, "info,account=info");
    let result = match command {
        "migrate" => prepare_database(&settings).await,
        _ => serve(settings).await,
    };
    if let Err(e) = result {
        tracing::error!(error = format!("{e:#}"), "account service failed");
        std::process::exit(1);
    }
}

async fn serve(settings: Settings) -> Result<(), anyhow::Error> {
    let public = settings.public_url.clone();
    account::metrics::describe();
    let app = Application::build(settings).await?;
    tracing::info!(
        port = app.port(),
        signup = %format!("{}signup", public),
        "account service listening"
    );
    app.run_until_stopped().await
}
