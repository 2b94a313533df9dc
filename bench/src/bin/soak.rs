//! Soak: both services (release binaries) at half their measured capacity
//! for a long time, printing every minute what leaks would show: each
//! process's RSS, open files and TCP connections (to PostgreSQL, RabbitMQ,
//! SMTP, and all), with the rates reached. Run: `scripts/soak` (not in CI).
//!
//! On private PostgreSQL and RabbitMQ instances (testkit's), so a long run
//! never loads the machine's shared servers; Postfix's `smtp-sink` accepts
//! and discards the mail.
//!
//! - `SOAK_MINUTES` (30): how long.
//! - `SOAK_SIGNUPS_PER_S` (55): half the account's measured 107-116
//!   sign-ups/s at the default argon2 cost (docs/benchmarks.md).
//! - `SOAK_MAILS_PER_S` (1800): the mailer's load, half its measured 3680
//!   mails/s: the sign-ups' mail plus raw `mail.send` events published
//!   straight to the broker for the rest.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;
use shared::{Body, MailSend, RawContent, Recipient, Topology};
use testkit::free_port;
use testkit::instances::{PrivatePostgres, PrivateRabbit};

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Socket inode → (remote port, established) from /proc/net/tcp{,6}.
fn tcp_table() -> HashMap<u64, (u16, bool)> {
    let mut out = HashMap::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let remote_port = f[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
                .unwrap_or(0);
            let established = f[3] == "01";
            if let Ok(inode) = f[9].parse() {
                out.insert(inode, (remote_port, established));
            }
        }
    }
    out
}

