//! The contract between the account service, the mailer and any other
//! publisher of mail: the `mail.send` v1 envelope, the `account.*` v1
//! events, the broker topology and the configuration conventions both
//! services follow.

pub mod account_event;
pub mod amqp;
pub mod config;
pub mod envelope;
pub mod telemetry;
pub mod topology;

pub use account_event::{AccountEvent, AccountEventType};
pub use envelope::{Body, EnvelopeError, MailSend, RawContent, Recipient};
pub use topology::Topology;
