//! The account service's running API against its OpenAPI document, fuzzed
//! with schemathesis (PyPI): every generated request, valid and invalid,
//! must get an answer the document describes (status, content type,
//! headers, body schema), never a 5xx, and a 405 for an undeclared method.
//! Authenticated operations get a real session cookie.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use shared::Topology;
use testkit::{PG, Teardown, free_port, service_binary, venv_tool};
use uuid::Uuid;

/// The fuzzing budget: schemathesis repeats fuzzing and stateful runs until
/// it is spent. About 8,000 requests on this machine.
const BUDGET_SECONDS: &str = "90";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let id = Uuid::new_v4().simple().to_string();
    let db = format!("test_openapi_{id}");
    let topology = Topology::new(&format!("test-{id}")).unwrap();
    let _teardown = Teardown {
        dir: None,
        database: Some(db.clone()),
        topology: Some(topology.clone()),
        retry_delays: Vec::new(),
    };
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("openapi-{id}.log"));
    let mut account = tokio::process::Command::new(service_binary("account"))
        .env_clear()
        .env("ACCOUNT_BIND", format!("127.0.0.1:{port}"))
        .env("ACCOUNT_ADMIN_BIND", "127.0.0.1:0")
        .env("ACCOUNT_PUBLIC_URL", &base)
        .env("ACCOUNT_DATABASE_URL", format!("{PG}/{db}"))
        .env("ACCOUNT_AMQP_PREFIX", topology.prefix())
        .env("ACCOUNT_COOKIE_SECURE", "false")
        .env("ACCOUNT_RATE_LIMITS", "off")
        // Cheap hashing: the fuzzer sends thousands of sign-ups and logins.
        .env("ACCOUNT_ARGON2_MEMORY_KIB", "1024")
        .env("ACCOUNT_ARGON2_ITERATIONS", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    assert!(
        testkit::wait_ok(&client, &format!("{base}/readyz"), Duration::from_secs(60)).await,
        "the account service starts"
    );

    // A signed-in user for the operations that need one. No mailer runs, so
    // the link stays in the outbox (unroutable), where the test reads it.
    let res = client
        .post(format!("{base}/api/v1/signup"))
        .json(&json!({"email": "fuzz@example.com", "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let url = psql(&db, "SELECT payload->'data'->>'verify_url' FROM outbox");
    let token = url
        .split("token=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let res = client
        .post(format!("{base}/api/v1/verify"))
        // This client kept no cookie: it proves the sign-up's password.
        .json(&json!({"token": token, "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    let out = tokio::process::Command::new(venv_tool("schemathesis"))
        .arg("run")
        .arg(format!("{base}/api/v1/openapi.json"))
        .args(["--checks", "all"])
        // A schema cannot say that a token must be genuine or a password
        // right: such well-formed requests are refused by design (400, 401,
        // 409, 422), which this check would count as failures.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--max-time", BUDGET_SECONDS, "--workers", "2"])
        .args(["-H", &format!("Cookie: {cookie}")])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(
        out.status.success(),
        "schemathesis failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = report
        .lines()
        .rev()
        .find(|l| l.contains(" in "))
        .unwrap_or("");
    assert!(!summary.contains("failure"), "{summary}");
    // "Test cases:\n  6416 generated, 6416 passed"
    let cases: u64 = report
        .lines()
        .filter(|l| l.contains(" generated"))
        .find_map(|l| {
            l.split(" generated")
                .next()?
                .split_whitespace()
                .last()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(
        cases > 500,
        "schemathesis ran too few cases ({cases}):\n{report}"
    );

    let _ = account.kill().await;
    let logged = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(!logged.contains("panicked"), "{logged}");
    assert!(
        !logged.contains(" ERROR "),
        "the service logged an error:\n{logged}"
    );
}

fn psql(db: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
