//! Rate limits: shared by every instance (kept in PostgreSQL), separate per
//! action, and the login limit keyed on address AND client, so nobody can
//! keep a chosen user out by failing logins in their name.

use serde_json::json;

use crate::helpers::*;

/// Limits on, clients told apart by `X-Forwarded-For` (as behind a proxy).
fn limited(pairs: &[(&str, &str)]) -> Options {
    let mut opts = Options::default()
        .env("ACCOUNT_RATE_LIMITS", "on")
        .env("ACCOUNT_TRUST_FORWARDED_FOR", "true");
    for (k, v) in pairs {
        opts = opts.env(k, v);
    }
    opts
}

async fn post_from(
    app: &TestApp,
    client: &str,
    path: &str,
    body: serde_json::Value,
) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("x-forwarded-for", client)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn retry_after(res: &reqwest::Response) -> u64 {
    res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A second instance of the service on the first one's database.
async fn second_instance(first: &TestApp, pairs: &[(&str, &str)]) -> TestApp {
    let url = format!("{PG}/{}", first.db_name);
    let mut all = pairs.to_vec();
    all.push(("ACCOUNT_DATABASE_URL", &url));
    spawn_app_with(limited(&all)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_allowance_per_address_and_per_client() {
    let vars = [
        ("ACCOUNT_RATE_LIMIT_ADDRESS_PER_HOUR", "3"),
        ("ACCOUNT_RATE_LIMIT_CLIENT_PER_MINUTE", "4"),
    ];
    let a = spawn_app_with(limited(&vars)).await;
    let b = second_instance(&a, &vars).await;

    // Per address: 3 an hour in all, whichever instance answers.
    let body = json!({"email": "shared@example.com", "password": "password-123"});
    for (i, app) in [&a, &b, &a].into_iter().enumerate() {
        let client = format!("198.51.100.{i}");
        let res = post_from(app, &client, "/api/v1/signup", body.clone()).await;
        assert_eq!(res.status(), 202, "sign-up {i}");
    }
    for app in [&b, &a] {
        let res = post_from(app, "198.51.100.9", "/api/v1/signup", body.clone()).await;
        assert_eq!(res.status(), 429, "the fourth sign-up in the hour");
        // One request back every hour / 3 = 1200 s, less the seconds elapsed.
        let wait = retry_after(&res);
        assert!((1140..=1200).contains(&wait), "Retry-After {wait}");
    }

    // Per client: 4 a minute in all, whichever instance answers.
    for i in 0..4 {
        let app = if i % 2 == 0 { &a } else { &b };
        let body = json!({"email": format!("c{i}@example.com"), "password": "password-123"});
        let res = post_from(app, "203.0.113.5", "/api/v1/signup", body).await;
        assert_eq!(res.status(), 202, "sign-up {i} of the client");
    }
    let body = json!({"email": "c9@example.com", "password": "password-123"});
    let res = post_from(&b, "203.0.113.5", "/api/v1/signup", body).await;
    assert_eq!(
        res.status(),
        429,
        "the client's fifth sign-up in the minute"
    );
    let wait = retry_after(&res);
    assert!(
        (1..=15).contains(&wait),
        "one back every 60 / 4 = 15 s: {wait}"
    );
}

async fn verified(app: &mut TestApp, email: &str, password: &str) {
    let res = post_from(
        app,
        "192.0.2.1",
        "/api/v1/signup",
        json!({"email": email, "password": password}),
    )
    .await;
    assert_eq!(res.status(), 202);
    let url = verify_url(&app.next_event(WAIT).await);
    assert_eq!(app.verify_api(&token_of(&url)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_failing_logins_never_stops_the_owner_signing_in_from_elsewhere() {
    let mut app = spawn_app_with(limited(&[
        ("ACCOUNT_RATE_LIMIT_LOGIN_PER_HOUR", "3"),
        ("ACCOUNT_RATE_LIMIT_CLIENT_PER_MINUTE", "100"),
        ("ACCOUNT_RATE_LIMIT_ADDRESS_PER_HOUR", "3"),
    ]))
    .await;
    verified(&mut app, "victim@example.com", "the-owners-password").await;

    // The attacker's client hammers login in the victim's name until refused.
    let wrong = json!({"email": "victim@example.com", "password": "guess-guess"});
    let mut refused = None;
    for _ in 0..10 {
        let res = post_from(&app, "203.0.113.66", "/api/v1/login", wrong.clone()).await;
        if res.status() == 429 {
            refused = Some(res);
            break;
        }
        assert_eq!(res.status(), 401);
    }
    let refused = refused.expect("the attacker's client is limited");
    let wait = retry_after(&refused);
    assert!(
        (1140..=1200).contains(&wait),
        "hour / 3, from the quota: {wait}"
    );

    // The owner, from another client, signs in at once.
    let right = json!({"email": "victim@example.com", "password": "the-owners-password"});
    let res = post_from(&app, "198.51.100.7", "/api/v1/login", right).await;
    assert_eq!(res.status(), 200, "the owner is not locked out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_and_resend_floods_do_not_eat_the_login_allowance() {
    let mut app = spawn_app_with(limited(&[
        ("ACCOUNT_RATE_LIMIT_LOGIN_PER_HOUR", "3"),
        ("ACCOUNT_RATE_LIMIT_CLIENT_PER_MINUTE", "5"),
        ("ACCOUNT_RATE_LIMIT_ADDRESS_PER_HOUR", "3"),
    ]))
    .await;
    verified(&mut app, "owner@example.com", "the-owners-password").await;
    let client = "198.51.100.20";
    // Someone on the owner's network floods sign-up and resend with the
    // owner's address until both are refused.
    for (path, body) in [
        (
            "/api/v1/signup",
            json!({"email": "owner@example.com", "password": "not-the-password"}),
        ),
        (
            "/api/v1/verification/resend",
            json!({"email": "owner@example.com"}),
        ),
    ] {
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(
                post_from(&app, client, path, body.clone())
                    .await
                    .status()
                    .as_u16(),
            );
        }
        assert_eq!(
            statuses.last(),
            Some(&429),
            "{path} is limited: {statuses:?}"
        );
    }
    let right = json!({"email": "owner@example.com", "password": "the-owners-password"});
    let res = post_from(&app, client, "/api/v1/login", right).await;
    assert_eq!(res.status(), 200, "login keeps its own allowance");
}

/// Without ACCOUNT_TRUST_FORWARDED_FOR a client cannot pick its own
/// identity: a new `X-Forwarded-For` on each request is ignored, and the
/// peer's one allowance runs out. With it (behind a proxy that sets the
/// header) each forwarded client has its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_x_forwarded_for_is_ignored_unless_the_proxy_is_trusted() {
    let quota = [
        ("ACCOUNT_RATE_LIMIT_CLIENT_PER_MINUTE", "2"),
        ("ACCOUNT_RATE_LIMIT_ADDRESS_PER_HOUR", "100"),
    ];
    let login = |i: usize| json!({"email": format!("x{i}@example.com"), "password": "whatever1"});
    let untrusting = spawn_app_with(
        Options::default()
            .env("ACCOUNT_RATE_LIMITS", "on")
            .env(quota[0].0, quota[0].1)
            .env(quota[1].0, quota[1].1),
    )
    .await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let spoofed = format!("203.0.113.{i}");
        let res = post_from(&untrusting, &spoofed, "/api/v1/login", login(i)).await;
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 429], "one peer, one allowance");

    let trusting = spawn_app_with(limited(&quota)).await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let forwarded = format!("203.0.113.{i}");
        let res = post_from(&trusting, &forwarded, "/api/v1/login", login(i)).await;
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401], "three forwarded clients");
}

/// An attacker with an IPv6 /64 (what one subscriber or host is handed)
/// rotates through its addresses: each of them is the same client to the
/// limits, so the rotation buys nothing; another /64 is another client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_through_an_ipv6_64_is_one_client() {
    let app = spawn_app_with(limited(&[
        ("ACCOUNT_RATE_LIMIT_CLIENT_PER_MINUTE", "3"),
        ("ACCOUNT_RATE_LIMIT_ADDRESS_PER_HOUR", "100"),
    ]))
    .await;
    let body =
        |i: usize| json!({"email": format!("rotate{i}@example.com"), "password": "password-123"});
    for i in 0..3 {
        let from = format!("2001:db8:aa:bb:{i:x}::{:x}", 7 * i + 1);
        let res = post_from(&app, &from, "/api/v1/signup", body(i)).await;
        assert_eq!(res.status(), 202, "{from}");
    }
    let res = post_from(&app, "2001:db8:aa:bb:ffff::99", "/api/v1/signup", body(3)).await;
    assert_eq!(res.status(), 429, "the fourth address of the same /64");
    let res = post_from(&app, "2001:db8:aa:bc::1", "/api/v1/signup", body(4)).await;
    assert_eq!(res.status(), 202, "another /64 is another client");
}

