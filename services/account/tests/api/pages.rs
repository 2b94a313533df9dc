use serde_json::Value;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_speak_korean_or_english() {
    let app = spawn_app().await;
    let get = |path: &str, lang: &str| {
        app.client
            .get(app.url(path))
            .header("accept-language", lang)
            .send()
    };
    let ko = get("/signup", "ko-KR,ko;q=0.9,en;q=0.5").await.unwrap();
    assert_eq!(ko.headers()["content-language"], "ko");
    let csp = ko.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = ko.text().await.unwrap();
    assert!(html.contains(r#"<html lang="ko">"#) && html.contains("계정 만들기"));
    assert!(
        html.contains(r#"<label for="email">"#) && html.contains(r#"id="email""#),
        "labelled inputs"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );

    let en = get("/login", "en-US").await.unwrap().text().await.unwrap();
    assert!(en.contains(r#"<html lang="en">"#) && en.contains("Sign in"));
    // ?lang= overrides the header.
    let over = get("/login?lang=ko", "en-US")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(over.contains("로그인"));
    // Unknown languages fall back to the default (English).
    let fr = get("/signup", "fr-FR").await.unwrap().text().await.unwrap();
    assert!(fr.contains("Create your account"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_form_flow_signs_up_verifies_and_shows_the_me_page() {
    let mut app = spawn_app().await;
    let res = app
        .submit(
            "/signup?lang=ko",
            &[("email", "form@example.com"), ("password", "password-123")],
        )
        .await;
    assert_eq!(res.status(), 202);
    assert!(res.text().await.unwrap().contains("메일함을 확인하세요"));
    let event = app.next_event(WAIT).await;
    assert_eq!(event.raw["locale"], "ko");
    let url = verify_url(&event);
    assert!(url.ends_with("&lang=ko"), "{url}");

    let res = app.verify_form(&token_of(&url)).await;
    assert_eq!(res.status(), 303);
    let me = app.client.get(app.url("/me?lang=ko")).send().await.unwrap();
    assert_eq!(me.status(), 200);
    let html = me.text().await.unwrap();
    assert!(html.contains("form@example.com") && html.contains("내 계정"));

    let res = app.submit("/logout", &[]).await;
    assert_eq!(res.status(), 303);
    let me = app.client.get(app.url("/me")).send().await.unwrap();
    assert_eq!(me.status(), 303, "signed out: redirected to login");

    // Form login, with a Korean error on a wrong password.
    let (status, html) = app
        .post_form(
            "/login?lang=ko",
            &[("email", "form@example.com"), ("password", "nope-nope")],
        )
        .await;
    assert_eq!(status, 401);
    assert!(html.contains("올바르지 않습니다"));
    let good = app
        .submit(
            "/login",
            &[("email", "form@example.com"), ("password", "password-123")],
        )
        .await;
    assert_eq!(good.status(), 303);
    assert_eq!(
        app.client
            .get(app.url("/me"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_errors_render_the_form_again_and_cross_site_posts_are_refused() {
    let app = spawn_app().await;
    let bad = [("email", "nope"), ("password", "x")];
    let (status, html) = app.post_form("/signup", &bad).await;
    assert_eq!(status, 422);
    assert!(html.contains("role=\"alert\"") && html.contains("value=\"nope\""));
    assert!(html.contains("is not a valid e-mail address"), "{html}");
    assert!(html.contains("must be at least 8 characters"), "{html}");

    // A Korean page says what is wrong in Korean, field names and messages.
    let (status, html) = app.post_form("/signup?lang=ko", &bad).await;
    assert_eq!(status, 422);
    for korean in [
        "이메일 주소: 올바른 이메일 주소가 아닙니다",
        "비밀번호: 8자 이상이어야 합니다",
    ] {
        assert!(html.contains(korean), "{korean} in {html}");
    }
    assert!(
        !html.contains("is not a valid"),
        "English on a Korean page: {html}"
    );
    let empty = [("email", ""), ("password", "")];
    let (status, html) = app.post_form("/login?lang=ko", &empty).await;
    assert_eq!(status, 422);
    assert!(html.contains("이메일 주소: 입력해 주세요"), "{html}");
    assert!(!html.contains("is required"), "{html}");

    let res = app
        .client
        .post(app.url("/signup"))
        .header("origin", "https://evil.example")
        .form(&[("email", "csrf@example.com"), ("password", "password-123")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // Browsers that send Fetch Metadata are judged by it.
    let res = app
        .client
        .post(app.url("/signup"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("email", "csrf@example.com"), ("password", "password-123")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(app.count("SELECT count(*) AS n FROM users").await, 0);
    let csrf = app.csrf().await;
    let res = app
        .client
        .post(app.url("/signup"))
        .header("sec-fetch-site", "same-origin")
        .header("origin", "null")
        .form(&[
            ("email", "ok@example.com"),
            ("password", "password-123"),
            ("csrf", &csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_on_both_listeners_and_metrics_only_on_the_admin_one() {
    let app = spawn_app().await;
    for base in [&app.base, &app.admin] {
        let get = |path: &str| app.client.get(format!("{base}{path}")).send();
        assert_eq!(get("/healthz").await.unwrap().status(), 200, "{base}");
        let ready = get("/readyz").await.unwrap();
        assert_eq!(ready.status(), 200);
        let body: Value = ready.json().await.unwrap();
        assert_eq!(body, serde_json::json!({"database": "ok", "broker": "ok"}));
    }
    // The public port answers like any unknown path: the metric labels
    // (created/exists/renewed) would tell who has an account.
    let public = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404);
    assert_eq!(public.headers()["content-type"], "application/problem+json");
    // Nor does the admin listener serve the API or the pages.
    let admin = |path: &str| app.client.get(format!("{}{path}", app.admin)).send();
    assert_eq!(admin("/signup").await.unwrap().status(), 404);

    app.signup("metrics@example.com", "password-123").await;
    app.verify_api("garbage").await;
    let text = admin("/metrics").await.unwrap().text().await.unwrap();
    for needle in [
        "http_requests_total{method=\"POST\",route=\"/api/v1/signup\",status=\"202\"}",
        "http_request_duration_seconds_bucket",
        // Moved by the sign-up and the garbage token, under their labels.
        "account_signups_total{outcome=\"created\"} 1",
        "account_verifications_total{outcome=\"token-invalid\"} 1",
        // At zero before any code was tried: the first wrong code is an increase.
        "account_verifications_total{outcome=\"code-invalid\"} 0",
        "account_verifications_total{outcome=\"verified-by-code\"} 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_broker_is_unreachable() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let app = spawn_app_with(
        Options {
            capture: false,
            ..Default::default()
        }
        .env(
            "ACCOUNT_AMQP_URL",
            &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        ),
    )
    .await;
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["broker"], "down");
    assert_eq!(body["database"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_the_product_brand() {
    let app = spawn_app_with(Options::default().env("ACCOUNT_BRAND", "하늘마켓")).await;
    for (path, lang, title) in [
        ("/signup", "ko", "계정 만들기"),
        ("/login", "en", "Sign in"),
    ] {
        let html = app
            .client
            .get(app.url(&format!("{path}?lang={lang}")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            html.contains(&format!("<title>{title} · 하늘마켓</title>")),
            "{path}: the brand in the title\n{html}"
        );
        assert!(
            html.contains(r#"<header class="brand">하늘마켓</header>"#),
            "{path}: the brand on the page\n{html}"
        );
    }
}

/// Forgot, reset, change, sessions and deletion as plain forms, without script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_pages_work_as_plain_forms_in_korean() {
    let mut app = spawn_app().await;
    let email = "pages@example.com";
    let res = app
        .post_json(
            "/api/v1/signup",
            serde_json::json!({"email": email, "password": "password-one", "locale": "ko"}),
        )
        .await;
    assert_eq!(res.status(), 202);
    let token = token_of(&verify_url(&app.next_event_to(email).await));
    assert_eq!(app.verify_api(&token).await.status(), 200);
    app.submit("/logout", &[]).await;

    // /login links to the forgot page; it mails a link and says so alike for all.
    let login = app
        .client
        .get(app.url("/login?lang=ko"))
        .send()
        .await
        .unwrap();
    assert!(
        login
            .text()
            .await
            .unwrap()
            .contains(r#"href="/password/forgot?lang=ko""#)
    );
    let (status, html) = app
        .post_form("/password/forgot?lang=ko", &[("email", email)])
        .await;
    assert_eq!(status, 202);
    assert!(html.contains("메일함을 확인하세요"), "{html}");
    let (status, same) = app
        .post_form(
            "/password/forgot?lang=ko",
            &[("email", "ghost@example.com")],
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(strip_csrf(&html), strip_csrf(&same));
    let (status, _) = app
        .post_form("/password/forgot?lang=ko", &[("email", "nope")])
        .await;
    assert_eq!(status, 422);

    let link = app.next_link(email, "reset_password", "reset_url").await;
    let reset = token_of(&link);
    let page = app
        .client
        .get(app.url(&format!("/password/reset?token={reset}&lang=ko")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("새 비밀번호 정하기") && page.contains(email),
        "{page}"
    );
    let (status, html) = app
        .post_form(
            "/password/reset?lang=ko",
            &[("token", &reset), ("password", "short")],
        )
        .await;
    assert_eq!(status, 422);
    assert!(html.contains("8자 이상이어야 합니다"), "{html}");
    let res = app
        .submit(
            "/password/reset?lang=ko",
            &[("token", &reset), ("password", "password-two")],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert!(
        res.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/me?lang=ko")
    );

    // /me: the change form, the sessions with an end button, the deletion link.
    let phone = browser();
    let res = phone
        .post(app.url("/api/v1/login"))
        .json(&serde_json::json!({"email": email, "password": "password-two"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let me = app
        .client
        .get(app.url("/me?lang=ko&done=password"))
        .send()
        .await
        .unwrap();
    let html = me.text().await.unwrap();
    assert!(html.contains("비밀번호를 바꿨습니다"), "{html}");
    assert!(html.contains(r#"action="/password/change?lang=ko""#));
    assert!(html.contains("지금 이 브라우저"));
    assert!(html.contains(r#"href="/me/delete?lang=ko""#));
    let end = html
        .split(r#"action="/sessions/"#)
        .nth(1)
        .expect("an end button for the phone's session");
    let id = end.split('/').next().unwrap();
    let res = app
        .submit(&format!("/sessions/{id}/end?lang=ko"), &[])
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(
        phone
            .get(app.url("/api/v1/me"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let (status, html) = app
        .post_form(
            "/password/change?lang=ko",
            &[
                ("current_password", "wrong-one"),
                ("new_password", "password-three"),
            ],
        )
        .await;
    assert_eq!(status, 401);
    assert!(html.contains("현재 비밀번호가 올바르지 않습니다"), "{html}");
    let res = app
        .submit(
            "/password/change?lang=ko",
            &[
                ("current_password", "password-two"),
                ("new_password", "password-three"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);

    // Deletion: a confirmation page first, the password, then it is gone.
    let confirm = app
        .client
        .get(app.url("/me/delete?lang=ko"))
        .send()
        .await
        .unwrap();
    let html = confirm.text().await.unwrap();
    assert!(
        html.contains("계정 영구 삭제") && html.contains(email),
        "{html}"
    );
    let (status, _) = app
        .post_form("/me/delete?lang=ko", &[("password", "wrong-one")])
        .await;
    assert_eq!(status, 401);
    assert_eq!(app.count("SELECT count(*) AS n FROM users").await, 1);
    let (status, html) = app
        .post_form("/me/delete?lang=ko", &[("password", "password-three")])
        .await;
    assert_eq!(status, 200);
    assert!(html.contains("계정이 삭제되었습니다"), "{html}");
    assert_eq!(app.count("SELECT count(*) AS n FROM users").await, 0);
    assert_eq!(app.me().await.status(), 401);
}

/// A page without its per-request CSP nonce and CSRF token, to compare two.
fn strip_csrf(html: &str) -> String {
    html.lines()
        .filter(|l| !l.contains("name=\"csrf\"") && !l.contains("nonce"))
        .collect::<Vec<_>>()
        .join("\n")
}
