//! What the fault and cluster suites drive: the service binaries as
//! processes that can be SIGKILLed and started again, a sign-up flood that
//! records every answer, and the count of mail per address at the SMTP
//! server.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

/// A service binary run as a process, its stderr appended to `<name>.log`.
pub struct Proc {
    pub name: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `bin` with exactly `env` (and PATH).
    pub fn spawn(bin: &Path, name: &str, env: Vec<(String, String)>, log_dir: &Path) -> Self {
        let mut p = Self {
            name: name.to_owned(),
            bin: bin.to_owned(),
            env,
            log: log_dir.join(format!("{name}.log")),
            child: None,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: the process dies mid-work, with no chance to finish anything.
    pub async fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the process again with the same environment.
    pub fn restart(&mut self) {
        self.start();
    }

    /// Its log lines (JSON, `*_LOG_FORMAT=json`), parsed.
    pub fn log_events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The lines of its log at ERROR level.
    pub fn error_lines(&self) -> Vec<String> {
        self.log_events()
            .into_iter()
            .filter(|e| e["level"] == "ERROR")
            .map(|e| e.to_string())
            .collect()
    }
}

/// What a flood saw.
#[derive(Debug, Default, Clone)]
pub struct Answers {
    /// Addresses whose sign-up answered 202.
    pub accepted: Vec<String>,
    /// Every answer by status (or `no answer`), with counts.
    pub by_status: BTreeMap<String, usize>,
}

/// The password every flood sign-up chooses.
pub const FLOOD_PASSWORD: &str = "a fault-tolerant password";

/// Sign-ups posted by `concurrency` workers to the `targets` (account base
/// URLs) in turn, with fresh addresses `<prefix>-<n>@example.com`, until
/// `want` were accepted (at most four times as many tries).
pub struct Flood {
    answers: Arc<Mutex<Answers>>,
    accepted: Arc<AtomicUsize>,
    tasks: JoinSet<()>,
}

impl Flood {
    pub fn start(targets: Vec<String>, prefix: &str, want: usize, concurrency: usize) -> Self {
        let answers = Arc::new(Mutex::new(Answers::default()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let next = Arc::new(AtomicUsize::new(0));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut tasks = JoinSet::new();
        for _ in 0..concurrency {
            let (answers, accepted, next) = (answers.clone(), accepted.clone(), next.clone());
            let (client, targets, prefix) = (client.clone(), targets.clone(), prefix.to_owned());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if accepted.load(Ordering::Relaxed) >= want || i >= want * 4 {
                        return;
                    }
                    let email = format!("{prefix}-{i}@example.com");
                    let url = format!("{}/api/v1/signup", targets[i % targets.len()]);
                    let body = json!({"email": email, "password": FLOOD_PASSWORD});
                    let status = match client.post(&url).json(&body).send().await {
                        Ok(res) => res.status().as_u16().to_string(),
                        Err(_) => "no answer".to_owned(),
                    };
                    let ok = status == "202";
                    {
                        let mut a = answers.lock().unwrap();
                        *a.by_status.entry(status).or_default() += 1;
                        if ok {
                            a.accepted.push(email);
                        }
                    }
                    if ok {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        // A dead instance refuses at once: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            });
        }
        Self {
            answers,
            accepted,
            tasks,
        }
    }

    /// Sign-ups accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` sign-ups were accepted.
    pub async fn wait_accepted(&self, n: usize, within: Duration) -> bool {
        crate::wait_until(within, || async { self.accepted() >= n }).await
    }

    /// Waits for the workers and returns every answer.
    pub async fn finish(mut self) -> Answers {
        while self.tasks.join_next().await.is_some() {}
        self.answers.lock().unwrap().clone()
    }
}

/// Mail per recipient at the test SMTP server's inbox.
pub fn mail_counts(inbox: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for m in crate::received(inbox) {
        if let Some(to) = m["rcpt_tos"][0].as_str() {
            *counts.entry(to.to_owned()).or_default() += 1;
        }
    }
    counts
}

/// Every mail to `to` at the inbox.
pub fn mails_to(inbox: &Path, to: &str) -> Vec<Value> {
    crate::received(inbox)
        .into_iter()
        .filter(|m| m["rcpt_tos"][0] == to)
        .collect()
}

/// Waits until every address in `accepted` has a mail; returns the
/// addresses still without one.
pub async fn wait_for_every_mail(
    inbox: &Path,
    accepted: &[String],
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let counts = mail_counts(inbox);
        let missing: Vec<String> = accepted
            .iter()
            .filter(|a| !counts.contains_key(*a))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The verification link in a mail's HTML part.
pub fn link_in(mail: &Value) -> String {
    let html = mail["html"].as_str().expect("an HTML part");
    let start = html.find("href=\"").expect("a link in the HTML part") + 6;
    let end = start + html[start..].find('"').unwrap();
    html[start..end].replace("&amp;", "&")
}

/// Follows a mailed verification link through `account` (a base URL) as the
/// API does: `POST /api/v1/verify` with the flood's password (this client
/// did not sign up), then `GET /api/v1/me` with the session. Returns the
/// address the session belongs to.
pub async fn sign_in_with(account: &str, link: &str) -> Result<String, String> {
    let token = url_token(link).ok_or_else(|| format!("no token in {link}"))?;
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let res = client
        .post(format!("{account}/api/v1/verify"))
        .json(&json!({"token": token, "password": FLOOD_PASSWORD}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if res.status() != 200 {
        return Err(format!("verify answered {}", res.status()));
    }
    let me: Value = client
        .get(format!("{account}/api/v1/me"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    me["email"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("/me answered {me}"))
}

fn url_token(link: &str) -> Option<String> {
    let query = link.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| v.to_owned())
    })
}

/// A metric's value summed over the series whose labels contain `labels`.
pub async fn metric(url: &str, name: &str, labels: &str) -> f64 {
    let Ok(res) = reqwest::get(url).await else {
        return 0.0;
    };
    res.text()
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The test SMTP server the suites' mailers send to (STARTTLS + AUTH).
pub struct MailServer<'a> {
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    /// The folder of its private CA (`ca.pem`), which the mailer trusts.
    pub pki: &'a Path,
}

/// A mailer's environment in the suites: `amqp` (one URL or a list),
/// `prefix`, `server`, the retry `ladder`, JSON logs. Callers add
/// `MAILER_BIND` and what their scenario needs.
pub fn mailer_env(
    amqp: &str,
    prefix: &str,
    server: &MailServer,
    ladder: &str,
) -> Vec<(String, String)> {
    let url = format!(
        "smtp://{}@127.0.0.1:{}?tls=required",
        server.user.replace('@', "%40"),
        server.port
    );
    vec![
        ("MAILER_AMQP_URL".into(), amqp.into()),
        ("MAILER_AMQP_PREFIX".into(), prefix.into()),
        ("MAILER_SMTP_URL".into(), url),
        ("MAILER_SMTP_PASSWORD".into(), server.password.into()),
        ("MAILER_FROM".into(), format!("Account <{}>", server.user)),
        ("MAILER_RETRY_DELAYS".into(), ladder.into()),
        ("MAILER_SMTP_TIMEOUT".into(), "5s".into()),
        ("MAILER_LOG_FORMAT".into(), "json".into()),
        (
            "SSL_CERT_FILE".into(),
            server.pki.join("ca.pem").display().to_string(),
        ),
    ]
}

/// An account instance's environment in the suites: listening on `port`,
/// links to `public_url`, the database `db_url`, broker `amqp` (one URL or a
/// list), `prefix`, the key ring `keys`; limits off, a cheap hash (the
/// suites test loss, not speed), JSON logs.
pub fn account_env(
    port: u16,
    public_url: &str,
    db_url: &str,
    amqp: &str,
    prefix: &str,
    keys: &str,
) -> Vec<(String, String)> {
    [
        ("ACCOUNT_BIND", format!("127.0.0.1:{port}")),
        ("ACCOUNT_ADMIN_BIND", "127.0.0.1:0".into()),
        ("ACCOUNT_PUBLIC_URL", public_url.into()),
        ("ACCOUNT_DATABASE_URL", db_url.into()),
        ("ACCOUNT_AMQP_URL", amqp.into()),
        ("ACCOUNT_AMQP_PREFIX", prefix.into()),
        ("ACCOUNT_TOKEN_KEYS", keys.into()),
        ("ACCOUNT_COOKIE_SECURE", "false".into()),
        ("ACCOUNT_RATE_LIMITS", "off".into()),
        ("ACCOUNT_ARGON2_MEMORY_KIB", "1024".into()),
        ("ACCOUNT_ARGON2_ITERATIONS", "1".into()),
        ("ACCOUNT_OUTBOX_SWEEP_INTERVAL", "1s".into()),
        ("ACCOUNT_WORKERS", "2".into()),
        ("ACCOUNT_LOG_FORMAT", "json".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A fresh key ring entry from `account keygen`.
pub fn token_keys() -> String {
    let out = std::process::Command::new(crate::service_binary("account"))
        .arg("keygen")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Messages ready in `queue` at the broker `amqp`, or None if unreachable.
pub async fn ready_in(amqp: &str, queue: &str) -> Option<u32> {
    let conn = lapin::Connection::connect(amqp, Default::default())
        .await
        .ok()?;
    let ch = conn.create_channel().await.ok()?;
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .ok()?;
    let _ = conn.close(200, "".into()).await;
    Some(q.message_count())
}
