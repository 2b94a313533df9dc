//! Mail that looks like it comes from a real product and passes the filters
//! (issue 13), judged on the bytes the SMTP server received: the brand and a
//! footer in every template, times in the reader's zone, DKIM signatures an
//! independent verifier accepts, SpamAssassin's score, and how the HTML looks
//! in a browser on a desktop and a phone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use shared::envelope::{
    BUILT_IN_TEMPLATES, TEMPLATE_ACCOUNT_DELETED, TEMPLATE_ACCOUNT_EXISTS,
    TEMPLATE_CONFIRM_EMAIL_CHANGE, TEMPLATE_EMAIL_CHANGED, TEMPLATE_PASSWORD_CHANGED,
    TEMPLATE_RESET_PASSWORD, TEMPLATE_VERIFY_EMAIL,
};
use shared::{Body, MailSend, RawContent, Recipient};

use super::helpers::*;

const BRAND: &str = "하늘마켓";
const SUPPORT: &str = "help@haneul.example";
/// 10:00 UTC is 19:00 in Seoul and 05:00 in New York (EST).
const EXPIRES: &str = "2026-11-25T10:00:00Z";

/// Every built-in template with data as the account service sends it.
fn builtins() -> Vec<(&'static str, Value)> {
    vec![
        (
            TEMPLATE_VERIFY_EMAIL,
            json!({
                "verify_url": "https://account.haneul.example/verify?token=v1.k20261124.AbC9AbC9AbC9-_xZz0_-&lang=ko",
                "expires_at": EXPIRES,
                "code": "042137",
            }),
        ),
        (
            TEMPLATE_ACCOUNT_EXISTS,
            json!({"login_url": "https://account.haneul.example/login"}),
        ),
        (
            TEMPLATE_RESET_PASSWORD,
            json!({
                "reset_url": "https://account.haneul.example/password/reset?token=v2.k20261124.AbC9AbC9AbC9-_xZz0_-&lang=ko",
                "expires_at": EXPIRES,
            }),
        ),
        (
            TEMPLATE_PASSWORD_CHANGED,
            json!({"changed_at": EXPIRES, "forgot_url": "https://account.haneul.example/password/forgot"}),
        ),
        (
            TEMPLATE_ACCOUNT_DELETED,
            json!({"deleted_at": EXPIRES, "signup_url": "https://account.haneul.example/signup"}),
        ),
        (
            TEMPLATE_CONFIRM_EMAIL_CHANGE,
            json!({
                "confirm_url": "https://account.haneul.example/email/confirm?token=v2.k20261124.AbC9AbC9-_xZz0_-&lang=ko",
                "expires_at": EXPIRES,
            }),
        ),
        (
            TEMPLATE_EMAIL_CHANGED,
            json!({
                "new_email_masked": "m***@example.com",
                "changed_at": EXPIRES,
                "login_url": "https://account.haneul.example/login",
            }),
        ),
    ]
}

fn event(template: &str, locale: &str, data: &Value, to: &str) -> MailSend {
    let to = Recipient {
        email: to.to_owned(),
        name: Some("김민수".into()),
    };
    MailSend::template("account", to, locale, template, data)
}

/// The mailer with a brand and a support address.
async fn branded_mailer(env: &Env) -> Mailer {
    env.mailer(&[("MAILER_BRAND", BRAND), ("MAILER_SUPPORT_ADDRESS", SUPPORT)])
        .await
}

/// One delivered mail: which template and language, the SMTP server's
/// summary of it, and its bytes.
struct Delivered {
    template: String,
    locale: String,
    summary: Value,
    eml: PathBuf,
}

/// Publishes every built-in template in both languages (and `extra`
/// events), waits until the SMTP server has them all, and pairs each with
/// what was published.
async fn deliver(env: &Env, extra: Vec<MailSend>) -> Vec<Delivered> {
    let covered: Vec<&str> = builtins().iter().map(|(t, _)| *t).collect();
    assert_eq!(
        covered, BUILT_IN_TEMPLATES,
        "every built-in template is checked"
    );
    let broker = Broker::connect().await;
    let mut sent = Vec::new();
    for (template, data) in builtins() {
        for locale in ["ko", "en"] {
            let to = format!("{template}-{locale}@example.com");
            let e = event(template, locale, &data, &to);
            broker.publish(&env.topology, &e.to_vec()).await;
            sent.push((to, template.to_owned(), locale.to_owned()));
        }
    }
    for e in extra {
        broker.publish(&env.topology, &e.to_vec()).await;
        sent.push((e.to.email.clone(), "raw".into(), e.locale.clone()));
    }
    let mails = env.wait_for_mail(sent.len(), Duration::from_secs(30)).await;
    assert_eq!(mails.len(), sent.len(), "every mail arrives");
    mails
        .into_iter()
        .enumerate()
        .map(|(i, summary)| {
            let (_, template, locale) = sent
                .iter()
                .find(|(to, ..)| summary["rcpt_tos"][0] == to.as_str())
                .expect("a mail we sent")
                .clone();
            Delivered {
                template,
                locale,
                summary,
                eml: env.inbox().join(format!("{}.eml", i + 1)),
            }
        })
        .collect()
}

