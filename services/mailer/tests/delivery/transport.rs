//! How the mailer talks to SMTP servers and the broker beyond the usual
//! STARTTLS-on-587 path: implicit TLS, certificates it must refuse, a wrong
//! password, and a deployment on quorum queues.

use std::time::Duration;

use super::helpers::*;
use super::verify_event;
use shared::MailSend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtps_url_delivers_over_implicit_tls_with_auth() {
    let env = Env::new();
    let _smtp = env.smtp_with(&["--implicit-tls"]).await;
    let url = format!(
        "smtps://{}@127.0.0.1:{}",
        USER.replace('@', "%40"),
        env.smtp_port
    );
    let _mailer = env.mailer(&[("MAILER_SMTP_URL", &url)]).await;
    let broker = Broker::connect().await;
    let event = verify_event(
        "tls@example.com",
        "en",
        "https://acc.example/verify?token=t",
    );
    broker.publish(&env.topology, &event.to_vec()).await;
    let mails = env.wait_for_mail(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["tls"], true);
    assert_eq!(mails[0]["auth_login"], USER);
    assert_eq!(mails[0]["subject"], "Confirm your e-mail address");
}

/// The count of `mailer_messages_total{outcome}` summed over templates.
pub async fn outcome_count(port: u16, outcome: &str) -> u64 {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let labels = format!("outcome=\"{outcome}\"");
    testkit::fleet::metric(&url, "mailer_messages_total", &labels).await as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_smtp_certificate_is_a_configuration_error_and_the_mail_waits() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    // The system roots only: the test server's private CA is not among them.
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let bad = env
        .mailer(&[
            ("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
            ("MAILER_BIND", &bind),
        ])
        .await;
    let broker = Broker::connect().await;
    let event = verify_event(
        "mitm@example.com",
        "en",
        "https://acc.example/verify?token=t",
    );
    broker.publish(&env.topology, &event.to_vec()).await;

    // Readiness names the configuration error.
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            match reqwest::get(&readyz).await {
                Ok(r) if r.status() == 503 => r
                    .text()
                    .await
                    .is_ok_and(|b| b.contains("configuration") && b.contains("certificate")),
                _ => false,
            }
        })
        .await,
        "readiness says the SMTP certificate is rejected"
    );
    // The mail is held in the retry queue well past where its ladder (4
    // attempts here) would have dead-lettered it.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            outcome_count(port, "held").await >= 6
        })
        .await,
        "held again and again"
    );
    assert_eq!(broker.count(&env.topology.dead_queue()).await, Some(0));
    assert!(env.received().is_empty(), "nothing went to that server");

    // Fixed (the right CA): the same mail goes out, once.
    drop(bad);
    let _good = env.mailer(&[]).await;
    let mails = env.wait_for_mail(1, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["rcpt_tos"][0], "mitm@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_permanent_failure_with_the_smtp_answer() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let _mailer = env
        .mailer(&[("MAILER_SMTP_PASSWORD", "not-the-app-password")])
        .await;
    let broker = Broker::connect().await;
    let event = verify_event(
        "user@example.com",
        "en",
        "https://acc.example/verify?token=t",
    );
    broker.publish(&env.topology, &event.to_vec()).await;
    let dead = env.topology.dead_queue();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            broker.count(&dead).await == Some(1)
        })
        .await
    );
    let letters = broker.drain(&dead).await;
    let reason = header(&letters[0].0, "x-dead-reason").unwrap();
    assert!(reason.starts_with("permanent: SMTP 535"), "{reason}");
    assert!(!reason.contains("not-the-app-password"), "{reason}");
    assert_eq!(MailSend::from_slice(&letters[0].1).unwrap().id, event.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_quorum_queues_mail_is_delivered_and_retries_come_back() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let _mailer = env.mailer(&[("MAILER_QUEUE_TYPE", "quorum")]).await;
    // The broker itself says so: the work queue, every rung of the retry
    // ladder and the dead letters are quorum queues.
    assert_eq!(
        queue_types(&env.topology, RETRIES),
        all_queues_of_type(&env.topology, RETRIES, "quorum")
    );
    let broker = Broker::connect().await;
    let good = verify_event("q@example.com", "ko", "https://acc.example/verify?token=q");
    let busy = verify_event(
        "q@tempfail.test",
        "en",
        "https://acc.example/verify?token=b",
    );
    broker.publish(&env.topology, &busy.to_vec()).await;
    broker.publish(&env.topology, &good.to_vec()).await;
    let mails = env.wait_for_mail(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["rcpt_tos"][0], "q@example.com");
    // The 451 climbs the quorum retry queues (TTL + dead-lettering) to the end.
    let dead = env.topology.dead_queue();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            broker.count(&dead).await == Some(1)
        })
        .await
    );
    let letters = broker.drain(&dead).await;
    let reason = header(&letters[0].0, "x-dead-reason").unwrap();
    assert!(
        reason.starts_with("retries exhausted after 4 attempts: SMTP 451"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_times_out_and_other_mail_still_goes() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let _mailer = env.mailer(&[("MAILER_SMTP_TIMEOUT", "1s")]).await;
    let broker = Broker::connect().await;
    let stalled = verify_event(
        "hang@stall.test",
        "en",
        "https://acc.example/verify?token=s",
    );
    let good = verify_event("ok@example.com", "en", "https://acc.example/verify?token=g");
    broker.publish(&env.topology, &stalled.to_vec()).await;
    broker.publish(&env.topology, &good.to_vec()).await;
    let mails = env.wait_for_mail(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["rcpt_tos"][0], "ok@example.com");
    let dead = env.topology.dead_queue();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            broker.count(&dead).await == Some(1)
        })
        .await,
        "each attempt timed out, then the ladder ended"
    );
    let letters = broker.drain(&dead).await;
    let reason = header(&letters[0].0, "x-dead-reason").unwrap();
    assert!(
        reason.starts_with(
            "retries exhausted after 4 attempts: the SMTP server did not finish within 1s"
        ),
        "{reason}"
    );
    assert_eq!(MailSend::from_slice(&letters[0].1).unwrap().id, stalled.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_broker_never_answers_still_exits_in_bounded_time() {
    // A "broker" that accepts TCP and then says nothing: the AMQP handshake hangs.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mailer"))
        .env_clear()
        .env("MAILER_BIND", "127.0.0.1:0")
        .env(
            "MAILER_AMQP_URL",
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        )
        .env(
            "MAILER_MAIL_DIR",
            std::env::temp_dir().join(format!("mailer-silent-{port}")),
        )
        .env("MAILER_SHUTDOWN_TIMEOUT", "1s")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The mailer connected and is waiting inside the AMQP handshake.
    silent.set_nonblocking(true).unwrap();
    let silent = tokio::net::TcpListener::from_std(silent).unwrap();
    let (_held, _) = tokio::time::timeout(Duration::from_secs(20), silent.accept())
        .await
        .expect("the mailer connects to the broker")
        .unwrap();
    let started = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_sessions_never_exceed_the_pool_size_whatever_the_prefetch() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let vars = [("MAILER_PREFETCH", "64"), ("MAILER_SMTP_POOL_SIZE", "2")];
    // A backlog: the mail waits in the queue while no mailer runs, so the
    // next one takes all of it at once (prefetch 64), not one at a time as
    // it is published.
    let first = env.mailer(&vars).await;
    assert!(first.terminate().await.success());
    let broker = Broker::connect().await;
    let n = 30;
    // The server holds the first one's session 4 s (its 250 comes late):
    // the rest must share the other one.
    let slow = verify_event("u0@slow.test", "en", "https://acc.example/v");
    broker.publish(&env.topology, &slow.to_vec()).await;
    for i in 1..n {
        let e = verify_event(&format!("u{i}@example.com"), "en", "https://acc.example/v");
        broker.publish(&env.topology, &e.to_vec()).await;
    }
    let _mailer = env.mailer(&vars).await;
    let mails = env.wait_for_mail(n, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), n);
    // The server's count of sessions open at once, at each mail: never
    // above the cap, and at the cap, so the cap is not just one at a time.
    // (Without the cap it sees one per message in flight: about 30 here.)
    let peak = mails
        .iter()
        .map(|m| m["peak_sessions"].as_u64().unwrap())
        .max();
    assert_eq!(
        peak,
        Some(2),
        "at most 2 SMTP sessions at once, and 2 were used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_rate_limit_paces_delivery() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let _mailer = env.mailer(&[("MAILER_SEND_RATE", "4")]).await;
    let broker = Broker::connect().await;
    let n = 20;
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let published = unix_now();
    for i in 0..n {
        let e = verify_event(&format!("r{i}@example.com"), "en", "https://acc.example/v");
        broker.publish(&env.topology, &e.to_vec()).await;
    }
    let mails = env.wait_for_mail(n, Duration::from_secs(40)).await;
    assert_eq!(mails.len(), n);
    // A burst of 4, then 16 more at 4 per second: the last one goes about
    // 4 s after the first. Paced: not within 3.6 s of the first publish.
    // Not over-throttled: the server's first to last well under the 9 s
    // that half the rate would take.
    let at = |m: &serde_json::Value| m["received_at"].as_f64().unwrap();
    let (first, last) = mails
        .iter()
        .map(at)
        .fold((f64::MAX, f64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let paced = last - published;
    assert!(
        paced >= 3.6,
        "paced at 4/s: the last mail {paced:.2} s after publishing"
    );
    let span = last - first;
    assert!(
        span < 6.5,
        "not slower than 4/s: {span:.2} s from first to last"
    );
}

/// The broker proxy on `port` again, once the cut one let go of the port.
async fn proxy_again(port: u16) -> testkit::proxy::Proxy {
    assert!(
        wait_until(Duration::from_secs(10), || async {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        })
        .await,
        "port {port} is free again"
    );
    testkit::proxy::Proxy::start(port, "127.0.0.1:5672").await
}

/// Closes the broker connection named `mailer@<pid>` from the broker's side.
fn broker_drops_connection_of(pid: u32) {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl (the machine's RabbitMQ) to drop a connection");
    let list = String::from_utf8_lossy(&out.stdout);
    let name = format!("\"mailer@{pid}\"");
    let conn = list
        .lines()
        .find(|l| l.contains(&name))
        .and_then(|l| l.split('\t').next())
        .expect("the mailer's connection is listed");
    let closed = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", conn, "test: broker drops the mailer"])
        .output()
        .unwrap();
    assert!(closed.status.success(), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reconnects_when_the_broker_drops_its_connection() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    // The mailer reaches the broker through a proxy the test can cut.
    let mut proxy = testkit::proxy::Proxy::start(0, "127.0.0.1:5672").await;
    let proxy_port = proxy.port;
    let url = format!("amqp://guest:guest@127.0.0.1:{proxy_port}/%2f");
    let (port, bind) = metrics_bind();
    let mailer = env
        .mailer(&[("MAILER_AMQP_URL", &url), ("MAILER_BIND", &bind)])
        .await;
    let connected = "mailer_broker_connected";
    assert_eq!(series(port, connected).await, Some(1.0));
    let broker = Broker::connect().await;
    let first = verify_event("one@example.com", "en", "https://acc.example/v1");
    broker.publish(&env.topology, &first.to_vec()).await;
    assert_eq!(env.wait_for_mail(1, Duration::from_secs(20)).await.len(), 1);

    broker_drops_connection_of(mailer.child.id().unwrap());
    let second = verify_event("two@example.com", "en", "https://acc.example/v2");
    broker.publish(&env.topology, &second.to_vec()).await;
    let mails = env.wait_for_mail(2, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 2, "consuming again after the reconnect");
    assert_eq!(mails[1]["rcpt_tos"][0], "two@example.com");

    // The broker out of reach: the gauge the alert reads goes to 0 and stays
    // there until the broker is back, then returns to 1.
    proxy.cut();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            series(port, connected).await == Some(0.0)
        })
        .await,
        "mailer_broker_connected is 0 while the broker is unreachable"
    );
    let _proxy = proxy_again(proxy_port).await;
    assert!(
        wait_until(Duration::from_secs(40), || async {
            series(port, connected).await == Some(1.0)
        })
        .await,
        "mailer_broker_connected is 1 again after the reconnect"
    );
    let third = verify_event("three@example.com", "en", "https://acc.example/v3");
    broker.publish(&env.topology, &third.to_vec()).await;
    let mails = env.wait_for_mail(3, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 3, "consuming again after the broker came back");
    assert_eq!(mails[2]["rcpt_tos"][0], "three@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_the_server_closed_while_idle_are_replaced() {
    let env = Env::new();
    let _smtp = env.smtp_with(&["--idle-timeout", "0.5"]).await;
    // A ladder too slow for this test: the second mail must go on its first try.
    let _mailer = env.mailer(&[("MAILER_RETRY_DELAYS", "1h")]).await;
    let broker = Broker::connect().await;
    let first = verify_event("idle1@example.com", "en", "https://acc.example/v1");
    broker.publish(&env.topology, &first.to_vec()).await;
    assert_eq!(env.wait_for_mail(1, Duration::from_secs(20)).await.len(), 1);
    // The server hangs up on the pooled session once it idled for 0.5 s.
    let hung_up = || env.smtp_sessions().unwrap()["timed_out"].as_u64().unwrap();
    let before = hung_up();
    assert!(
        wait_until(Duration::from_secs(20), || async { hung_up() > before }).await,
        "the server hung up on the idle session: {:?}",
        env.smtp_sessions()
    );
    let second = verify_event("idle2@example.com", "en", "https://acc.example/v2");
    broker.publish(&env.topology, &second.to_vec()).await;
    let mails = env.wait_for_mail(2, Duration::from_secs(10)).await;
    assert_eq!(
        mails.len(),
        2,
        "sent on a fresh connection, not parked in a retry queue"
    );
    assert_eq!(mails[1]["rcpt_tos"][0], "idle2@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_already_accepted_by_smtp_is_not_mailed_twice() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let (port, bind) = metrics_bind();
    let _mailer = env.mailer(&[("MAILER_BIND", &bind)]).await;
    let broker = Broker::connect().await;
    // Registered at zero: the first duplicate is an increase, not a new series.
    assert_eq!(messages(port, "verify_email", "duplicate").await, Some(0.0));
    let event = verify_event("once@example.com", "en", "https://acc.example/v");
    // A publisher's retry after a lost confirm, or a redelivery after a lost ack.
    broker.publish(&env.topology, &event.to_vec()).await;
    assert_eq!(env.wait_for_mail(1, Duration::from_secs(20)).await.len(), 1);
    broker.publish(&env.topology, &event.to_vec()).await;
    // The mailer's own word that it handled the copy as a duplicate...
    assert!(
        wait_until(Duration::from_secs(20), || async {
            messages(port, "verify_email", "duplicate").await == Some(1.0)
        })
        .await,
        "the second copy is counted as a duplicate"
    );
    // ...and then the server still holds exactly one mail.
    assert_eq!(env.received().len(), 1, "acked as a duplicate, not sent");
    assert_eq!(messages(port, "verify_email", "sent").await, Some(1.0));
    assert_eq!(broker.count(&env.topology.queue()).await, Some(0));
    assert_eq!(broker.count(&env.topology.dead_queue()).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_drop_during_an_smtp_send_does_not_mail_twice() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let (port, bind) = metrics_bind();
    // The mailer reaches the broker through a proxy: cutting it drops the
    // connection at once (rabbitmqctl takes seconds, which can miss the
    // window below).
    let mut proxy = testkit::proxy::Proxy::start(0, "127.0.0.1:5672").await;
    let proxy_port = proxy.port;
    let url = format!("amqp://guest:guest@127.0.0.1:{proxy_port}/%2f");
    let _mailer = env
        .mailer(&[("MAILER_AMQP_URL", &url), ("MAILER_BIND", &bind)])
        .await;
    let broker = Broker::connect().await;
    // The server takes this mail at once but answers 250 only 4 s later.
    let event = verify_event("late@slow.test", "en", "https://acc.example/v");
    broker.publish(&env.topology, &event.to_vec()).await;
    assert_eq!(env.wait_for_mail(1, Duration::from_secs(20)).await.len(), 1);
    // The broker connection drops while the mailer waits for that 250: the
    // ack will fail and the broker redelivers the event after the reconnect.
    proxy.cut();
    let _proxy = proxy_again(proxy_port).await;
    // Waits for the mailer to say it recognised the redelivery, however long
    // the late 250 and the reconnect take.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            messages(port, "verify_email", "duplicate").await == Some(1.0)
        })
        .await,
        "the redelivery is counted as a duplicate"
    );
    assert_eq!(
        env.received().len(),
        1,
        "the redelivery was recognised as already sent"
    );
    assert_eq!(broker.count(&env.topology.queue()).await, Some(0));
    assert_eq!(broker.count(&env.topology.dead_queue()).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn even_at_debug_level_the_log_holds_no_password_and_no_link() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mailer"));
    cmd.env_clear();
    for (k, v) in env.mailer_env() {
        cmd.env(k, v);
    }
    let (port, bind) = metrics_bind();
    let child = cmd
        .env("MAILER_BIND", &bind)
        .env("RUST_LOG", "debug")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let broker = Broker::connect().await;
    let queue = env.topology.queue();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            broker.consumers(&queue).await.unwrap_or(0) > 0
        })
        .await
    );
    let token = "v1.k1.SECRET-TOKEN-abcdefghijklmnopqrstuvwxyz0123456789";
    let link = format!("https://acc.example/verify?token={token}");
    let event = verify_event("private@example.com", "en", &link);
    broker.publish(&env.topology, &event.to_vec()).await;
    assert_eq!(env.wait_for_mail(1, Duration::from_secs(20)).await.len(), 1);
    // Counted once acked, after the "mail sent" line: the whole delivery is logged.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            messages(port, "verify_email", "sent").await == Some(1.0)
        })
        .await
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("DEBUG"), "debug logging was on");
    assert!(
        log.contains(&event.id.to_string()),
        "the event id is logged"
    );
    assert!(!log.contains(PASSWORD), "password in the log");
    assert!(
        !log.contains("AUTH PLAIN") && !log.contains("AUTH LOGIN"),
        "AUTH line in the log"
    );
    assert!(!log.contains("SECRET-TOKEN"), "the link's token in the log");
    assert!(
        !log.contains("private@example.com"),
        "the full recipient in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_hangs_up_mid_reply_is_retried_not_dead_lettered_at_once() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let _mailer = env.mailer(&[]).await;
    let broker = Broker::connect().await;
    let cut = verify_event("x@hangup.test", "en", "https://acc.example/v");
    broker.publish(&env.topology, &cut.to_vec()).await;
    let dead = env.topology.dead_queue();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            broker.count(&dead).await == Some(1)
        })
        .await
    );
    let letters = broker.drain(&dead).await;
    let reason = header(&letters[0].0, "x-dead-reason").unwrap();
    assert!(
        reason.starts_with("retries exhausted after 4 attempts")
            && reason.contains("incomplete response"),
        "lettre's 'incomplete response' is a dropped connection: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_broker_nodes_is_tried_in_turn_past_a_dead_one() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let nodes = format!("amqp://guest:guest@127.0.0.1:{}/%2f,{AMQP}", free_port());
    let _mailer = env.mailer(&[("MAILER_AMQP_URL", &nodes)]).await;
    let broker = Broker::connect().await;
    let event = verify_event("nodes@example.com", "en", "https://acc.example/v");
    broker.publish(&env.topology, &event.to_vec()).await;
    let mails = env.wait_for_mail(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cut_short_by_the_timeout_never_leaves_its_session_to_the_next_mail() {
    let env = Env::new();
    let _smtp = env.smtp().await;
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    // One pooled session, a short timeout, and a ladder too slow to matter:
    // a mail that fails once stays failed for this test.
    let _mailer = env
        .mailer(&[
            ("MAILER_BIND", &bind),
            ("MAILER_SMTP_POOL_SIZE", "1"),
            ("MAILER_SMTP_TIMEOUT", "1s"),
            ("MAILER_RETRY_DELAYS", "1h"),
        ])
        .await;
    let broker = Broker::connect().await;
    // The server stops answering in the middle of this exchange.
    let stalled = verify_event("hang@stall.test", "en", "https://acc.example/s");
    broker.publish(&env.topology, &stalled.to_vec()).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            outcome_count(port, "retried").await == 1
        })
        .await,
        "the stalled exchange timed out"
    );
    // The next mail must not be written into that session.
    let good = verify_event("next@example.com", "en", "https://acc.example/g");
    broker.publish(&env.topology, &good.to_vec()).await;
    let mails = env.wait_for_mail(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1, "sent on its first try, on a fresh session");
    assert_eq!(mails[0]["rcpt_tos"][0], "next@example.com");
    assert_eq!(outcome_count(port, "retried").await, 1);
}
