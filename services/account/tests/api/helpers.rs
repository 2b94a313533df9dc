//! `spawn_app()`: the real application on port 0, with its own database and
//! broker prefix, both removed when the `TestApp` is dropped (even on panic).

use std::collections::HashMap;
use std::time::Duration;

use account::config::Settings;
use account::startup::Application;
use account::token::{KeyRing, generate_key_spec};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use shared::{MailSend, Topology};
use uuid::Uuid;

pub use testkit::{AMQP, PG, Teardown};

/// One mail event as it arrived on the broker.
pub struct Captured {
    pub mail: MailSend,
    pub raw: Value,
    pub props: BasicProperties,
}

pub struct TestApp {
    pub base: String,
    /// The admin listener (`/metrics`, probes).
    pub admin: String,
    pub db_name: String,
    pub topology: Topology,
    pub key_spec: String,
    pub client: reqwest::Client,
    capture: Option<Capture>,
    vars: HashMap<String, String>,
    running: Running,
    _teardown: Teardown,
}

struct Capture {
    _conn: Connection,
    consumer: lapin::Consumer,
}

pub struct Options {
    pub env: HashMap<String, String>,
    /// Declare a queue on the mail exchange that records every event.
    pub capture: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            env: HashMap::new(),
            capture: true,
        }
    }
}

impl Options {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.to_owned(), v.to_owned());
        self
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        shared::telemetry::init(false, "info");
    }
}

