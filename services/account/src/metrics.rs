//! What `/metrics` shows from the first scrape on: `account_build_info` and
//! every counter the dashboards and alerts use, at zero, for the label values
//! they key on. A counter that first appears at 1 hides that first event from
//! `increase()`/`rate()`; one that never appears makes a query look broken.
//!
//! Label values registered here (the code emits these, and maybe others):
//! - `account_signups_total{outcome}`: `created`, `renewed`, `exists`
//! - `account_verifications_total{outcome}`: `verified`, `token-invalid`,
//!   `token-expired`, `token-used`, `verified-by-code`, `code-invalid`,
//!   `password-needed`, `password-wrong`
//! - `account_logins_total{outcome}`: `ok`, `not-verified`, `bad-credentials`
//! - `account_resends_total{sent}`: `yes`, `no`
//! - `account_hash_jobs_total`: argon2 jobs run (hashes and checks)
//! - `account_outbox_published_total`
//! - the gauges `account_outbox_backlog`, `account_outbox_oldest_seconds`
//! - `account_events_total{type}`: every account event type, recorded into
//!   the outbox (`created`, `verified`, `password_changed`, `email_changed`,
//!   `deleted`)
//!
//! Histograms (`http_request_duration_seconds`,
//! `account_outbox_publish_latency_seconds`) and `http_requests_total` appear
//! with the first request or publish: their labels (route, status) are only
//! known then.

/// The crate version and the git revision it was built from (`build.rs`:
/// `SIGNUP_REVISION`, else `git rev-parse`, else `unknown`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("SIGNUP_REVISION");

/// Installs the Prometheus recorder if it is not yet (idempotent), then
/// registers the build info and the counters at zero. Call once at start.
pub fn describe() {
    let _ = crate::startup::metrics_handle();

    metrics::describe_gauge!(
        "account_build_info",
        "Always 1; the version and git revision of the running binary as labels"
    );
    metrics::gauge!("account_build_info", "version" => VERSION, "revision" => REVISION).set(1.0);

    metrics::describe_counter!("account_signups_total", "Sign-ups by outcome");
    for outcome in ["created", "renewed", "exists"] {
        metrics::counter!("account_signups_total", "outcome" => outcome).increment(0);
    }
    metrics::describe_counter!(
        "account_verifications_total",
        "Verification attempts by outcome"
    );
    for outcome in [
        "verified",
        "token-invalid",
        "token-expired",
        "token-used",
        "verified-by-code",
        "code-invalid",
        "password-needed",
        "password-wrong",
    ] {
        metrics::counter!("account_verifications_total", "outcome" => outcome).increment(0);
    }
    metrics::describe_counter!("account_logins_total", "Logins by outcome");
    for outcome in ["ok", "not-verified", "bad-credentials"] {
        metrics::counter!("account_logins_total", "outcome" => outcome).increment(0);
    }
    metrics::describe_counter!(
        "account_resends_total",
        "Verification resend requests, by whether a mail was queued"
    );
    for sent in ["yes", "no"] {
        metrics::counter!("account_resends_total", "sent" => sent).increment(0);
    }
    metrics::describe_counter!(
        "account_hash_jobs_total",
        "argon2 jobs run: password hashes and password checks"
    );
    metrics::counter!("account_hash_jobs_total").increment(0);
    metrics::describe_counter!(
        "account_events_total",
        "Account events written to the outbox, by type"
    );
    for kind in shared::AccountEventType::ALL {
        metrics::counter!("account_events_total", "type" => kind.as_str()).increment(0);
    }
    metrics::describe_counter!(
        "account_outbox_published_total",
        "Outbox events the broker confirmed"
    );
    metrics::counter!("account_outbox_published_total").increment(0);

    metrics::describe_gauge!(
        "account_outbox_backlog",
        "Outbox events not yet published (each relay sweep)"
    );
    metrics::gauge!("account_outbox_backlog").set(0.0);
    metrics::describe_gauge!(
        "account_outbox_oldest_seconds",
        "How long the oldest unpublished outbox event has waited (each relay sweep)"
    );
    metrics::gauge!("account_outbox_oldest_seconds").set(0.0);
    metrics::describe_histogram!(
        "account_outbox_publish_latency_seconds",
        metrics::Unit::Seconds,
        "From the outbox insert to the broker's confirm"
    );
    metrics::describe_counter!(
        "http_requests_total",
        "HTTP requests by method, route pattern and status"
    );
    metrics::describe_histogram!(
        "http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request duration by method, route pattern and status"
    );
}
