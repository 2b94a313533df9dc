//! Connections against the machine's real RabbitMQ.

use std::time::Duration;

use lapin::ConnectionProperties;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use secrecy::SecretString;
use shared::amqp::Nodes;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A connection first opened from a short-lived runtime (an HTTP worker's:
/// a readiness probe connects there) must outlive that runtime. It did not:
/// the AMQP client's I/O ran on the runtime that happened to connect, and
/// when an HTTP worker stopped at shutdown every later confirm hung until
/// its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_outlives_the_runtime_that_opened_it() {
    let nodes = std::sync::Arc::new(Nodes::new(&SecretString::from(URL)));
    let opener = nodes.clone();
    let connected = std::thread::spawn(move || {
        let worker = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let connected = worker
            .block_on(opener.connect(ConnectionProperties::default()))
            .unwrap();
        drop(worker);
        connected
    })
    .join()
    .unwrap();
    let queue = format!("test-outlives-{}", uuid::Uuid::new_v4().simple());
    let work = async {
        let channel = connected.connection.create_channel().await?;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        Ok::<_, lapin::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("the broker answers on a connection whose opening runtime is gone")
        .unwrap();
    let _ = connected.connection.close(200, "done".into()).await;
}
