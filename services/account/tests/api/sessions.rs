use serde_json::{Value, json};

use crate::helpers::*;

async fn verified_user(app: &mut TestApp, email: &str, password: &str) {
    assert_eq!(app.signup(email, password).await.status(), 202);
    let token = token_of(&verify_url(&app.next_event(WAIT).await));
    // Another client than the sign-up's: it sends the sign-up's password.
    let verifier = reqwest::Client::new();
    let res = verifier
        .post(app.url("/api/v1/verify"))
        .json(&json!({"token": token, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_me_logout() {
    let mut app = spawn_app().await;
    verified_user(&mut app, "seoyeon@example.com", "password-123").await;
    assert_eq!(app.me().await.status(), 401);

    let res = app
        .post_json(
            "/api/v1/login",
            json!({"email": "SEOYEON@example.com", "password": "password-123"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let cookie = session_set(res.headers()).unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let me: Value = app.me().await.json().await.unwrap();
    assert_eq!(me["email"], "seoyeon@example.com");
    assert_eq!(
        app.metric("account_logins_total{outcome=\"ok\"}").await,
        1.0
    );

    // The database holds only a hash of the cookie's token.
    let token = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();
    assert_eq!(token.len(), 43, "256 bits, base64url");
    let n = app
        .count(&format!(
            "SELECT count(*) AS n FROM sessions WHERE token_hash = convert_to('{token}', 'UTF8')"
        ))
        .await;
    assert_eq!(n, 0);
    // Two sessions: the verifying client's and this login's; both stored as SHA-256.
    assert_eq!(
        app.count("SELECT count(*) AS n FROM sessions WHERE octet_length(token_hash) = 32")
            .await,
        2
    );

    let res = app
        .client
        .post(app.url("/api/v1/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(app.me().await.status(), 401);
    assert_eq!(app.count("SELECT count(*) AS n FROM sessions").await, 1);
}

async fn login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/login",
        json!({"email": email, "password": password}),
    )
    .await
}

/// A correct password on an unverified account must not tell that the
/// address is registered (once 403 against 401): it answers exactly like a
/// wrong password, and the owner gets a new link instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_account_answers_like_a_wrong_password_and_gets_its_link_again() {
    let mut app = spawn_app().await;
    verified_user(&mut app, "known@example.com", "password-123").await;
    app.signup("pending@example.com", "password-123").await;
    let first = app.next_event(WAIT).await;
    assert_eq!(first.mail.to.email, "pending@example.com");
    // Past the resend cooldown of the sign-up's mail.
    app.exec("UPDATE users SET verification_sent_at = now() - interval '1 hour'")
        .await;
    let outbox = "SELECT count(*) AS n FROM outbox WHERE routing_key = 'mail.send'";
    let before = app.count(outbox).await;

    let wrong = login(&app, "known@example.com", "wrong-password").await;
    let unknown = login(&app, "ghost@example.com", "wrong-password").await;
    let pending = login(&app, "pending@example.com", "password-123").await;
    let mut answers = Vec::new();
    for res in [wrong, unknown, pending] {
        assert_eq!(res.status(), 401);
        assert!(session_set(res.headers()).is_none());
        let mut headers: Vec<String> = res
            .headers()
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-request-id"))
            .map(|(k, v)| format!("{k}: {v:?}"))
            .collect();
        headers.sort();
        answers.push((headers, res.text().await.unwrap()));
    }
    assert_eq!(answers[0], answers[1], "unknown address = wrong password");
    assert_eq!(
        answers[0], answers[2],
        "unverified account = wrong password"
    );
    assert_eq!(app.me().await.status(), 401);
    // Only the operator's metric tells them apart.
    for (outcome, n) in [("bad-credentials", 2.0), ("not-verified", 1.0), ("ok", 0.0)] {
        let series = format!("account_logins_total{{outcome=\"{outcome}\"}}");
        assert_eq!(app.metric(&series).await, n, "{series}");
    }

    // The right password on the unverified account sent the link again.
    let again = app.next_event(WAIT).await;
    assert_eq!(again.mail.to.email, "pending@example.com");
    assert_ne!(verify_url(&again), verify_url(&first));
    assert_eq!(app.count(outbox).await, before + 1);
    // Within the cooldown another try sends nothing more.
    let res = login(&app, "pending@example.com", "password-123").await;
    assert_eq!(res.status(), 401);
    let resends = "account_resends_total{sent=\"no\"}";
    assert!(
        testkit::wait_until(WAIT, || async { app.metric(resends).await >= 1.0 }).await,
        "the second re-send was considered and refused"
    );
    assert_eq!(app.count(outbox).await, before + 1);
    // And the new link signs the owner in.
    assert_eq!(
        app.verify_api(&token_of(&verify_url(&again)))
            .await
            .status(),
        200
    );
}

/// The idle TTL counts from the last use: a use refreshes `last_seen_at`
/// (at most once a minute, to spare the writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn using_a_session_refreshes_its_last_seen_time() {
    let mut app = spawn_app().await;
    verified_user(&mut app, "seen@example.com", "password-123").await;
    app.post_json(
        "/api/v1/login",
        json!({"email": "seen@example.com", "password": "password-123"}),
    )
    .await;
    app.exec("UPDATE sessions SET last_seen_at = now() - interval '10 minutes'")
        .await;
    assert_eq!(app.me().await.status(), 200);
    let fresh =
        "SELECT count(*) AS n FROM sessions WHERE last_seen_at > now() - interval '1 minute'";
    // (Two sessions: the verifying client's and this login's; only the one
    // used moves.)
    assert_eq!(app.count(fresh).await, 1, "the use moved last_seen_at on");
    // Within the minute, a use writes nothing.
    app.exec("UPDATE sessions SET last_seen_at = now() - interval '20 seconds'")
        .await;
    assert_eq!(app.me().await.status(), 200);
    let kept =
        "SELECT count(*) AS n FROM sessions WHERE last_seen_at < now() - interval '15 seconds'";
    assert_eq!(app.count(kept).await, 2, "no write within the resolution");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_do_not_authenticate() {
    let mut app = spawn_app().await;
    verified_user(&mut app, "old@example.com", "password-123").await;
    app.post_json(
        "/api/v1/login",
        json!({"email": "old@example.com", "password": "password-123"}),
    )
    .await;
    assert_eq!(app.me().await.status(), 200);
    let mut db = app.db().await;
    use diesel_async::RunQueryDsl;
    diesel::sql_query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(app.me().await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_secure_unless_the_operator_turns_it_off() {
    let mut app = spawn_app_with(Options::default().env("ACCOUNT_COOKIE_SECURE", "true")).await;
    app.signup("secure@example.com", "password-123").await;
    let token = token_of(&verify_url(&app.next_event(WAIT).await));
    let res = app.verify_api(&token).await;
    let cookie = session_set(res.headers()).unwrap();
    assert!(
        cookie.starts_with("__Host-session=") && cookie.contains("Secure"),
        "{cookie}"
    );
}
