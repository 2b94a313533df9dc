//! A real SMTP server (aiosmtpd, STARTTLS + AUTH), the mailer binary as a
//! process, and a broker prefix of the test's own, removed at the end.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;
use shared::Topology;
use tokio::process::{Child, Command};
use uuid::Uuid;

pub use testkit::{AMQP, PG, free_port, root, wait_until};
use testkit::{SmtpDirs, Teardown, start_smtp};

pub const USER: &str = "sender@naver.test";
pub const PASSWORD: &str = "app-password-123";
pub const RETRIES: &str = "300ms,600ms,1s";

/// Everything one test owns: a temp folder, a broker prefix.
pub struct Env {
    pub dir: PathBuf,
    pub topology: Topology,
    pub smtp_port: u16,
    /// Removes the folder and the broker prefix; every retry ladder a mailer
    /// of this test declared is added to it.
    teardown: std::sync::Mutex<Teardown>,
}

impl Env {
    pub fn new() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("mailer-test-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let topology = Topology::new(&format!("test-{id}")).unwrap();
        let mut retry_delays = mailer::config::DEFAULT_RETRY_DELAYS.to_vec();
        retry_delays.extend(ladder(RETRIES));
        let teardown = Teardown {
            dir: Some(dir.clone()),
            topology: Some(topology.clone()),
            retry_delays,
            database: None,
        };
        Self {
            dir,
            topology,
            smtp_port: free_port(),
            teardown: std::sync::Mutex::new(teardown),
        }
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    pub fn inbox(&self) -> PathBuf {
        self.dir.join("inbox")
    }

    /// A database of this test's own for `MAILER_DEDUPE_URL` (dropped at the
    /// end); returns its URL.
    pub async fn dedupe_database(&self) -> String {
        let name = format!("test_dedupe_{}", Uuid::new_v4().simple());
        let (client, conn) =
            tokio_postgres::connect(&format!("{PG}/postgres"), tokio_postgres::NoTls)
                .await
                .expect("PostgreSQL on 127.0.0.1:5432");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        self.teardown.lock().unwrap().database = Some(name.clone());
        format!("{PG}/{name}")
    }

    /// Starts aiosmtpd on this test's port.
    pub async fn smtp(&self) -> Smtp {
        self.smtp_with(&[]).await
    }

    /// Starts aiosmtpd on this test's port with extra flags (`--implicit-tls`).
    pub async fn smtp_with(&self, flags: &[&str]) -> Smtp {
        let dirs = SmtpDirs {
            inbox: &self.inbox(),
            pki: &self.pki(),
        };
        let child = start_smtp(self.smtp_port, USER, PASSWORD, dirs, flags).await;
        Smtp { _child: child }
    }

    /// The mailer's environment pointed at this test's SMTP server.
    pub fn mailer_env(&self) -> Vec<(String, String)> {
        [
            ("MAILER_BIND", "127.0.0.1:0".to_owned()),
            ("MAILER_AMQP_URL", AMQP.to_owned()),
            ("MAILER_AMQP_PREFIX", self.topology.prefix().to_owned()),
            (
                "MAILER_SMTP_URL",
                format!(
                    "smtp://{}@127.0.0.1:{}?tls=required",
                    USER.replace('@', "%40"),
                    self.smtp_port
                ),
            ),
            ("MAILER_SMTP_PASSWORD", PASSWORD.to_owned()),
            ("MAILER_FROM", format!("계정 서비스 <{USER}>")),
            ("MAILER_RETRY_DELAYS", RETRIES.to_owned()),
            ("MAILER_SMTP_TIMEOUT", "5s".to_owned()),
            (
                "SSL_CERT_FILE",
                self.pki().join("ca.pem").display().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Starts the mailer binary; waits until it consumes from its queue (the
    /// queue exists, is bound, and a consumer is on it).
    pub async fn mailer(&self, extra: &[(&str, &str)]) -> Mailer {
        // The CA must exist before the mailer loads its roots.
        if !self.pki().join("ca.pem").exists() {
            drop(self.smtp().await);
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailer"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in self.mailer_env() {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
            if *k == "MAILER_RETRY_DELAYS" {
                let mut teardown = self.teardown.lock().unwrap();
                teardown.retry_delays.extend(ladder(v));
            }
        }
        if std::env::var_os("TEST_LOG").is_none() {
            cmd.stderr(Stdio::null());
        }
        let child = cmd.kill_on_drop(true).spawn().unwrap();
        let broker = Broker::connect().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while broker.consumers(&self.topology.queue()).await.unwrap_or(0) == 0 {
            assert!(Instant::now() < deadline, "the mailer consumes its queue");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Mailer { child }
    }

    /// The decoded summaries of every mail the SMTP server accepted, in order.
    pub fn received(&self) -> Vec<Value> {
        testkit::received(&self.inbox())
    }

    /// Waits until at least `n` mails arrived.
    pub async fn wait_for_mail(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A retry ladder as `MAILER_RETRY_DELAYS` spells it, read by the mailer's
/// own configuration parser.
fn ladder(spec: &str) -> Vec<Duration> {
    mailer::config::retry_delays(spec)
        .map(|d| d.0)
        .unwrap_or_default()
}

/// The running SMTP server; killed when dropped.
pub struct Smtp {
    _child: Child,
}

pub struct Mailer {
    pub child: Child,
}

impl Mailer {
    /// SIGTERM, then the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("the mailer exits after SIGTERM")
            .unwrap()
    }
}

/// A plain AMQP client for publishing and inspecting queues.
pub struct Broker {
    _conn: Connection,
    ch: lapin::Channel,
}

impl Broker {
    pub async fn connect() -> Self {
        Self::connect_url(AMQP).await
    }

    /// Connects as another broker user (see [`BrokerUser`]).
    pub async fn connect_as(user: &BrokerUser) -> Self {
        Self::connect_url(&format!(
            "amqp://{}:{}@127.0.0.1:5672/%2f",
            user.name, user.password
        ))
        .await
    }

    async fn connect_url(url: &str) -> Self {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672");
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self { _conn: conn, ch }
    }

    /// Publishes raw bytes to the mail exchange, as any publisher would.
    pub async fn publish(&self, t: &Topology, body: &[u8]) {
        self.try_publish(t, body, None)
            .await
            .expect("routed to the mailer's queue");
    }

    /// Publishes with the AMQP `user_id` property set (or not), and says
    /// whether the broker took the message into the mailer's queue.
    pub async fn try_publish(
        &self,
        t: &Topology,
        body: &[u8],
        user_id: Option<&str>,
    ) -> Result<(), String> {
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if let Some(user) = user_id {
            props = props.with_user_id(user.into());
        }
        let confirm = self
            .ch
            .basic_publish(
                t.exchange().as_str().into(),
                "mail.send".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        if confirm.is_ack() && confirm.take_message().is_none() {
            Ok(())
        } else {
            Err("not routed".into())
        }
    }

    /// A queue as the broker sees it, or None if it does not exist.
    async fn passive(&self, queue: &str) -> Option<lapin::Queue> {
        let ch = self._conn.create_channel().await.ok()?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = ch.close(200, "".into()).await;
        Some(q)
    }

    /// Messages ready in a queue, or None if it does not exist.
    pub async fn count(&self, queue: &str) -> Option<u32> {
        Some(self.passive(queue).await?.message_count())
    }

    /// Consumers on a queue, or None if it does not exist.
    pub async fn consumers(&self, queue: &str) -> Option<u32> {
        Some(self.passive(queue).await?.consumer_count())
    }

    /// Deletes a queue (as an operator might, by hand).
    pub async fn delete_queue(&self, queue: &str) {
        self.ch
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }

    /// Declares a durable queue with `args` (string values).
    pub async fn declare_with(&self, queue: &str, args: &[(&str, &str)]) {
        let mut table = FieldTable::default();
        for (k, v) in args {
            table.insert(
                (*k).into(),
                lapin::types::AMQPValue::LongString((*v).into()),
            );
        }
        self.ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                table,
            )
            .await
            .unwrap();
    }

    /// Puts a message straight into `queue` (the default exchange), confirmed.
    pub async fn put(&self, queue: &str, body: &[u8]) {
        self.ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Takes every message from a queue: (headers as JSON-ish strings, body).
    pub async fn drain(&self, queue: &str) -> Vec<(BasicProperties, Vec<u8>)> {
        let mut out = Vec::new();
        while let Ok(Some(msg)) = self
            .ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
        {
            out.push((msg.delivery.properties.clone(), msg.delivery.data.clone()));
        }
        out
    }
}

pub fn header(props: &BasicProperties, name: &str) -> Option<String> {
    use lapin::types::AMQPValue;
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A RabbitMQ user of the test's own (one per publishing service, as
/// docs/operations.md sets them up), removed when dropped.
pub struct BrokerUser {
    pub name: String,
    pub password: String,
}

impl BrokerUser {
    pub fn create(service: &str) -> Self {
        let name = format!("{service}-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let password = Uuid::new_v4().simple().to_string();
        rabbitmqctl(&["add_user", &name, &password]);
        rabbitmqctl(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"]);
        Self { name, password }
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_user", &self.name])
            .output();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl (the machine's RabbitMQ)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The peak resident memory of a process so far, in bytes (`VmHWM`).
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM in /proc/<pid>/status")
}

/// A `MAILER_BIND` of the test's own: (the port, the variable's value).
pub fn metrics_bind() -> (u16, String) {
    let port = free_port();
    (port, format!("127.0.0.1:{port}"))
}

/// The mailer's `/metrics` page on `port` (empty while it does not answer).
pub async fn scrape(port: u16) -> String {
    match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of one series on the mailer's `/metrics`: `series` is the name
/// with its labels exactly as exported (`name{a="x",b="y"}`); None while
/// the series (or the page) is missing.
pub async fn series(port: u16, series: &str) -> Option<f64> {
    scrape(port)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `mailer_messages_total{template, outcome}` on the mailer at `port`.
pub async fn messages(port: u16, template: &str, outcome: &str) -> Option<f64> {
    let name = format!("mailer_messages_total{{template=\"{template}\",outcome=\"{outcome}\"}}");
    series(port, &name).await
}

/// The type the broker declared (`classic`, `quorum`) for the work queue,
/// the dead-letter queue and the retry queue of each delay of `ladder`
/// (`MAILER_RETRY_DELAYS` spelling), by name; a queue the broker does not
/// list is missing from the map.
pub fn queue_types(t: &Topology, ladder_spec: &str) -> std::collections::BTreeMap<String, String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name", "type"])
        .output()
        .expect("rabbitmqctl (the machine's RabbitMQ)");
    assert!(out.status.success(), "{out:?}");
    let mut wanted = vec![t.queue(), t.dead_queue()];
    wanted.extend(ladder(ladder_spec).into_iter().map(|d| t.retry_queue(d)));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(name, _)| wanted.iter().any(|w| w == name))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// [`queue_types`] as it must be when every queue was declared `kind`.
pub fn all_queues_of_type(
    t: &Topology,
    ladder_spec: &str,
    kind: &str,
) -> std::collections::BTreeMap<String, String> {
    let mut names = vec![t.queue(), t.dead_queue()];
    names.extend(ladder(ladder_spec).into_iter().map(|d| t.retry_queue(d)));
    names.into_iter().map(|n| (n, kind.to_owned())).collect()
}

impl Env {
    /// Runs the mailer binary's CLI (`dead list`, `dead requeue ...`) with
    /// this test's environment, to its end.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mailer"));
        cmd.args(args).env_clear();
        for (k, v) in self.mailer_env() {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

impl Env {
    /// The SMTP server's session counts now (`open`, `peak`, `ended`), from
    /// the `sessions.state` it rewrites on every change; None before it wrote one.
    pub fn smtp_sessions(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.inbox().join("sessions.state")).ok()?;
        serde_json::from_str(&text).ok()
    }
}
