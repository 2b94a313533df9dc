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

/// How often [`report_depth`] looks at the queues.
pub const DEPTH_INTERVAL: Duration = Duration::from_secs(5);

/// Until `channel` fails, every [`DEPTH_INTERVAL`] sets the gauge
/// `mailer_queue_messages{queue}` to the messages waiting in the work queue
/// (`work`), in all retry queues together (`retry`) and in the dead-letter
/// queue (`dead`), from passive declares: what the alert on mail piling up
/// in the retry queues reads. Every mailer reports the same queues.
pub async fn report_depth(channel: Channel, topology: Topology, delays: Vec<Duration>) {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let mut tick = tokio::time::interval(DEPTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let count = async |queue: String| {
            channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
                .map(|q| f64::from(q.message_count()))
        };
        let mut retry = 0.0;
        let mut gone = false;
        for delay in &delays {
            match count(topology.retry_queue(*delay)).await {
                Ok(n) => retry += n,
                Err(_) => gone = true,
            }
        }
        let (Ok(work), Ok(dead), false) = (
            count(topology.queue()).await,
            count(topology.dead_queue()).await,
            gone,
        ) else {
            // A queue deleted under us closes the channel; the next broker
            // session starts a new reporter.
            return;
        };
        metrics::gauge!("mailer_queue_messages", "queue" => "work").set(work);
        metrics::gauge!("mailer_queue_messages", "queue" => "retry").set(retry);
        metrics::gauge!("mailer_queue_messages", "queue" => "dead").set(dead);
    }
}
