//! The mailer: consumes `mail.send` events from RabbitMQ and delivers them
//! over SMTP (or into a folder on a laptop), with retries and dead letters.

pub mod admin;
pub mod broker;
pub mod config;
pub mod dedupe;
pub mod delivery;
pub mod http;
pub mod metrics;
pub mod templates;
pub mod worker;

pub use config::ENV_VARS;
