//! The attacks the security review tried, each as a test: login CSRF
//! through a verification link, look-alike addresses, a hashing flood,
//! links at rest, forged form posts, session fixation and theft.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

async fn link_for(app: &mut TestApp, client: &reqwest::Client, email: &str) -> String {
    let res = client
        .post(app.url("/api/v1/signup"))
        .json(&json!({"email": email, "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let url = verify_url(&app.next_event_to(email).await);
    url.replace("http://127.0.0.1:8080", &app.base)
}

async fn page(client: &reqwest::Client, url: &str) -> (u16, String) {
    let res = client.get(url).send().await.unwrap();
    assert!(session_set(res.headers()).is_none(), "a GET never signs in");
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_browser_that_asked_for_the_link_is_signed_in_without_a_click() {
    let mut app = spawn_app().await;
    let signer = browser();
    let url = link_for(&mut app, &signer, "binding@example.com").await;

    // The browser that signed up: the page submits itself.
    let (status, own) = page(&signer, &url).await;
    assert_eq!(status, 200);
    assert!(
        own.contains("<script") && own.contains(".submit()"),
        "{own}"
    );

    // Any other browser (a scanner that runs script, a victim sent the
    // attacker's link): the address and a button that names it, no script.
    let other = browser();
    let (status, html) = page(&other, &url).await;
    assert_eq!(status, 200);
    assert!(!html.contains("<script"), "no automatic submit: {html}");
    assert!(
        html.contains("Verify and sign in as binding@example.com"),
        "{html}"
    );
    let (_, ko) = page(&other, &url.replace("lang=en", "lang=ko")).await;
    assert!(
        ko.contains("binding@example.com(으)로 확인하고 로그인"),
        "{ko}"
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM sessions").await, 0);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE verified_at IS NULL")
            .await,
        1
    );

    // The button works with the sign-up's password (see hijack.rs for
    // why it is needed here): it verifies and signs that browser in.
    let csrf = csrf_in(&html);
    let res = other
        .post(app.url("/verify"))
        .form(&[
            ("token", token_of(&url).as_str()),
            ("password", "password-123"),
            ("csrf", &csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert!(session_set(res.headers()).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signed_in_as_someone_else_keeps_its_session_when_it_opens_a_link() {
    let mut app = spawn_app().await;
    // The victim, signed in as A.
    let victim = browser();
    let a_link = link_for(&mut app, &victim, "a@example.com").await;
    let (_, html) = page(&victim, &a_link).await;
    let res = victim
        .post(app.url("/verify"))
        .form(&[
            ("token", token_of(&a_link).as_str()),
            ("csrf", &csrf_in(&html)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let me_url = app.url("/api/v1/me");
    let me = |c: &reqwest::Client| {
        let url = me_url.clone();
        let c = c.clone();
        async move { c.get(url).send().await.unwrap() }
    };
    let who: Value = me(&victim).await.json().await.unwrap();
    assert_eq!(who["email"], "a@example.com");

    // The attacker signs up B and sends the victim B's link.
    let attacker = browser();
    let b_link = link_for(&mut app, &attacker, "b@example.com").await;
    let (_, html) = page(&victim, &b_link).await;
    assert!(!html.contains("<script"), "not the browser that signed up");
    // Pressed as is, it needs B's password, which the victim does not have:
    // nothing happens.
    let res = victim
        .post(app.url("/verify?lang=en"))
        .form(&[
            ("token", token_of(&b_link).as_str()),
            ("csrf", &csrf_in(&html)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(session_set(res.headers()).is_none());
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE verified_at IS NOT NULL")
            .await,
        1,
        "B is not verified by the victim's click"
    );
    // Someone who knows B's password (a person with two accounts) verifies
    // B in a browser signed in as A: A's session stays.
    let res = victim
        .post(app.url("/verify?lang=en"))
        .form(&[
            ("token", token_of(&b_link).as_str()),
            ("password", "password-123"),
            ("csrf", &csrf_in(&html)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        session_set(res.headers()).is_none(),
        "the session is not replaced"
    );
    let html = res.text().await.unwrap();
    assert!(
        html.contains("a@example.com"),
        "says who is still signed in: {html}"
    );
    assert!(
        html.contains("Sign out, then sign in as b@example.com"),
        "and how to switch: {html}"
    );
    let who: Value = me(&victim).await.json().await.unwrap();
    assert_eq!(who["email"], "a@example.com", "still A");
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE verified_at IS NOT NULL")
            .await,
        2,
        "B's address is verified all the same"
    );
    // An API client is signed in by a link, as documented.
    let c_link = link_for(&mut app, &browser(), "c@example.com").await;
    let res = victim
        .post(app.url("/api/v1/verify"))
        .json(&json!({"token": token_of(&c_link), "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(session_set(res.headers()).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_addresses_cannot_capture_an_account() {
    let mut app = spawn_app().await;
    // The Kelvin sign lower-cases to k: once a second key for kim@'s row.
    let res = app.signup("\u{212A}im@example.com", "password-123").await;
    assert_eq!(res.status(), 422);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "email");
    assert_eq!(app.count("SELECT count(*) AS n FROM users").await, 0);
    assert_eq!(app.count("SELECT count(*) AS n FROM outbox").await, 0);

    // An internationalised domain is one account under either spelling,
    // and its mail goes to the ASCII form.
    assert_eq!(
        app.signup("kim@한국.kr", "password-123").await.status(),
        202
    );
    assert_eq!(
        app.next_event(WAIT).await.mail.to.email,
        "kim@xn--3e0b707e.kr"
    );
    assert_eq!(
        app.signup("KIM@XN--3E0B707E.KR", "password-123")
            .await
            .status(),
        202
    );
    app.next_event(WAIT).await;
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE email_key = 'kim@xn--3e0b707e.kr'")
            .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM users").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashing_flood_is_refused_with_retry_after_and_abandoned_signups_leave_nothing() {
    // One hashing thread, some 60 ms a hash, 300 ms of queue.
    let app = spawn_app_with(
        Options::default()
            .env("ACCOUNT_HASH_CONCURRENCY", "1")
            .env("ACCOUNT_HASH_QUEUE", "300ms")
            .env("ACCOUNT_ARGON2_MEMORY_KIB", "32768")
            .env("ACCOUNT_ARGON2_ITERATIONS", "3"),
    )
    .await;
    let flood: Vec<_> = (0..40)
        .map(|i| {
            let client = reqwest::Client::new();
            let url = app.url("/api/v1/signup");
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"email": format!("flood{i}@example.com"), "password": "password-123"}))
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let (mut accepted, mut refused) = (0, 0);
    for f in flood {
        let res = f.await.unwrap();
        match res.status().as_u16() {
            202 => accepted += 1,
            503 => {
                refused += 1;
                let wait: u64 = res.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&wait), "Retry-After {wait}");
                let problem: Value = res.json().await.unwrap();
                assert_eq!(problem["type"], "/problems/busy");
            }
            other => panic!("{other}: {}", res.text().await.unwrap()),
        }
    }
    assert!(
        accepted >= 1 && refused >= 1,
        "{accepted} accepted, {refused} refused"
    );
    let users = "SELECT count(*) AS n FROM users";
    assert_eq!(app.count(users).await, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signup_whose_client_left_before_its_hash_started_leaves_nothing() {
    // One hashing thread, a slow hash, a long queue: nothing is refused.
    let app = spawn_app_with(
        Options::default()
            .env("ACCOUNT_HASH_CONCURRENCY", "1")
            .env("ACCOUNT_HASH_QUEUE", "60s")
            .env("ACCOUNT_ARGON2_MEMORY_KIB", "65536")
            .env("ACCOUNT_ARGON2_ITERATIONS", "4"),
    )
    .await;
    let signup = |email: String| {
        let body = json!({"email": email, "password": "password-123"}).to_string();
        format!(
            "POST /api/v1/signup HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // One sign-up holds the only thread...
    let holder = {
        let url = app.url("/api/v1/signup");
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"email": "holder@example.com", "password": "password-123"}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let running = "account_hash_running";
    assert!(testkit::wait_until(WAIT, || async { app.metric(running).await >= 1.0 }).await);
    // ...while five clients send theirs and hang up before their turn.
    let addr = app.base.trim_start_matches("http://").to_owned();
    for i in 0..5 {
        use tokio::io::AsyncWriteExt;
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(signup(format!("gone{i}@example.com")).as_bytes())
            .await
            .unwrap();
        conn.flush().await.unwrap();
        drop(conn);
    }
    assert_eq!(holder.await.unwrap(), 202);
    let skipped = "account_hash_rejected_total{reason=\"abandoned\"}";
    assert!(
        testkit::wait_until(Duration::from_secs(60), || async {
            app.metric(skipped).await >= 5.0
        })
        .await,
        "the five abandoned hashes were skipped"
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE email LIKE 'gone%'")
            .await,
        0,
        "no user row and so no mail for a client that left"
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM users").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_outbox_rows_keep_no_link() {
    let mut app = spawn_app().await;
    app.signup("rest@example.com", "password-123").await;
    let url = verify_url(&app.next_event(WAIT).await);
    let token = token_of(&url);
    let published = "SELECT count(*) AS n FROM outbox WHERE published_at IS NOT NULL AND routing_key = 'mail.send'";
    assert!(testkit::wait_until(WAIT, || async { app.count(published).await == 1 }).await);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM outbox WHERE payload::text LIKE '%{}%' OR payload ? 'data'",
            &token[10..40]
        ))
        .await,
        0,
        "the published row holds no token"
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM outbox WHERE payload->>'template' = 'verify_email'")
            .await,
        1,
        "what was sent stays for audit"
    );
    assert_eq!(
        app.verify_api(&token).await.status(),
        200,
        "the mailed link works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_posts_need_this_browsers_token() {
    let app = spawn_app().await;
    let form = [("email", "csrf@example.com"), ("password", "password-123")];
    let post = |client: &reqwest::Client, extra: Option<(&'static str, String)>| {
        let mut form: Vec<(&str, String)> = form.iter().map(|(k, v)| (*k, v.to_string())).collect();
        form.extend(extra);
        client.post(app.url("/signup")).form(&form).send()
    };
    // Neither Origin nor Sec-Fetch-Site nor a token: a forged post from a
    // client that strips the headers.
    let res = post(&browser(), None).await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // A token from another browser.
    let other = browser();
    let theirs = app.csrf_of(&other).await;
    let res = post(&app.client, Some(("csrf", theirs))).await.unwrap();
    assert_eq!(res.status(), 403);
    // The right token but from another site.
    let mine = app.csrf().await;
    let res = app
        .client
        .post(app.url("/signup"))
        .header("origin", "https://evil.example")
        .form(&[form[0], form[1], ("csrf", mine.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(app.count("SELECT count(*) AS n FROM users").await, 0);
    // Same browser, same site, its token: accepted.
    let res = post(&app.client, Some(("csrf", mine))).await.unwrap();
    assert_eq!(res.status(), 202);
}

/// Every form route of the site, read from the router's source so a new
/// one is covered the day it is added, refuses a post from a signed-in
/// browser without its token, and one with its token from another site
/// (by Sec-Fetch-Site, and by Origin for browsers without it); nothing
/// changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_route_refuses_cross_site_and_tokenless_posts() {
    let mut app = spawn_app().await;
    app.signup("victim@example.com", "password-123").await;
    let token = token_of(&verify_url(&app.next_event(WAIT).await));
    assert_eq!(app.verify_api(&token).await.status(), 200);
    assert_eq!(app.me().await.status(), 200);
    let source = include_str!("../../src/routes/pages/mod.rs");
    let routes: Vec<String> = source
        .split(".route(\"")
        .skip(1)
        .filter(|chunk| chunk.contains("\", web::post()"))
        .map(|chunk| {
            chunk[..chunk.find('"').unwrap()].replace("{id}", &uuid::Uuid::new_v4().to_string())
        })
        .collect();
    assert!(routes.len() >= 14, "{routes:?}");
    let form = [
        ("email", "victim@example.com"),
        ("password", "password-123"),
        ("new_password", "attacker-456"),
        ("new_email", "attacker@example.com"),
        ("code", "123456"),
        ("token", "v2.k1.AAAA"),
    ];
    let csrf = app.csrf().await;
    for path in &routes {
        let res = app
            .client
            .post(app.url(path))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{path} without the token");
        let with_token: Vec<(&str, &str)> = form
            .iter()
            .copied()
            .chain([("csrf", csrf.as_str())])
            .collect();
        let res = app
            .client
            .post(app.url(path))
            .header("sec-fetch-site", "cross-site")
            .form(&with_token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            403,
            "{path} from another site (Sec-Fetch-Site)"
        );
        let res = app
            .client
            .post(app.url(path))
            .header("origin", "https://evil.example")
            .form(&with_token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{path} from another site (Origin)");
    }
    assert_eq!(app.me().await.status(), 200, "still signed in");
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE email = 'victim@example.com'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE password_epoch = 0 AND email_epoch = 0")
            .await,
        1,
        "no password or address changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_replaces_the_browsers_session_and_idle_or_all_sessions_end() {
    let mut app = spawn_app().await;
    app.signup("sess@example.com", "password-123").await;
    let token = token_of(&verify_url(&app.next_event(WAIT).await));
    assert_eq!(app.verify_api(&token).await.status(), 200);
    let first = app.client.get(app.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(app.count("SELECT count(*) AS n FROM sessions").await, 1);
    // A fixated or stolen cookie value must not survive a new login.
    let before: Vec<String> = {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        #[derive(QueryableByName)]
        struct H {
            #[diesel(sql_type = diesel::sql_types::Text)]
            h: String,
        }
        let mut c = app.db().await;
        diesel::sql_query("SELECT encode(token_hash, 'hex') AS h FROM sessions")
            .load::<H>(&mut c)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.h)
            .collect()
    };
    let res = app
        .post_json(
            "/api/v1/login",
            json!({"email": "sess@example.com", "password": "password-123"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM sessions").await,
        1,
        "rotated, not added"
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM sessions WHERE encode(token_hash, 'hex') = '{}'",
            before[0]
        ))
        .await,
        0,
        "the old session is gone"
    );
    assert_eq!(app.me().await.status(), 200);

    // Idle: unused for longer than ACCOUNT_SESSION_IDLE_TTL (2 days).
    app.exec("UPDATE sessions SET last_seen_at = now() - interval '49 hours'")
        .await;
    assert_eq!(app.me().await.status(), 401);

    // Everywhere: two devices, one asks to sign out everywhere.
    let phone = browser();
    let laptop = browser();
    for device in [&phone, &laptop] {
        let res = device
            .post(app.url("/api/v1/login"))
            .json(&json!({"email": "sess@example.com", "password": "password-123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let res = phone
        .post(app.url("/api/v1/logout/all"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    for device in [&phone, &laptop] {
        let res = device.get(app.url("/api/v1/me")).send().await.unwrap();
        assert_eq!(res.status(), 401);
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM sessions").await, 0);
    let res = browser()
        .post(app.url("/api/v1/logout/all"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "needs a session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_goes_with_secure_cookies_only() {
    let secure = spawn_app_with(Options::default().env("ACCOUNT_COOKIE_SECURE", "true")).await;
    for path in ["/signup", "/api/v1/me", "/healthz"] {
        let res = secure.client.get(secure.url(path)).send().await.unwrap();
        assert_eq!(
            res.headers()["strict-transport-security"],
            "max-age=63072000; includeSubDomains",
            "{path}"
        );
    }
    let plain = spawn_app().await;
    let res = plain.client.get(plain.url("/signup")).send().await.unwrap();
    assert!(res.headers().get("strict-transport-security").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_duplicated_parameters_get_the_sites_error_page() {
    let app = spawn_app().await;
    for path in [
        "/verify?token=a&token=b",
        "/verify?token=%zz",
        "/verify?token",
    ] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 400, "{path}");
        let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(kind.starts_with("text/html"), "{path}: {kind}");
        assert!(res.text().await.unwrap().contains("<html"), "{path}");
    }
    // A form body of the wrong kind on a page route: the page, not text/plain.
    let res = app
        .client
        .post(app.url("/signup"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // The API answers problem+json.
    let res = app
        .client
        .post(app.url("/api/v1/signup"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
}
