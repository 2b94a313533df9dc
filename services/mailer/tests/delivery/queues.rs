//! A retry copy the broker cannot place (its retry queue is gone) must not
//! vanish: the mailer publishes copies as mandatory, and when one comes
//! back it puts the original back in the work queue (nack with requeue).

use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};

use super::helpers::*;
use super::transport::outcome_count;
use super::verify_event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_no_queue_takes_stays_in_the_work_queue_and_is_not_lost() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mailer = env.mailer(&[("MAILER_BIND", &bind)]).await;
    // An operator (or a policy) removes the first retry queue.
    let first_rung = env.topology.retry_queue(Duration::from_millis(300));
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(first_rung.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();

    // 451: the mail must go to the missing retry queue.
    let event = verify_event("late@tempfail.test", "en", "https://acc.example/v");
    let broker = Broker::connect().await;
    broker.publish(&env.topology, &event.to_vec()).await;
    // It is tried, fails to move, returns to the work queue and is tried again.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            outcome_count(port, "retried").await >= 3
        })
        .await,
        "the event keeps coming back to the mailer"
    );
    assert!(mailer.terminate().await.success());
    assert_eq!(
        broker.count(&env.topology.queue()).await,
        Some(1),
        "the event waits in the work queue"
    );
    assert_eq!(broker.count(&env.topology.dead_queue()).await, Some(0));

    // A mailer that declares its topology again takes it up the whole ladder.
    let _mailer = env.mailer(&[]).await;
    let dead = env.topology.dead_queue();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            broker.count(&dead).await == Some(1)
        })
        .await,
        "the ladder ends in the dead-letter queue"
    );
    let letters = broker.drain(&dead).await;
    assert_eq!(
        shared::MailSend::from_slice(&letters[0].1).unwrap().id,
        event.id
    );
    let reason = header(&letters[0].0, "x-dead-reason").unwrap();
    assert!(
        reason.starts_with("retries exhausted after 4 attempts: SMTP 451"),
        "{reason}"
    );
    let _ = conn.close(200, "".into()).await;
}