pub async fn spawn_app_with(opts: Options) -> TestApp {
    init_logs();
    let id = Uuid::new_v4().simple().to_string();
    let db_name = format!("test_account_{id}");
    let prefix = format!("test-{id}");
    let key_spec = format!(
        "{},{}",
        generate_key_spec("current"),
        generate_key_spec("old")
    );
    let mut vars: HashMap<String, String> = [
        ("ACCOUNT_BIND", "127.0.0.1:0".to_owned()),
        ("ACCOUNT_ADMIN_BIND", "127.0.0.1:0".to_owned()),
        ("ACCOUNT_DATABASE_URL", format!("{PG}/{db_name}")),
        ("ACCOUNT_AMQP_URL", AMQP.to_owned()),
        ("ACCOUNT_AMQP_PREFIX", prefix.clone()),
        ("ACCOUNT_TOKEN_KEYS", key_spec.clone()),
        ("ACCOUNT_COOKIE_SECURE", "false".to_owned()),
        ("ACCOUNT_RATE_LIMITS", "off".to_owned()),
        ("ACCOUNT_WORKERS", "2".to_owned()),
        ("ACCOUNT_DATABASE_POOL_SIZE", "8".to_owned()),
        // Cheap hashing keeps the suite fast; the default cost has its own unit test.
        ("ACCOUNT_ARGON2_MEMORY_KIB", "1024".to_owned()),
        ("ACCOUNT_ARGON2_ITERATIONS", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    vars.extend(opts.env);
    let settings = Settings::from_vars(vars.clone()).expect("test settings are valid");
    let topology = settings.topology.clone();

    let teardown = Teardown {
        database: Some(db_name.clone()),
        topology: Some(topology.clone()),
        dir: None,
        retry_delays: Vec::new(),
    };
    let capture = if opts.capture {
        Some(capture(&topology).await)
    } else {
        None
    };
    let running = start(settings).await;
    TestApp {
        base: running.base.clone(),
        admin: running.admin.clone(),
        db_name,
        topology,
        key_spec,
        client: browser(),
        capture,
        vars,
        running,
        _teardown: teardown,
    }
}

/// A cookie-keeping client that does not follow redirects: a browser profile.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap()
}

/// An application serving in the background, and what stops it.
struct Running {
    base: String,
    admin: String,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<Result<(), anyhow::Error>>,
}

async fn start(settings: Settings) -> Running {
    let app = Application::build(settings).await.expect("the app starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let admin = format!("http://127.0.0.1:{}", app.admin_port());
    let handle = app.handle();
    let task = tokio::spawn(app.run_until_stopped());
    Running {
        base,
        admin,
        handle,
        task,
    }
}

/// Declares the exchange as the service does and an exclusive queue bound to it.
async fn capture(topology: &Topology) -> Capture {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let ch = conn.create_channel().await.unwrap();
    shared::topology::declare_exchange(&ch, &topology.exchange())
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
        topology.exchange().as_str().into(),
        "mail.send".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let consumer = ch
        .basic_consume(
            q.name().clone(),
            "capture".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    Capture {
        _conn: conn,
        consumer,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the service gracefully and starts it again on the same
    /// database and broker prefix with `env` changed, as a deploy does.
    /// The new instance listens on new ports; `base` follows.
    pub async fn restart(&mut self, env: &[(&str, &str)]) {
        self.running.handle.stop(true).await;
        let task = &mut self.running.task;
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the old instance stops")
            .unwrap()
            .unwrap();
        for (k, v) in env {
            self.vars.insert(k.to_string(), v.to_string());
        }
        let settings = Settings::from_vars(self.vars.clone()).expect("test settings are valid");
        self.running = start(settings).await;
        self.base = self.running.base.clone();
        self.admin = self.running.admin.clone();
    }

    pub async fn post_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// The CSRF token of this client's browser: loads a page (which sets
    /// the cookie in the client's jar on first visit) and reads its form.
    pub async fn csrf(&self) -> String {
        self.csrf_of(&self.client).await
    }

    /// The CSRF token of another browser (`client` keeps cookies).
    pub async fn csrf_of(&self, client: &reqwest::Client) -> String {
        let html = client
            .get(self.url("/login"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        csrf_in(&html)
    }

    /// A form post as a same-site browser sends it (with its CSRF token),
    /// and the page it answers.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let res = self.submit(path, form).await;
        (res.status().as_u16(), res.text().await.unwrap())
    }

    /// A form post with this browser's CSRF token, as the response.
    pub async fn submit(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let csrf = self.csrf().await;
        let mut form = form.to_vec();
        form.push(("csrf", &csrf));
        self.client
            .post(self.url(path))
            .form(&form)
            .send()
            .await
            .unwrap()
    }

    pub async fn signup(&self, email: &str, password: &str) -> reqwest::Response {
        self.post_json(
            "/api/v1/signup",
            json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn verify_api(&self, token: &str) -> reqwest::Response {
        self.post_json("/api/v1/verify", json!({"token": token}))
            .await
    }

    pub async fn verify_form(&self, token: &str) -> reqwest::Response {
        self.submit("/verify", &[("token", token)]).await
    }

    pub async fn me(&self) -> reqwest::Response {
        self.client
            .get(self.url("/api/v1/me"))
            .send()
            .await
            .unwrap()
    }

    /// Binds the capture queue now (a queue appears on the exchange, as
    /// when the mailer starts).
    pub async fn start_capture(&mut self) {
        self.capture = Some(capture(&self.topology).await);
    }

    /// The next event on the broker, or panics after `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Captured {
        self.try_next_event(wait)
            .await
            .expect("a mail event reached the broker in time")
    }

    /// The next event addressed to `to`. Delivery is at least once, so a
    /// copy of an earlier event may come first: those are skipped.
    pub async fn next_event_to(&mut self, to: &str) -> Captured {
        loop {
            let event = self.next_event(WAIT).await;
            if event.mail.to.email == to {
                return event;
            }
        }
    }

    /// The next event to `to` of `template`, skipping that address's others.
    pub async fn next_mail(&mut self, to: &str, template: &str) -> Captured {
        loop {
            let event = self.next_event_to(to).await;
            if event.raw["template"] == template {
                return event;
            }
        }
    }

    /// A field of the `data` of the next `template` mail to `to` (a link).
    pub async fn next_link(&mut self, to: &str, template: &str, field: &str) -> String {
        let event = self.next_mail(to, template).await;
        event.raw["data"][field].as_str().unwrap().to_owned()
    }

    /// The next event on the broker within `wait`, if any.
    pub async fn try_next_event(&mut self, wait: Duration) -> Option<Captured> {
        let consumer = &mut self.capture.as_mut().expect("capture is on").consumer;
        let delivery = tokio::time::timeout(wait, consumer.next())
            .await
            .ok()??
            .ok()?;
        let raw: Value = serde_json::from_slice(&delivery.data).expect("event is JSON");
        let mail = MailSend::from_slice(&delivery.data).expect("event is a valid envelope");
        Some(Captured {
            mail,
            raw,
            props: delivery.properties,
        })
    }

    /// A direct connection to the test database.
    pub async fn db(&self) -> diesel_async::AsyncPgConnection {
        use diesel_async::AsyncConnection;
        diesel_async::AsyncPgConnection::establish(&format!("{PG}/{}", self.db_name))
            .await
            .unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut c = self.db().await;
        diesel::sql_query(sql)
            .get_result::<N>(&mut c)
            .await
            .unwrap()
            .n
    }

    /// Runs a statement on the test database (to move time along, say).
    pub async fn exec(&self, sql: &str) -> usize {
        use diesel_async::RunQueryDsl;
        let mut c = self.db().await;
        diesel::sql_query(sql).execute(&mut c).await.unwrap()
    }

    /// A counter or gauge from the admin listener's `/metrics` (0 if absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn keys(&self) -> KeyRing {
        KeyRing::parse(&self.key_spec).unwrap()
    }
}

/// The token inside a verification URL.
pub fn token_of(url: &str) -> String {
    let url = url::Url::parse(url).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == "token")
        .unwrap()
        .1
        .into_owned()
}

/// The verification URL of a `verify_email` event.
pub fn verify_url(c: &Captured) -> String {
    assert_eq!(c.raw["template"], "verify_email", "{}", c.raw);
    c.raw["data"]["verify_url"].as_str().unwrap().to_owned()
}

/// The CSRF token a page's forms carry.
pub fn csrf_in(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("a form with a CSRF token in {html}"))
        + r#"name="csrf" value=""#.len();
    html[at..at + html[at..].find('"').unwrap()].to_owned()
}

/// Every cookie a response sets.
pub fn cookies_set(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The session cookie a response sets, if any.
pub fn session_set(headers: &HeaderMap) -> Option<String> {
    cookies_set(headers)
        .into_iter()
        .find(|c| c.starts_with("session=") || c.starts_with("__Host-session="))
}

pub const WAIT: Duration = Duration::from_secs(10);
