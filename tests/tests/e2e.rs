//! The whole flow as a person meets it: both services as real processes (the
//! built binaries), the machine's PostgreSQL and RabbitMQ, aiosmtpd with
//! STARTTLS and AUTH as the mail server, and Debian's headless chromium
//! clicking the link. Screenshots land in tests/artifacts/.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};
use shared::Topology;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PG: &str = "postgres://postgres@127.0.0.1:5432";
const SMTP_USER: &str = "no-reply@naver.test";
const SMTP_PASSWORD: &str = "e2e-app-password";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// target/<profile>/, where cargo put the service binaries.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// A service binary, built first: `cargo test -p e2e` alone does not build
/// other packages' binaries, and a stale one would test old code. A no-op
/// when they are fresh.
fn binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--bin", "account", "--bin", "mailer"])
            .current_dir(root());
        if bin_dir().ends_with("release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().unwrap().success(),
            "building the service binaries"
        );
    });
    bin_dir().join(name)
}

fn python() -> PathBuf {
    let p = std::env::var_os("TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/test-venv/bin/python"));
    assert!(
        p.exists(),
        "run scripts/test (it installs the test SMTP server)"
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_ok(url: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The running system; everything it made is removed on drop.
struct System {
    dir: PathBuf,
    db: String,
    topology: Topology,
    account_url: String,
    _procs: Vec<Child>,
}

impl System {
    async fn start() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("e2e-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let topology = Topology::new(&format!("test-{id}")).unwrap();
        let db = format!("test_e2e_{id}");
        let quiet = std::env::var_os("TEST_LOG").is_none();
        let log = || {
            if quiet {
                Stdio::null()
            } else {
                Stdio::inherit()
            }
        };

        let smtp_port = free_port();
        let mut smtp = Command::new(python())
            .arg(root().join("tests/support/smtpd.py"))
            .args([
                "--port",
                &smtp_port.to_string(),
                "--user",
                SMTP_USER,
                "--password",
                SMTP_PASSWORD,
            ])
            .arg("--dir")
            .arg(dir.join("inbox"))
            .arg("--pki")
            .arg(dir.join("pki"))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(smtp.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(ready.starts_with("READY"), "{ready}");

        let mailer_port = free_port();
        let mailer = Command::new(binary("mailer"))
            .env_clear()
            .env("MAILER_BIND", format!("127.0.0.1:{mailer_port}"))
            .env("MAILER_AMQP_PREFIX", topology.prefix())
            .env(
                "MAILER_SMTP_URL",
                format!(
                    "smtp://{}@127.0.0.1:{smtp_port}?tls=required",
                    SMTP_USER.replace('@', "%40")
                ),
            )
            .env("MAILER_SMTP_PASSWORD", SMTP_PASSWORD)
            .env("MAILER_FROM", format!("Account <{SMTP_USER}>"))
            .env("SSL_CERT_FILE", dir.join("pki/ca.pem"))
            .stderr(log())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_ok(&format!("http://127.0.0.1:{mailer_port}/readyz")).await;

        let keys = std::process::Command::new(binary("account"))
            .arg("keygen")
            .output()
            .unwrap();
        let keys = String::from_utf8(keys.stdout).unwrap().trim().to_owned();
        let account_port = free_port();
        let account_url = format!("http://127.0.0.1:{account_port}");
        let account = Command::new(binary("account"))
            .env_clear()
            .env("ACCOUNT_BIND", format!("127.0.0.1:{account_port}"))
            .env("ACCOUNT_PUBLIC_URL", &account_url)
            .env("ACCOUNT_DATABASE_URL", format!("{PG}/{db}"))
            .env("ACCOUNT_AMQP_PREFIX", topology.prefix())
            .env("ACCOUNT_TOKEN_KEYS", keys)
            .env("ACCOUNT_COOKIE_SECURE", "false")
            .env("ACCOUNT_RATE_LIMITS", "off")
            .stderr(log())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_ok(&format!("{account_url}/readyz")).await;
        Self {
            dir,
            db,
            topology,
            account_url,
            _procs: vec![smtp, mailer, account],
        }
    }

    fn mails(&self) -> Vec<Value> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(self.dir.join("inbox"))
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter_map(|p| Some((p.file_stem()?.to_str()?.parse().ok()?, p)))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, p)| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }

    /// The next mail to `to`, waiting for it at the SMTP server.
    async fn mail_to(&self, to: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(m) = self.mails().into_iter().find(|m| m["rcpt_tos"][0] == to) {
                return m;
            }
            assert!(Instant::now() < deadline, "no mail reached {to}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self._procs.clear(); // kill the services first
        let _ = std::fs::remove_dir_all(&self.dir);
        let (db, t) = (self.db.clone(), self.topology.clone());
        let _ = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
            .arg(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .output();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(conn) = Connection::connect(AMQP, ConnectionProperties::default()).await
                else {
                    return;
                };
                let Ok(ch) = conn.create_channel().await else {
                    return;
                };
                let mut queues = vec![t.queue(), t.dead_queue()];
                for secs in [5, 30, 120, 600, 3600] {
                    queues.push(t.retry_queue(Duration::from_secs(secs)));
                }
                for q in queues {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                let _ = ch
                    .exchange_delete(
                        t.exchange().as_str().into(),
                        ExchangeDeleteOptions::default(),
                    )
                    .await;
            });
        })
        .join();
    }
}

