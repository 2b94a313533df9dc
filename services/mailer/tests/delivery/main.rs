//! The mailer binary against the machine's RabbitMQ and a real SMTP server
//! (aiosmtpd) that requires STARTTLS and AUTH, like smtp.naver.com:587.

mod helpers;
mod hostile;
mod preview;
mod properties;
mod quality;
mod queues;
mod transport;

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use helpers::*;
use serde_json::json;
use shared::envelope::{TEMPLATE_VERIFY_EMAIL, VerifyEmailData};
use shared::{MailSend, Recipient};

fn verify_event(to: &str, locale: &str, url: &str) -> MailSend {
    MailSend::template(
        "account",
        Recipient {
            email: to.to_owned(),
            name: Some("김민수".into()),
        },
        locale,
        TEMPLATE_VERIFY_EMAIL,
        VerifyEmailData {
            verify_url: url.to_owned(),
            expires_at: Utc::now() + chrono::Duration::hours(24),
            code: None,
        },
    )
}

fn long_link() -> String {
    // As long as a real verification link, with every character a token uses.
    format!(
        "http://127.0.0.1:8080/verify?token=v1.k20261124.{}-_x{}&lang=ko",
        "AbC9".repeat(40),
        "Zz0_-".repeat(12)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_a_korean_verification_mail_over_starttls_with_auth() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let (port, bind) = metrics_bind();
    let _mailer = env.mailer(&[("MAILER_BIND", &bind)]).await;
    let broker = Broker::connect().await;
    let link = long_link();
    let event = verify_event("minsu@example.com", "ko", &link);
    broker.publish(&env.topology, &event.to_vec()).await;

    let mails = env.wait_for_mail(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert_eq!(m["tls"], true, "STARTTLS was used");
    assert_eq!(m["auth_login"], USER, "AUTH was used");
    assert_eq!(m["mail_from"], USER);
    assert_eq!(m["rcpt_tos"], json!(["minsu@example.com"]));
    assert_eq!(m["subject"], "이메일 주소를 확인해 주세요");
    assert_eq!(m["from"], format!("계정 서비스 <{USER}>"));
    assert_eq!(m["to"], "김민수 <minsu@example.com>");
    assert_eq!(m["content_type"], "multipart/alternative");
    assert_eq!(m["auto_submitted"], "auto-generated");
    assert_eq!(m["message_id"], format!("<{}@naver.test>", event.id));
    let text = m["text"].as_str().unwrap();
    let html = m["html"].as_str().unwrap();
    assert!(
        text.contains(&link),
        "the link is intact in the text part:\n{text}"
    );
    let href = format!("href=\"{}\"", link.replace('&', "&amp;"));
    assert!(
        html.contains(&href),
        "the link is intact in the HTML part:\n{html}"
    );
    assert!(html.contains("김민수님"));
    // The latency histograms the alerts read each hold this one mail.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            messages(port, "verify_email", "sent").await == Some(1.0)
        })
        .await
    );
    for histogram in [
        "mailer_smtp_seconds_count{channel=\"smtp\"}",
        "mailer_delivery_seconds_count",
        "mailer_queue_lag_seconds_count",
    ] {
        assert_eq!(series(port, histogram).await, Some(1.0), "{histogram}");
    }
    // Nothing left behind in any queue.
    assert_eq!(broker.count(&env.topology.queue()).await, Some(0));
    assert_eq!(broker.count(&env.topology.dead_queue()).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_event_from_another_language_is_delivered_as_given() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let _mailer = env.mailer(&[]).await;
    // Python and pika, not our Rust types.
    let python = std::env::var("TEST_PYTHON").unwrap_or_else(|_| {
        root()
            .join("target/test-venv/bin/python")
            .display()
            .to_string()
    });
    let out = std::process::Command::new(python)
        .arg(root().join("tests/support/publish_mail.py"))
        .args([
            "--prefix",
            env.topology.prefix(),
            "--to",
            "jisoo@example.com",
            "--name",
            "박지수",
            "--locale",
            "ko",
        ])
        .args([
            "--subject",
            "청구서가 도착했습니다 ✉",
            "--html",
            "<p>금액: <b>12,000원</b></p>",
            "--text",
            "금액: 12,000원",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mails = env.wait_for_mail(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["subject"], "청구서가 도착했습니다 ✉");
    assert_eq!(
        mails[0]["html"].as_str().unwrap().trim(),
        "<p>금액: <b>12,000원</b></p>"
    );
    assert_eq!(mails[0]["text"].as_str().unwrap().trim(), "금액: 12,000원");
    assert_eq!(mails[0]["message_id"], format!("<{id}@naver.test>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_then_up_gets_the_mail_once_after_retries() {
    let env = Env::new();
    drop(env.smtp().await); // make the CA, then stop: the server is down
    let smtp = format!("127.0.0.1:{}", env.smtp_port);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(&smtp).await.is_err()
        })
        .await,
        "the SMTP server is down"
    );
    let (port, bind) = metrics_bind();
    let _mailer = env
        .mailer(&[
            ("MAILER_RETRY_DELAYS", "500ms,1s,2s,4s,8s"),
            ("MAILER_BIND", &bind),
        ])
        .await;
    let broker = Broker::connect().await;
    let event = verify_event(
        "later@example.com",
        "en",
        "http://127.0.0.1:8080/verify?token=v1.k.x",
    );
    broker.publish(&env.topology, &event.to_vec()).await;
    // It failed at least twice: two retries counted.
    assert!(
        wait_until(Duration::from_secs(20), || async {
            messages(port, "verify_email", "retried")
                .await
                .is_some_and(|n| n >= 2.0)
        })
        .await,
        "retried while the server is down"
    );
    assert!(env.received().is_empty());
    let _smtp = env.smtp().await;
    let mails = env.wait_for_mail(1, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["subject"], "Confirm your e-mail address");
    // Nothing to wait on for "no second copy": a fixed look after 2 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.received().len(), 1, "delivered once");
    assert_eq!(broker.count(&env.topology.dead_queue()).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_and_exhausted_failures_are_dead_lettered_with_their_reason() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let (port, bind) = metrics_bind();
    let _mailer = env.mailer(&[("MAILER_BIND", &bind)]).await;
    // Without MAILER_QUEUE_TYPE every queue is a classic one.
    assert_eq!(
        queue_types(&env.topology, RETRIES),
        all_queues_of_type(&env.topology, RETRIES, "classic")
    );
    // Published by a service's own broker user, proven by the AMQP user_id.
    let account = BrokerUser::create("account");
    let broker = Broker::connect_as(&account).await;
    let rejected = verify_event("nobody@reject.test", "en", "https://x.example/v");
    let tempfail = verify_event("busy@tempfail.test", "en", "https://x.example/v");
    let before = Utc::now();
    for e in [&rejected, &tempfail] {
        broker
            .try_publish(&env.topology, &e.to_vec(), Some(&account.name))
            .await
            .unwrap();
    }
    let dead = env.topology.dead_queue();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            broker.count(&dead).await == Some(2)
        })
        .await
    );
    // What the alerts key on moved, with the template's label.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            messages(port, "verify_email", "dead").await == Some(2.0)
        })
        .await,
        "two dead letters counted: {:?}",
        messages(port, "verify_email", "dead").await
    );
    assert_eq!(
        messages(port, "verify_email", "retried").await,
        Some(3.0),
        "the 451 climbed three rungs"
    );
    assert_eq!(messages(port, "verify_email", "sent").await, Some(0.0));
    let mut letters = broker.drain(&dead).await;
    let after = Utc::now();
    letters.sort_by_key(|(p, _)| header(p, "x-attempt"));
    let dead_at = |p: &lapin::BasicProperties| {
        let at = header(p, "x-dead-at").expect("x-dead-at");
        let at = chrono::DateTime::parse_from_rfc3339(&at).expect("x-dead-at is RFC 3339");
        assert!(before <= at && at <= after, "{at} within the test");
    };

    let (p, body) = &letters[0];
    assert_eq!(MailSend::from_slice(body).unwrap().id, rejected.id);
    let last_error = header(p, "x-last-error").unwrap();
    assert!(last_error.starts_with("SMTP 550"), "{last_error}");
    assert_eq!(
        header(p, "x-dead-reason").unwrap(),
        format!("permanent: {last_error}")
    );
    assert_eq!(
        header(p, "x-attempt").as_deref(),
        Some("1"),
        "a 5xx is not retried"
    );
    dead_at(p);
    assert_eq!(
        header(p, "x-published-by").as_deref(),
        Some(account.name.as_str())
    );

    let (p, body) = &letters[1];
    assert_eq!(MailSend::from_slice(body).unwrap().id, tempfail.id);
    let last_error = header(p, "x-last-error").unwrap();
    assert!(last_error.starts_with("SMTP 451"), "{last_error}");
    assert_eq!(
        header(p, "x-dead-reason").unwrap(),
        format!("retries exhausted after 4 attempts: {last_error}")
    );
    assert_eq!(header(p, "x-attempt").as_deref(), Some("4"));
    dead_at(p);
    assert_eq!(
        header(p, "x-published-by").as_deref(),
        Some(account.name.as_str())
    );
    assert!(env.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_the_next_good_one_is_delivered() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let _mailer = env.mailer(&[]).await;
    let broker = Broker::connect().await;
    let mut unknown = verify_event("a@example.com", "en", "https://x.example/v");
    if let shared::Body::Template { template, .. } = &mut unknown.body {
        *template = "no_such_template".into();
    }
    broker.publish(&env.topology, b"{this is not json").await;
    broker
        .publish(
            &env.topology,
            br#"{"version": 1, "to": {"email": "a@example.com"}}"#,
        )
        .await;
    broker.publish(&env.topology, &unknown.to_vec()).await;
    let good = verify_event("good@example.com", "ko", "https://x.example/v?token=ok");
    broker.publish(&env.topology, &good.to_vec()).await;

    let mails = env.wait_for_mail(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["rcpt_tos"], json!(["good@example.com"]));
    let dead = env.topology.dead_queue();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            broker.count(&dead).await == Some(3)
        })
        .await
    );
    let reasons: Vec<String> = broker
        .drain(&dead)
        .await
        .iter()
        .map(|(p, _)| header(p, "x-dead-reason").unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("invalid JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("invalid envelope")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown template \"no_such_template\"")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_loses_nothing() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let mailer = env.mailer(&[("MAILER_PREFETCH", "8")]).await;
    let broker = Broker::connect().await;
    let n = 150;
    let mut ids = HashSet::new();
    for i in 0..n {
        let e = verify_event(
            &format!("burst{i}@example.com"),
            "en",
            "https://x.example/v",
        );
        ids.insert(format!("<{}@naver.test>", e.id));
        broker.publish(&env.topology, &e.to_vec()).await;
    }
    // Stop it mid-burst.
    assert!(
        wait_until(Duration::from_secs(20), || async {
            !env.received().is_empty()
        })
        .await
    );
    let status = mailer.terminate().await;
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}");
    let delivered = env.received().len();
    let queued = broker.count(&env.topology.queue()).await.unwrap() as usize;
    assert_eq!(
        delivered + queued,
        n,
        "every mail is either delivered or still queued"
    );

    // A new mailer finishes the rest; each mail arrives exactly once.
    let _again = env.mailer(&[]).await;
    let mails = env.wait_for_mail(n, Duration::from_secs(60)).await;
    // Nothing to wait on for "no duplicate arrives": a fixed look after 0.5 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<String> = env
        .received()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(mails.len(), n);
    assert_eq!(got.iter().cloned().collect::<HashSet<_>>(), ids);
    assert_eq!(got.len(), n, "no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_listed_and_requeued_after_the_cause_is_fixed() {
    let env = Env::new();
    // Templates from an operator folder that lacks `welcome` at first.
    let templates = env.dir.join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    let _smtp = env.smtp().await;
    let mailer = env
        .mailer(&[("MAILER_TEMPLATE_DIR", templates.to_str().unwrap())])
        .await;
    let broker = Broker::connect().await;
    let mut welcome = verify_event("new@example.com", "ko", "https://x.example/v");
    if let shared::Body::Template { template, data } = &mut welcome.body {
        *template = "welcome".into();
        data.insert("who".into(), json!("민지"));
    }
    broker.publish(&env.topology, &welcome.to_vec()).await;
    let dead = env.topology.dead_queue();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            broker.count(&dead).await == Some(1)
        })
        .await
    );

    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mailer"));
        cmd.args(args).env_clear();
        for (k, v) in env.mailer_env() {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let list = cli(&["dead", "list"]);
    assert!(list.status.success());
    let listing = String::from_utf8(list.stdout).unwrap();
    assert!(
        listing.contains(&welcome.id.to_string())
            && listing.contains("unknown template \"welcome\""),
        "{listing}"
    );
    assert_eq!(
        broker.count(&dead).await,
        Some(1),
        "listing leaves the letters in place"
    );

    // Fix the cause: add the template, restart the mailer, requeue by id.
    let dir = templates.join("welcome/ko");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("subject.txt"), "환영합니다, {{ who }}님").unwrap();
    std::fs::write(dir.join("body.html"), "<p>{{ who }}님, 환영합니다.</p>").unwrap();
    std::fs::write(dir.join("body.txt"), "{{ who }}님, 환영합니다.").unwrap();
    assert!(mailer.terminate().await.success());
    let _mailer = env
        .mailer(&[("MAILER_TEMPLATE_DIR", templates.to_str().unwrap())])
        .await;
    // A mistyped id moves nothing and says so.
    let stranger = uuid::Uuid::new_v4().to_string();
    let typo = cli(&["dead", "requeue", &stranger]);
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains(&stranger));
    assert_eq!(broker.count(&dead).await, Some(1));
    let requeue = cli(&["dead", "requeue", &welcome.id.to_string()]);
    assert!(
        requeue.status.success(),
        "{}",
        String::from_utf8_lossy(&requeue.stderr)
    );
    let mails = env.wait_for_mail(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["subject"], "환영합니다, 민지님");
    assert_eq!(broker.count(&dead).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_all_brings_back_every_dead_letter_and_each_climbs_the_whole_ladder_again() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let mailer = env.mailer(&[]).await;
    let broker = Broker::connect().await;
    // The cause (451) is not fixed: what comes back fails the same way.
    let events: Vec<MailSend> = (0..3)
        .map(|i| {
            verify_event(
                &format!("busy{i}@tempfail.test"),
                "en",
                "https://x.example/v",
            )
        })
        .collect();
    for e in &events {
        broker.publish(&env.topology, &e.to_vec()).await;
    }
    let dead = env.topology.dead_queue();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            broker.count(&dead).await == Some(3)
        })
        .await
    );
    // No worker while the CLI runs: the requeued letters stay where it put them.
    assert!(mailer.terminate().await.success());
    let requeue = env.cli(&["dead", "requeue", "--all"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&requeue.stdout),
        String::from_utf8_lossy(&requeue.stderr),
    );
    assert!(requeue.status.success(), "{stderr}");
    assert!(stderr.contains("3 requeued"), "{stderr}");
    for e in &events {
        assert!(stdout.contains(&format!("requeued {}", e.id)), "{stdout}");
    }
    assert_eq!(
        broker.count(&dead).await,
        Some(0),
        "the dead queue is empty"
    );
    assert_eq!(
        broker.count(&env.topology.queue()).await,
        Some(3),
        "every dead letter is back in the work queue"
    );

    // Each starts the ladder from its first rung: 3 retries again (4
    // attempts), not a dead letter at its first failure.
    let (port, bind) = metrics_bind();
    let _again = env.mailer(&[("MAILER_BIND", &bind)]).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            messages(port, "verify_email", "dead").await == Some(3.0)
        })
        .await,
        "all three dead-lettered again"
    );
    assert_eq!(
        messages(port, "verify_email", "retried").await,
        Some(9.0),
        "three retries each after the requeue"
    );
    assert!(
        wait_until(Duration::from_secs(10), || async {
            broker.count(&dead).await == Some(3)
        })
        .await
    );
    let letters = broker.drain(&dead).await;
    let ids: HashSet<_> = letters
        .iter()
        .map(|(_, body)| MailSend::from_slice(body).unwrap().id)
        .collect();
    assert_eq!(ids, events.iter().map(|e| e.id).collect::<HashSet<_>>());
    for (p, _) in &letters {
        assert_eq!(header(p, "x-attempt").as_deref(), Some("4"));
        let reason = header(p, "x-dead-reason").unwrap();
        assert!(
            reason.starts_with("retries exhausted after 4 attempts: SMTP 451"),
            "{reason}"
        );
    }
    assert!(env.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_template_overrides_an_embedded_one_in_the_mail_sent() {
    let env = Env::new();
    // The operator's own verify_email/en, every part of it.
    let dir = env.dir.join("templates/verify_email/en");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("subject.txt"),
        "[OP] {{ brand }}: confirm, {{ name }}",
    )
    .unwrap();
    std::fs::write(
        dir.join("body.html"),
        "<p class=\"op\">OPERATOR HTML for {{ name }}: <a href=\"{{ verify_url }}\">confirm</a></p>\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("body.txt"),
        "OPERATOR TEXT for {{ name }}: {{ verify_url }}\n",
    )
    .unwrap();
    let _smtp = env.smtp().await;
    let templates = env.dir.join("templates");
    let _mailer = env
        .mailer(&[
            ("MAILER_TEMPLATE_DIR", templates.to_str().unwrap()),
            ("MAILER_BRAND", "Shop"),
        ])
        .await;
    let broker = Broker::connect().await;
    let link = "https://acc.example/verify?token=v1.k.operator";
    let event = verify_event("op@example.com", "en", link);
    broker.publish(&env.topology, &event.to_vec()).await;
    let mails = env.wait_for_mail(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert_eq!(m["subject"], "[OP] Shop: confirm, 김민수");
    assert_eq!(
        m["html"].as_str().unwrap().trim(),
        format!("<p class=\"op\">OPERATOR HTML for 김민수: <a href=\"{link}\">confirm</a></p>")
    );
    assert_eq!(
        m["text"].as_str().unwrap().trim(),
        format!("OPERATOR TEXT for 김민수: {link}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_variable_stops_the_start_with_one_line_naming_it() {
    for (var, value) in [
        ("MAILER_SMTP_URL", "http://nope"),
        ("MAILER_FROM", "not a mailbox"),
        ("MAILER_RETRY_DELAYS", "soon"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailer"))
            .env_clear()
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_and_version_come_before_the_configuration() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailer"))
        .env_clear()
        .env("MAILER_PREFETCH", "0")
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    for sub in ["run", "dead"] {
        assert!(help.contains(sub), "{sub} in {help}");
    }
    let vars = shared::config::variables::<mailer::config::Cli>();
    assert!(vars.len() > 15, "{vars:?}");
    for v in vars {
        assert!(
            help.contains(&format!("[env: {}", v.name)),
            "{} in {help}",
            v.name
        );
    }
    assert!(help.contains("[default: 5s,30s,2m,10m,1h]"), "{help}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailer"))
        .env_clear()
        .args(["dead", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("list") && help.contains("requeue"), "{help}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailer"))
        .env_clear()
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("mailer {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_built_in_process_with_a_stub_outlet_consumes_from_the_broker() {
    let env = Env::new();
    let vars = [
        ("MAILER_BIND", "127.0.0.1:0".to_owned()),
        ("MAILER_AMQP_URL", AMQP.to_owned()),
        ("MAILER_AMQP_PREFIX", env.topology.prefix().to_owned()),
        ("MAILER_RETRY_DELAYS", RETRIES.to_owned()),
        ("MAILER_FROM", "Account <no-reply@acc.example>".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let settings = mailer::config::Settings::from_vars(vars).unwrap();
    let stub = lettre::transport::stub::AsyncStubTransport::new_ok();
    let app = mailer::startup::Application::build_with(
        settings,
        mailer::outlet::Outlet::Stub(stub.clone()),
    )
    .await
    .unwrap();
    let connected = app.connected();
    let (stop, rx) = tokio::sync::watch::channel(0u32);
    let running = tokio::spawn(app.run(rx));
    assert!(
        wait_until(Duration::from_secs(20), || async {
            connected.load(std::sync::atomic::Ordering::Relaxed)
        })
        .await
    );
    let broker = Broker::connect().await;
    let event = verify_event(
        "stub@example.com",
        "en",
        "https://acc.example/verify?token=t",
    );
    broker.publish(&env.topology, &event.to_vec()).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            stub.messages().await.len() == 1
        })
        .await
    );
    let _ = stop.send(1);
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the app stops after one request")
        .unwrap()
        .unwrap();
    assert_eq!(broker.count(&env.topology.queue()).await, Some(0), "acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_mail_goes_to_a_folder_and_health_endpoints_answer() {
    let env = Env::new();
    let port = free_port();
    let folder = env.dir.join("mail");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mailer"));
    cmd.env_clear()
        .env("MAILER_AMQP_PREFIX", env.topology.prefix())
        .env("MAILER_BIND", format!("127.0.0.1:{port}"))
        .env("MAILER_MAIL_DIR", &folder)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
    );
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let broker = Broker::connect().await;
    let link = "http://127.0.0.1:8080/verify?token=v1.dev.abc&lang=en";
    broker
        .publish(
            &env.topology,
            &verify_event("laptop@example.com", "en", link).to_vec(),
        )
        .await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            std::fs::read_dir(&folder)
                .map(|d| d.count() > 0)
                .unwrap_or(false)
        })
        .await
    );
    let eml = std::fs::read_dir(&folder)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(eml.extension().unwrap(), "eml");
    // Counted once the message is acked, just after the file is written.
    let sent = "mailer_messages_total{template=\"verify_email\",outcome=\"sent\"} 1";
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let m = client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            m.contains(sent) && m.contains("mailer_smtp_seconds_bucket")
        })
        .await
    );
    // The dev log carries the link, so a laptop needs no inbox.
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains(link), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_store_an_event_another_mailer_sent_is_not_sent_again() {
    let env = Env::new();
    let store = env.dedupe_database().await;
    let _smtp = env.smtp().await;
    let broker = Broker::connect().await;
    let event = verify_event("once@example.com", "en", "https://acc.example/v");

    let first = env.mailer(&[("MAILER_DEDUPE_URL", &store)]).await;
    broker.publish(&env.topology, &event.to_vec()).await;
    assert_eq!(env.wait_for_mail(1, Duration::from_secs(20)).await.len(), 1);
    assert!(first.terminate().await.success());

    // Another mailer (its own memory is empty) gets the same event again, as
    // after the first one died between the SMTP 250 and its ack.
    let (port, bind) = metrics_bind();
    let _second = env
        .mailer(&[("MAILER_DEDUPE_URL", &store), ("MAILER_BIND", &bind)])
        .await;
    broker.publish(&env.topology, &event.to_vec()).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            messages(port, "verify_email", "duplicate").await == Some(1.0)
        })
        .await,
        "the second mailer counts the copy as a duplicate"
    );
    assert_eq!(env.received().len(), 1, "not mailed again");
    let other = verify_event("other@example.com", "en", "https://acc.example/w");
    broker.publish(&env.topology, &other.to_vec()).await;
    let mails = env.wait_for_mail(2, Duration::from_secs(20)).await;
    let to: Vec<&str> = mails
        .iter()
        .map(|m| m["rcpt_tos"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        to,
        ["once@example.com", "other@example.com"],
        "sent once, then the next one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_store_two_copies_in_flight_at_once_make_one_mail() {
    let env = Env::new();
    let store = env.dedupe_database().await;
    let _smtp = env.smtp().await;
    let ports = [free_port(), free_port()];
    let mut mailers = Vec::new();
    for port in ports {
        let bind = format!("127.0.0.1:{port}");
        let vars = [
            ("MAILER_DEDUPE_URL", store.as_str()),
            ("MAILER_BIND", &bind),
        ];
        mailers.push(env.mailer(&vars).await);
    }
    let broker = Broker::connect().await;
    // The server takes this mail at once but answers 250 only 4 s later, so
    // the second copy (as the outbox relay publishes after a lost confirm)
    // arrives while the first is being sent.
    let event = verify_event("twice@slow.test", "en", "https://acc.example/v");
    broker.publish(&env.topology, &event.to_vec()).await;
    broker.publish(&env.topology, &event.to_vec()).await;
    let duplicates = || async {
        let mut n = 0;
        for port in ports {
            n += transport::outcome_count(port, "duplicate").await;
        }
        n
    };
    assert!(
        wait_until(Duration::from_secs(30), || async {
            duplicates().await >= 1
        })
        .await,
        "the second copy was acked as a duplicate"
    );
    assert_eq!(env.received().len(), 1, "one mail for two copies");
    assert_eq!(broker.count(&env.topology.dead_queue()).await, Some(0));
}
