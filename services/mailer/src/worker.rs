//! The consumer: one event in, one mail out, then ack. Failures go to the
//! retry ladder or the dead-letter queue with their reason; a poison message
//! never stops the worker. Reconnects with backoff; on shutdown it stops
//! consuming, finishes what is in flight, and returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use shared::{Body, MailSend};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Settings;
use crate::dedupe::Sent;
use crate::delivery::{Channel, DeliveryError, build_message};
use crate::templates::{Rendered, Templates};

/// Header: how many times delivery was tried before this copy.
pub const ATTEMPT: &str = "x-attempt";
/// Header: the error of the last attempt.
pub const LAST_ERROR: &str = "x-last-error";
/// Header on dead letters: why the message was given up.
pub const DEAD_REASON: &str = "x-dead-reason";
/// Header on dead letters: when (RFC 3339).
pub const DEAD_AT: &str = "x-dead-at";

/// What to do with a failed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Publish to the retry queue of this delay, with the attempt count raised.
    Retry(Duration),
    /// Publish to the dead-letter queue with this reason.
    Dead(String),
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

enum Handled {
    Sent { template: String },
    Duplicate,
}

struct Failure {
    template: String,
    id: Option<uuid::Uuid>,
    error: DeliveryError,
}

/// Everything the consumer needs; cheap to clone into each delivery's task.
#[derive(Clone)]
pub struct Worker {
    pub settings: Arc<Settings>,
    pub templates: Arc<Templates>,
    pub channel: Channel,
    pub sent: Arc<Sent>,
    pub limiter: Option<Arc<governor::DefaultDirectRateLimiter>>,
    /// Whether the broker connection is up (for /readyz).
    pub connected: Arc<AtomicBool>,
}

