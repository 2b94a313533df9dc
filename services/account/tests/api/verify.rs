use account::token::{Claims, KeyRing, VERIFY_EMAIL, generate_key_spec};
use chrono::{Duration as Days, TimeZone, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::*;

async fn signed_up(app: &mut TestApp, email: &str) -> String {
    assert_eq!(app.signup(email, "password-123").await.status(), 202);
    verify_url(&app.next_event_to(email).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_alone_never_consumes_the_token_or_signs_in() {
    let mut app = spawn_app().await;
    let url = signed_up(&mut app, "scanner@example.com").await;
    let local = url.replace("http://127.0.0.1:8080", &app.base);
    for _ in 0..3 {
        // What a mail system's link scanner does.
        let res = app.client.get(&local).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(session_set(res.headers()).is_none());
        let html = res.text().await.unwrap();
        assert!(html.contains(r#"method="post" action="/verify"#), "{html}");
        assert!(html.contains(&token_of(&url)));
        assert!(
            html.contains("<button type=\"submit\">"),
            "a button for browsers without script"
        );
    }
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE verified_at IS NULL")
            .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM sessions").await, 0);
    assert_eq!(app.me().await.status(), 401);
    // The POST the page makes still works afterwards.
    let res = app.verify_form(&token_of(&url)).await;
    assert_eq!(res.status(), 303);
    let cookie = session_set(res.headers()).unwrap();
    assert!(cookie.starts_with("session="));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/"),
        "{cookie}"
    );
    assert_eq!(app.me().await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_link_cannot_sign_in_again() {
    let mut app = spawn_app().await;
    let token = token_of(&signed_up(&mut app, "once@example.com").await);
    assert_eq!(app.verify_api(&token).await.status(), 200);
    let fresh = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let res = fresh
        .post(app.url("/api/v1/verify"))
        .json(&serde_json::json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert!(session_set(res.headers()).is_none());
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/token-used");
    assert_eq!(app.count("SELECT count(*) AS n FROM sessions").await, 1);
    // The page says so in the user's language, with a way forward.
    let csrf = app.csrf_of(&fresh).await;
    let res = fresh
        .post(app.url("/verify?lang=ko"))
        .form(&[("token", token.as_str()), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert!(res.text().await.unwrap().contains("이미 사용된 링크입니다"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_a_clear_4xx_and_never_a_session() {
    let mut app = spawn_app().await;
    let token = token_of(&signed_up(&mut app, "victim@example.com").await);
    let claims = app.keys().open(VERIFY_EMAIL, &token, Utc::now()).unwrap();
    let now = Utc.timestamp_opt(Utc::now().timestamp(), 0).unwrap();

    let mut tampered: Vec<char> = token.chars().collect();
    let i = tampered.len() - 12;
    tampered[i] = if tampered[i] == 'x' { 'y' } else { 'x' };
    let tampered: String = tampered.into_iter().collect();
    let expired = app.keys().seal(
        VERIFY_EMAIL,
        &Claims {
            issued_at: now - Days::hours(48),
            expires_at: now - Days::hours(24),
            ..claims.clone()
        },
    );
    let wrong_purpose = app.keys().seal("reset-password/v1", &claims);
    let wrong_key = KeyRing::parse(&generate_key_spec("current"))
        .unwrap()
        .seal(VERIFY_EMAIL, &claims);
    let unknown_kid = KeyRing::parse(&generate_key_spec("gone"))
        .unwrap()
        .seal(VERIFY_EMAIL, &claims);
    let other_user = app.keys().seal(
        VERIFY_EMAIL,
        &Claims {
            user_id: Uuid::new_v4(),
            ..claims.clone()
        },
    );

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("tampered", tampered, 400, "token-invalid"),
        (
            "truncated",
            token[..token.len() - 10].to_owned(),
            400,
            "token-invalid",
        ),
        ("garbage", "hello".into(), 400, "token-invalid"),
        ("empty", "".into(), 400, "token-invalid"),
        ("expired", expired.clone(), 410, "token-expired"),
        ("wrong purpose", wrong_purpose, 400, "token-invalid"),
        ("wrong key", wrong_key, 400, "token-invalid"),
        ("unknown key id", unknown_kid, 400, "token-invalid"),
        ("unknown user", other_user, 400, "token-invalid"),
    ];
    for (name, bad, status, kind) in cases {
        let res = app.verify_api(&bad).await;
        assert_eq!(res.status(), status, "{name}");
        assert!(session_set(res.headers()).is_none(), "{name}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{name}"
        );
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["type"], format!("/problems/{kind}"), "{name}");
        // The form path answers a page with the same status.
        let res = app.verify_form(&bad).await;
        assert_eq!(res.status(), status, "{name} (page)");
        assert!(session_set(res.headers()).is_none(), "{name} (page)");
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM sessions").await, 0);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE verified_at IS NOT NULL")
            .await,
        0
    );

    // The expired-link page offers to send a new link to the address in the token.
    let res = app.verify_form(&expired).await;
    let html = res.text().await.unwrap();
    assert!(
        html.contains(r#"action="/verification/resend"#) && html.contains("victim@example.com"),
        "{html}"
    );

    // And the real token still works after all that.
    assert_eq!(app.verify_api(&token).await.status(), 200);
}

/// Key rotation as a deploy does it: links issued by the service under the
/// old ring keep working after the new key is put first, and stop when the
/// old key leaves the ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_survive_a_key_rotation_until_the_old_key_leaves_the_ring() {
    let old = generate_key_spec("k2026a");
    let new = generate_key_spec("k2026b");
    let mut app = spawn_app_with(Options::default().env("ACCOUNT_TOKEN_KEYS", &old)).await;
    let first = token_of(&signed_up(&mut app, "first@example.com").await);
    let second = token_of(&signed_up(&mut app, "second@example.com").await);
    assert!(first.starts_with("v2.k2026a.") && second.starts_with("v2.k2026a."));

    app.restart(&[("ACCOUNT_TOKEN_KEYS", &format!("{new},{old}"))])
        .await;
    // (This browser's binding cookie is the second sign-up's now: the
    // first link also takes the sign-up's password.)
    let res = app
        .post_json(
            "/api/v1/verify",
            serde_json::json!({"token": first, "password": "password-123"}),
        )
        .await;
    assert_eq!(res.status(), 200, "an old link works");
    let third = token_of(&signed_up(&mut app, "third@example.com").await);
    assert!(
        third.starts_with("v2.k2026b."),
        "new links use the new key: {third}"
    );

    app.restart(&[("ACCOUNT_TOKEN_KEYS", &new)]).await;
    let res = app.verify_api(&second).await;
    assert_eq!(res.status(), 400, "the old key is gone");
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/token-invalid");
    assert_eq!(app.verify_api(&third).await.status(), 200);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE verified_at IS NOT NULL")
            .await,
        2
    );
}
