//! The built binary, as an operator runs it.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncReadExt;
use uuid::Uuid;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_account");

fn command() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_variable_stops_the_start_with_one_line_naming_it() {
    for (var, value) in [
        ("ACCOUNT_PUBLIC_URL", "not a url"),
        ("ACCOUNT_TOKEN_KEYS", "k1:short"),
        ("ACCOUNT_COOKIE_SECURE", "perhaps"),
        ("ACCOUNT_TOKEN_KEYS_FILE", "/nonexistent/keys"),
        ("ACCOUNT_AMQP_URL", "http://guest:short@broker"),
    ] {
        let out = command().env(var, value).output().await.unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
        if matches!(var, "ACCOUNT_TOKEN_KEYS" | "ACCOUNT_AMQP_URL") {
            assert!(
                !stderr.contains("short"),
                "no secret in the message: {stderr}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_lists_the_subcommands_and_every_variable_even_with_a_bad_one_set() {
    let out = command()
        .arg("--help")
        .env("ACCOUNT_TOKEN_TTL", "forever")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    for sub in ["serve", "migrate", "keygen"] {
        assert!(help.contains(sub), "{sub} in {help}");
    }
    let vars = shared::config::variables::<account::config::Cli>();
    assert!(vars.len() > 20, "{vars:?}");
    for v in vars {
        assert!(
            help.contains(&format!("[env: {}", v.name)),
            "{} in {help}",
            v.name
        );
        if v.secret {
            assert!(
                help.contains(&format!("[env: {}_FILE", v.name)),
                "{}_FILE",
                v.name
            );
        }
    }
    assert!(
        help.contains("[default: 127.0.0.1:8080]"),
        "defaults are shown"
    );

    let out = command().arg("--version").output().await.unwrap();
    assert!(out.status.success());
    let version = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        version.trim(),
        format!("account {}", env!("CARGO_PKG_VERSION"))
    );

    let out = command().arg("frobnicate").output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("frobnicate")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_prints_a_key_the_ring_accepts() {
    let out = command()
        .args(["keygen", "2026-11"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("2026-11:"));
    account::token::KeyRing::parse(line.trim()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_database_and_its_tables() {
    let db = format!("test_account_{}", Uuid::new_v4().simple());
    let _teardown = Teardown {
        database: Some(db.clone()),
        dir: None,
        topology: None,
        retry_delays: Vec::new(),
    };
    let out = command()
        .arg("migrate")
        .env("ACCOUNT_DATABASE_URL", format!("{PG}/{db}"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let psql = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &db, "-tAc", "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'"])
        .output()
        .unwrap();
    let tables = String::from_utf8(psql.stdout).unwrap();
    assert_eq!(
        tables.trim(),
        "__diesel_schema_migrations,outbox,rate_limits,sessions,users"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_hold_a_password_token_or_session_and_sigterm_exits_cleanly() {
    let id = Uuid::new_v4().simple().to_string();
    let db = format!("test_account_{id}");
    let prefix = format!("test-{id}");
    let _teardown = Teardown {
        database: Some(db.clone()),
        topology: Some(shared::Topology::new(&prefix).unwrap()),
        dir: None,
        retry_delays: Vec::new(),
    };
    let port = testkit::free_port();
    let mut child = command()
        .env("ACCOUNT_BIND", format!("127.0.0.1:{port}"))
        .env("ACCOUNT_ADMIN_BIND", "127.0.0.1:0")
        .env("ACCOUNT_DATABASE_URL", format!("{PG}/{db}"))
        .env("ACCOUNT_AMQP_PREFIX", &prefix)
        .env("ACCOUNT_COOKIE_SECURE", "false")
        .env("ACCOUNT_LOG_FORMAT", "json")
        .env("ACCOUNT_ARGON2_MEMORY_KIB", "1024")
        .env("RUST_LOG", "debug")
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap();
    // Creating the database and migrating may take a while on a busy machine.
    let up = testkit::wait_until(Duration::from_secs(60), || async {
        client.get(format!("{base}/healthz")).send().await.is_ok()
    })
    .await;
    assert!(up, "the service came up");
    let password = "very-secret-password-42";
    let res = client
        .post(format!("{base}/api/v1/signup"))
        .json(&json!({"email": "logs@example.com", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);

    // The link is in the outbox row; use it the way a user would.
    let psql = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            &db,
            "-tAc",
            "SELECT payload->'data'->>'verify_url' FROM outbox WHERE routing_key = 'mail.send'",
        ])
        .output()
        .unwrap();
    let url = String::from_utf8(psql.stdout).unwrap().trim().to_owned();
    let token = token_of(&url);
    let page = client
        .get(format!("{base}/verify?token={token}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_in(&page);
    let res = client
        .post(format!("{base}/verify"))
        .form(&[("token", token.as_str()), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let cookie = session_set(res.headers()).unwrap();
    let session = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();
    client
        .get(format!("{base}/api/v1/me"))
        .header("cookie", format!("session={session}"))
        .send()
        .await
        .unwrap();

    // SIGTERM: graceful stop, exit 0.
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}\n{logs}");
    assert!(
        logs.contains("\"route\":\"/verify\""),
        "request logs are there:\n{logs}"
    );
    let hash = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &db, "-tAc"])
        .arg("SELECT password_hash FROM users")
        .output()
        .unwrap();
    let hash = String::from_utf8(hash.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    // The token's bytes as a Debug of a byte buffer would print them.
    let token_bytes = format!("{:?}", &token.as_bytes()[8..20]);
    let token_bytes = token_bytes.trim_matches(['[', ']']);
    for secret in [
        password,
        token.as_str(),
        session.as_str(),
        &token[12..40],
        &hash,
        hash.rsplit('$').next().unwrap(),
        token_bytes,
    ] {
        assert!(
            !logs.contains(secret),
            "a secret leaked into the logs:\n{logs}"
        );
    }
}

/// SIGTERM while a sign-up is hashing: the request finishes (202), its user
/// and its outbox row are committed, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_signup_lets_it_finish_with_its_outbox_row() {
    let id = Uuid::new_v4().simple().to_string();
    let db = format!("test_account_{id}");
    let prefix = format!("test-{id}");
    let _teardown = Teardown {
        database: Some(db.clone()),
        topology: Some(shared::Topology::new(&prefix).unwrap()),
        dir: None,
        retry_delays: Vec::new(),
    };
    let (port, admin) = (testkit::free_port(), testkit::free_port());
    let mut child = command()
        .env("ACCOUNT_BIND", format!("127.0.0.1:{port}"))
        .env("ACCOUNT_ADMIN_BIND", format!("127.0.0.1:{admin}"))
        .env("ACCOUNT_DATABASE_URL", format!("{PG}/{db}"))
        .env("ACCOUNT_AMQP_PREFIX", &prefix)
        .env("ACCOUNT_COOKIE_SECURE", "false")
        .env("ACCOUNT_HASH_CONCURRENCY", "1")
        // A hash of about a second: long enough to be caught in the middle.
        .env("ACCOUNT_ARGON2_MEMORY_KIB", "262144")
        .env("ACCOUNT_ARGON2_ITERATIONS", "3")
        .env("ACCOUNT_HASH_QUEUE", "60s")
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    assert!(testkit::wait_ok(&client, &format!("{base}/readyz"), Duration::from_secs(60)).await);
    let signup = {
        let client = client.clone();
        let url = format!("{base}/api/v1/signup");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"email": "slow@example.com", "password": "password-123"}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    let metrics = format!("http://127.0.0.1:{admin}/metrics");
    let hashing = testkit::wait_until(Duration::from_secs(30), || async {
        let text = client
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines().any(|l| l == "account_hash_running 1")
    })
    .await;
    assert!(hashing, "the sign-up's hash is running");
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert_eq!(signup.await.unwrap().unwrap(), 202, "the request finished");
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let rows = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &db, "-tAc"])
        .arg(
            "SELECT (SELECT count(*) FROM users) || ',' || \
             (SELECT count(*) FROM outbox WHERE routing_key = 'mail.send') || ',' || \
             (SELECT count(*) FROM outbox WHERE routing_key = 'account.created')",
        )
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(rows.stdout).unwrap().trim(), "1,1,1");
}

/// SIGTERM while the broker hangs in the middle of a publish (a frozen
/// connection, a memory alarm): the relay gives the batch a short grace
/// and then leaves it, so the process exits well inside an orchestrator's
/// grace period instead of waiting out the 30 s publish timeout; the row
/// stays unpublished for the next instance (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_broker_never_confirms_exits_and_leaves_the_row_queued() {
    let id = Uuid::new_v4().simple().to_string();
    let db = format!("test_account_{id}");
    let topology = shared::Topology::new(&format!("test-{id}")).unwrap();
    let _teardown = Teardown {
        database: Some(db.clone()),
        topology: Some(topology.clone()),
        dir: None,
        retry_delays: Vec::new(),
    };
    // A queue bound to the exchange, so the first event routes.
    let amqp = lapin::Connection::connect(AMQP, Default::default())
        .await
        .unwrap();
    let channel = amqp.create_channel().await.unwrap();
    shared::topology::declare_exchange(&channel, &topology.exchange())
        .await
        .unwrap();
    channel
        .queue_declare(
            topology.queue().as_str().into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            topology.queue().as_str().into(),
            topology.exchange().as_str().into(),
            "#".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let broker = testkit::Proxy::start(0, "127.0.0.1:5672").await;
    let port = testkit::free_port();
    let mut child = command()
        .env("ACCOUNT_BIND", format!("127.0.0.1:{port}"))
        .env(
            "ACCOUNT_ADMIN_BIND",
            format!("127.0.0.1:{}", testkit::free_port()),
        )
        .env("ACCOUNT_DATABASE_URL", format!("{PG}/{db}"))
        .env(
            "ACCOUNT_AMQP_URL",
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port),
        )
        .env("ACCOUNT_AMQP_PREFIX", topology.prefix())
        .env("ACCOUNT_COOKIE_SECURE", "false")
        .env("ACCOUNT_RATE_LIMITS", "off")
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    assert!(testkit::wait_ok(&client, &format!("{base}/readyz"), Duration::from_secs(60)).await);
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &db, "-tAc", sql])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let signup = |email: &str| {
        client
            .post(format!("{base}/api/v1/signup"))
            .json(&json!({"email": email, "password": "password-123"}))
            .send()
    };
    assert_eq!(signup("first@example.com").await.unwrap().status(), 202);
    // Nothing set but the essentials: the password hash has the cost a
    // deploy gets by default (argon2id at OWASP's minimum).
    let hash = psql("SELECT password_hash FROM users");
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    let published =
        "SELECT count(*) FROM outbox WHERE routing_key = 'mail.send' AND published_at IS NOT NULL";
    assert!(
        testkit::wait_until(WAIT, || async { psql(published) == "1" }).await,
        "the first event is confirmed through the proxy"
    );

    broker.freeze();
    assert_eq!(signup("second@example.com").await.unwrap().status(), 202);
    // The relay holds the row's lock while it waits for the confirm: then
    // it is in the middle of the publish.
    let claimable = "SELECT count(*) FROM (SELECT id FROM outbox WHERE published_at IS NULL \
                     AND routing_key = 'mail.send' FOR UPDATE SKIP LOCKED) AS free";
    let pending =
        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND routing_key = 'mail.send'";
    assert!(
        testkit::wait_until(WAIT, || async {
            psql(pending) == "1" && psql(claimable) == "0"
        })
        .await,
        "the relay is waiting for the frozen broker"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    // Kubernetes' default grace is 30 s, the publish timeout too.
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits well before the publish timeout")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(psql(pending), "1", "the event waits for the next instance");
    let _ = amqp.close(200, "done".into()).await;
}
