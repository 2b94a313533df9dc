//! The account service: sign-up, e-mail verification by encrypted link,
//! sessions, and the outbox that hands mail to the mailer through RabbitMQ.

pub mod accounts;
pub mod binding;
pub mod broker;
pub mod code;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod health;
pub mod housekeeping;
pub mod i18n;
pub mod mails;
pub mod metrics;
pub mod outbox;
pub mod password;
pub mod ratelimit;
pub mod routes;
pub mod schema;
pub mod sessions;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod token;
pub mod views;