/// The verification link in the HTML part, as a mail client would follow it.
fn link_in(html: &str) -> String {
    let start = html.find("href=\"").expect("a link in the HTML part") + 6;
    let end = start + html[start..].find('"').unwrap();
    html[start..end].replace("&amp;", "&")
}

struct Browser {
    url: String,
    lang: String,
    text: String,
    cookies: Vec<Value>,
}

fn open_in_chromium(url: &str, screenshot: &Path, accept_language: &str) -> Browser {
    let out = std::process::Command::new("node")
        .arg(root().join("tests/browser/verify-link.mjs"))
        .arg(url)
        .arg(screenshot)
        .arg(accept_language)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "the browser run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    Browser {
        url: v["url"].as_str().unwrap().to_owned(),
        lang: v["lang"].as_str().unwrap_or("").to_owned(),
        text: v["text"].as_str().unwrap().to_owned(),
        cookies: v["cookies"].as_array().unwrap().clone(),
    }
}

fn artifact(name: &str) -> PathBuf {
    let dir = root().join("tests/artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

async fn signup_click_and_land_signed_in(
    lang: &str,
    accept_language: &str,
    subject: &str,
    me_title: &str,
) {
    let system = System::start().await;
    let email = format!("e2e-{lang}-{}@example.com", Uuid::new_v4().simple());
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/signup", system.account_url))
        .header("accept-language", accept_language)
        .json(&json!({"email": email, "password": "a good long password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);

    let mail = system.mail_to(&email).await;
    assert_eq!(mail["subject"], subject);
    assert_eq!(mail["tls"], true);
    assert_eq!(mail["auth_login"], SMTP_USER);
    let link = link_in(mail["html"].as_str().unwrap());
    assert!(
        link.starts_with(&format!("{}/verify?token=v1.", system.account_url)),
        "{link}"
    );
    assert!(
        mail["text"].as_str().unwrap().contains(&link),
        "the same link in the text part"
    );

    let shot = artifact(&format!("e2e-{lang}-me.png"));
    let _ = std::fs::remove_file(&shot);
    let page = open_in_chromium(&link, &shot, accept_language);
    assert!(
        page.url.starts_with(&format!("{}/me", system.account_url)),
        "ended on {}",
        page.url
    );
    assert_eq!(page.lang, lang);
    assert!(page.text.contains(me_title), "{}", page.text);
    assert!(page.text.contains(&email), "{}", page.text);
    let session = page
        .cookies
        .iter()
        .find(|c| c["name"] == "session")
        .expect("a session cookie");
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Lax");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 1000,
        "a screenshot was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_then_click_link_signs_in_english() {
    signup_click_and_land_signed_in(
        "en",
        "en-US,en;q=0.9",
        "Confirm your e-mail address",
        "Your account",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_then_click_link_signs_in_korean() {
    signup_click_and_land_signed_in(
        "ko",
        "ko-KR,ko;q=0.9,en;q=0.5",
        "이메일 주소를 확인해 주세요",
        "내 계정",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_service_publishes_a_raw_event_with_a_stock_amqp_client() {
    let system = System::start().await;
    let out = std::process::Command::new(python())
        .arg(root().join("tests/support/publish_mail.py"))
        .args([
            "--prefix",
            system.topology.prefix(),
            "--to",
            "billing-e2e@example.com",
            "--source",
            "billing",
        ])
        .args([
            "--subject",
            "이번 달 청구서",
            "--html",
            "<p>합계 <b>₩12,000</b></p>",
            "--text",
            "합계 ₩12,000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mail = system.mail_to("billing-e2e@example.com").await;
    assert_eq!(mail["subject"], "이번 달 청구서");
    assert_eq!(mail["text"].as_str().unwrap().trim(), "합계 ₩12,000");
    assert_eq!(
        mail["html"].as_str().unwrap().trim(),
        "<p>합계 <b>₩12,000</b></p>"
    );
}
