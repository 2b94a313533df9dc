//! End-to-end benchmark. Run: `scripts/bench-e2e` (builds release first).
//!
//! Starts both services (release binaries) against the local PostgreSQL and
//! RabbitMQ, with Postfix's `smtp-sink` as the mail server dumping every
//! accepted mail to a file. Signs up N users at concurrency C over HTTP and
//! prints, per user, the time from the start of the sign-up request to the
//! SMTP server accepting the mail (file modification time): p50/p95/p99,
//! sign-ups per second, mails lost and duplicates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bench::{Latencies, ms, sh};
use serde_json::json;
use tokio::sync::Semaphore;

use testkit::{PG, Teardown, free_port};

async fn wait_ok(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    if testkit::wait_ok(client, url, Duration::from_secs(60)).await {
        Ok(())
    } else {
        anyhow::bail!("{url} never became ready")
    }
}

/// Recipient of a dumped mail: the `To:` header.
fn recipient(dump: &str) -> Option<String> {
    dump.lines()
        .find_map(|l| l.strip_prefix("To: "))
        .map(|to| to.trim().trim_matches(['<', '>']).to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_SIGNUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let dir = std::env::current_exe()?.parent().unwrap().to_owned();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let work = std::env::temp_dir().join(format!("bench-e2e-{id}"));
    let dumps = work.join("dumps");
    std::fs::create_dir_all(&dumps)?;
    let prefix = format!("bench-{id}");
    let db = format!("bench_e2e_{id}");
    // Removes the folder, the database and the broker prefix however the run ends.
    let _teardown = Teardown {
        dir: Some(work.clone()),
        database: Some(db.clone()),
        topology: Some(shared::Topology::new(&prefix)?),
        retry_delays: mailer::config::DEFAULT_RETRY_DELAYS.to_vec(),
    };

    let sink_port = free_port();
    let mut sink = tokio::process::Command::new("/usr/sbin/smtp-sink")
        .args(["-u", "nobody", "-d"])
        .arg(dumps.join("%H%M%S."))
        .args([&format!("127.0.0.1:{sink_port}"), "1024"])
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("smtp-sink (apt-get install postfix): {e}"))?;
    sh(&format!("chown nobody {}", dumps.display()));
    let listening = || async { std::net::TcpStream::connect(("127.0.0.1", sink_port)).is_ok() };
    anyhow::ensure!(
        testkit::wait_until(Duration::from_secs(2), listening).await,
        "smtp-sink did not listen on {sink_port}"
    );

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let mailer_port = free_port();
    let mut mailer = tokio::process::Command::new(dir.join("mailer"))
        .env("MAILER_BIND", format!("127.0.0.1:{mailer_port}"))
        .env("MAILER_AMQP_PREFIX", &prefix)
        .env("MAILER_SMTP_URL", format!("smtp://127.0.0.1:{sink_port}"))
        .env("MAILER_FROM", "Account <no-reply@bench.example>")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    wait_ok(&client, &format!("http://127.0.0.1:{mailer_port}/readyz")).await?;
    let account_port = free_port();
    let base = format!("http://127.0.0.1:{account_port}");
    let mut account = tokio::process::Command::new(dir.join("account"))
        .env("ACCOUNT_BIND", format!("127.0.0.1:{account_port}"))
        .env("ACCOUNT_ADMIN_BIND", "127.0.0.1:0")
        .env("ACCOUNT_PUBLIC_URL", &base)
        .env("ACCOUNT_DATABASE_URL", format!("{PG}/{db}"))
        .env("ACCOUNT_AMQP_PREFIX", &prefix)
        .env("ACCOUNT_RATE_LIMITS", "off")
        .env("ACCOUNT_COOKIE_SECURE", "false")
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()?;
    wait_ok(&client, &format!("{base}/readyz")).await?;

    println!(
        "# end-to-end benchmark: {n} sign-ups at concurrency {concurrency}, both services, smtp-sink"
    );
    let sem = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let client = client.clone();
        let url = format!("{base}/api/v1/signup");
        tasks.push(tokio::spawn(async move {
            let email = format!("e2e{i}@bench.example");
            let at = SystemTime::now();
            let res = client
                .post(url)
                .json(&json!({"email": email, "password": "benchmark-password"}))
                .send()
                .await
                .expect("request");
            assert_eq!(res.status().as_u16(), 202);
            drop(permit);
            (email, at, at.elapsed().unwrap_or_default())
        }));
    }
    let mut started_at = HashMap::with_capacity(n);
    let mut answered = Vec::with_capacity(n);
    for t in tasks {
        let (email, at, took) = t.await?;
        started_at.insert(email, at);
        answered.push(took);
    }
    let mut answered = Latencies(answered);
    let signup_rate = n as f64 / started.elapsed().as_secs_f64();

    // Wait for the mail (up to a minute after the last sign-up).
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && std::fs::read_dir(&dumps)?.count() < n {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // late duplicates would show up here
    let files: Vec<_> = std::fs::read_dir(&dumps)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut lat = Vec::new();
    for f in &files {
        let Some(to) = recipient(&std::fs::read_to_string(f).unwrap_or_default()) else {
            continue;
        };
        let accepted = std::fs::metadata(f)?.modified()?;
        *seen.entry(to.clone()).or_default() += 1;
        if seen[&to] == 1
            && let Some(at) = started_at.get(&to)
        {
            lat.push(accepted.duration_since(*at).unwrap_or_default());
        }
    }
    let lost = started_at.keys().filter(|e| !seen.contains_key(*e)).count();
    let duplicates: usize = seen.values().map(|c| c.saturating_sub(1)).sum();
    let mut lat = Latencies(lat);
    println!(
        "sign-ups: {signup_rate:.1}/s; the 202 came after p50 {}, p99 {}",
        ms(answered.pct(50.0)),
        ms(answered.pct(99.0))
    );
    println!(
        "sign-up request start → mail accepted by SMTP: p50 {}, p95 {}, p99 {} ({} mails)",
        ms(lat.pct(50.0)),
        ms(lat.pct(95.0)),
        ms(lat.pct(99.0)),
        lat.0.len()
    );
    println!("mails lost: {lost}, duplicates: {duplicates}");

    let _ = account.kill().await;
    let _ = mailer.kill().await;
    let _ = sink.kill().await;
    anyhow::ensure!(lost == 0, "{lost} mails lost");
    Ok(())
}
