//! A database connection that PostgreSQL drops in the middle of a request
//! (a restart, a failover, an operator's pg_terminate_backend) is an outage
//! to retry, not a bug: 503 with Retry-After, never a 500.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::helpers::*;

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

/// Runs `request` while `users` is locked, kills the backend that waits for
/// the lock (the request's), and returns what the request answered.
async fn answer_when_its_connection_is_dropped(
    app: &TestApp,
    request: impl std::future::Future<Output = reqwest::Response> + Send + 'static,
) -> reqwest::Response {
    let mut locker = app.db().await;
    diesel::sql_query("BEGIN")
        .execute(&mut locker)
        .await
        .unwrap();
    diesel::sql_query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let pending = tokio::spawn(request);
    let mut admin = app.db().await;
    let find = format!(
        // Not housekeeping's DELETEs, which may be waiting for the lock too.
        "SELECT pid FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock' \
         AND query NOT ILIKE 'DELETE%'",
        app.db_name
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let waiting = loop {
        let found: Vec<Pid> = diesel::sql_query(&find).load(&mut admin).await.unwrap();
        if !found.is_empty() {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the request waits for the lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for p in &waiting {
        diesel::sql_query(format!("SELECT pg_terminate_backend({})", p.pid))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let res = tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .expect("the request answers")
        .unwrap();
    diesel::sql_query("ROLLBACK")
        .execute(&mut locker)
        .await
        .unwrap();
    res
}

/// A JSON post of `body` to `path`, to run while the test holds the lock.
fn post(
    app: &TestApp,
    path: &str,
    body: serde_json::Value,
) -> impl Future<Output = reqwest::Response> + Send + 'static {
    let (client, url) = (app.client.clone(), app.url(path));
    async move { client.post(url).json(&body).send().await.unwrap() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_request_answers_503_with_retry_after() {
    let app = spawn_app().await;
    let credentials = json!({"email": "drop@example.com", "password": "password-123"});
    // Sign-up: the drop lands inside its transaction.
    let signup = post(&app, "/api/v1/signup", credentials.clone());
    let res = answer_when_its_connection_is_dropped(&app, signup).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "5");
    assert_eq!(res.headers()["content-type"], "application/problem+json");

    // Login: the drop lands on a lone query.
    let login = post(&app, "/api/v1/login", credentials);
    let res = answer_when_its_connection_is_dropped(&app, login).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "5");

    // And the service carries on with fresh connections.
    assert_eq!(
        app.signup("after@example.com", "password-123")
            .await
            .status(),
        202
    );
}
