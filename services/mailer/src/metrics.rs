//! What `/metrics` shows from the first scrape on: `mailer_build_info`,
//! `mailer_broker_connected` (0 until the first broker session),
//! `mailer_queue_messages{queue=work|retry|dead}` (0 until the first look) and
//! `mailer_messages_total` at zero for every label pair the alerts and the
//! dashboard key on. A counter that first appears at 1 hides that first
//! event from `increase()`: the first dead letter would raise no alert.
//!
//! `mailer_messages_total{template, outcome}` registered at zero:
//! - `template`: every template the mailer can render (the embedded ones and
//!   those of `MAILER_TEMPLATE_DIR`) and `raw` (events with `content`), each
//!   with `outcome` `sent`, `retried`, `dead`, `held`, `duplicate` and
//!   `deferred`;
//! - `template="invalid"` (an envelope that does not parse, or one over
//!   MAILER_MAX_EVENT_BYTES, never parsed) with `dead`;
//! - `template="unknown"` with `dead`: an event naming a template the mailer
//!   does not know. Publishers choose template names; only names the mailer
//!   knows become label values, so no publisher can grow the series.
//!
//! Histograms (`mailer_smtp_seconds`, `mailer_delivery_seconds`,
//! `mailer_queue_lag_seconds`) appear with the first mail.

use std::collections::BTreeSet;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::templates::Templates;

/// The crate version and the git revision it was built from (`build.rs`:
/// `SIGNUP_REVISION`, else `git rev-parse`, else `unknown`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("SIGNUP_REVISION");

/// The `template` label of events naming a template this mailer cannot render.
pub const UNKNOWN_TEMPLATE: &str = "unknown";

/// The outcomes `mailer_messages_total` counts per template (`held`: put
/// back in a retry queue without counting an attempt, while SMTP is
/// misconfigured; `duplicate`: an event id already accepted by SMTP, acked
/// without sending; `deferred`: another mailer is sending that id right
/// now, looked at again later).
pub const OUTCOMES: [&str; 6] = ["sent", "retried", "dead", "held", "duplicate", "deferred"];

/// Registers the build info, the broker gauge and the counters at zero.
/// Call once, after the Prometheus recorder is installed.
pub fn describe(templates: &Templates, connected: &AtomicBool) {
    metrics::describe_gauge!(
        "mailer_build_info",
        "Always 1; the version and git revision of the running binary as labels"
    );
    metrics::gauge!("mailer_build_info", "version" => VERSION, "revision" => REVISION).set(1.0);

    metrics::describe_gauge!(
        "mailer_broker_connected",
        "1 while consuming from the broker, 0 otherwise"
    );
    if !connected.load(Ordering::Relaxed) {
        metrics::gauge!("mailer_broker_connected").set(0.0);
    }

    metrics::describe_gauge!(
        "mailer_queue_messages",
        "Messages waiting in the work queue, the retry queues and the dead-letter queue (every 5 s)"
    );
    for queue in ["work", "retry", "dead"] {
        metrics::gauge!("mailer_queue_messages", "queue" => queue).set(0.0);
    }

    metrics::describe_counter!(
        "mailer_messages_total",
        "Consumed events by template and outcome (sent, retried, dead, held, duplicate, deferred)"
    );
    let templates: BTreeSet<String> = templates
        .available()
        .map(|(template, _)| template.clone())
        .chain(["raw".to_owned()])
        .collect();
    for template in templates {
        for outcome in OUTCOMES {
            metrics::counter!("mailer_messages_total", "template" => template.clone(), "outcome" => outcome)
                .increment(0);
        }
    }
    metrics::counter!("mailer_messages_total", "template" => UNKNOWN_TEMPLATE, "outcome" => "dead")
        .increment(0);
    metrics::counter!("mailer_messages_total", "template" => "invalid", "outcome" => "dead")
        .increment(0);

    metrics::describe_histogram!(
        "mailer_smtp_seconds",
        metrics::Unit::Seconds,
        "One accepted SMTP exchange (connect to 250), by outlet (label `channel`)"
    );
    metrics::describe_histogram!(
        "mailer_delivery_seconds",
        metrics::Unit::Seconds,
        "Consumed to accepted: parse, render, rate limit, SMTP"
    );
    metrics::describe_histogram!(
        "mailer_queue_lag_seconds",
        metrics::Unit::Seconds,
        "From the event's created_at to its consumption"
    );
}