fn text_of<'a>(m: &'a Delivered, part: &str) -> &'a str {
    m.summary[part].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_template_says_who_sent_it_and_why_and_shows_local_time() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let _mailer = branded_mailer(&env).await;
    for m in deliver(&env, vec![]).await {
        let (html, text) = (text_of(&m, "html"), text_of(&m, "text"));
        let what = format!("{} {}", m.template, m.locale);
        assert_eq!(
            m.summary["from"],
            format!("{BRAND} <{USER}>"),
            "{what}: the brand is the sender's name"
        );
        // The brand at the top of both parts, and a footer that says who
        // sent the mail, why, and where to ask.
        let top = html.find(BRAND).expect("the brand in the HTML part");
        assert!(
            top < html.find("<h1").unwrap(),
            "{what}: brand above the title"
        );
        assert!(text.trim_start().starts_with(BRAND), "{what}:\n{text}");
        for part in [html, text] {
            assert!(
                part.contains(SUPPORT),
                "{what}: the support address\n{part}"
            );
            let why = match (m.template.as_str(), m.locale.as_str()) {
                ("verify_email", "ko") => "이 주소로 가입 신청이 있었기 때문에",
                ("verify_email", _) => "because this address was used to sign up",
                ("account_exists", "ko") => "이 주소로 다시 가입하려는 시도가 있었기 때문에",
                ("account_exists", _) => "because someone tried to sign up again with this address",
                ("reset_password", "ko") => "이 주소로 비밀번호 재설정 요청이 있었기 때문에",
                ("reset_password", _) => "because a password reset was asked for with this address",
                ("password_changed", "ko") => "계정 비밀번호가 바뀌었기 때문에",
                ("password_changed", _) => {
                    "because the password of the account for this address was changed"
                }
                ("account_deleted", "ko") => "이 주소의 계정이 삭제되었기 때문에",
                ("account_deleted", _) => "because the account for this address was deleted",
                ("confirm_email_change", "ko") => "이 주소를 계정 주소로 쓰겠다고 요청했기 때문에",
                ("confirm_email_change", _) => {
                    "because someone asked to use this address for their account"
                }
                ("email_changed", "ko") => "이 주소의 계정이 다른 주소로 바뀌었기 때문에",
                ("email_changed", _) => {
                    "because the account for this address moved to another address"
                }
                (other, _) => panic!("no reason known for {other}"),
            };
            assert!(part.contains(why), "{what}: why {why:?}\n{part}");
        }
        assert!(
            html.contains(&format!("href=\"mailto:{SUPPORT}\"")),
            "{what}: a mailto link"
        );
        if m.template == "verify_email" {
            // Times in the reader's zone, with the zone named.
            let when = match m.locale.as_str() {
                "ko" => "2026년 11월 25일 19:00 KST (Asia/Seoul)",
                _ => "25 November 2026, 10:00 UTC",
            };
            assert!(text.contains(when), "{what}: {when:?}\n{text}");
            assert!(html.contains(when), "{what}: {when:?}");
        }
        if m.locale == "ko" {
            assert!(
                html.contains("word-break:keep-all"),
                "{what}: Korean does not break inside words"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailer_timezone_overrides_the_zone_of_a_locale() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let _mailer = env
        .mailer(&[("MAILER_TIMEZONE", "en=America/New_York")])
        .await;
    let (template, data) = builtins().remove(0);
    let broker = Broker::connect().await;
    for locale in ["en", "ko"] {
        let e = event(template, locale, &data, &format!("tz-{locale}@example.com"));
        broker.publish(&env.topology, &e.to_vec()).await;
    }
    let mails = env.wait_for_mail(2, Duration::from_secs(20)).await;
    let text = |to: &str| {
        mails
            .iter()
            .find(|m| m["rcpt_tos"][0] == to)
            .and_then(|m| m["text"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let en = text("tz-en@example.com");
    assert!(
        en.contains("25 November 2026, 05:00 EST (America/New_York)"),
        "{en}"
    );
    let ko = text("tz-ko@example.com");
    assert!(
        ko.contains("2026년 11월 25일 19:00 KST (Asia/Seoul)"),
        "{ko}"
    );
}

/// A key pair made with openssl: the private key for the mailer, the public
/// one for the verifier.
fn keypair(dir: &Path, algorithm: &str) -> (PathBuf, PathBuf) {
    let (private, public) = (
        dir.join(format!("{algorithm}.key")),
        dir.join(format!("{algorithm}.pub")),
    );
    let mut genpkey = Command::new("openssl");
    genpkey
        .args(["genpkey", "-algorithm", algorithm, "-out"])
        .arg(&private);
    if algorithm == "RSA" {
        genpkey.args(["-pkeyopt", "rsa_keygen_bits:2048"]);
    }
    assert!(
        genpkey.output().unwrap().status.success(),
        "openssl genpkey"
    );
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl pkey -pubout");
    (private, public)
}

/// dkimpy's verdict on a delivered mail, the public key given instead of DNS.
fn dkim_verify(eml: &Path, public: &Path) -> Result<(), String> {
    let out = Command::new(testkit::python())
        .arg(root().join("tests/support/dkim_verify.py"))
        .arg(eml)
        .arg(public)
        .args(["--domain", "haneul.example", "--selector", "mail2026"])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(said)
    }
}

fn raw(to: &str, locale: &str) -> MailSend {
    let (template, data) = builtins().remove(1);
    let mut e = event(template, locale, &data, to);
    e.body = Body::Content {
        content: RawContent {
            subject: "이번 달 청구서가 도착했습니다".into(),
            html: "<p>합계 <b>₩12,000</b></p>".into(),
            text: "합계 ₩12,000".into(),
        },
    };
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_signatures_verify_with_an_independent_verifier() {
    for algorithm in ["RSA", "ED25519"] {
        let env = Env::new();
        let _smtp = env.smtp().await;
        let (private, public) = keypair(&env.dir, algorithm);
        let key = private.display().to_string();
        let _mailer = env
            .mailer(&[
                ("MAILER_FROM", "Haneul <sender@haneul.example>"),
                ("MAILER_DKIM_DOMAIN", "haneul.example"),
                ("MAILER_DKIM_SELECTOR", "mail2026"),
                ("MAILER_DKIM_KEY_FILE", &key),
            ])
            .await;
        let mails = deliver(&env, vec![raw("raw@example.com", "ko")]).await;
        for m in &mails {
            let what = format!("{algorithm} {} {}", m.template, m.locale);
            let bytes = std::fs::read_to_string(&m.eml).unwrap();
            let a = if algorithm == "RSA" { "rsa" } else { "ed25519" };
            assert!(
                bytes.contains(&format!("a={a}-sha256")),
                "{what}: signed with {a}"
            );
            dkim_verify(&m.eml, &public).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        // The verifier is not a rubber stamp: one changed byte of the body
        // breaks the signature.
        let tampered = env.dir.join("tampered.eml");
        let bytes = std::fs::read_to_string(&mails[0].eml).unwrap();
        let cut = bytes.rfind("</html>").expect("an HTML part");
        std::fs::write(&tampered, format!("{}<br>{}", &bytes[..cut], &bytes[cut..])).unwrap();
        assert!(dkim_verify(&tampered, &public).is_err(), "{algorithm}");
    }
}

/// SpamAssassin's score of a mail with its local rules only (no network
/// tests, no Bayes), and the rules that fired.
fn spam_score(eml: &Path) -> (f64, String) {
    let out = Command::new("spamassassin")
        .args(["--local", "--test-mode", "--cf=use_bayes 0"])
        .stdin(std::fs::File::open(eml).unwrap())
        .output()
        .expect("spamassassin (scripts/test-deps.sh installs it)");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let status: String = report
        .split("X-Spam-Status:")
        .nth(1)
        .and_then(|s| s.split(" version=").next())
        .unwrap_or_default()
        .to_owned();
    let score = status
        .split("score=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in\n{report}"));
    (
        score,
        status.split_whitespace().collect::<Vec<_>>().join(" "),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_builtin_template_scores_at_most_half_a_point_with_spamassassin() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let _mailer = branded_mailer(&env).await;
    let mut scores = Vec::new();
    for m in deliver(&env, vec![]).await {
        let (score, status) = spam_score(&m.eml);
        eprintln!("{} {}: {score} ({status})", m.template, m.locale);
        scores.push((m.template, m.locale, score, status));
    }
    assert!(
        scores.iter().all(|(.., score, _)| *score <= 0.5),
        "{scores:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_mail_fits_a_phone_and_keeps_korean_words_whole() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let _mailer = branded_mailer(&env).await;
    let artifacts = root().join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let mut pages = Vec::new();
    for m in deliver(&env, vec![]).await {
        let html = env.dir.join(format!("{}-{}.html", m.template, m.locale));
        std::fs::write(&html, text_of(&m, "html")).unwrap();
        for width in [1280, 375] {
            let shot = artifacts.join(format!("mail-{}-{}-{width}.png", m.template, m.locale));
            let _ = std::fs::remove_file(&shot);
            pages.push(json!({
                "html": html, "screenshot": shot, "width": width,
                "template": m.template, "locale": m.locale,
            }));
        }
    }
    let out = Command::new("node")
        .arg(root().join("tests/browser/render-mail.mjs"))
        .arg(serde_json::to_string(&pages).unwrap())
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen.len(), pages.len());
    for (page, seen) in pages.iter().zip(&seen) {
        let what = format!(
            "{} {} {}px",
            page["template"], page["locale"], page["width"]
        );
        assert!(
            seen["scrollWidth"].as_u64() <= seen["innerWidth"].as_u64(),
            "{what}: nothing wider than the screen: {seen}"
        );
        assert!(
            seen["text"].as_str().unwrap().contains(BRAND),
            "{what}: the brand shows"
        );
        if page["locale"] == "ko" {
            assert_eq!(seen["wordBreak"], "keep-all", "{what}");
        }
        let shot = PathBuf::from(page["screenshot"].as_str().unwrap());
        assert!(
            std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0) > 1000,
            "{what}: a screenshot in tests/artifacts"
        );
    }
}
