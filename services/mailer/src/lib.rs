//! The mailer: consumes `mail.send` events from RabbitMQ and delivers them
//! over SMTP (or into a folder on a laptop), with retries and dead letters.
//!
//! `consumer` (AMQP) → `pipeline` (envelope → template → message → outlet)
//! → `routing` for failures (retry ladder, dead letters); `startup` wires
//! them, `http` serves health and metrics, `admin` the dead-letter CLI,
//! `preview` renders a mail without sending it (`mailer render`).

pub mod admin;
pub mod broker;
pub mod config;
pub mod consumer;
pub mod dedupe;
pub mod dkim;
pub mod http;
pub mod message;
pub mod metrics;
pub mod outlet;
pub mod pipeline;
pub mod policy;
pub mod preview;
pub mod routing;
pub mod startup;
pub mod templates;
pub mod zones;
