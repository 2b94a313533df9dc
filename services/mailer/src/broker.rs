//! The mailer's broker topology, declared idempotently at start:
//! exchange `<prefix>.mail` → queue `<prefix>.mailer.send` (binding `mail.send`),
//! one TTL queue per retry delay that dead-letters back to the work queue
//! through the default exchange (so a retry never reaches other queues bound
//! to the exchange), and the dead-letter queue `<prefix>.mailer.dead`.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection};
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

/// While `conn` is up, every [`DEPTH_INTERVAL`] sets the gauge
/// `mailer_queue_messages{queue}` to the messages waiting in the work queue
/// (`work`), in all retry queues together (`retry`) and in the dead-letter
/// queue (`dead`), from passive declares: what the alert on mail piling up
/// in the retry queues reads. Every mailer reports the same queues. A
/// failed declare (a queue deleted by hand) closes the channel: the next
/// one opens another, and a gauge whose queues did not all answer keeps
/// its last value for that round.
pub async fn report_depth(conn: Arc<Connection>, topology: Topology, delays: Vec<Duration>) {
    let mut channel = None;
    let mut tick = tokio::time::interval(DEPTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while conn.status().connected() {
        tick.tick().await;
        let mut retry = Some(0.0);
        for delay in &delays {
            let n = count(&conn, &mut channel, &topology.retry_queue(*delay)).await;
            retry = retry.zip(n).map(|(sum, n)| sum + n);
        }
        let work = count(&conn, &mut channel, &topology.queue()).await;
        let dead = count(&conn, &mut channel, &topology.dead_queue()).await;
        for (queue, n) in [("work", work), ("retry", retry), ("dead", dead)] {
            if let Some(n) = n {
                metrics::gauge!("mailer_queue_messages", "queue" => queue).set(n);
            }
        }
    }
}

/// Messages ready in `queue` by a passive declare on `channel`, opened on
/// `conn` when there is none (a failed declare closes it: it is dropped).
async fn count(conn: &Connection, channel: &mut Option<Channel>, queue: &str) -> Option<f64> {
    let ch = match channel.as_ref().filter(|c| c.status().connected()) {
        Some(ch) => ch.clone(),
        None => {
            let ch = conn.create_channel().await.ok()?;
            *channel = Some(ch.clone());
            ch
        }
    };
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(q) => Some(f64::from(q.message_count())),
        Err(_) => {
            *channel = None;
            None
        }
    }
}
