//! Changing the address through a link to the new one, and verifying by
//! the six-digit code of the verification mail.

use serde_json::{Value, json};

use crate::helpers::*;

async fn verified(app: &mut TestApp, client: &reqwest::Client, email: &str, locale: &str) {
    let res = client
        .post(app.url("/api/v1/signup"))
        .json(&json!({"email": email, "password": "password-123", "locale": locale}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let token = token_of(&verify_url(&app.next_event_to(email).await));
    let res = client
        .post(app.url("/api/v1/verify"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn change(app: &TestApp, client: &reqwest::Client, new: &str, password: &str) -> u16 {
    client
        .post(app.url("/api/v1/email"))
        .json(&json!({"new_email": new, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The confirm link posted by `client` (only the account that asked,
/// signed in, may confirm).
async fn confirm(app: &TestApp, client: &reqwest::Client, token: &str) -> reqwest::Response {
    client
        .post(app.url("/api/v1/email/confirm"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap()
}

async fn me(app: &TestApp, client: &reqwest::Client) -> Value {
    client
        .get(app.url("/api/v1/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_changes_only_through_the_link_sent_to_the_new_one() {
    let mut app = spawn_app().await;
    let owner = browser();
    verified(&mut app, &owner, "minsu@example.com", "ko").await;
    let phone = browser();
    let res = phone
        .post(app.url("/api/v1/login"))
        .json(&json!({"email": "minsu@example.com", "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // A reset link mailed to the old address, before the change.
    browser()
        .post(app.url("/api/v1/password/forgot"))
        .json(&json!({"email": "minsu@example.com"}))
        .send()
        .await
        .unwrap();
    let reset = token_of(
        &app.next_link("minsu@example.com", "reset_password", "reset_url")
            .await,
    );

    assert_eq!(
        change(&app, &owner, "new@example.com", "wrong-password").await,
        401
    );
    // A typo'd address: a link goes there, and nothing changes until it is used.
    assert_eq!(
        change(&app, &owner, "minsu@exmaple.com", "password-123").await,
        202
    );
    let typo = app.next_event_to("minsu@exmaple.com").await;
    assert_eq!(typo.raw["template"], "confirm_email_change");
    assert_eq!(me(&app, &owner).await["email"], "minsu@example.com");

    // The real new address.
    assert_eq!(
        change(&app, &owner, "Minsu.New@Example.com", "password-123").await,
        202
    );
    let mail = app.next_event_to("Minsu.New@example.com").await;
    assert_eq!(mail.raw["template"], "confirm_email_change");
    assert_eq!(mail.raw["locale"], "ko");
    let url = mail.raw["data"]["confirm_url"].as_str().unwrap();
    let token = token_of(url);
    // GET changes nothing (mail scanners). Signed in as the account, it
    // names both addresses; anywhere else it says to sign in first.
    let get = |client: reqwest::Client| {
        let url = app.url(&format!("/email/confirm?token={token}&lang=ko"));
        async move { client.get(url).send().await.unwrap() }
    };
    let page = get(owner.clone()).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("minsu@example.com") && html.contains("Minsu.New@example.com"));
    let elsewhere = get(browser()).await.text().await.unwrap();
    assert!(
        elsewhere.contains("이 변경은 요청한 계정에서만"),
        "{elsewhere}"
    );
    assert!(!elsewhere.contains("Minsu.New@example.com"), "{elsewhere}");
    assert_eq!(me(&app, &owner).await["email"], "minsu@example.com");

    let res = confirm(&app, &owner, &token).await;
    assert_eq!(res.status(), 200);
    assert!(
        session_set(res.headers()).is_none(),
        "confirming signs no one in"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["email"], "Minsu.New@example.com");
    // Sessions stay.
    assert_eq!(me(&app, &owner).await["email"], "Minsu.New@example.com");
    assert_eq!(me(&app, &phone).await["email"], "Minsu.New@example.com");
    // The old address hears of it, the new one masked.
    let notice = app.next_event_to("minsu@example.com").await;
    assert_eq!(notice.raw["template"], "email_changed");
    assert_eq!(notice.raw["data"]["new_email_masked"], "M***@example.com");
    assert!(
        !notice.raw.to_string().contains("Minsu.New"),
        "{}",
        notice.raw
    );
    // Used once; the typo's link died with the change; the old reset link too.
    assert_eq!(confirm(&app, &owner, &token).await.status(), 409);
    let typo_token = token_of(typo.raw["data"]["confirm_url"].as_str().unwrap());
    assert_eq!(confirm(&app, &owner, &typo_token).await.status(), 409);
    let res = browser()
        .post(app.url("/api/v1/password/reset"))
        .json(&json!({"token": reset, "password": "password-456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    // The account signs in with the new address only.
    for (email, status) in [("minsu@example.com", 401), ("minsu.new@example.com", 200)] {
        let res = browser()
            .post(app.url("/api/v1/login"))
            .json(&json!({"email": email, "password": "password-123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{email}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_address_gets_account_exists_and_a_race_for_it_is_a_409() {
    let mut app = spawn_app().await;
    let a = browser();
    verified(&mut app, &a, "a@example.com", "en").await;
    let b = browser();
    verified(&mut app, &b, "b@example.com", "en").await;
    // Taken: the same 202, and its owner is told instead of being sent a link.
    assert_eq!(change(&app, &a, "b@example.com", "password-123").await, 202);
    let told = app.next_event_to("b@example.com").await;
    assert_eq!(told.raw["template"], "account_exists");
    // Free when asked, taken before the link is used.
    assert_eq!(
        change(&app, &a, "free@example.com", "password-123").await,
        202
    );
    let link = app.next_event_to("free@example.com").await;
    let token = token_of(link.raw["data"]["confirm_url"].as_str().unwrap());
    assert_eq!(
        b.post(app.url("/api/v1/signup"))
            .json(&json!({"email": "free@example.com", "password": "password-123"}))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let res = confirm(&app, &a, &token).await;
    assert_eq!(res.status(), 409);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/email-taken");
    assert_eq!(me(&app, &a).await["email"], "a@example.com");
}

/// The code from a sign-up's mail, as it arrived on the broker.
async fn code_for(app: &mut TestApp, email: &str) -> (String, String) {
    let e = app.next_event_to(email).await;
    assert_eq!(e.raw["template"], "verify_email");
    let code = e.raw["data"]["code"].as_str().expect("a code").to_owned();
    assert_eq!(code.len(), 6);
    assert!(code.bytes().all(|b| b.is_ascii_digit()));
    (code, token_of(&verify_url(&e)))
}

/// The code posted by `client`, with the sign-up's password (every sign-up
/// here chooses `password-123`; `client` is usually not the sign-up's).
async fn by_code(
    app: &TestApp,
    client: &reqwest::Client,
    email: &str,
    code: &str,
) -> reqwest::Response {
    client
        .post(app.url("/api/v1/verify"))
        .json(&json!({"email": email, "code": code, "password": "password-123"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_verifies_and_signs_in_like_the_link_and_the_second_of_them_gets_409() {
    let mut app = spawn_app().await;
    app.signup("code@example.com", "password-123").await;
    let (code, link) = code_for(&mut app, "code@example.com").await;
    // Only a keyed hash is at rest.
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE octet_length(verify_code_hash) = 32")
            .await,
        1
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM users WHERE encode(verify_code_hash, 'escape') LIKE '%{code}%'"
        ))
        .await,
        0
    );
    let phone = browser();
    let res = by_code(
        &app,
        &phone,
        "CODE@example.com",
        &format!("{} {}", &code[..3], &code[3..]),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(
        session_set(res.headers()).is_some(),
        "signed in, like the link"
    );
    assert_eq!(me(&app, &phone).await["email"], "code@example.com");
    // The link lost the race.
    let res = app.verify_api(&link).await;
    assert_eq!(res.status(), 409);

    // And the other way round: link first, then the code.
    app.signup("race@example.com", "password-123").await;
    let (code, link) = code_for(&mut app, "race@example.com").await;
    assert_eq!(app.verify_api(&link).await.status(), 200);
    let res = by_code(&app, &browser(), "race@example.com", &code).await;
    assert_eq!(res.status(), 409);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/token-used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_codes_kill_the_code_and_unknown_addresses_look_the_same() {
    let mut app = spawn_app().await;
    app.signup("guess@example.com", "password-123").await;
    let (code, _) = code_for(&mut app, "guess@example.com").await;
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    let mut bodies = Vec::new();
    for _ in 0..5 {
        let res = by_code(&app, &browser(), "guess@example.com", &wrong).await;
        assert_eq!(res.status(), 400);
        bodies.push(res.text().await.unwrap());
    }
    // Dead: even the right code no longer works, and says so like a wrong one.
    let res = by_code(&app, &browser(), "guess@example.com", &code).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.text().await.unwrap(), bodies[0]);
    assert_eq!(app.count("SELECT count(*) AS n FROM sessions").await, 0);
    // An unknown address answers exactly like a wrong code.
    let res = by_code(&app, &browser(), "nobody@example.com", &code).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.text().await.unwrap(), bodies[0]);
    let problem: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(problem["type"], "/problems/code-invalid");

    // A new mail brings a new code, with its tries.
    app.exec("UPDATE users SET verification_sent_at = now() - interval '1 hour'")
        .await;
    let res = app
        .post_json(
            "/api/v1/verification/resend",
            json!({"email": "guess@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 202);
    let (fresh, _) = code_for(&mut app, "guess@example.com").await;
    assert_eq!(
        by_code(&app, &browser(), "guess@example.com", &fresh)
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_page_verifies_in_korean_and_keeps_another_users_session() {
    let mut app = spawn_app().await;
    // From the sign-up notice to the code page.
    let (status, html) = app
        .post_form(
            "/signup?lang=ko",
            &[("email", "typed@example.com"), ("password", "password-123")],
        )
        .await;
    assert_eq!(status, 202);
    assert!(html.contains(r#"href="/verify/code?lang=ko""#), "{html}");
    let (code, _) = code_for(&mut app, "typed@example.com").await;
    let page = app
        .client
        .get(app.url("/verify/code?lang=ko"))
        .send()
        .await
        .unwrap();
    assert!(page.text().await.unwrap().contains("메일의 코드 입력"));
    let (status, html) = app
        .post_form(
            "/verify/code?lang=ko",
            &[("email", "typed@example.com"), ("code", "000000")],
        )
        .await;
    assert_eq!(status, 400);
    assert!(html.contains("이 코드는 쓸 수 없습니다"), "{html}");
    let res = app
        .submit(
            "/verify/code?lang=ko",
            &[("email", "typed@example.com"), ("code", &code)],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert!(session_set(res.headers()).is_some());

    // A browser signed in as typed@ that types someone else's code stays typed@.
    app.signup("other@example.com", "password-123").await;
    let (other_code, _) = code_for(&mut app, "other@example.com").await;
    let (status, html) = app
        .post_form(
            "/verify/code?lang=en",
            &[("email", "other@example.com"), ("code", &other_code)],
        )
        .await;
    assert_eq!(status, 200);
    assert!(html.contains("typed@example.com"), "{html}");
    assert_eq!(me(&app, &app.client).await["email"], "typed@example.com");
}
