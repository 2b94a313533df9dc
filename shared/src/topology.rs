//! Broker names. Operators alert on these, so they are part of the contract.

use std::time::Duration;

/// Routing key of the `mail.send` event on the `mail` exchange.
pub const MAIL_SEND_ROUTING_KEY: &str = "mail.send";

/// Exchange, queue and dead-letter names under one deployment prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

/// Why a prefix was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("must be at most 64 characters of A-Z, a-z, 0-9, '.', '_' or '-' (got {0:?})")]
pub struct InvalidPrefix(pub String);

impl Topology {
    /// A topology whose names all start with `<prefix>.`; an empty prefix means none.
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let prefix = prefix.trim();
        let ok = prefix.len() <= 64
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok || prefix.starts_with('.') || prefix.ends_with('.') {
            return Err(InvalidPrefix(prefix.to_owned()));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The configured prefix (possibly empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn name(&self, base: &str) -> String {
        if self.prefix.is_empty() {
            base.to_owned()
        } else {
            format!("{}.{base}", self.prefix)
        }
    }

    /// The topic exchange every publisher sends `mail.send` events to.
    pub fn exchange(&self) -> String {
        self.name("mail")
    }

    /// The topic exchange of the account service's `account.*` events,
    /// declared by the account service; consumers bind their own queues.
    pub fn account_exchange(&self) -> String {
        self.name("account")
    }

    /// The mailer's work queue, bound to the exchange with `mail.send`.
    pub fn queue(&self) -> String {
        self.name("mailer.send")
    }

    /// The retry queue that holds a message for `delay` before it returns to the work queue.
    pub fn retry_queue(&self, delay: Duration) -> String {
        self.name(&format!("mailer.retry.{}", delay_label(delay)))
    }

    /// The dead-letter queue: permanent failures and exhausted retries, with the reason in headers.
    pub fn dead_queue(&self) -> String {
        self.name("mailer.dead")
    }
}

/// Declares a durable topic exchange (idempotent): what publishers and the
/// mailer both do before they use one, so neither depends on the other
/// starting first.
pub async fn declare_exchange(channel: &lapin::Channel, name: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            name.into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
}

/// A short, stable label for a delay: `5s`, `30s`, `2m`, `10m`, `1h`, `1500ms`.
pub fn delay_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms == 0 || !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let t = Topology::new("").unwrap();
        assert_eq!(t.exchange(), "mail");
        assert_eq!(t.account_exchange(), "account");
        assert_eq!(t.queue(), "mailer.send");
        assert_eq!(t.dead_queue(), "mailer.dead");
        assert_eq!(t.retry_queue(Duration::from_secs(5)), "mailer.retry.5s");

        let t = Topology::new("prod").unwrap();
        assert_eq!(t.exchange(), "prod.mail");
        assert_eq!(t.account_exchange(), "prod.account");
        assert_eq!(t.dead_queue(), "prod.mailer.dead");
        assert_eq!(
            t.retry_queue(Duration::from_secs(120)),
            "prod.mailer.retry.2m"
        );
        assert_eq!(
            t.retry_queue(Duration::from_secs(3600)),
            "prod.mailer.retry.1h"
        );
        assert_eq!(
            t.retry_queue(Duration::from_millis(1500)),
            "prod.mailer.retry.1500ms"
        );
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in ["a b", "x/y", ".a", "a.", &"p".repeat(65), "é"] {
            assert!(Topology::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Topology::new("test-1a2b.c_d").is_ok());
    }
}
