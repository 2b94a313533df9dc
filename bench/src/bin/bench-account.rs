//! Account service benchmark. Run: `scripts/bench-account` (builds release first).
//!
//! Prints: argon2 hash time and the hashing limit it implies (cores / hash
//! time), also through the service's own hasher (faster: a reused work
//! area on huge pages); sign-ups per second at concurrency 16 and 64 with p50/p99;
//! verifications per second with p50/p99; the same writes as a pgbench
//! transaction; where the CPU of each phase went; the service's peak RSS.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use account::config::Argon2Settings;
use account::domain::Password;
use account::password::Hasher;
use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Params, Version};
use bench::{CpuSplit, Latencies, anon_huge_kib, ms, peak_rss_kib, sh};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::json;
use tokio::sync::Semaphore;

use testkit::{AMQP, PG, Teardown};

/// Mean time of one argon2id hash at the service's default cost, measured
/// two ways: with the argon2 crate's plain API (it allocates 19 MiB per
/// hash), and through the service's own hasher on one thread (one reused work
/// area on huge pages), which is faster and so gives the stricter limit.
async fn hash_times() -> (Duration, Duration) {
    let n = 20;
    let argon = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(19456, 2, 1, None).unwrap(),
    );
    let _ = argon.hash_password(b"warm-up password");
    let start = Instant::now();
    for i in 0..n {
        let _ = argon
            .hash_password(format!("password number {i}").as_bytes())
            .unwrap();
    }
    let plain = start.elapsed() / n;

    let hasher = Hasher::new(
        Argon2Settings {
            memory_kib: 19456,
            iterations: 2,
            parallelism: 1,
        },
        1,
        // One job at a time never waits: no bound needed.
        Duration::MAX,
    );
    let password = |i: u32| Password::parse_new(format!("password number {i}")).unwrap();
    hasher.hash(password(0), None).await.unwrap();
    let start = Instant::now();
    for i in 0..n {
        hasher.hash(password(i), None).await.unwrap();
    }
    (plain, start.elapsed() / n)
}

/// A request: URL, JSON body, and the `Cookie` header to send, if any.
type Request = (String, serde_json::Value, Option<String>);

