//! The contract between the account service, the mailer and any other
//! publisher of mail: the `mail.send` v1 envelope, the broker topology and the
//! configuration conventions both services follow.

pub mod amqp;
pub mod config;
pub mod envelope;
pub mod telemetry;
pub mod topology;

pub use envelope::{Body, EnvelopeError, MailSend, RawContent, Recipient};
pub use topology::Topology;