/// RSS (MiB), open files, and established TCP connections by remote port.
fn sample(pid: u32, ports: &[(&str, u16)], tcp: &HashMap<u64, (u16, bool)>) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let mut files = 0;
    let mut by_port: HashMap<u16, usize> = HashMap::new();
    let mut established = 0;
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            files += 1;
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
                && let Some((port, true)) = tcp.get(&inode)
            {
                established += 1;
                *by_port.entry(*port).or_default() += 1;
            }
        }
    }
    let named: Vec<String> = ports
        .iter()
        .map(|(name, port)| format!("{name} {}", by_port.get(port).copied().unwrap_or(0)))
        .collect();
    format!(
        "RSS {:.1} MiB, {files} open files, {established} TCP ({})",
        rss_kib as f64 / 1024.0,
        named.join(", ")
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let minutes = var("SOAK_MINUTES", 30);
    let signup_rate = var("SOAK_SIGNUPS_PER_S", 55).max(1);
    let mail_rate = var("SOAK_MAILS_PER_S", 1800);
    let bin = std::env::current_exe()?.parent().unwrap().to_owned();
    let work = std::env::temp_dir().join(format!("soak-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&work)?;
    let pg = PrivatePostgres::start().await;
    pg.create_database("accounts").await;
    let rabbit = PrivateRabbit::start(1).await;
    let amqp = rabbit.url_of(0);
    let topology = Topology::new("soak")?;

    let sink_port = free_port();
    let _sink = tokio::process::Command::new("/usr/sbin/smtp-sink")
        .args(["-u", "nobody", &format!("127.0.0.1:{sink_port}"), "1024"])
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("smtp-sink (apt-get install postfix): {e}"))?;
    let mailer_port = free_port();
    let mailer = tokio::process::Command::new(bin.join("mailer"))
        .env("MAILER_BIND", format!("127.0.0.1:{mailer_port}"))
        .env("MAILER_AMQP_URL", &amqp)
        .env("MAILER_AMQP_PREFIX", topology.prefix())
        .env("MAILER_SMTP_URL", format!("smtp://127.0.0.1:{sink_port}"))
        .env("MAILER_FROM", "Soak <soak@localhost>")
        .env("MAILER_DEDUPE_URL", pg.url("accounts"))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let mailer_ready = format!("http://127.0.0.1:{mailer_port}/readyz");
    let ready = testkit::wait_ok(&client, &mailer_ready, Duration::from_secs(60)).await;
    anyhow::ensure!(ready, "the mailer never became ready");
    let keys = std::process::Command::new(bin.join("account"))
        .arg("keygen")
        .output()?;
    let account_port = free_port();
    let account_url = format!("http://127.0.0.1:{account_port}");
    let account = tokio::process::Command::new(bin.join("account"))
        .env("ACCOUNT_BIND", format!("127.0.0.1:{account_port}"))
        .env("ACCOUNT_ADMIN_BIND", "127.0.0.1:0")
        .env("ACCOUNT_PUBLIC_URL", &account_url)
        .env("ACCOUNT_DATABASE_URL", pg.url("accounts"))
        .env("ACCOUNT_AMQP_URL", &amqp)
        .env("ACCOUNT_AMQP_PREFIX", topology.prefix())
        .env("ACCOUNT_TOKEN_KEYS", String::from_utf8(keys.stdout)?.trim())
        .env("ACCOUNT_RATE_LIMITS", "off")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let account_ready = format!("{account_url}/readyz");
    let ready = testkit::wait_ok(&client, &account_ready, Duration::from_secs(60)).await;
    anyhow::ensure!(ready, "the account service never became ready");

    let signups = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(minutes * 60);

    // Sign-ups at a fixed rate, each its own task (an open-loop load).
    {
        let (signups, failed, client, url) = (
            signups.clone(),
            failed.clone(),
            client.clone(),
            account_url.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / signup_rate as f64));
            let mut n = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                n += 1;
                let (signups, failed, client) = (signups.clone(), failed.clone(), client.clone());
                let url = format!("{url}/api/v1/signup");
                tokio::spawn(async move {
                    let body = json!({"email": format!("soak-{n}@example.com"), "password": "a soak-test password"});
                    match client.post(&url).json(&body).send().await {
                        Ok(r) if r.status() == 202 => signups.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
        });
    }
    // Raw events for the rest of the mailer's load, in batches every 100 ms.
    let extra = mail_rate.saturating_sub(signup_rate);
    if extra > 0 {
        let conn = Connection::connect(&amqp, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let (published, exchange) = (published.clone(), topology.exchange());
        tokio::spawn(async move {
            let _conn = conn;
            let per_tick = (extra as f64 / 10.0).ceil() as u64;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while Instant::now() < end {
                tick.tick().await;
                let mut confirms = Vec::new();
                for _ in 0..per_tick {
                    let mail = MailSend {
                        id: uuid::Uuid::now_v7(),
                        version: 1,
                        created_at: chrono::Utc::now(),
                        source: "soak".into(),
                        to: Recipient {
                            email: "raw@example.com".into(),
                            name: None,
                        },
                        locale: "en".into(),
                        body: Body::Content {
                            content: RawContent {
                                subject: "Soak".into(),
                                html: "<p>soak</p>".into(),
                                text: "soak".into(),
                            },
                        },
                    };
                    let props = BasicProperties::default()
                        .with_message_id(mail.id.to_string().into())
                        .with_content_type("application/json".into())
                        .with_delivery_mode(2);
                    if let Ok(c) = ch
                        .basic_publish(
                            exchange.as_str().into(),
                            "mail.send".into(),
                            BasicPublishOptions::default(),
                            &mail.to_vec(),
                            props,
                        )
                        .await
                    {
                        confirms.push(c);
                    }
                }
                for c in confirms {
                    if c.await.is_ok() {
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }

    let ports = [
        ("PostgreSQL", pg.port),
        ("RabbitMQ", rabbit.nodes[0].port),
        ("SMTP", sink_port),
    ];
    let metrics = format!("http://127.0.0.1:{mailer_port}/metrics");
    let sent = || async {
        testkit::fleet::metric(&metrics, "mailer_messages_total", "outcome=\"sent\"").await
    };
    println!(
        "soak: {minutes} min, sign-ups {signup_rate}/s, mailer load {mail_rate}/s (sign-ups' mail + raw events); private PostgreSQL :{}, RabbitMQ :{}",
        pg.port, rabbit.nodes[0].port
    );
    let started = Instant::now();
    let (mut last_signups, mut last_sent) = (0, 0.0);
    for minute in 1..=minutes {
        tokio::time::sleep_until((started + Duration::from_secs(minute * 60)).into()).await;
        let tcp = tcp_table();
        let (s, m) = (signups.load(Ordering::Relaxed), sent().await);
        println!(
            "soak: minute {minute:>2}: sign-ups {:.1}/s (failed {}), mails sent {:.0}/s, raw published {} | account: {} | mailer: {}",
            (s - last_signups) as f64 / 60.0,
            failed.load(Ordering::Relaxed),
            (m - last_sent) / 60.0,
            published.load(Ordering::Relaxed),
            sample(account.id().unwrap_or(0), &ports, &tcp),
            sample(mailer.id().unwrap_or(0), &ports, &tcp),
        );
        (last_signups, last_sent) = (s, m);
    }
    println!(
        "soak: done: {} sign-ups accepted, {} failed, {:.0} mails sent",
        signups.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        sent().await
    );
    drop(account);
    drop(mailer);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
