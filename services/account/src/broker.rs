//! The AMQP side of the outbox relay: one connection, one confirm channel,
//! re-established with backoff by the relay when it breaks. `ACCOUNT_AMQP_URL`
//! may list a cluster's nodes: a reconnect starts with the node after the
//! lost one. Confirms in flight on a lost connection fail the batch, whose
//! rows stay unpublished and go out again through the next node (the mailer
//! drops the duplicate by its event id).

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use secrecy::SecretString;
use shared::Topology;
use shared::amqp::Nodes;
use tokio::sync::Mutex;

/// One message to publish.
pub struct Outgoing<'a> {
    pub id: uuid::Uuid,
    pub routing_key: &'a str,
    pub payload: &'a [u8],
}

/// What became of one published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The broker confirmed it and routed it to at least one queue.
    Confirmed,
    /// Not accepted: nacked, or returned because no queue is bound.
    Refused(String),
}

/// A live connection, its confirm channel, and the broker user it is.
struct Link {
    conn: Connection,
    channel: Channel,
    user: String,
}

/// Publishes mail to `<prefix>.mail` (mandatory: an unroutable mail comes
/// back) and account events to `<prefix>.account`, with confirms.
pub struct Publisher {
    nodes: Nodes,
    topology: Topology,
    state: Mutex<Option<Link>>,
    connected: std::sync::atomic::AtomicBool,
}

impl Publisher {
    /// A publisher that connects on first use, to a node of `urls` (one
    /// AMQP URL or a comma-separated list).
    pub fn new(urls: SecretString, topology: Topology) -> Self {
        Self {
            nodes: Nodes::new(&urls),
            topology,
            state: Mutex::new(None),
            connected: false.into(),
        }
    }

    /// Whether the last attempt left a usable connection (for /readyz).
    pub fn is_connected(&self) -> bool {
        self.connected.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn connect(&self) -> Result<Link, anyhow::Error> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("account@{}", std::process::id()).into());
        let connected = self.nodes.connect(props).await?;
        tracing::info!(node = %connected.node, "publishing to the broker");
        let conn = connected.connection;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        shared::topology::declare_exchange(&channel, &self.topology.exchange()).await?;
        shared::topology::declare_exchange(&channel, &self.topology.account_exchange()).await?;
        Ok(Link {
            conn,
            channel,
            user: connected.user,
        })
    }

    /// Checks or establishes the connection.
    pub async fn ensure_connected(&self) -> Result<(), anyhow::Error> {
        let mut state = self.state.lock().await;
        self.channel(&mut state).await.map(|_| ())
    }

    async fn channel<'s>(&self, state: &'s mut Option<Link>) -> Result<&'s Link, anyhow::Error> {
        let healthy = matches!(state.as_ref(),
            Some(link) if link.conn.status().connected() && link.channel.status().connected());
        if !healthy {
            *state = None;
            let pair = self
                .connect()
                .await
                .inspect_err(|_| self.set_connected(false))?;
            self.set_connected(true);
            *state = Some(pair);
        }
        Ok(state.as_ref().expect("connected just above"))
    }

    /// Drops the connection; the next publish reconnects.
    pub async fn reset(&self) {
        *self.state.lock().await = None;
        self.set_connected(false);
    }

    fn set_connected(&self, up: bool) {
        self.connected
            .store(up, std::sync::atomic::Ordering::Relaxed);
    }

    /// Publishes a batch and waits for every confirm. A connection error
    /// drops the connection (the next call reconnects) and fails the batch.
    pub async fn publish(&self, batch: &[Outgoing<'_>]) -> Result<Vec<Published>, anyhow::Error> {
        let mut state = self.state.lock().await;
        let link = self.channel(&mut state).await?;
        let result = Self::publish_on(link, &self.topology, batch)
            .await
            .map_err(anyhow::Error::from);
        if result.is_err() {
            *state = None;
            self.set_connected(false);
        }
        result
    }

    async fn publish_on(
        link: &Link,
        topology: &Topology,
        batch: &[Outgoing<'_>],
    ) -> Result<Vec<Published>, lapin::Error> {
        let (mail, account) = (topology.exchange(), topology.account_exchange());
        let mut confirms = Vec::with_capacity(batch.len());
        for msg in batch {
            // Mail must reach the mailer's queue (mandatory: unroutable
            // comes back and stays queued); account events go to whoever
            // bound a queue, possibly nobody.
            let (exchange, mandatory) = if crate::outbox::is_account_event(msg.routing_key) {
                (account.as_str(), false)
            } else {
                (mail.as_str(), true)
            };
            let props = BasicProperties::default()
                .with_message_id(msg.id.to_string().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                // RabbitMQ refuses a user_id that is not the connection's
                // user, so the mailer can believe it (MAILER_SOURCES).
                .with_user_id(link.user.as_str().into())
                .with_app_id("account".into())
                .with_timestamp(chrono::Utc::now().timestamp() as u64);
            let confirm = link
                .channel
                .basic_publish(
                    exchange.into(),
                    msg.routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..Default::default()
                    },
                    msg.payload,
                    props,
                )
                .await?;
            confirms.push(confirm);
        }
        let mut out = Vec::with_capacity(confirms.len());
        for confirm in confirms {
            let confirmation = confirm.await?;
            out.push(if !confirmation.is_ack() {
                Published::Refused("the broker nacked the message".into())
            } else if confirmation.take_message().is_some() {
                Published::Refused(format!(
                    "unroutable: no queue is bound to {mail}; is the mailer running?"
                ))
            } else {
                Published::Confirmed
            });
        }
        Ok(out)
    }
}
