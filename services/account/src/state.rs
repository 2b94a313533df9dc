//! What every handler can reach: the account operations and the web-side
//! parts around them (limits, views, probes), built once by `startup`.

use std::sync::Arc;

use crate::accounts::Accounts;
use crate::config::Settings;
use crate::health::Health;
use crate::ratelimit::Limits;
use crate::views::Views;

/// The application state shared by every worker.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub accounts: Accounts,
    pub limits: Limits,
    pub views: Views,
    pub health: Health,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}
