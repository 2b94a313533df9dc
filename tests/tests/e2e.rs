//! The whole flow as a person meets it: both services as real processes (the
//! built binaries), the machine's PostgreSQL and RabbitMQ, aiosmtpd with
//! STARTTLS and AUTH as the mail server, and Debian's headless chromium
//! clicking the link. Screenshots land in tests/artifacts/.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use shared::Topology;
use tokio::process::{Child, Command};
use uuid::Uuid;

use testkit::{PG, SmtpDirs, Teardown, free_port, python, received, root, start_smtp};

const SMTP_USER: &str = "no-reply@naver.test";
const SMTP_PASSWORD: &str = "e2e-app-password";

fn binary(name: &str) -> PathBuf {
    testkit::service_binary(name)
}

async fn wait_ok(url: &str) {
    let ready = testkit::wait_ok(&reqwest::Client::new(), url, Duration::from_secs(60)).await;
    assert!(ready, "{url} never answered 200");
}

/// The running system; everything it made is removed on drop.
struct System {
    dir: PathBuf,
    topology: Topology,
    account_url: String,
    /// Declared before the teardown: the services stop first.
    _procs: Vec<Child>,
    _teardown: Teardown,
}

impl System {
    async fn start() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("e2e-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let topology = Topology::new(&format!("test-{id}")).unwrap();
        let db = format!("test_e2e_{id}");
        // Made first, so a start that fails half-way also cleans up.
        let teardown = Teardown {
            dir: Some(dir.clone()),
            database: Some(db.clone()),
            topology: Some(topology.clone()),
            retry_delays: mailer::config::DEFAULT_RETRY_DELAYS.to_vec(),
        };
        let quiet = std::env::var_os("TEST_LOG").is_none();
        let log = || {
            if quiet {
                Stdio::null()
            } else {
                Stdio::inherit()
            }
        };

        let smtp_port = free_port();
        let dirs = SmtpDirs {
            inbox: &dir.join("inbox"),
            pki: &dir.join("pki"),
        };
        let smtp = start_smtp(smtp_port, SMTP_USER, SMTP_PASSWORD, dirs, &[]).await;

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
            .env("ACCOUNT_ADMIN_BIND", "127.0.0.1:0")
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
            topology,
            account_url,
            _procs: vec![smtp, mailer, account],
            _teardown: teardown,
        }
    }

    /// The next mail to `to`, waiting for it at the SMTP server.
    async fn mail_to(&self, to: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(m) = received(&self.dir.join("inbox"))
                .into_iter()
                .find(|m| m["rcpt_tos"][0] == to)
            {
                return m;
            }
            assert!(Instant::now() < deadline, "no mail reached {to}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The verification link in the HTML part, as a mail client would follow it.
fn link_in(html: &str) -> String {
    let start = html.find("href=\"").expect("a link in the HTML part") + 6;
    let end = start + html[start..].find('"').unwrap();
    html[start..end].replace("&amp;", "&")
}

/// Runs a flow of tests/browser/flows.mjs in headless chromium; its JSON.
fn browser_flow(flow: &str, args: &[&str]) -> Value {
    let out = std::process::Command::new("node")
        .arg(root().join("tests/browser/flows.mjs"))
        .arg(flow)
        .args(args)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "the browser run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(out.stdout.trim_ascii()).unwrap()
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
    let shot = artifact(&format!("e2e-{lang}-me.png"));
    let _ = std::fs::remove_file(&shot);
    let inbox = system.dir.join("inbox");
    // Sign up in the browser, then open the mailed link in that browser.
    let page = browser_flow(
        "signup-click",
        &[
            &system.account_url,
            inbox.to_str().unwrap(),
            &email,
            accept_language,
            shot.to_str().unwrap(),
        ],
    );

    let mail = system.mail_to(&email).await;
    assert_eq!(mail["subject"], subject);
    assert_eq!(mail["tls"], true);
    assert_eq!(mail["auth_login"], SMTP_USER);
    let link = link_in(mail["html"].as_str().unwrap());
    assert_eq!(page["link"], link.as_str());
    assert!(
        link.starts_with(&format!("{}/verify?token=v2.", system.account_url)),
        "{link}"
    );
    assert!(
        mail["text"].as_str().unwrap().contains(&link),
        "the same link in the text part"
    );

    let url = page["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/me", system.account_url)),
        "ended on {url}"
    );
    assert_eq!(page["lang"], lang);
    let text = page["text"].as_str().unwrap();
    assert!(text.contains(me_title), "{text}");
    assert!(text.contains(&email), "{text}");
    let session = page["cookies"]
        .as_array()
        .unwrap()
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

/// A verified account, made through the API and the mailed link.
async fn verified_account(system: &System, email: &str, locale: &str) {
    // Keeps the sign-up's binding cookie, as a single-page app's browser
    // does: the token alone verifies.
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let res = client
        .post(format!("{}/api/v1/signup", system.account_url))
        .json(&serde_json::json!({"email": email, "password": "a good long password", "locale": locale}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let link = link_in(system.mail_to(email).await["html"].as_str().unwrap());
    let token = link
        .split("token=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let res = client
        .post(format!("{}/api/v1/verify", system.account_url))
        .json(&serde_json::json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn forgot_password_in_the_browser(
    lang: &str,
    accept_language: &str,
    reset_subject: &str,
    me_title: &str,
) {
    let system = System::start().await;
    let email = format!("forgot-{lang}-{}@example.com", Uuid::new_v4().simple());
    // Mail to an account speaks the account's language.
    verified_account(&system, &email, lang).await;
    let dir = root().join("tests/artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let inbox = system.dir.join("inbox");
    let r = browser_flow(
        "forgot",
        &[
            &system.account_url,
            inbox.to_str().unwrap(),
            &email,
            accept_language,
            dir.to_str().unwrap(),
        ],
    );
    let mails = received(&inbox);
    let reset = mails
        .iter()
        .find(|m| m["rcpt_tos"][0] == email.as_str() && m["subject"] == reset_subject)
        .unwrap_or_else(|| panic!("a {reset_subject:?} mail in {mails:#?}"));
    assert_eq!(r["link"], link_in(reset["html"].as_str().unwrap()).as_str());
    assert_eq!(
        r["named"],
        email.as_str(),
        "the reset page names the account"
    );
    assert_eq!(
        r["me"]["email"],
        email.as_str(),
        "signed in after the reset"
    );
    assert!(r["me"]["text"].as_str().unwrap().contains(me_title));
    assert_eq!(
        r["freshLogin"],
        email.as_str(),
        "the new password signs in elsewhere"
    );
    assert_eq!(r["lang"], lang);
    for shot in ["reset", "me"] {
        let path = dir.join(format!("e2e-forgot-{lang}-{shot}.png"));
        assert!(std::fs::metadata(path).unwrap().len() > 1000);
    }
    // And the password_changed notice reached the address.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !received(&inbox).iter().any(|m| {
        m["rcpt_tos"][0] == email.as_str()
            && m["text"]
                .as_str()
                .unwrap_or("")
                .contains("/password/forgot")
    }) {
        assert!(
            Instant::now() < deadline,
            "the password_changed notice arrives"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgot_password_in_english() {
    forgot_password_in_the_browser(
        "en",
        "en-US,en;q=0.9",
        "Choose a new password",
        "Your account",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgot_password_in_korean() {
    forgot_password_in_the_browser("ko", "ko-KR,ko;q=0.9", "새 비밀번호를 정하세요", "내 계정")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_the_address_from_me_and_confirm_it_from_the_mail() {
    let system = System::start().await;
    let id = Uuid::new_v4().simple().to_string();
    let (old, new) = (
        format!("old-{id}@example.com"),
        format!("new-{id}@example.com"),
    );
    verified_account(&system, &old, "en").await;
    let dir = root().join("tests/artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let inbox = system.dir.join("inbox");
    let r = browser_flow(
        "email-change",
        &[
            &system.account_url,
            inbox.to_str().unwrap(),
            &old,
            &new,
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(r["before"], old.as_str(), "nothing changes before the link");
    assert!(r["confirmPage"].as_str().unwrap().contains(&new));
    assert!(r["confirmed"].as_str().unwrap().contains("Address changed"));
    assert_eq!(r["after"], new.as_str(), "/me shows the new address");
    // The old address got the notice, naming the new one masked.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let notice = received(&inbox).into_iter().find(|m| {
            m["rcpt_tos"][0] == old.as_str()
                && m["text"]
                    .as_str()
                    .unwrap_or("")
                    .contains("n***@example.com")
        });
        if notice.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old address hears of the change"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_signup_verifies_by_typing_the_code() {
    let system = System::start().await;
    let email = format!("code-{}@example.com", Uuid::new_v4().simple());
    let dir = root().join("tests/artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let inbox = system.dir.join("inbox");
    let r = browser_flow(
        "code",
        &[
            &system.account_url,
            inbox.to_str().unwrap(),
            &email,
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(r["me"], email.as_str(), "signed in by the code");
    assert!(!r["session"].is_null());
    let mail = system.mail_to(&email).await;
    let code = r["code"].as_str().unwrap();
    assert!(
        mail["html"]
            .as_str()
            .unwrap()
            .contains(&format!("{} {}", &code[..3], &code[3..]))
    );
}

/// Login CSRF through the verification link, in real browsers: another
/// profile that opens a link is not signed in without a click, and a
/// browser signed in as A that opens B's link stays A and cannot verify B
/// without B's sign-up password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_signs_in_only_the_browser_that_signed_up_and_never_swaps_an_account() {
    let system = System::start().await;
    let id = Uuid::new_v4().simple().to_string();
    let (a, b) = (format!("a-{id}@example.com"), format!("b-{id}@example.com"));
    let dir = root().join("tests/artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let inbox = system.dir.join("inbox");
    let r = browser_flow(
        "login-csrf",
        &[
            &system.account_url,
            inbox.to_str().unwrap(),
            &a,
            &b,
            dir.to_str().unwrap(),
        ],
    );
    let other = &r["other"];
    assert!(
        other["url"].as_str().unwrap().contains("/verify?token="),
        "the other profile stays on the link's page: {other}"
    );
    assert!(other["session"].is_null(), "and holds no session: {other}");
    let text = other["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("Verify and sign in as {a}")),
        "{text}"
    );

    assert_eq!(
        r["aMe"],
        a.as_str(),
        "A's own link signed A in without a click"
    );
    let before = r["beforeClick"]["text"].as_str().unwrap();
    assert!(
        r["beforeClick"]["url"]
            .as_str()
            .unwrap()
            .contains("/verify?token="),
        "B's link did not submit itself in A's browser"
    );
    assert!(
        before.contains(&format!("Verify and sign in as {b}")),
        "{before}"
    );
    let after = r["afterClick"]["text"].as_str().unwrap();
    assert!(
        after.contains("That is not the password chosen at sign-up")
            && after.contains(&format!("Verify and sign in as {b}")),
        "{after}"
    );
    assert_eq!(
        r["stillMe"],
        a.as_str(),
        "A's browser is still signed in as A"
    );
    for shot in [
        "e2e-other-browser-verify.png",
        "e2e-signed-in-opens-other-link.png",
    ] {
        assert!(std::fs::metadata(dir.join(shot)).unwrap().len() > 1000);
    }
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