/// Runs `requests` at `concurrency`; each must answer `expect`. Returns the
/// rate, the latencies, and the link-binding cookie (`name=value`) each
/// answer set, by the request body's `email`.
async fn run_load(
    client: &reqwest::Client,
    concurrency: usize,
    requests: Vec<Request>,
    expect: u16,
) -> (f64, Latencies, HashMap<String, String>) {
    let sem = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(requests.len());
    for (url, body, cookie) in requests {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let mut req = client.post(url).json(&body);
            if let Some(c) = cookie {
                req = req.header(reqwest::header::COOKIE, c);
            }
            let res = req.send().await.expect("request");
            let elapsed = t.elapsed();
            assert_eq!(res.status().as_u16(), expect, "{:?}", res.text().await);
            let binding = res
                .headers()
                .get_all(reqwest::header::SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(|v| v.split(';').next())
                .find(|c| c.starts_with("verify=") || c.starts_with("__Host-verify="))
                .map(str::to_owned);
            drop(permit);
            let email = body["email"].as_str().map(str::to_owned);
            (elapsed, email.zip(binding))
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    let mut bindings = HashMap::new();
    for t in tasks {
        let (elapsed, binding) = t.await.unwrap();
        lat.push(elapsed);
        bindings.extend(binding);
    }
    let rate = lat.len() as f64 / started.elapsed().as_secs_f64();
    (rate, Latencies(lat), bindings)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism()?.get();
    // The service binary sits beside this one (same cargo profile).
    let bin = std::env::current_exe()?.with_file_name("account");
    anyhow::ensure!(
        bin.exists(),
        "build first: cargo build --release -p account -p bench"
    );
    let signups_16: usize = std::env::var("BENCH_SIGNUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);

    println!("# account service benchmark ({cores} cores)");
    let (allocating, reused) = hash_times().await;
    let limit = cores as f64 / allocating.as_secs_f64();
    let strict_limit = cores as f64 / reused.as_secs_f64();
    println!(
        "argon2id m=19456 t=2 p=1 hash time: {} (the crate's plain API) -> hashing limit {:.1} hashes/s ({cores} cores / hash time)",
        ms(allocating),
        limit
    );
    println!(
        "argon2id through the service's hasher (reused work area on huge pages): {} -> stricter limit {:.1} hashes/s",
        ms(reused),
        strict_limit
    );

    let id = uuid::Uuid::new_v4().simple().to_string();
    let db = format!("bench_account_{id}");
    let prefix = format!("bench-{id}");
    // Drops the database and the exchange however the run ends.
    let _teardown = Teardown {
        dir: None,
        database: Some(db.clone()),
        topology: Some(shared::Topology::new(&prefix)?),
        retry_delays: Vec::new(),
    };
    // Absorb the events so the relay publishes normally.
    let amqp = Connection::connect(AMQP, ConnectionProperties::default()).await?;
    let ch = amqp.create_channel().await?;
    shared::topology::declare_exchange(&ch, &format!("{prefix}.mail")).await?;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    ch.queue_bind(
        q.name().clone(),
        format!("{prefix}.mail").as_str().into(),
        "mail.send".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = tokio::process::Command::new(&bin)
        .env("ACCOUNT_BIND", format!("127.0.0.1:{port}"))
        .env("ACCOUNT_ADMIN_BIND", "127.0.0.1:0")
        .env("ACCOUNT_DATABASE_URL", format!("{PG}/{db}"))
        .env("ACCOUNT_AMQP_PREFIX", &prefix)
        .env("ACCOUNT_RATE_LIMITS", "off")
        .env("ACCOUNT_COOKIE_SECURE", "false")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()?;
    for _ in 0..200 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut n = 0;
    let mut signups = |count: usize| {
        (0..count)
            .map(|_| {
                n += 1;
                (format!("{base}/api/v1/signup"), json!({"email": format!("user{n}@bench.example"), "password": "benchmark-password"}), None)
            })
            .collect::<Vec<_>>()
    };
    // Warm up connections and caches.
    let mut bindings = run_load(&client, 8, signups(32), 202).await.2;
    for (concurrency, count) in [(16, signups_16), (64, signups_16 + 40)] {
        let cpu = CpuSplit::start(pid);
        let (rate, mut lat, set) = run_load(&client, concurrency, signups(count), 202).await;
        bindings.extend(set);
        println!(
            "sign-up  c={concurrency:<3} {count} requests: {rate:.1}/s ({:.0}% of the hashing limit, {:.0}% of the stricter one), p50 {}, p99 {}",
            100.0 * rate / limit,
            100.0 * rate / strict_limit,
            ms(lat.pct(50.0)),
            ms(lat.pct(99.0))
        );
        println!("         {}", cpu.per_op(count));
    }
    let rss_after_signups = peak_rss_kib(pid).unwrap_or(0);

    // Verification: the links come from the queue that absorbed the mail
    // (an outbox row keeps no live link); each request carries its sign-up's
    // binding cookie, as the browser that signed up does (any other client
    // would also prove the password: an argon2 verify each).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut verifications = Vec::new();
    while let Some(msg) = ch
        .basic_get(q.name().clone(), BasicGetOptions { no_ack: true })
        .await?
    {
        let event: serde_json::Value = serde_json::from_slice(&msg.delivery.data)?;
        let (Some(email), Some(url)) = (
            event["to"]["email"].as_str(),
            event["data"]["verify_url"].as_str(),
        ) else {
            continue;
        };
        let url = url::Url::parse(url)?;
        let Some((_, token)) = url.query_pairs().find(|(k, _)| k == "token") else {
            continue;
        };
        let cookie = bindings.get(email).cloned();
        verifications.push((
            format!("{base}/api/v1/verify"),
            json!({"token": token}),
            cookie,
        ));
    }
    anyhow::ensure!(
        !verifications.is_empty(),
        "no verification link reached the bench's queue"
    );
    let count = verifications.len();
    let cpu = CpuSplit::start(pid);
    let (vrate, mut vlat, _) = run_load(&client, 16, verifications, 200).await;
    println!(
        "verify   c=16  {count} requests: {vrate:.1}/s, p50 {}, p99 {}",
        ms(vlat.pct(50.0)),
        ms(vlat.pct(99.0))
    );
    println!("         {}", cpu.per_op(count));

    // The same writes as one pgbench transaction, on the same PostgreSQL.
    let script = std::env::temp_dir().join(format!("verify-{id}.sql"));
    std::fs::write(
        &script,
        "\\set n random(1, 100000)\n\
         BEGIN;\n\
         SELECT id, email_key, verify_epoch, verified_at FROM users WHERE email_key = 'pg' || :n || '@bench.example' FOR UPDATE;\n\
         UPDATE users SET verified_at = coalesce(verified_at, now()), verify_epoch = verify_epoch + 1 WHERE email_key = 'pg' || :n || '@bench.example';\n\
         INSERT INTO sessions (token_hash, user_id, expires_at) SELECT sha256(gen_random_uuid()::text::bytea), id, now() + interval '14 days' FROM users WHERE email_key = 'pg' || :n || '@bench.example';\n\
         END;\n",
    )?;
    sh(&format!(
        "psql -h 127.0.0.1 -U postgres -d {db} -qc \"INSERT INTO users (id, email, email_key, password_hash, locale) SELECT gen_random_uuid(), 'pg' || g || '@bench.example', 'pg' || g || '@bench.example', 'x', 'en' FROM generate_series(1, 100000) g\""
    ));
    let pgbench = sh(&format!(
        "pgbench -h 127.0.0.1 -U postgres -n -c 16 -j 2 -T 10 -f {} {db} 2>&1",
        script.display()
    ));
    let tps: f64 = pgbench
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    println!(
        "pgbench  c=16  same writes (select for update, update, insert session): {tps:.1} tps"
    );
    if tps > 0.0 {
        println!("verify throughput = {:.0}% of pgbench", 100.0 * vrate / tps);
    }
    let rss = peak_rss_kib(pid).unwrap_or(0);
    println!(
        "peak RSS of the service: {:.1} MiB after the sign-up floods, {:.1} MiB at the end ({:.1} MiB of it on huge pages)",
        rss_after_signups as f64 / 1024.0,
        rss as f64 / 1024.0,
        anon_huge_kib(pid).unwrap_or(0) as f64 / 1024.0
    );

    let _ = child.kill().await;
    let _ = std::fs::remove_file(&script);
    Ok(())
}