/// Behind a proxy that adds its own X-Forwarded-For line (HAProxy) rather
/// than joining the client's, the client's own line comes first: the
/// client must not pick its key there. Nor may a hop's port make a new
/// client of every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_last_hop_is_the_client_whatever_the_client_writes() {
    let app = spawn_app_with(limited(&[
        ("ACCOUNT_RATE_LIMIT_CLIENT_PER_MINUTE", "3"),
        ("ACCOUNT_RATE_LIMIT_ADDRESS_PER_HOUR", "100"),
    ]))
    .await;
    let signup = |i: usize, lines: Vec<String>| {
        let mut req = app
            .client
            .post(app.url("/api/v1/signup"))
            .json(&json!({"email": format!("hop{i}@example.com"), "password": "password-123"}));
        for line in lines {
            req = req.header("x-forwarded-for", line);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for i in 0..3 {
        let lines = vec![format!("198.51.100.{i}"), "203.0.113.50".to_owned()];
        assert_eq!(signup(i, lines).await, 202);
    }
    let lines = vec!["198.51.100.99".to_owned(), "203.0.113.50".to_owned()];
    assert_eq!(signup(3, lines).await, 429, "the proxy's line decides");

    for i in 0..3 {
        let lines = vec![format!("203.0.113.60:{}", 40000 + i)];
        assert_eq!(signup(10 + i, lines).await, 202);
    }
    let lines = vec!["203.0.113.60:49999".to_owned()];
    assert_eq!(signup(13, lines).await, 429, "a port is not a client");
}

/// A reset link fired again and again (in parallel, each request would hash
/// its new password before the first commits) counts as logins to its
/// address from that client: the hashing queue stays for everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_link_fired_again_and_again_is_limited_like_a_login() {
    let mut app = spawn_app_with(limited(&[("ACCOUNT_RATE_LIMIT_LOGIN_PER_HOUR", "3")])).await;
    verified(&mut app, "resets@example.com", "password-123").await;
    let res = post_from(
        &app,
        "203.0.113.7",
        "/api/v1/password/forgot",
        json!({"email": "resets@example.com"}),
    )
    .await;
    assert_eq!(res.status(), 202);
    let link = app
        .next_link("resets@example.com", "reset_password", "reset_url")
        .await;
    let body = json!({"token": token_of(&link), "password": "a brand new password"});
    let mut answers = Vec::new();
    for _ in 0..4 {
        let res = post_from(&app, "203.0.113.7", "/api/v1/password/reset", body.clone()).await;
        answers.push(res.status().as_u16());
    }
    assert_eq!(answers, [200, 409, 409, 429]);
}
