//! Where a failed message goes next: the retry ladder (a copy in
//! `<prefix>.mailer.retry.<delay>` with the attempt count raised) or the
//! dead-letter queue (a copy with the reason in headers). The copy is
//! published with confirms and `mandatory` before the original is acked, so
//! a message is never in neither place.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use shared::Topology;

use crate::outlet::DeliveryError;

/// Header: how many times delivery was tried before this copy.
pub const ATTEMPT: &str = "x-attempt";
/// Header: the error of the last attempt.
pub const LAST_ERROR: &str = "x-last-error";
/// Header on dead letters: why the message was given up.
pub const DEAD_REASON: &str = "x-dead-reason";
/// Header on dead letters: when (RFC 3339).
pub const DEAD_AT: &str = "x-dead-at";
/// Header: the broker user that published the original (its AMQP
/// `user_id`). A copy is published by the mailer, whose own user becomes the
/// copy's `user_id` (RabbitMQ refuses any other); this header keeps the
/// original publisher, and is believed only on messages whose `user_id` is
/// the mailer's own user, which no other publisher can set.
pub const PUBLISHED_BY: &str = "x-published-by";

/// The broker user that published `props`' message, if proven: its
/// `user_id`, or for a copy the mailer made itself (`user_id` = `own_user`),
/// the original's, kept in [`PUBLISHED_BY`].
pub fn publisher(props: &BasicProperties, own_user: &str) -> Option<String> {
    match props.user_id().as_ref().map(|u| u.as_str()) {
        Some(user) if user == own_user => match props
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(PUBLISHED_BY))
        {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            _ => None,
        },
        Some(user) => Some(user.to_owned()),
        None => None,
    }
}

/// What to do with a failed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Publish to the retry queue of this delay, with the attempt count raised.
    Retry(Duration),
    /// Publish to the dead-letter queue with this reason.
    Dead(String),
    /// Publish to the retry queue of this delay with the attempt count
    /// unchanged: the failure is our configuration, not the mail's, so it
    /// waits without spending its ladder.
    Hold(Duration),
}

/// Where a mail waits while the outlet is misconfigured: its current rung
/// (the last one once past the end), again and again until it is fixed.
pub fn hold(attempt: u32, delays: &[Duration]) -> Step {
    let rung = (attempt as usize).min(delays.len().saturating_sub(1));
    Step::Hold(delays.get(rung).copied().unwrap_or(Duration::from_secs(60)))
}

/// The retry ladder: transient failures climb it, permanent ones and the last rung go dead.
pub fn next_step(attempt: u32, err: &DeliveryError, delays: &[Duration]) -> Step {
    if !err.transient {
        return Step::Dead(format!("permanent: {}", err.reason));
    }
    match delays.get(attempt as usize) {
        Some(d) => Step::Retry(*d),
        None => Step::Dead(format!(
            "retries exhausted after {} attempts: {}",
            attempt + 1,
            err.reason
        )),
    }
}