/// `mailer_queue_messages{queue}` from the mailer's metrics.
async fn waiting(port: u16, queue: &str) -> f64 {
    let url = format!("http://127.0.0.1:{port}/metrics");
    testkit::fleet::metric(&url, "mailer_queue_messages", &format!("queue=\"{queue}\"")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mailer_reports_what_waits_in_its_retry_and_dead_letter_queues() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    // A ladder slow enough that a retried mail stays in its retry queue.
    let _mailer = env
        .mailer(&[("MAILER_BIND", &bind), ("MAILER_RETRY_DELAYS", "1h")])
        .await;
    let broker = Broker::connect().await;
    for to in ["a@tempfail.test", "b@tempfail.test", "c@reject.test"] {
        let event = verify_event(to, "en", "https://acc.example/v");
        broker.publish(&env.topology, &event.to_vec()).await;
    }
    assert!(
        wait_until(Duration::from_secs(30), || async {
            waiting(port, "retry").await == 2.0 && waiting(port, "dead").await == 1.0
        })
        .await,
        "two mails wait in the retry queue, one in the dead letters: retry {}, dead {}",
        waiting(port, "retry").await,
        waiting(port, "dead").await
    );
    assert_eq!(waiting(port, "work").await, 0.0);
    assert_eq!(
        broker
            .count(&env.topology.retry_queue(Duration::from_secs(3600)))
            .await,
        Some(2),
        "as the broker says"
    );

    // An operator deletes the dead-letter queue by hand and declares it
    // again: the reporter's declare fails once (closing its channel), and
    // it goes on with a new channel rather than leaving the gauges stale.
    let dead = env.topology.dead_queue();
    broker.delete_queue(&dead).await;
    // The gap spans a reporting round, so one declare meets the missing queue.
    tokio::time::sleep(mailer::broker::DEPTH_INTERVAL + Duration::from_secs(1)).await;
    broker.declare_with(&dead, &[]).await;
    broker.put(&dead, b"one").await;
    broker.put(&dead, b"two").await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            waiting(port, "dead").await == 2.0
        })
        .await,
        "the reporter recovered: dead {}",
        waiting(port, "dead").await
    );
    assert_eq!(
        waiting(port, "retry").await,
        2.0,
        "and still reads the rest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_names_a_publisher_makes_up_never_become_metric_labels() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let _mailer = env.mailer(&[("MAILER_BIND", &bind)]).await;
    let broker = Broker::connect().await;
    // A publisher flooding made-up names would otherwise add a series each,
    // kept for the life of the process.
    for i in 0..5 {
        let mut event = verify_event("x@example.com", "en", "https://acc.example/v");
        if let shared::Body::Template { template, .. } = &mut event.body {
            *template = format!("made_up_{i}");
        }
        broker.publish(&env.topology, &event.to_vec()).await;
    }
    assert!(
        wait_until(Duration::from_secs(30), || async {
            messages(port, "unknown", "dead").await == Some(5.0)
        })
        .await,
        "counted under template=\"unknown\""
    );
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("made_up_"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_store_a_failed_send_gives_its_claim_up_for_the_retry() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let store = env.dedupe_database().await;
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let _mailer = env
        .mailer(&[("MAILER_BIND", &bind), ("MAILER_DEDUPE_URL", &store)])
        .await;
    let broker = Broker::connect().await;
    // 451 on every try: each retry must find the claim given up, not wait
    // out the lease (MAILER_SMTP_TIMEOUT + 10 s) as if another mailer held it.
    let event = verify_event("x@tempfail.test", "en", "https://acc.example/v");
    broker.publish(&env.topology, &event.to_vec()).await;
    let dead = env.topology.dead_queue();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            broker.count(&dead).await == Some(1)
        })
        .await,
        "the whole ladder was climbed"
    );
    assert_eq!(outcome_count(port, "retried").await, 3);
    assert_eq!(
        outcome_count(port, "deferred").await,
        0,
        "no retry waited on its own claim"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_not_dialled_for_every_mail() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    // A "database" that hangs up on every connection, and counts them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store_port = listener.local_addr().unwrap().port();
    let dials = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = dials.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(conn);
        }
    });
    let store = format!("postgres://postgres@127.0.0.1:{store_port}/x");
    let _mailer = env.mailer(&[("MAILER_DEDUPE_URL", &store)]).await;
    let broker = Broker::connect().await;
    let n = 10;
    for i in 0..n {
        let e = verify_event(&format!("s{i}@example.com"), "en", "https://acc.example/v");
        broker.publish(&env.topology, &e.to_vec()).await;
    }
    // The store is best effort: every mail still goes.
    let started = std::time::Instant::now();
    assert_eq!(env.wait_for_mail(n, Duration::from_secs(30)).await.len(), n);
    // After a failed dial the store is left alone for a second: at most one
    // dial per second of the burst (and the one at start), never one per mail.
    let dials = dials.load(std::sync::atomic::Ordering::SeqCst);
    let bound = 2 + started.elapsed().as_secs() as usize;
    assert!(
        dials <= bound.min(n / 2),
        "{dials} dials for {n} mails in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_forgets_ids_past_its_retention_and_keeps_the_rest() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let store = env.dedupe_database().await;
    let (client, conn) = tokio_postgres::connect(&store, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = "SELECT count(*) FROM mailer_accepted";
    let table_made = || async { client.query_one(rows, &[]).await.is_ok() };
    // A first mailer makes the table (its purge runs at start).
    let first = env.mailer(&[("MAILER_DEDUPE_URL", &store)]).await;
    assert!(wait_until(Duration::from_secs(20), table_made).await);
    assert!(first.terminate().await.success());
    client
        .batch_execute(
            "INSERT INTO mailer_accepted (event_id, claimed_at, accepted_at) VALUES \
             (gen_random_uuid(), now() - interval '2 hours', now() - interval '2 hours'), \
             (gen_random_uuid(), now(), now())",
        )
        .await
        .unwrap();
    // The next one purges at start: ids older than an hour go.
    let _second = env
        .mailer(&[
            ("MAILER_DEDUPE_URL", &store),
            ("MAILER_DEDUPE_RETENTION", "1h"),
        ])
        .await;
    let count = || async { client.query_one(rows, &[]).await.unwrap().get::<_, i64>(0) };
    assert!(
        wait_until(Duration::from_secs(20), || async { count().await == 1 }).await,
        "the old id is purged"
    );
    let recent =
        "SELECT count(*) FROM mailer_accepted WHERE claimed_at > now() - interval '1 minute'";
    assert_eq!(
        client
            .query_one(recent, &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1,
        "the recent one stays"
    );
}
