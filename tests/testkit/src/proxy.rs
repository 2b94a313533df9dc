//! A TCP proxy in front of a real service (PostgreSQL, RabbitMQ) that a
//! test can cut (every connection drops, nothing listens) or freeze (bytes
//! go in and nothing comes back: a peer that hangs without closing).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A proxy listening on 127.0.0.1:`port`.
pub struct Proxy {
    pub port: u16,
    task: Option<JoinHandle<()>>,
    frozen: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on `port` (0: any free one) and relays each connection to
    /// `upstream` (`host:port`).
    pub async fn start(port: u16, upstream: &str) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let (upstream, flag) = (upstream.to_owned(), frozen.clone());
        let task = tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every relay.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let (upstream, flag) = (upstream.clone(), flag.clone());
                conns.spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::select! {
                        _ = pump(in_read, out_write, flag.clone()) => {}
                        _ = pump(out_read, in_write, flag) => {}
                    }
                });
            }
        });
        Self {
            port,
            task: Some(task),
            frozen,
        }
    }

    /// Stops listening and cuts every relayed connection.
    pub fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// From now on, bytes are read and dropped in both directions: the
    /// connections stay open and nothing answers.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Keep the connection open and say nothing, for good.
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}