/// The attempt count a delivery carries.
pub fn attempt_of(props: &BasicProperties) -> u32 {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ATTEMPT))
        .and_then(|v| match v {
            AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongUInt(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(0)
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The headers of the copy that takes `step` after `attempt` failed with
/// `error`; `publisher` is the original's proven broker user.
pub fn headers_for(
    original: &BasicProperties,
    publisher: Option<&str>,
    attempt: u32,
    error: &DeliveryError,
    step: &Step,
) -> FieldTable {
    // A publisher's own PUBLISHED_BY must not survive into a copy, where
    // it would be believed.
    let mut kept = original
        .headers()
        .clone()
        .unwrap_or_default()
        .inner()
        .clone();
    kept.remove(PUBLISHED_BY);
    let mut headers = FieldTable::from(kept);
    if let Some(user) = publisher {
        headers.insert(
            PUBLISHED_BY.into(),
            AMQPValue::LongString(LongString::from(user)),
        );
    }
    let attempts = match step {
        Step::Hold(_) => attempt,
        _ => attempt + 1,
    };
    headers.insert(ATTEMPT.into(), AMQPValue::LongInt(attempts as i32));
    headers.insert(
        LAST_ERROR.into(),
        AMQPValue::LongString(LongString::from(truncate(&error.reason, 1000))),
    );
    if let Step::Dead(reason) = step {
        headers.insert(
            DEAD_REASON.into(),
            AMQPValue::LongString(LongString::from(truncate(reason, 1000))),
        );
        headers.insert(
            DEAD_AT.into(),
            AMQPValue::LongString(LongString::from(chrono::Utc::now().to_rfc3339())),
        );
    }
    headers
}

/// Publishes the copy of `delivery` that takes `step`, and waits for the
/// broker to confirm it landed in its queue. `own_user` is the mailer's
/// broker user: the copy's `user_id` (the original's moves to a header).
pub async fn route(
    topology: &Topology,
    publish: &lapin::Channel,
    own_user: &str,
    delivery: &Delivery,
    attempt: u32,
    error: &DeliveryError,
    step: &Step,
) -> Result<(), anyhow::Error> {
    let queue = match step {
        Step::Retry(delay) | Step::Hold(delay) => topology.retry_queue(*delay),
        Step::Dead(_) => topology.dead_queue(),
    };
    let publisher = publisher(&delivery.properties, own_user);
    let headers = headers_for(
        &delivery.properties,
        publisher.as_deref(),
        attempt,
        error,
        step,
    );
    let props = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_user_id(own_user.into())
        .with_delivery_mode(2);
    let confirm = publish
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &delivery.data,
            props,
        )
        .await?
        .await?;
    if !confirm.is_ack() || confirm.take_message().is_some() {
        anyhow::bail!("the broker did not take the message into {queue}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(transient: bool) -> DeliveryError {
        DeliveryError {
            transient,
            reason: "x".into(),
        }
    }

    #[test]
    fn the_retry_ladder() {
        let delays = [Duration::from_secs(5), Duration::from_secs(30)];
        assert_eq!(
            next_step(0, &err(true), &delays),
            Step::Retry(Duration::from_secs(5))
        );
        assert_eq!(
            next_step(1, &err(true), &delays),
            Step::Retry(Duration::from_secs(30))
        );
        assert!(
            matches!(next_step(2, &err(true), &delays), Step::Dead(r) if r.starts_with("retries exhausted after 3"))
        );
        assert!(
            matches!(next_step(0, &err(false), &delays), Step::Dead(r) if r.starts_with("permanent"))
        );
    }

    #[test]
    fn a_held_mail_keeps_its_rung_and_its_attempt_count() {
        let delays = [Duration::from_secs(5), Duration::from_secs(30)];
        assert_eq!(hold(0, &delays), Step::Hold(Duration::from_secs(5)));
        assert_eq!(hold(1, &delays), Step::Hold(Duration::from_secs(30)));
        assert_eq!(hold(7, &delays), Step::Hold(Duration::from_secs(30)));
        let held = headers_for(
            &BasicProperties::default(),
            None,
            1,
            &err(true),
            &Step::Hold(Duration::from_secs(30)),
        );
        assert_eq!(held.inner().get(ATTEMPT), Some(&AMQPValue::LongInt(1)));
        assert!(!held.inner().contains_key(DEAD_REASON));
    }

    #[test]
    fn attempts_are_read_from_headers() {
        assert_eq!(attempt_of(&BasicProperties::default()), 0);
        let mut h = FieldTable::default();
        h.insert(ATTEMPT.into(), AMQPValue::LongInt(3));
        assert_eq!(attempt_of(&BasicProperties::default().with_headers(h)), 3);
        // Other tools (a shovel, a script requeueing by hand) may write it
        // with another integer type; a negative count is no count.
        for (value, n) in [
            (AMQPValue::LongLongInt(4), 4),
            (AMQPValue::ShortInt(5), 5),
            (AMQPValue::LongUInt(6), 6),
            (AMQPValue::LongInt(-1), 0),
            (AMQPValue::LongString("7".into()), 0),
        ] {
            let mut h = FieldTable::default();
            h.insert(ATTEMPT.into(), value.clone());
            let props = BasicProperties::default().with_headers(h);
            assert_eq!(attempt_of(&props), n, "{value:?}");
        }
    }

    #[test]
    fn copies_carry_the_attempt_and_dead_letters_their_reason() {
        let mut h = FieldTable::default();
        h.insert("x-keep".into(), AMQPValue::LongInt(7));
        h.insert(PUBLISHED_BY.into(), AMQPValue::LongString("forged".into()));
        let original = BasicProperties::default().with_headers(h);
        let retry = headers_for(
            &original,
            None,
            1,
            &err(true),
            &Step::Retry(Duration::from_secs(5)),
        );
        assert_eq!(retry.inner().get(ATTEMPT), Some(&AMQPValue::LongInt(2)));
        assert!(retry.inner().contains_key("x-keep"));
        assert!(!retry.inner().contains_key(DEAD_REASON));
        assert!(
            !retry.inner().contains_key(PUBLISHED_BY),
            "no proof, no header"
        );
        let dead = headers_for(
            &original,
            Some("billing"),
            0,
            &err(false),
            &Step::Dead("permanent: x".into()),
        );
        assert_eq!(
            dead.inner().get(DEAD_REASON),
            Some(&AMQPValue::LongString("permanent: x".into()))
        );
        assert!(dead.inner().contains_key(DEAD_AT) && dead.inner().contains_key(LAST_ERROR));
        assert_eq!(
            dead.inner().get(PUBLISHED_BY),
            Some(&AMQPValue::LongString("billing".into()))
        );
    }

    #[test]
    fn the_publisher_header_is_believed_only_on_the_mailers_own_copies() {
        let mut h = FieldTable::default();
        h.insert(PUBLISHED_BY.into(), AMQPValue::LongString("account".into()));
        let props = |user: Option<&str>| {
            let p = BasicProperties::default().with_headers(h.clone());
            match user {
                Some(u) => p.with_user_id(u.into()),
                None => p,
            }
        };
        // A copy the mailer made: its own user published it.
        assert_eq!(
            publisher(&props(Some("mailer")), "mailer").as_deref(),
            Some("account")
        );
        // Anyone else who writes the header is who the broker says.
        assert_eq!(
            publisher(&props(Some("billing")), "mailer").as_deref(),
            Some("billing")
        );
        assert_eq!(publisher(&props(None), "mailer"), None);
    }
}
