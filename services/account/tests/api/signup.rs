use chrono::Utc;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_publishes_the_documented_envelope_whose_link_verifies() {
    let mut app = spawn_app().await;
    let res = app
        .post_json("/api/v1/signup", json!({"email": "  Minsu.Kim@Example.com ", "password": "correct horse", "locale": "ko"}))
        .await;
    assert_eq!(res.status(), 202);

    let event = app.next_event(WAIT).await;
    // Envelope as documented, and valid against the published JSON Schema.
    let schema: Value = serde_json::from_str(include_str!(
        "../../../../shared/schema/mail.send.v1.schema.json"
    ))
    .unwrap();
    assert!(jsonschema::is_valid(&schema, &event.raw), "{}", event.raw);
    assert_eq!(event.raw["version"], 1);
    assert_eq!(event.raw["source"], "account");
    assert_eq!(event.raw["locale"], "ko");
    assert_eq!(event.raw["to"]["email"], "Minsu.Kim@example.com");
    assert_eq!(event.raw["template"], "verify_email");
    assert_eq!(
        event
            .props
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned()),
        Some(event.mail.id.to_string())
    );
    assert_eq!(
        event.props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*event.props.delivery_mode(), Some(2));
    // The broker user it connected as (RabbitMQ checks it): the mailer's
    // MAILER_SOURCES can then trust the source.
    assert_eq!(
        event.props.user_id().as_ref().map(|s| s.as_str()),
        Some("guest")
    );
    let expires: chrono::DateTime<Utc> =
        serde_json::from_value(event.raw["data"]["expires_at"].clone()).unwrap();
    let ttl = expires - Utc::now();
    assert!(
        ttl > chrono::Duration::hours(23) && ttl <= chrono::Duration::hours(24),
        "{ttl}"
    );

    let url = verify_url(&event);
    assert!(
        url.starts_with("http://127.0.0.1:8080/verify?token=v2.current."),
        "{url}"
    );
    let res = app.verify_form(&token_of(&url)).await;
    assert_eq!(res.status(), 303);
    assert!(
        res.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/me")
    );
    let me: Value = app.me().await.json().await.unwrap();
    assert_eq!(me["email"], "Minsu.Kim@example.com");
    assert!(me["verified_at"].is_string());
    assert_eq!(
        app.count("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL AND routing_key = 'mail.send'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_and_existing_addresses_get_identical_answers() {
    let mut app = spawn_app().await;
    let first = app.signup("jimin@example.com", "password-one").await;
    let (s1, b1) = (first.status(), first.text().await.unwrap());
    let url = verify_url(&app.next_event(WAIT).await);

    // Unverified and signing up again: same answer, a fresh link; the old one dies.
    let again = app.signup("JIMIN@example.com", "password-two").await;
    assert_eq!(
        (again.status(), again.text().await.unwrap()),
        (s1, b1.clone())
    );
    let renewed = app.next_event(WAIT).await;
    assert_eq!(renewed.raw["to"]["email"], "jimin@example.com");
    let res = app.verify_api(&token_of(&url)).await;
    assert_eq!(res.status(), 409, "a superseded link must not sign in");
    let res = app.verify_api(&token_of(&verify_url(&renewed))).await;
    assert_eq!(res.status(), 200);

    // Verified: same answer again, and an account_exists mail instead of an error.
    let third = app.signup("jimin@example.com", "password-three").await;
    assert_eq!((third.status(), third.text().await.unwrap()), (s1, b1));
    let exists = app.next_event(WAIT).await;
    assert_eq!(exists.raw["template"], "account_exists");
    assert_eq!(
        exists.raw["data"]["login_url"],
        "http://127.0.0.1:8080/login?lang=en"
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM users").await, 1);
    // The password is still the one that was verified.
    let login = app
        .post_json(
            "/api/v1/login",
            json!({"email": "jimin@example.com", "password": "password-two"}),
        )
        .await;
    assert_eq!(login.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_a_422_naming_the_field_and_stores_nothing() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"email": "not-an-address", "password": "long enough"}),
            vec!["email"],
        ),
        (
            json!({"email": "a@example.com", "password": "short"}),
            vec!["password"],
        ),
        (
            json!({"email": "a@example.com", "password": "x".repeat(129)}),
            vec!["password"],
        ),
        (json!({"password": "long enough"}), vec!["email"]),
        (json!({}), vec!["email", "password"]),
    ];
    for (body, fields) in cases {
        let res = app.post_json("/api/v1/signup", body.clone()).await;
        assert_eq!(res.status(), 422, "{body}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let problem: Value = res.json().await.unwrap();
        let named: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(named, fields, "{body}");
    }
    // Malformed JSON, wrong media type, oversized body: clear 4xx problems.
    let res = app
        .client
        .post(app.url("/api/v1/signup"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = app
        .client
        .post(app.url("/api/v1/signup"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let big = json!({"email": "a@example.com", "password": "p".repeat(20_000)});
    let res = app.post_json("/api/v1/signup", big).await;
    assert_eq!(res.status(), 413);
    let res = app
        .client
        .get(app.url("/api/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    assert_eq!(app.count("SELECT count(*) AS n FROM users").await, 0);
    // Every mail goes through the outbox: no row, no mail.
    assert_eq!(app.count("SELECT count(*) AS n FROM outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_always_answers_202_and_honours_the_cooldown() {
    let mut app = spawn_app().await;
    let unknown = app
        .post_json(
            "/api/v1/verification/resend",
            json!({"email": "nobody@example.com"}),
        )
        .await;
    let (status, body) = (unknown.status(), unknown.text().await.unwrap());
    assert_eq!(status, 202);

    app.signup("hana@example.com", "password-123").await;
    let first = app.next_event(WAIT).await;
    // Inside the cooldown (sign-up just sent one): same answer, nothing sent.
    let res = app
        .post_json(
            "/api/v1/verification/resend",
            json!({"email": "hana@example.com"}),
        )
        .await;
    assert_eq!(
        (res.status(), res.text().await.unwrap()),
        (status, body.clone())
    );
    // The resend answers after its transaction: the outbox says what was sent.
    let rows = "SELECT count(*) AS n FROM outbox WHERE routing_key = 'mail.send'";
    assert_eq!(app.count(rows).await, 1, "nothing sent inside the cooldown");

    // After the cooldown: a new link that works, while the first one still does too
    // (both carry the same epoch until one is used).
    let mut db = app.db().await;
    use diesel_async::RunQueryDsl;
    diesel::sql_query("UPDATE users SET verification_sent_at = now() - interval '61 seconds'")
        .execute(&mut db)
        .await
        .unwrap();
    let res = app
        .post_json(
            "/api/v1/verification/resend",
            json!({"email": "HANA@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 202);
    let second = app.next_event(WAIT).await;
    assert_ne!(verify_url(&first), verify_url(&second));
    assert_eq!(
        app.verify_api(&token_of(&verify_url(&second)))
            .await
            .status(),
        200
    );

    // Verified addresses get nothing.
    diesel::sql_query("UPDATE users SET verification_sent_at = now() - interval '1 day'")
        .execute(&mut db)
        .await
        .unwrap();
    let res = app
        .post_json(
            "/api/v1/verification/resend",
            json!({"email": "hana@example.com"}),
        )
        .await;
    assert_eq!((res.status(), res.text().await.unwrap()), (status, body));
    assert_eq!(
        app.count(rows).await,
        2,
        "nothing sent to a verified address"
    );
    // Invalid input is still a 422.
    let res = app
        .post_json("/api/v1/verification/resend", json!({"email": "nope"}))
        .await;
    assert_eq!(res.status(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let app = spawn_app_with(
        Options::default()
            .env("ACCOUNT_RATE_LIMITS", "on")
            .env("ACCOUNT_RATE_LIMIT_CLIENT_PER_MINUTE", "100")
            .env("ACCOUNT_RATE_LIMIT_ADDRESS_PER_HOUR", "2"),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            app.signup("busy@example.com", "password-123")
                .await
                .status(),
            202
        );
    }
    let res = app.signup("busy@example.com", "password-123").await;
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Two an hour: one comes back every 30 minutes, and the burst of two
    // was just spent (a minute of slack for a slow machine).
    assert!((1740..=1800).contains(&retry), "Retry-After {retry}");
    // Another address from the same client is still fine.
    assert_eq!(
        app.signup("other@example.com", "password-123")
            .await
            .status(),
        202
    );

    let per_client = spawn_app_with(
        Options::default()
            .env("ACCOUNT_RATE_LIMITS", "on")
            .env("ACCOUNT_RATE_LIMIT_CLIENT_PER_MINUTE", "3"),
    )
    .await;
    for i in 0..3 {
        let res = per_client
            .post_json(
                "/api/v1/login",
                json!({"email": format!("u{i}@example.com"), "password": "whatever1"}),
            )
            .await;
        assert_eq!(res.status(), 401);
    }
    let res = per_client
        .post_json(
            "/api/v1/login",
            json!({"email": "u9@example.com", "password": "whatever1"}),
        )
        .await;
    assert_eq!(res.status(), 429);
    // Three a minute: one comes back every 20 s.
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
}
