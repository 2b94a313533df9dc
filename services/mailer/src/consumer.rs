//! The AMQP side of the mailer: one session (connection, topology, confirm
//! channel, consumer), re-established with backoff when it breaks, on the
//! next node of `MAILER_AMQP_URL` when that lists a cluster's nodes (the
//! consumer is registered again there; a quorum queue's new leader serves it). Each
//! delivery runs the pipeline in its own task and is acked only after the
//! outlet accepted the mail, or after its copy landed in a retry or
//! dead-letter queue. On shutdown it stops consuming, finishes what is in
//! flight, and returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::ConnectionProperties;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use shared::amqp::Nodes;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Settings;
use crate::pipeline::{Handled, Pipeline};
use crate::routing::{self, Step};

/// The consumer and what it needs; cheap to clone into each delivery's task.
#[derive(Clone)]
pub struct Consumer {
    pub settings: Arc<Settings>,
    pub pipeline: Pipeline,
    /// Whether the broker connection is up (for /readyz).
    pub connected: Arc<AtomicBool>,
    /// The broker's nodes, tried in turn.
    nodes: Arc<Nodes>,
}

impl Consumer {
    /// A consumer running `pipeline` on the queue the settings name.
    pub fn new(settings: Arc<Settings>, pipeline: Pipeline) -> Self {
        Self {
            nodes: Arc::new(Nodes::new(&settings.amqp_url)),
            settings,
            pipeline,
            connected: Arc::new(AtomicBool::new(false)),
        }
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
                    tracing::warn!(
                        error = %e,
                        retry_in = ?backoff,
                        nodes = self.nodes.len(),
                        "lost the broker; unacked mail returns to the queue, reconnecting (to the next node first)"
                    );
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
        let connected = self.nodes.connect(props).await?;
        let conn = Arc::new(connected.connection);
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
        let depth = tokio::spawn(crate::broker::report_depth(
            conn.clone(),
            s.topology.clone(),
            s.retry_delays.to_vec(),
        ));
        let _depth = AbortOnDrop(depth);
        self.connected.store(true, Ordering::Relaxed);
        metrics::gauge!("mailer_broker_connected").set(1.0);
        tracing::info!(node = %connected.node, queue = %s.topology.queue(), prefetch = s.prefetch, outlet = self.pipeline.outlet.name(), "consuming");

        let mut tasks = JoinSet::new();
        let ended: Result<(), anyhow::Error> = loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let this = self.clone();
                        let publish = publish.clone();
                        tasks.spawn(async move { this.handle(delivery, &publish).await });
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

    /// Runs one delivery through the pipeline, then acks it or routes it.
    async fn handle(&self, delivery: Delivery, publish: &lapin::Channel) {
        let attempt = routing::attempt_of(&delivery.properties);
        let own_user = &self.settings.amqp_user;
        let publisher = routing::publisher(&delivery.properties, own_user);
        let received = Instant::now();
        let (template, outcome) = match self
            .pipeline
            .process(&delivery.data, publisher.as_deref())
            .await
        {
            Ok(Handled::Duplicate { template }) => {
                let _ = delivery.ack(BasicAckOptions::default()).await;
                (template, "duplicate")
            }
            Ok(Handled::Busy { template }) => {
                // Another mailer is sending this event: look again after the
                // first rung, without counting an attempt.
                let step = routing::hold(0, &self.settings.retry_delays);
                let error = crate::outlet::DeliveryError {
                    transient: true,
                    reason: "another mailer is sending this event".into(),
                };
                let topology = &self.settings.topology;
                match routing::route(
                    topology, publish, own_user, &delivery, attempt, &error, &step,
                )
                .await
                {
                    Ok(()) => {
                        let _ = delivery.ack(BasicAckOptions::default()).await;
                    }
                    Err(_) => {
                        let _ = delivery
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..Default::default()
                            })
                            .await;
                    }
                }
                (template, "deferred")
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
                let delays = &self.settings.retry_delays;
                let step = match self.pipeline.outlet.misconfigured() {
                    Some(_) if failure.error.transient => routing::hold(attempt, delays),
                    _ => routing::next_step(attempt, &failure.error, delays),
                };
                let id = failure
                    .id
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "-".into());
                let outcome = match &step {
                    Step::Retry(delay) => {
                        tracing::warn!(event_id = %id, template = %failure.template, attempt = attempt + 1, retry_in = ?delay, error = %failure.error, "delivery failed; will retry");
                        "retried"
                    }
                    Step::Hold(delay) => {
                        tracing::warn!(event_id = %id, template = %failure.template, retry_in = ?delay, error = %failure.error, "held: SMTP is misconfigured; the mail waits without spending its retries");
                        "held"
                    }
                    Step::Dead(reason) => {
                        tracing::error!(event_id = %id, template = %failure.template, %reason, "dead-lettered");
                        "dead"
                    }
                };
                let routed = routing::route(
                    &self.settings.topology,
                    publish,
                    own_user,
                    &delivery,
                    attempt,
                    &failure.error,
                    &step,
                )
                .await;
                match routed {
                    Ok(()) => {
                        let _ = delivery.ack(BasicAckOptions::default()).await;
                    }
                    Err(e) => {
                        // The broker went away mid-route (a restart, a failover):
                        // nothing is lost, so a warning, not an alert.
                        tracing::warn!(event_id = %id, error = %e, "could not move the message; it stays in the queue");
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
        // A publisher names the template: only names this mailer knows
        // become label values, so no publisher can grow the series without
        // bound.
        let template = match template.as_str() {
            "raw" | "invalid" => template,
            known if self.pipeline.templates.knows(known) => template,
            _ => crate::metrics::UNKNOWN_TEMPLATE.to_owned(),
        };
        metrics::counter!("mailer_messages_total", "template" => template, "outcome" => outcome)
            .increment(1);
    }
}

/// Aborts a spawned task when the session that started it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
