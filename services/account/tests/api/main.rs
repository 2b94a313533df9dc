//! Tests of the account service against the machine's real PostgreSQL and RabbitMQ.

mod binary;
mod credentials;
mod email;
mod events;
mod helpers;
mod hijack;
mod limits;
mod openapi;
mod outage;
mod outbox;
mod pages;
mod promises;
mod properties;
mod security;
mod sessions;
mod signup;
mod verify;
