//! Tests of the account service against the machine's real PostgreSQL and RabbitMQ.

mod binary;
mod helpers;
mod limits;
mod outage;
mod outbox;
mod pages;
mod properties;
mod sessions;
mod signup;
mod verify;
