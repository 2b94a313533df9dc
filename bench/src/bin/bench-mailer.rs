//! Mailer benchmark. Run: `scripts/bench-mailer` (builds release first).
//!
//! Publishes N `verify_email` events, lets the mailer deliver them into
//! Postfix's `smtp-sink` (a fast SMTP server that accepts and discards), and
//! prints mails per second at the default settings and at a tuned setting,
//! the consumed-to-accepted latency p50/p99 (from the mailer's own
//! histogram), and the mailer's peak RSS.

use std::time::{Duration, Instant};

use bench::peak_rss_kib;
use chrono::Utc;
use lapin::options::*;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use shared::envelope::{TEMPLATE_VERIFY_EMAIL, VerifyEmailData};
use shared::{MailSend, Recipient, Topology};
use testkit::{AMQP, Teardown, free_port};

/// Percentile from Prometheus histogram buckets (upper bound of the bucket).
fn bucket_pct(metrics: &str, name: &str, p: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    buckets
        .into_iter()
        .find(|(_, c)| *c >= p / 100.0 * total)
        .map(|(le, _)| le)
}

async fn run(label: &str, n: usize, extra: &[(&str, &str)]) -> anyhow::Result<()> {
    let sink_port = free_port();
    let mut sink = tokio::process::Command::new("/usr/sbin/smtp-sink")
        .args(["-u", "nobody", &format!("127.0.0.1:{sink_port}"), "1024"])
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("smtp-sink (apt-get install postfix): {e}"))?;
    let listening = || async { std::net::TcpStream::connect(("127.0.0.1", sink_port)).is_ok() };
    anyhow::ensure!(
        testkit::wait_until(Duration::from_secs(2), listening).await,
        "smtp-sink did not listen on {sink_port}"
    );
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topology = Topology::new(&format!("bench-{id}")).unwrap();
    // Deletes the queues and the exchange however the run ends.
    let _teardown = Teardown {
        dir: None,
        database: None,
        topology: Some(topology.clone()),
        retry_delays: mailer::config::DEFAULT_RETRY_DELAYS.to_vec(),
    };
    let http_port = free_port();
    let bin = std::env::current_exe()?.with_file_name("mailer");
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.env_clear()
        .env("MAILER_BIND", format!("127.0.0.1:{http_port}"))
        .env("MAILER_AMQP_PREFIX", topology.prefix())
        .env("MAILER_SMTP_URL", format!("smtp://127.0.0.1:{sink_port}"))
        .env("MAILER_FROM", "Bench <bench@example.com>")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut mailer = cmd.spawn()?;
    let pid = mailer.id().unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http_port}");
    for _ in 0..200 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Pre-render the events so the publisher costs little while we measure.
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            MailSend::template(
                "bench",
                Recipient {
                    email: format!("user{i}@example.com"),
                    name: None,
                },
                if i % 2 == 0 { "ko" } else { "en" },
                TEMPLATE_VERIFY_EMAIL,
                VerifyEmailData {
                    verify_url: format!(
                        "https://account.example/verify?token=v1.k.{}&lang=ko",
                        "A".repeat(120)
                    ),
                    expires_at: Utc::now() + chrono::Duration::hours(24),
                    code: Some(format!("{:06}", i % 1_000_000)),
                },
            )
            .to_vec()
        })
        .collect();
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let started = Instant::now();
    for chunk in bodies.chunks(500) {
        for body in chunk {
            ch.basic_publish(
                topology.exchange().as_str().into(),
                "mail.send".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await?;
        }
        ch.wait_for_confirms().await?;
    }
    let published = started.elapsed();
    let sent_line = "mailer_messages_total{template=\"verify_email\",outcome=\"sent\"}";
    let metrics = loop {
        let m = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let sent: usize = m
            .lines()
            .find(|l| l.starts_with(sent_line))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0);
        if sent >= n {
            break m;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "only {sent} of {n} sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    let rss = peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
    let p50 = bucket_pct(&metrics, "mailer_delivery_seconds", 50.0).unwrap_or(f64::NAN) * 1e3;
    let p99 = bucket_pct(&metrics, "mailer_delivery_seconds", 99.0).unwrap_or(f64::NAN) * 1e3;
    println!(
        "{label:<40} {n} mails in {:.2} s: {:.0} mails/s (published in {:.2} s); consumed→accepted p50 ≤ {p50} ms, p99 ≤ {p99} ms; peak RSS {rss:.1} MiB",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        published.as_secs_f64()
    );
    let _ = mailer.kill().await;
    let _ = sink.kill().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_MAILS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    println!(
        "# mailer benchmark ({} cores), into smtp-sink",
        std::thread::available_parallelism()?.get()
    );
    run("default (prefetch 32, 4 SMTP connections)", n, &[]).await?;
    for (prefetch, pool) in [("128", "8"), ("256", "16"), ("512", "32")] {
        let label = format!("tuned (prefetch {prefetch}, {pool} SMTP connections)");
        run(
            &label,
            n,
            &[
                ("MAILER_PREFETCH", prefetch),
                ("MAILER_SMTP_POOL_SIZE", pool),
            ],
        )
        .await?;
    }
    Ok(())
}
