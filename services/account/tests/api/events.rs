//! Account events (`<prefix>.account`, `account.<type>`): published through
//! the outbox in the transaction of the change, in order per user, read by a
//! consumer in another language that validates each against the schema.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use account::broker::Publisher;
use account::outbox::{Relay, TaskOutcome};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use secrecy::SecretString;
use serde_json::{Value, json};
use shared::{AccountEvent, AccountEventType};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

/// The Python consumer (pika), bound before anything happens.
struct PyConsumer {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl PyConsumer {
    async fn start(app: &TestApp, count: usize) -> Self {
        let mut child = tokio::process::Command::new(testkit::python())
            .arg(testkit::root().join("tests/support/consume_account_events.py"))
            .args(["--prefix", app.topology.prefix()])
            .args(["--count", &count.to_string(), "--timeout", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the consumer starts")
            .unwrap();
        assert_eq!(first.as_deref(), Some("ready"));
        Self { child, lines }
    }

    /// Every event it received, once it has them all (it exits 0 only if
    /// each one met the schema and the routing key, id and content type).
    async fn finish(mut self) -> Vec<Value> {
        let mut events = Vec::new();
        while let Some(line) = self.lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap();
            events.push(v["event"].clone());
        }
        let status = self.child.wait().await.unwrap();
        let mut err = String::new();
        use tokio::io::AsyncReadExt;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        assert!(status.success(), "the consumer says: {err}");
        events
    }
}

fn types_of(events: &[&Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_consumer_gets_every_event_type_in_order_and_each_meets_the_schema() {
    let mut app = spawn_app().await;
    let consumer = PyConsumer::start(&app, 8).await;
    let (a, b) = (browser(), browser());

    // A: sign-up, link, password change, address change, deletion.
    let res = a
        .post(app.url("/api/v1/signup"))
        .json(&json!({"email": "life@example.com", "password": "password-123", "locale": "ko"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let token = token_of(&verify_url(&app.next_event_to("life@example.com").await));
    let res = a
        .post(app.url("/api/v1/verify"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = a
        .post(app.url("/api/v1/password"))
        .json(&json!({"current_password": "password-123", "new_password": "password-456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = a
        .post(app.url("/api/v1/email"))
        .json(&json!({"new_email": "moved@example.com", "password": "password-456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let link = app.next_event_to("moved@example.com").await;
    let token = token_of(link.raw["data"]["confirm_url"].as_str().unwrap());
    let res = a
        .post(app.url("/api/v1/email/confirm"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = a
        .delete(app.url("/api/v1/me"))
        .json(&json!({"password": "password-456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);

    // B: sign-up, the code, a password reset.
    let res = b
        .post(app.url("/api/v1/signup"))
        .json(&json!({"email": "code@example.com", "password": "password-123", "locale": "en"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let mail = app.next_event_to("code@example.com").await;
    let six_digits = mail.raw["data"]["code"].as_str().unwrap().to_owned();
    let res = b
        .post(app.url("/api/v1/verify"))
        .json(&json!({"email": "code@example.com", "code": six_digits}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = b
        .post(app.url("/api/v1/password/forgot"))
        .json(&json!({"email": "code@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let token = token_of(
        &app.next_link("code@example.com", "reset_password", "reset_url")
            .await,
    );
    let res = b
        .post(app.url("/api/v1/password/reset"))
        .json(&json!({"token": token, "password": "password-789"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let events = consumer.finish().await;
    let mut by_user: HashMap<String, Vec<&Value>> = HashMap::new();
    for e in &events {
        by_user
            .entry(e["user_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e);
    }
    assert_eq!(by_user.len(), 2, "{events:#?}");
    let (life, code): (Vec<_>, Vec<_>) = by_user
        .into_values()
        .partition(|evs| evs[0]["email"] == "life@example.com");
    let (life, code) = (&life[0], &code[0]);
    assert_eq!(
        types_of(life),
        [
            "created",
            "verified",
            "password_changed",
            "email_changed",
            "deleted"
        ]
    );
    assert_eq!(types_of(code), ["created", "verified", "password_changed"]);
    assert!(life.iter().all(|e| e["locale"] == "ko"));
    assert!(code.iter().all(|e| e["locale"] == "en"));
    assert_eq!(life[3]["email"], "moved@example.com");
    assert_eq!(life[3]["previous_email"], "life@example.com");
    assert_eq!(
        life[4]["email"], "moved@example.com",
        "deleted names the last address"
    );
    for e in &events {
        let fields: Vec<&str> = e.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        for secret in ["password", "password_hash", "token", "code"] {
            assert!(!fields.iter().any(|f| f.contains(secret)), "{e}");
        }
        let text = e.to_string();
        assert!(
            !text.contains("$argon2") && !text.contains(&six_digits),
            "{e}"
        );
    }
    // In the order they happened.
    for evs in [life, code] {
        let times: Vec<&str> = evs
            .iter()
            .map(|e| e["occurred_at"].as_str().unwrap())
            .collect();
        let parsed: Vec<chrono::DateTime<chrono::Utc>> =
            times.iter().map(|t| t.parse().unwrap()).collect();
        assert!(parsed.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }
}

/// A queue bound to `account.#` on the test's account exchange.
async fn account_queue(app: &TestApp) -> (Connection, lapin::Consumer) {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let exchange = app.topology.account_exchange();
    shared::topology::declare_exchange(&ch, &exchange)
        .await
        .unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        q.name().clone(),
        exchange.as_str().into(),
        "account.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let consumer = ch
        .basic_consume(
            q.name().clone(),
            "events".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    (conn, consumer)
}

async fn next_account_event(
    consumer: &mut lapin::Consumer,
    wait: Duration,
) -> Option<AccountEvent> {
    let delivery = tokio::time::timeout(wait, consumer.next())
        .await
        .ok()??
        .ok()?;
    Some(serde_json::from_slice(&delivery.data).expect("an account event"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_change_during_a_broker_outage_is_told_exactly_once_when_it_is_back() {
    let port = testkit::free_port();
    let mut broker = testkit::Proxy::start(port, "127.0.0.1:5672").await;
    let mut app = spawn_app_with(
        Options::default()
            .env(
                "ACCOUNT_AMQP_URL",
                &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            )
            .env("ACCOUNT_OUTBOX_SWEEP_INTERVAL", "200ms"),
    )
    .await;
    let (_conn, mut events) = account_queue(&app).await;
    let client = app.client.clone();
    let res = client
        .post(app.url("/api/v1/signup"))
        .json(&json!({"email": "outage@example.com", "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let token = token_of(&verify_url(&app.next_event_to("outage@example.com").await));
    assert_eq!(app.verify_api(&token).await.status(), 200);
    let res = client
        .post(app.url("/api/v1/email"))
        .json(&json!({"new_email": "after@example.com", "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let link = app.next_event_to("after@example.com").await;
    let token = token_of(link.raw["data"]["confirm_url"].as_str().unwrap());
    for expected in [AccountEventType::Created, AccountEventType::Verified] {
        let e = next_account_event(&mut events, WAIT)
            .await
            .expect("an event");
        assert_eq!(e.kind, expected);
    }

    // The broker goes away; the change still happens.
    broker.cut();
    let res = client
        .post(app.url("/api/v1/email/confirm"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let pending = "SELECT count(*) AS n FROM outbox \
                   WHERE routing_key = 'account.email_changed' AND published_at IS NULL";
    assert_eq!(app.count(pending).await, 1, "waiting in the outbox");
    assert!(
        next_account_event(&mut events, Duration::from_millis(800))
            .await
            .is_none()
    );

    // Back on the same address: told once, nothing after it.
    let _back = testkit::Proxy::start(port, "127.0.0.1:5672").await;
    let e = next_account_event(&mut events, Duration::from_secs(40))
        .await
        .expect("the event once the broker is back");
    assert_eq!(e.kind, AccountEventType::EmailChanged);
    assert_eq!(e.email, "after@example.com");
    assert_eq!(e.previous_email.as_deref(), Some("outage@example.com"));
    assert!(
        next_account_event(&mut events, Duration::from_secs(2))
            .await
            .is_none(),
        "exactly once"
    );
    assert_eq!(app.count(pending).await, 0);
}

/// One user's events go out in order even with several relays: a relay
/// never publishes an event while an earlier one of the same user is
/// unpublished, e.g. held by another relay that has not had its confirm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_later_event_waits_while_another_relay_holds_an_earlier_one() {
    let app = spawn_app_with(Options::default().env("ACCOUNT_OUTBOX_SWEEP_INTERVAL", "1h")).await;
    let (_conn, mut events) = account_queue(&app).await;
    let mut db = app.db().await;
    let user = uuid::Uuid::new_v4();
    let first = AccountEvent::new(AccountEventType::Created, user, "o@example.com", "en");
    let second = AccountEvent::new(AccountEventType::Verified, user, "o@example.com", "en");
    let other = AccountEvent::new(
        AccountEventType::Created,
        uuid::Uuid::new_v4(),
        "x@example.com",
        "en",
    );
    {
        use diesel_async::AsyncConnection;
        db.transaction::<_, diesel::result::Error, _>(async |conn| {
            for e in [&first, &second, &other] {
                account::outbox::record(conn, e).await?;
            }
            Ok(())
        })
        .await
        .unwrap();
    }
    // Another relay has claimed the first event and waits for its confirm.
    use diesel_async::RunQueryDsl;
    let mut holder = app.db().await;
    diesel::sql_query("BEGIN")
        .execute(&mut holder)
        .await
        .unwrap();
    diesel::sql_query(format!(
        "SELECT id FROM outbox WHERE id = '{}' FOR UPDATE",
        first.id
    ))
    .execute(&mut holder)
    .await
    .unwrap();

    let pool = account::db::pool(&format!("{PG}/{}", app.db_name), 2).unwrap();
    let publisher = std::sync::Arc::new(Publisher::new(
        SecretString::from(AMQP.to_owned()),
        app.topology.clone(),
    ));
    let relay = Relay::new(pool, publisher, Duration::from_secs(3600));
    assert_eq!(
        relay.try_execute_task().await.unwrap(),
        TaskOutcome::Published(1),
        "only the other user's event"
    );
    let e = next_account_event(&mut events, WAIT).await.unwrap();
    assert_eq!(e.id, other.id);

    // The holder lets go without publishing: now the first, then the second.
    diesel::sql_query("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    assert_eq!(
        relay.try_execute_task().await.unwrap(),
        TaskOutcome::Published(1)
    );
    assert_eq!(
        relay.try_execute_task().await.unwrap(),
        TaskOutcome::Published(1)
    );
    assert_eq!(
        next_account_event(&mut events, WAIT).await.unwrap().id,
        first.id
    );
    assert_eq!(
        next_account_event(&mut events, WAIT).await.unwrap().id,
        second.id
    );
}
