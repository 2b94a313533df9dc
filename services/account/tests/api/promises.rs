//! Promises the README and the docs make that nothing else tests: what
//! happens to an event no queue takes, readiness when the database goes,
//! the default language, the session lifetime, housekeeping through the
//! running service, and SIGTERM in the middle of a sign-up.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_no_queue_takes_stays_in_the_outbox_until_one_does() {
    let mut app = spawn_app_with(Options {
        capture: false,
        ..Options::default().env("ACCOUNT_OUTBOX_SWEEP_INTERVAL", "200ms")
    })
    .await;
    assert_eq!(
        app.signup("early@example.com", "password-123")
            .await
            .status(),
        202
    );
    // The broker returned it (mandatory, no queue bound): the row stays, with why.
    let refused = "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL \
                   AND attempts > 0 AND last_error LIKE 'unroutable%'";
    assert!(
        testkit::wait_until(WAIT, || async { app.count(refused).await == 1 }).await,
        "the relay tried and kept the row"
    );
    // The alert on a growing outbox (account_outbox_backlog) sees it.
    assert!(
        testkit::wait_until(WAIT, || async {
            app.metric("account_outbox_backlog").await == 1.0
        })
        .await,
        "the backlog gauge counts the kept row"
    );
    // And AccountOutboxStale sees its age grow.
    assert!(
        testkit::wait_until(WAIT, || async {
            app.metric("account_outbox_oldest_seconds").await >= 1.0
        })
        .await,
        "the age of the kept row is reported"
    );
    // Over that second or more the relay backed off (250 ms, doubling):
    // a handful of tries, not a loop hammering the broker.
    let tries = app
        .count("SELECT attempts::bigint AS n FROM outbox WHERE routing_key = 'mail.send'")
        .await;
    assert!(
        (1..=10).contains(&tries),
        "{tries} tries: the relay backs off while the broker refuses"
    );
    // A queue appears (the mailer starts): the next sweep delivers it.
    app.start_capture().await;
    let event = app.next_event(WAIT).await;
    assert_eq!(event.mail.to.email, "early@example.com");
    let published = "SELECT count(*) AS n FROM outbox WHERE published_at IS NOT NULL AND routing_key = 'mail.send'";
    assert!(testkit::wait_until(WAIT, || async { app.count(published).await == 1 }).await);
    assert!(
        testkit::wait_until(WAIT, || async {
            app.metric("account_outbox_backlog").await == 0.0
        })
        .await,
        "the backlog gauge is back to zero"
    );
    assert!(
        testkit::wait_until(WAIT, || async {
            app.metric("account_outbox_oldest_seconds").await == 0.0
        })
        .await,
        "nothing waits any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_the_database_down_and_back() {
    let mut proxy = testkit::Proxy::start(0, "127.0.0.1:5432").await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let app = spawn_app_with(Options::default().env(
        "ACCOUNT_DATABASE_URL",
        &format!(
            "postgres://postgres@127.0.0.1:{}/test_account_{id}",
            proxy.port
        ),
    ))
    .await;
    let ready = || async {
        let res = app.client.get(app.url("/readyz")).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap())
    };
    assert_eq!(ready().await.0, 200);

    proxy.cut();
    assert!(
        testkit::wait_until(Duration::from_secs(30), || async { ready().await.0 == 503 }).await,
        "readiness notices"
    );
    assert_eq!(ready().await.1, json!({"database": "down", "broker": "ok"}));
    // What the AccountNotReady alert reads.
    assert!(
        app.metric("http_requests_total{method=\"GET\",route=\"/readyz\",status=\"503\"}")
            .await
            >= 1.0
    );
    // A request that needs the database answers 503 with Retry-After, not 500.
    let res = app.signup("outage@example.com", "password-123").await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    // The database comes back on the same address: ready again.
    let _back = testkit::Proxy::start(proxy.port, "127.0.0.1:5432").await;
    assert!(
        testkit::wait_until(Duration::from_secs(60), || async { ready().await.0 == 200 }).await,
        "ready once the database is back"
    );
    assert_eq!(
        app.signup("back@example.com", "password-123")
            .await
            .status(),
        202
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_locale_speaks_korean_when_the_browser_says_nothing() {
    let mut app = spawn_app_with(Options::default().env("ACCOUNT_DEFAULT_LOCALE", "ko")).await;
    let plain = reqwest::Client::new();
    let page = plain.get(app.url("/signup")).send().await.unwrap();
    assert_eq!(page.headers()["content-language"], "ko");
    assert!(page.text().await.unwrap().contains("계정 만들기"));
    let res = plain
        .post(app.url("/api/v1/signup"))
        .json(&json!({"email": "gibon@example.com", "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(app.next_event(WAIT).await.raw["locale"], "ko");
    // A browser that asks for English still gets English.
    let en = plain
        .get(app.url("/signup"))
        .header("accept-language", "en-US")
        .send()
        .await
        .unwrap();
    assert_eq!(en.headers()["content-language"], "en");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_lives_as_long_as_configured() {
    let mut app = spawn_app_with(Options::default().env("ACCOUNT_SESSION_TTL", "90m")).await;
    app.signup("ttl@example.com", "password-123").await;
    let token = token_of(&verify_url(&app.next_event(WAIT).await));
    let res = app.verify_api(&token).await;
    let cookie = session_set(res.headers()).unwrap();
    assert!(cookie.contains("Max-Age=5400"), "{cookie}");
    let lives = "SELECT count(*) AS n FROM sessions WHERE expires_at \
                 BETWEEN now() + interval '89 minutes' AND now() + interval '91 minutes'";
    assert_eq!(app.count(lives).await, 1);
    // Past it, the session is over even if used a second ago.
    app.exec("UPDATE sessions SET expires_at = now() - interval '1 second', last_seen_at = now()")
        .await;
    assert_eq!(app.me().await.status(), 401);
}

/// Old published outbox rows and expired sessions go on the housekeeping
/// tick of the running service; unsent rows never; `0` keeps published ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_runs_on_its_tick_and_keeps_what_it_must() {
    for retention in ["1h", "0"] {
        // No queue bound: the unsent row stays unsent.
        let app = spawn_app_with(Options {
            capture: false,
            ..Options::default()
                .env("ACCOUNT_HOUSEKEEPING_INTERVAL", "200ms")
                .env("ACCOUNT_OUTBOX_RETENTION", retention)
                .env("ACCOUNT_RATE_LIMITS", "on")
        })
        .await;
        app.exec(
            "INSERT INTO outbox (id, routing_key, payload, created_at, published_at) VALUES \
             (gen_random_uuid(), 'mail.send', '{}', now() - interval '3 hours', now() - interval '2 hours'), \
             (gen_random_uuid(), 'mail.send', '{}', now() - interval '3 hours', NULL), \
             (gen_random_uuid(), 'mail.send', '{}', now(), now())",
        )
        .await;
        // A rate-limit key that has replenished (it means no more than no
        // row) and one still counting.
        app.exec(
            "INSERT INTO rate_limits (key, tat, step, span, allowed) VALUES \
             ('old'::bytea, now() - interval '1 minute', interval '1 minute', interval '1 hour', true), \
             ('live'::bytea, now() + interval '1 hour', interval '1 minute', interval '1 hour', true)",
        )
        .await;
        // An expired session: its purge shows that a round has run.
        app.exec(
            "INSERT INTO users (id, email, email_key, password_hash, locale, verified_at) \
             VALUES (gen_random_uuid(), 'hk@example.com', 'hk@example.com', 'x', 'en', now())",
        )
        .await;
        app.exec(
            "INSERT INTO sessions (token_hash, user_id, expires_at) \
             SELECT 'a'::bytea, id, now() - interval '1 minute' FROM users",
        )
        .await;
        // Two rounds: the second's start proves the first one finished.
        let sessions = "SELECT count(*) AS n FROM sessions";
        for token in ["b", "c"] {
            assert!(
                testkit::wait_until(WAIT, || async { app.count(sessions).await == 0 }).await,
                "a housekeeping round ran"
            );
            app.exec(&format!(
                "INSERT INTO sessions (token_hash, user_id, expires_at) \
                 SELECT '{token}'::bytea, id, now() - interval '1 minute' FROM users"
            ))
            .await;
        }
        assert!(testkit::wait_until(WAIT, || async { app.count(sessions).await == 0 }).await);
        let old_published =
            "SELECT count(*) AS n FROM outbox WHERE published_at < now() - interval '1 hour'";
        let unsent = "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL";
        let recent =
            "SELECT count(*) AS n FROM outbox WHERE published_at > now() - interval '1 hour'";
        if retention == "0" {
            assert_eq!(app.count(old_published).await, 1, "0 keeps every row");
        } else {
            assert!(
                testkit::wait_until(WAIT, || async { app.count(old_published).await == 0 }).await,
                "rows past the retention go"
            );
        }
        assert_eq!(app.count(unsent).await, 1, "unsent mail is never purged");
        assert_eq!(
            app.count("SELECT count(*) AS n FROM rate_limits WHERE key = 'old'::bytea")
                .await,
            0,
            "replenished rate-limit keys are forgotten"
        );
        assert_eq!(
            app.count("SELECT count(*) AS n FROM rate_limits WHERE key = 'live'::bytea")
                .await,
            1,
            "counting ones stay"
        );
        assert_eq!(app.count(recent).await, 1, "recent rows stay");
    }
}
