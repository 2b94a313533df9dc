//! Logging, set up once per binary in the same shape in both services.

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber. `json` selects JSON lines; the
/// filter comes from `RUST_LOG`, or `default_filter` when that is unset.
pub fn init(json: bool, default_filter: &str) {
    let from_env = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // lapin logs every lost connection at ERROR, once per layer (I/O loop,
    // connection, channels), so a routine broker restart fired alerts keyed
    // on ERROR. Our code sees the same error through lapin's API and logs it
    // once, as a warning saying what happens next. `RUST_LOG=lapin=...`
    // still shows lapin's own lines.
    if !from_env.contains("lapin") {
        filter = filter.add_directive("lapin=off".parse().expect("static directive"));
    }
    let filter = filter
        // lapin logs a returned message with its whole body, which may hold a
        // verification link; our own code logs the event id instead.
        .add_directive(
            "lapin::returned_messages=off"
                .parse()
                .expect("static directive"),
        )
        // tokio-postgres logs every statement's parameters at debug level:
        // password hashes, session hashes, mail payloads with their links.
        .add_directive("tokio_postgres=info".parse().expect("static directive"))
        // lettre logs every byte it writes at debug level: the AUTH line
        // (the SMTP password in base64) and the whole mail with its link.
        // Capped here so even RUST_LOG=debug never prints them.
        .add_directive(
            "lettre::transport::smtp::client::async_connection=info"
                .parse()
                .expect("static directive"),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests build several apps in one process) is harmless.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// The process's Prometheus recorder with `buckets` for every histogram:
/// installed on first call (a process has one), the same handle after.
pub fn prometheus(buckets: &[f64]) -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(buckets)
                .expect("buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}
