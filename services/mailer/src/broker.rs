//! The mailer's broker topology, declared idempotently at start:
//! exchange `<prefix>.mail` → queue `<prefix>.mailer.send` (binding `mail.send`),
//! one TTL queue per retry delay that dead-letters back to the work queue
//! through the default exchange (so a retry never reaches other queues bound
//! to the exchange), and the dead-letter queue `<prefix>.mailer.dead`.

use std::time::Duration;

use lapin::Channel;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use shared::Topology;
use shared::topology::MAIL_SEND_ROUTING_KEY;

use crate::config::QueueType;

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn args(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(k), v);
    }
    t
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Declares everything the mailer uses; safe to run on every start.
pub async fn declare(
    ch: &Channel,
    t: &Topology,
    queue_type: QueueType,
    retry_delays: &[Duration],
) -> Result<(), lapin::Error> {
    shared::topology::declare_exchange(ch, &t.exchange()).await?;
    let queue_args = match queue_type {
        QueueType::Classic => FieldTable::default(),
        QueueType::Quorum => args(vec![("x-queue-type", string("quorum"))]),
    };
    ch.queue_declare(t.queue().as_str().into(), durable(), queue_args.clone())
        .await?;
    ch.queue_bind(
        t.queue().as_str().into(),
        t.exchange().as_str().into(),
        MAIL_SEND_ROUTING_KEY.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    for delay in retry_delays {
        let mut a = args(vec![
            (
                "x-message-ttl",
                AMQPValue::LongLongInt(delay.as_millis() as i64),
            ),
            ("x-dead-letter-exchange", string("")),
            ("x-dead-letter-routing-key", string(&t.queue())),
        ]);
        if queue_type == QueueType::Quorum {
            a.insert("x-queue-type".into(), string("quorum"));
            // Quorum queues dead-letter at most once by default: a retry
            // that expires while the work queue has no leader would be
            // dropped. At-least-once keeps it until the work queue took it
            // (RabbitMQ 3.10+; it requires reject-publish overflow).
            a.insert("x-dead-letter-strategy".into(), string("at-least-once"));
            a.insert("x-overflow".into(), string("reject-publish"));
        }
        ch.queue_declare(t.retry_queue(*delay).as_str().into(), durable(), a)
            .await?;
    }
    ch.queue_declare(t.dead_queue().as_str().into(), durable(), queue_args)
        .await?;
    Ok(())
}
