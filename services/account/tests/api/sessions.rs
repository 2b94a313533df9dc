use serde_json::{Value, json};

use crate::helpers::*;

async fn verified_user(app: &mut TestApp, email: &str, password: &str) {
    assert_eq!(app.signup(email, password).await.status(), 202);
    let token = token_of(&verify_url(&app.next_event(WAIT).await));
    let verifier = reqwest::Client::new();
    let res = verifier
        .post(app.url("/api/v1/verify"))
        .json(&json!({"token": token}))
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
    let cookie = set_cookie(res.headers()).unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let me: Value = app.me().await.json().await.unwrap();
    assert_eq!(me["email"], "seoyeon@example.com");

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_verified_accounts_log_in_and_unknown_addresses_look_like_wrong_passwords() {
    let mut app = spawn_app().await;
    verified_user(&mut app, "known@example.com", "password-123").await;
    app.signup("pending@example.com", "password-123").await;

    let wrong = app
        .post_json(
            "/api/v1/login",
            json!({"email": "known@example.com", "password": "wrong-password"}),
        )
        .await;
    let unknown = app
        .post_json(
            "/api/v1/login",
            json!({"email": "ghost@example.com", "password": "wrong-password"}),
        )
        .await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    assert_eq!(wrong.text().await.unwrap(), unknown.text().await.unwrap());

    let pending = app
        .post_json(
            "/api/v1/login",
            json!({"email": "pending@example.com", "password": "password-123"}),
        )
        .await;
    assert_eq!(pending.status(), 403);
    assert!(set_cookie(pending.headers()).is_none());
    assert_eq!(app.me().await.status(), 401);
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
    let cookie = set_cookie(res.headers()).unwrap();
    assert!(
        cookie.starts_with("__Host-session=") && cookie.contains("Secure"),
        "{cookie}"
    );
}