impl Worker {
    /// Builds the worker from its settings.
    pub fn new(settings: Settings) -> Result<Self, anyhow::Error> {
        let templates = Templates::load(settings.template_dir.as_deref(), &settings.default_locale)
            .map_err(|e| anyhow::anyhow!("MAILER_TEMPLATE_DIR: {e:#}"))?;
        let channel = Channel::from_settings(&settings)?;
        let limiter = settings
            .send_rate
            .and_then(std::num::NonZeroU32::new)
            .map(|n| {
                Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
                    n,
                )))
            });
        Ok(Self {
            settings: Arc::new(settings),
            templates: Arc::new(templates),
            channel,
            sent: Arc::new(Sent::new(100_000)),
            limiter,
            connected: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Consumes until `shutdown` turns true, reconnecting with backoff.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(250);
        while !*shutdown.borrow() {
            let started = Instant::now();
            match self.session(&mut shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    self.connected.store(false, Ordering::Relaxed);
                    metrics::gauge!("mailer_broker_connected").set(0.0);
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff = Duration::from_millis(250);
                    }
                    tracing::warn!(error = %e, retry_in = ?backoff, "broker session ended; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        tracing::info!("mailer stopped consuming");
    }

    async fn session(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), anyhow::Error> {
        let s = &self.settings;
        let props = ConnectionProperties::default()
            .with_connection_name(format!("mailer@{}", std::process::id()).into());
        let conn = Connection::connect(s.amqp_url.expose_secret(), props).await?;
        let consume = conn.create_channel().await?;
        crate::broker::declare(&consume, &s.topology, s.queue_type, &s.retry_delays).await?;
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        consume
            .basic_qos(s.prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("mailer-{}", uuid::Uuid::new_v4().simple());
        let mut consumer = consume
            .basic_consume(
                s.topology.queue().as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.connected.store(true, Ordering::Relaxed);
        metrics::gauge!("mailer_broker_connected").set(1.0);
        tracing::info!(queue = %s.topology.queue(), prefetch = s.prefetch, channel = self.channel.name(), "consuming");

        let mut tasks = JoinSet::new();
        let ended: Result<(), anyhow::Error> = loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let worker = self.clone();
                        let publish = publish.clone();
                        tasks.spawn(async move { worker.handle(delivery, &publish).await });
                    }
                    Some(Err(e)) => break Err(e.into()),
                    None => break Err(anyhow::anyhow!("the consumer was cancelled by the broker")),
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = shutdown.changed() => break Ok(()),
            }
        };
        if ended.is_ok() {
            // Graceful stop: no new deliveries; what was prefetched but not
            // started returns to the queue when the channel closes.
            let _ = consume
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            let drain = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout(s.shutdown_timeout, drain)
                .await
                .is_err()
            {
                tracing::warn!("shutdown timeout: unfinished mail returns to the queue");
            }
            let _ = consume.close(200, "shutdown".into()).await;
            let _ = conn.close(200, "shutdown".into()).await;
        } else if !tasks.is_empty() {
            // The broker went away mid-work. Let mail already talking to SMTP
            // finish rather than abort it: its ack fails and the broker
            // redelivers it, but the sent-ids set then acks the redelivery
            // instead of mailing twice. An abort could cut a send after the
            // server had taken the mail, and the redelivery would repeat it.
            let drain = async { while tasks.join_next().await.is_some() {} };
            let bound = s.smtp_timeout + Duration::from_secs(2);
            let _ = tokio::time::timeout(bound, drain).await;
        }
        ended
    }

    async fn handle(&self, delivery: Delivery, publish: &lapin::Channel) {
        let attempt = attempt_of(&delivery.properties);
        let received = Instant::now();
        let result = self.process(&delivery.data).await;
        let (template, outcome) = match result {
            Ok(Handled::Duplicate) => {
                let _ = delivery.ack(BasicAckOptions::default()).await;
                ("unknown".to_owned(), "duplicate")
            }
            Ok(Handled::Sent { template }) => {
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    // The mail is out; a redelivery is caught by the sent-ids set.
                    tracing::warn!(error = %e, "ack failed after sending");
                }
                // Consumed to accepted: parse, render, build, rate limit, SMTP.
                metrics::histogram!("mailer_delivery_seconds")
                    .record(received.elapsed().as_secs_f64());
                (template, "sent")
            }
            Err(failure) => {
                let step = next_step(attempt, &failure.error, &self.settings.retry_delays);
                let id = failure
                    .id
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "-".into());
                let outcome = match &step {
                    Step::Retry(delay) => {
                        tracing::warn!(event_id = %id, template = %failure.template, attempt = attempt + 1, retry_in = ?delay, error = %failure.error, "delivery failed; will retry");
                        "retried"
                    }
                    Step::Dead(reason) => {
                        tracing::error!(event_id = %id, template = %failure.template, %reason, "dead-lettered");
                        "dead"
                    }
                };
                match self
                    .republish(&delivery, publish, attempt, &failure.error, &step)
                    .await
                {
                    Ok(()) => {
                        let _ = delivery.ack(BasicAckOptions::default()).await;
                    }
                    Err(e) => {
                        tracing::error!(event_id = %id, error = %e, "could not move the message; it stays in the queue");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = delivery
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..Default::default()
                            })
                            .await;
                    }
                }
                (failure.template, outcome)
            }
        };
        metrics::counter!("mailer_messages_total", "template" => template, "outcome" => outcome)
            .increment(1);
    }

    async fn republish(
        &self,
        delivery: &Delivery,
        publish: &lapin::Channel,
        attempt: u32,
        error: &DeliveryError,
        step: &Step,
    ) -> Result<(), anyhow::Error> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(ATTEMPT.into(), AMQPValue::LongInt((attempt + 1) as i32));
        headers.insert(
            LAST_ERROR.into(),
            AMQPValue::LongString(LongString::from(truncate(&error.reason, 1000))),
        );
        let queue = match step {
            Step::Retry(delay) => self.settings.topology.retry_queue(*delay),
            Step::Dead(reason) => {
                headers.insert(
                    DEAD_REASON.into(),
                    AMQPValue::LongString(LongString::from(truncate(reason, 1000))),
                );
                headers.insert(
                    DEAD_AT.into(),
                    AMQPValue::LongString(LongString::from(chrono::Utc::now().to_rfc3339())),
                );
                self.settings.topology.dead_queue()
            }
        };
        let props = delivery
            .properties
            .clone()
            .with_headers(headers)
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

    async fn process(&self, body: &[u8]) -> Result<Handled, Failure> {
        let mail = MailSend::from_slice(body).map_err(|e| Failure {
            template: "invalid".into(),
            id: None,
            error: DeliveryError {
                transient: false,
                reason: e.to_string(),
            },
        })?;
        let template = match &mail.body {
            Body::Template { template, .. } => template.clone(),
            Body::Content { .. } => "raw".to_owned(),
        };
        let fail = |error: DeliveryError| Failure {
            template: template.clone(),
            id: Some(mail.id),
            error,
        };
        if self.sent.contains(&mail.id) {
            tracing::info!(event_id = %mail.id, "already sent by this process; acking the redelivery");
            return Ok(Handled::Duplicate);
        }
        let lag = (chrono::Utc::now() - mail.created_at)
            .to_std()
            .unwrap_or_default();
        metrics::histogram!("mailer_queue_lag_seconds").record(lag.as_secs_f64());
        let rendered = match &mail.body {
            Body::Template { template, data } => self
                .templates
                .render(template, &mail.locale, data, mail.to.name.as_deref())
                .map_err(|e| {
                    fail(DeliveryError {
                        transient: false,
                        reason: e.to_string(),
                    })
                })?,
            Body::Content { content } => Rendered {
                subject: content.subject.clone(),
                html: content.html.clone(),
                text: content.text.clone(),
            },
        };
        let message = build_message(&mail, &rendered, &self.settings.from).map_err(fail)?;
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        let started = Instant::now();
        // The channel records mailer_smtp_seconds itself, without the wait
        // for a free connection.
        self.channel.send(message).await.map_err(fail)?;
        self.sent.insert(mail.id);
        let domain = mail.to.email.rsplit('@').next().unwrap_or("");
        match (&self.channel, &mail.body) {
            // A laptop has no inbox: the link in the log is the point.
            (Channel::Dir(_, dir), Body::Template { data, .. }) => {
                let links: Vec<&str> = data
                    .iter()
                    .filter(|(k, _)| k.ends_with("_url"))
                    .filter_map(|(_, v)| v.as_str())
                    .collect();
                tracing::info!(event_id = %mail.id, %template, to = %mail.to.email, folder = %dir.display(), links = ?links, "mail written");
            }
            _ => {
                tracing::info!(event_id = %mail.id, %template, to_domain = %domain, ms = started.elapsed().as_millis() as u64, "mail sent")
            }
        }
        Ok(Handled::Sent { template })
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
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
    fn attempts_are_read_from_headers() {
        assert_eq!(attempt_of(&BasicProperties::default()), 0);
        let mut h = FieldTable::default();
        h.insert(ATTEMPT.into(), AMQPValue::LongInt(3));
        assert_eq!(attempt_of(&BasicProperties::default().with_headers(h)), 3);
    }
}
