//! Connecting to RabbitMQ the same way in both services: `*_AMQP_URL` is one
//! URL or a comma-separated list of a cluster's nodes. Connecting tries them
//! in turn, and a reconnect after a lost connection starts with the node
//! after the one that was lost: failover to a live node at once, without
//! waiting for the lost one to come back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

/// How long one node may take to accept a connection before the next is
/// tried (a host that is down may never answer the TCP handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The nodes of `*_AMQP_URL`, tried in turn.
#[derive(Debug)]
pub struct Nodes {
    urls: Vec<SecretString>,
    /// The node the next connection attempt starts with.
    next: AtomicUsize,
    /// The runtime connections are opened on (the one `new` ran on).
    runtime: Option<tokio::runtime::Handle>,
}

/// A connection, which node (host:port, no credentials) took it, and as
/// which broker user.
pub struct Connected {
    pub connection: Connection,
    pub node: String,
    /// The user of the node's URL (`guest` when it names none): what a
    /// publisher sets as the AMQP `user_id`, which RabbitMQ checks.
    pub user: String,
}

/// Every node refused: the last error, and how many were tried.
#[derive(Debug, thiserror::Error)]
#[error("no broker node accepted a connection ({tried} tried); last: {last}")]
pub struct Unreachable {
    pub tried: usize,
    pub last: String,
}

/// Splits a list of AMQP URLs (already checked by [`crate::config::amqp_url`]).
pub fn split(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|u| !u.is_empty())
}

/// `host:port` of an AMQP URL, for logs: never the credentials.
pub fn node_name(url: &str) -> String {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "an unparsable URL".to_owned(),
    }
}

/// The broker user of an AMQP URL, percent-decoded (`guest` when it names none).
pub fn user_name(url: &str) -> String {
    url.parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.authority.userinfo.username)
        .unwrap_or_else(|_| "guest".to_owned())
}

/// The order in which `n` nodes are tried when starting at `start`.
fn order(start: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (start + i) % n)
}

impl Nodes {
    /// The nodes of a (checked) list of URLs. Connections are opened on
    /// the runtime this is called on, whichever task asks for them later.
    ///
    /// The AMQP client runs a connection's I/O on the runtime that opened
    /// it. An actix-web worker has a runtime of its own, which stops with
    /// the worker: a connection first opened there (by a readiness probe)
    /// went deaf at shutdown, and the relay's confirms then hung until
    /// their timeout.
    pub fn new(list: &SecretString) -> Self {
        Self {
            urls: split(list.expose_secret())
                .map(|u| SecretString::from(u.to_owned()))
                .collect(),
            next: AtomicUsize::new(0),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Whether the list is empty (never, once configuration was checked).
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Connects to the first node that accepts, trying each once, starting
    /// after the node of the previous connection. The next call starts
    /// after this node, so a reconnect after losing it fails over at once.
    pub async fn connect(&self, props: ConnectionProperties) -> Result<Connected, Unreachable> {
        let n = self.urls.len();
        let start = self.next.load(Ordering::Relaxed) % n.max(1);
        let mut last = String::from("no URL configured");
        for i in order(start, n) {
            let url = self.urls[i].expose_secret();
            let node = node_name(url);
            let outcome = match &self.runtime {
                Some(runtime) => {
                    let (url, props) = (url.to_owned(), props.clone());
                    let mut task =
                        runtime.spawn(async move { Connection::connect(&url, props).await });
                    match tokio::time::timeout(CONNECT_TIMEOUT, &mut task).await {
                        Ok(joined) => Ok(joined
                            .unwrap_or_else(|e| Err(lapin::Error::from(std::io::Error::other(e))))),
                        Err(elapsed) => {
                            task.abort();
                            Err(elapsed)
                        }
                    }
                }
                None => {
                    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props.clone()))
                        .await
                }
            };
            match outcome {
                Ok(Ok(connection)) => {
                    self.next.store((i + 1) % n, Ordering::Relaxed);
                    let user = user_name(url);
                    return Ok(Connected {
                        connection,
                        node,
                        user,
                    });
                }
                Ok(Err(e)) => last = format!("{node}: {e}"),
                Err(_) => last = format!("{node}: no answer within {CONNECT_TIMEOUT:?}"),
            }
            if n > 1 {
                tracing::debug!(error = %last, "broker node refused; trying the next");
            }
        }
        Err(Unreachable { tried: n, last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_tried_in_turn_from_the_one_after_the_last() {
        assert_eq!(order(0, 3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(order(2, 3).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(order(0, 1).collect::<Vec<_>>(), [0]);
        assert_eq!(
            split(" amqp://a:5672 ,, amqps://b ").collect::<Vec<_>>(),
            ["amqp://a:5672", "amqps://b"]
        );
        assert_eq!(
            node_name("amqp://user:secret@rabbit-2.internal:5673/%2f"),
            "rabbit-2.internal:5673"
        );
        assert_eq!(node_name("amqps://u:p@b"), "b:5671");
        assert_eq!(user_name("amqp://mail%2Der:pw@mq:5672/%2f"), "mail-er");
        assert_eq!(user_name("amqp://mq"), "guest");
    }

    #[tokio::test]
    async fn a_refusing_node_is_skipped_for_the_next() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap().port();
        drop(closed);
        let list = SecretString::from(format!(
            "amqp://u:p@127.0.0.1:{dead}/%2f,amqp://u:p@127.0.0.1:{dead}/x"
        ));
        let nodes = Nodes::new(&list);
        assert_eq!(nodes.len(), 2);
        let err = match nodes.connect(ConnectionProperties::default()).await {
            Err(e) => e,
            Ok(_) => panic!("nothing listens there"),
        };
        assert_eq!(err.tried, 2);
        assert!(err.last.contains(&format!("127.0.0.1:{dead}")), "{err}");
        assert!(!err.to_string().contains("u:p"), "no credentials: {err}");
    }
}
