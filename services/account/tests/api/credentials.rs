//! The credential lifecycle: forgot and reset the password, change it,
//! see and end sessions, delete the account, unverified accounts expiring.

use std::time::Duration;

use account::token::{Claims, RESET_PASSWORD, VERIFY_EMAIL};
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use crate::helpers::*;

/// A verified account signed in on `app.client`.
async fn signed_in(app: &mut TestApp, email: &str, password: &str, locale: &str) {
    let res = app
        .post_json(
            "/api/v1/signup",
            json!({"email": email, "password": password, "locale": locale}),
        )
        .await;
    assert_eq!(res.status(), 202);
    let token = token_of(&verify_url(&app.next_event_to(email).await));
    assert_eq!(app.verify_api(&token).await.status(), 200);
}

async fn forgot(app: &TestApp, client: &reqwest::Client, email: &str) -> reqwest::Response {
    client
        .post(app.url("/api/v1/password/forgot"))
        .json(&json!({"email": email}))
        .send()
        .await
        .unwrap()
}

/// The reset link of the next `reset_password` event to `email`.
async fn reset_link(app: &mut TestApp, email: &str) -> String {
    app.next_link(email, "reset_password", "reset_url").await
}

async fn reset(
    app: &TestApp,
    client: &reqwest::Client,
    token: &str,
    password: &str,
) -> reqwest::Response {
    client
        .post(app.url("/api/v1/password/reset"))
        .json(&json!({"token": token, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn login(app: &TestApp, client: &reqwest::Client, email: &str, password: &str) -> u16 {
    client
        .post(app.url("/api/v1/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgot_answers_alike_for_every_address_and_mails_only_accounts_in_their_language() {
    let mut app = spawn_app().await;
    signed_in(&mut app, "jiwoo@example.com", "password-123", "ko").await;
    let outbox = "SELECT count(*) AS n FROM outbox WHERE routing_key = 'mail.send'";
    let before = app.count(outbox).await;

    let known = forgot(&app, &browser(), "JIWOO@example.com").await;
    let unknown = forgot(&app, &browser(), "nobody@example.com").await;
    assert_eq!(known.status(), 202);
    assert_eq!(unknown.status(), 202);
    assert_eq!(known.text().await.unwrap(), unknown.text().await.unwrap());

    let event = app.next_event_to("jiwoo@example.com").await;
    assert_eq!(event.raw["template"], "reset_password");
    assert_eq!(event.raw["locale"], "ko", "the account's language");
    let schema: Value = serde_json::from_str(include_str!(
        "../../../../shared/schema/mail.send.v1.schema.json"
    ))
    .unwrap();
    assert!(jsonschema::is_valid(&schema, &event.raw), "{}", event.raw);
    let expires: chrono::DateTime<Utc> = event.raw["data"]["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ttl = expires - Utc::now();
    assert!(
        ttl > chrono::Duration::minutes(58) && ttl <= chrono::Duration::hours(1),
        "{ttl}"
    );
    // The unknown address got nothing: both were handled, one row was added.
    let steps = "account_password_resets_total{step=\"unknown\"}";
    assert!(testkit::wait_until(WAIT, || async { app.metric(steps).await >= 1.0 }).await);
    assert_eq!(app.count(outbox).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_link_works_once_kills_older_links_and_every_session() {
    let mut app = spawn_app().await;
    signed_in(&mut app, "reset@example.com", "old-password-1", "en").await;
    let other_device = browser();
    assert_eq!(
        login(&app, &other_device, "reset@example.com", "old-password-1").await,
        200
    );

    forgot(&app, &browser(), "reset@example.com").await;
    let first = token_of(&reset_link(&mut app, "reset@example.com").await);
    forgot(&app, &browser(), "reset@example.com").await;
    let second = token_of(&reset_link(&mut app, "reset@example.com").await);

    // The page names the account and changes nothing (mail scanners).
    for _ in 0..2 {
        let page = browser()
            .get(app.url(&format!("/password/reset?token={second}")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert!(session_set(page.headers()).is_none());
        assert!(page.text().await.unwrap().contains("reset@example.com"));
    }

    let resetter = browser();
    let res = reset(&app, &resetter, &second, "new-password-2").await;
    assert_eq!(res.status(), 200);
    assert!(
        session_set(res.headers()).is_some(),
        "this browser is signed in"
    );
    let me: Value = resetter
        .get(app.url("/api/v1/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "reset@example.com");
    // Every earlier session is over.
    assert_eq!(app.me().await.status(), 401);
    let res = other_device
        .get(app.url("/api/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // The link worked once; the older one died with it. A dead link is
    // refused before any hashing: it is no free argon2 work for anyone.
    let hashed = app.metric("account_hash_jobs_total").await;
    for used in [&second, &first, &second, &first] {
        let res = reset(&app, &browser(), used, "third-password-3").await;
        assert_eq!(res.status(), 409);
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["type"], "/problems/token-used");
    }
    assert_eq!(app.metric("account_hash_jobs_total").await, hashed);
    // Only the new password opens the account.
    assert_eq!(
        login(&app, &browser(), "reset@example.com", "old-password-1").await,
        401
    );
    assert_eq!(
        login(&app, &browser(), "reset@example.com", "new-password-2").await,
        200
    );
    // And the address owner hears of it, in the account's language.
    let notice = app.next_event_to("reset@example.com").await;
    assert_eq!(notice.raw["template"], "password_changed");
    assert_eq!(notice.raw["locale"], "en");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_verifies_an_unverified_address_and_bad_links_get_clear_answers() {
    let mut app = spawn_app().await;
    app.signup("late@example.com", "password-123").await;
    let verify = token_of(&verify_url(&app.next_event_to("late@example.com").await));
    forgot(&app, &browser(), "late@example.com").await;
    let link = token_of(&reset_link(&mut app, "late@example.com").await);
    let claims = app.keys().open(RESET_PASSWORD, &link, Utc::now()).unwrap();
    let now = Utc.timestamp_opt(Utc::now().timestamp(), 0).unwrap();

    let expired = app.keys().seal(
        RESET_PASSWORD,
        &Claims {
            issued_at: now - chrono::Duration::hours(3),
            expires_at: now - chrono::Duration::hours(2),
            ..claims.clone()
        },
    );
    let mut tampered: Vec<char> = link.chars().collect();
    let i = tampered.len() - 8;
    tampered[i] = if tampered[i] == 'x' { 'y' } else { 'x' };
    let tampered: String = tampered.into_iter().collect();
    for (token, status, kind) in [
        (expired.as_str(), 410, "/problems/token-expired"),
        (tampered.as_str(), 400, "/problems/token-invalid"),
        // A verification link is not a reset link (another purpose).
        (verify.as_str(), 400, "/problems/token-invalid"),
        ("v2.nope.AAAA", 400, "/problems/token-invalid"),
    ] {
        let res = reset(&app, &browser(), token, "new-password-1").await;
        assert_eq!(res.status(), status, "{kind}");
        assert!(session_set(res.headers()).is_none());
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["type"], kind);
        // The page says so and offers a new link.
        let page = browser()
            .get(app.url(&format!("/password/reset?token={token}&lang=ko")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), status);
        assert!(page.text().await.unwrap().contains("/password/forgot"));
    }
    // A weak new password is a 422 naming the field; nothing changes.
    let res = reset(&app, &browser(), &link, "short").await;
    assert_eq!(res.status(), 422);

    assert_eq!(
        reset(&app, &browser(), &link, "new-password-1")
            .await
            .status(),
        200
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE verified_at IS NOT NULL")
            .await,
        1,
        "the reset mail proved the address"
    );
    // The older verification link died with it.
    assert_eq!(app.verify_api(&verify).await.status(), 409);
    let _ = VERIFY_EMAIL;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_needs_the_current_one_and_ends_every_other_session() {
    let mut app = spawn_app_with(
        Options::default()
            .env("ACCOUNT_RATE_LIMITS", "on")
            .env("ACCOUNT_RATE_LIMIT_ADDRESS_PER_HOUR", "6")
            .env("ACCOUNT_RATE_LIMIT_LOGIN_PER_HOUR", "6")
            .env("ACCOUNT_RATE_LIMIT_CLIENT_PER_MINUTE", "1000"),
    )
    .await;
    signed_in(&mut app, "change@example.com", "password-one", "ko").await;
    let phone = browser();
    assert_eq!(
        login(&app, &phone, "change@example.com", "password-one").await,
        200
    );

    let (client, url) = (app.client.clone(), app.url("/api/v1/password"));
    let change = |current: &str, new: &str| {
        client
            .post(&url)
            .json(&json!({"current_password": current, "new_password": new}))
            .send()
    };
    let res = change("wrong-password", "password-two").await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        phone
            .get(app.url("/api/v1/me"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let res = change("password-one", "short").await.unwrap();
    assert_eq!(res.status(), 422);

    let res = change("password-one", "password-two").await.unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(app.me().await.status(), 200, "this session stays");
    let res = phone.get(app.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(res.status(), 401, "every other session ended");
    assert_eq!(
        login(&app, &browser(), "change@example.com", "password-two").await,
        200
    );
    let notice = app.next_event_to("change@example.com").await;
    assert_eq!(notice.raw["template"], "password_changed");
    assert_eq!(notice.raw["locale"], "ko");
    // Wrong current passwords spend the login allowance of this address
    // and client: a stolen session gives no extra guesses.
    let mut limited = false;
    for _ in 0..6 {
        let res = change("wrong-password", "password-three").await.unwrap();
        if res.status() == 429 {
            limited = true;
            break;
        }
        assert_eq!(res.status(), 401);
    }
    assert!(limited, "guessing the current password is rate limited");
    let res = browser()
        .post(app.url("/api/v1/password"))
        .json(&json!({"current_password": "x", "new_password": "password-four"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "needs a session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_sees_their_sessions_and_ends_one_but_never_someone_elses() {
    let mut app = spawn_app().await;
    signed_in(&mut app, "list@example.com", "password-123", "en").await;
    let laptop = reqwest::Client::builder()
        .cookie_store(true)
        .user_agent("Laptop Browser/1.0")
        .build()
        .unwrap();
    assert_eq!(
        login(&app, &laptop, "list@example.com", "password-123").await,
        200
    );
    let list: Value = app
        .client
        .get(app.url("/api/v1/sessions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{list}");
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    let laptop_session = sessions
        .iter()
        .find(|s| s["user_agent"] == "Laptop Browser/1.0")
        .expect("the laptop's session, named by its browser");
    assert_eq!(laptop_session["current"], false);
    for field in ["id", "created_at", "last_seen_at"] {
        assert!(laptop_session[field].is_string(), "{field}");
    }

    // Someone else cannot end it, nor learn that it exists.
    let intruder = browser();
    let res = intruder
        .post(app.url("/api/v1/signup"))
        .json(&json!({"email": "intruder@example.com", "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let token = token_of(&verify_url(
        &app.next_event_to("intruder@example.com").await,
    ));
    let res = intruder
        .post(app.url("/api/v1/verify"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = laptop_session["id"].as_str().unwrap();
    let res = intruder
        .delete(app.url(&format!("/api/v1/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        laptop
            .get(app.url("/api/v1/me"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let res = intruder
        .delete(app.url("/api/v1/sessions/not-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // Its owner can.
    let res = app
        .client
        .delete(app.url(&format!("/api/v1/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        laptop
            .get(app.url("/api/v1/me"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(app.me().await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_account_takes_its_sessions_and_pending_links_and_frees_the_address() {
    let mut app =
        spawn_app_with(Options::default().env("ACCOUNT_OUTBOX_SWEEP_INTERVAL", "1h")).await;
    signed_in(&mut app, "bye@example.com", "password-123", "ko").await;
    let (client, url) = (app.client.clone(), app.url("/api/v1/me"));
    let del = |password: &str| {
        client
            .delete(&url)
            .json(&json!({"password": password}))
            .send()
    };
    let res = del("wrong-password").await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(app.count("SELECT count(*) AS n FROM users").await, 1);

    // A reset link still waiting in the outbox (as during a broker outage)
    // must go with the account. (The relay sweeps only at start here: the
    // row, written behind its back, stays unpublished until the delete.)
    let pending = "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL AND payload->>'template' = 'reset_password'";
    app.exec(
        "INSERT INTO outbox (id, routing_key, payload, user_id) \
         SELECT gen_random_uuid(), 'mail.send', '{\"template\": \"reset_password\"}'::jsonb, id FROM users",
    )
    .await;
    assert_eq!(app.count(pending).await, 1);

    let res = del("password-123").await.unwrap();
    assert_eq!(res.status(), 204);
    assert!(session_set(res.headers()).is_some_and(|c| c.contains("Max-Age=0")));
    assert_eq!(app.count("SELECT count(*) AS n FROM users").await, 0);
    assert_eq!(app.count("SELECT count(*) AS n FROM sessions").await, 0);
    assert_eq!(app.count(pending).await, 0, "the pending link is gone");
    assert_eq!(app.me().await.status(), 401);
    let notice = app.next_event_to("bye@example.com").await;
    assert_eq!(notice.raw["template"], "account_deleted");
    assert_eq!(notice.raw["locale"], "ko");

    // The address is free again.
    assert_eq!(
        app.signup("bye@example.com", "password-456").await.status(),
        202
    );
    let again = app.next_event_to("bye@example.com").await;
    assert_eq!(again.raw["template"], "verify_email");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_never_verified_expire_through_housekeeping() {
    let mut app =
        spawn_app_with(Options::default().env("ACCOUNT_HOUSEKEEPING_INTERVAL", "200ms")).await;
    signed_in(&mut app, "kept@example.com", "password-123", "en").await;
    app.signup("stale@example.com", "password-123").await;
    app.signup("fresh@example.com", "password-123").await;
    app.exec(
        "UPDATE users SET created_at = now() - interval '8 days', \
         verification_sent_at = now() - interval '8 days' \
         WHERE email IN ('stale@example.com', 'kept@example.com')",
    )
    .await;
    let stale = "SELECT count(*) AS n FROM users WHERE email = 'stale@example.com'";
    assert!(
        testkit::wait_until(Duration::from_secs(20), || async {
            app.count(stale).await == 0
        })
        .await,
        "the stale unverified account was deleted"
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE email IN ('kept@example.com', 'fresh@example.com')")
            .await,
        2,
        "verified accounts and recent sign-ups stay"
    );
}

/// Every credential change moves its epoch on, and no older link comes
/// back to life whatever the order of the changes: a verification link of
/// a replaced sign-up after a reset, a reset link used before a password
/// change, a pending reset link after one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_older_link_comes_back_to_life_after_any_credential_change() {
    let mut app = spawn_app().await;
    let email = "epochs@example.com";
    let verify_link = async |app: &mut TestApp| {
        assert_eq!(app.signup(email, "password-123").await.status(), 202);
        token_of(&verify_url(&app.next_event_to(email).await))
    };
    let v0 = verify_link(&mut app).await;
    let v1 = verify_link(&mut app).await;
    forgot(&app, &browser(), email).await;
    let r0 = token_of(&reset_link(&mut app, email).await);
    assert_eq!(
        reset(&app, &app.client, &r0, "password-456").await.status(),
        200
    );
    forgot(&app, &browser(), email).await;
    let r1 = token_of(&reset_link(&mut app, email).await);
    let res = app
        .post_json(
            "/api/v1/password",
            json!({"current_password": "password-456", "new_password": "password-789"}),
        )
        .await;
    assert_eq!(res.status(), 204);
    for (what, token) in [("verify v0", &v0), ("verify v1", &v1)] {
        let body = json!({"token": token, "password": "password-789"});
        let res = browser()
            .post(app.url("/api/v1/verify"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 409, "{what}");
    }
    for (what, token) in [("reset r0", &r0), ("reset r1", &r1)] {
        let res = reset(&app, &browser(), token, "password-000").await;
        assert_eq!(res.status(), 409, "{what}");
    }
    assert_eq!(login(&app, &browser(), email, "password-789").await, 200);
}
