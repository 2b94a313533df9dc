//! Pre-hijacking of an unverified address: a stranger signs up someone
//! else's address with a password the stranger chose, and waits for the
//! owner to click the genuine verification mail (or type its code). Before
//! this defence the owner's click verified the account with the stranger's
//! password, and the stranger could sign in beside the owner. Now only the
//! browser whose sign-up chose the password verifies with the link or code
//! alone; anywhere else the sign-up's password is needed, and nothing
//! changes without it; the owner takes the address over with a reset.

use serde_json::{Value, json};

use crate::helpers::*;

const STRANGER: &str = "the stranger's password";
const OWNER: &str = "the owner's own password";

/// Signs `email` up with `password` from `client` (its jar keeps the
/// binding cookie, as a browser's does).
async fn sign_up(app: &TestApp, client: &reqwest::Client, email: &str, password: &str) {
    let res = client
        .post(app.url("/api/v1/signup"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

/// The link (on this app) and code of the next verification mail to `email`.
async fn mail(app: &mut TestApp, email: &str) -> (String, String) {
    let e = app.next_mail(email, "verify_email").await;
    let code = e.raw["data"]["code"].as_str().unwrap().to_owned();
    let link = verify_url(&e).replace("http://127.0.0.1:8080", &app.base);
    (link, code)
}

/// The code page's form posted by `client`, without a password.
async fn type_code(
    app: &TestApp,
    client: &reqwest::Client,
    email: &str,
    code: &str,
) -> reqwest::Response {
    let csrf = app.csrf_of(client).await;
    client
        .post(app.url("/verify/code?lang=en"))
        .form(&[("email", email), ("code", code), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap()
}

async fn verified(app: &TestApp, email: &str) -> bool {
    app.count(&format!(
        "SELECT count(*) AS n FROM users WHERE email = '{email}' AND verified_at IS NOT NULL"
    ))
    .await
        == 1
}

async fn verify_api(app: &TestApp, client: &reqwest::Client, body: Value) -> reqwest::Response {
    client
        .post(app.url("/api/v1/verify"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The verification page's form posted by `client`, with `password` if any.
async fn press(
    app: &TestApp,
    client: &reqwest::Client,
    link: &str,
    password: &str,
) -> (u16, String) {
    let html = client.get(link).send().await.unwrap().text().await.unwrap();
    let token = token_of(link);
    let csrf = csrf_in(&html);
    let res = client
        .post(app.url("/verify?lang=en"))
        .form(&[
            ("token", token.as_str()),
            ("password", password),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert!(
        res.status() != 303 || session_set(res.headers()).is_some(),
        "a 303 signs in"
    );
    (res.status().as_u16(), res.text().await.unwrap())
}

async fn login(app: &TestApp, email: &str, password: &str) -> u16 {
    browser()
        .post(app.url("/api/v1/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn problem(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    (status, body["type"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_click_does_not_verify_a_strangers_signup_of_their_address() {
    let mut app = spawn_app().await;
    let (stranger, owner) = (browser(), browser());
    sign_up(&app, &stranger, "owner@example.com", STRANGER).await;
    let (link, code) = mail(&mut app, "owner@example.com").await;

    // The owner opens the genuine mail: the page asks for the sign-up's
    // password and does not post itself.
    let html = owner.get(&link).send().await.unwrap().text().await.unwrap();
    assert!(!html.contains("<script"), "{html}");
    assert!(html.contains(r#"name="password""#), "{html}");
    assert!(html.contains("/password/forgot"), "offers a reset: {html}");
    // ...whose form already names the address.
    let forgot = app.url("/password/forgot?lang=en&email=owner%40example.com");
    let form = owner
        .get(&forgot)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(form.contains(r#"value="owner@example.com""#), "{form}");
    assert!(
        html.contains("/password/forgot?lang=en&amp;email=owner%40example.com"),
        "{html}"
    );

    // Pressing the button without it, or with the owner's own password,
    // changes nothing.
    let (status, html) = press(&app, &owner, &link, "").await;
    assert_eq!(status, 403, "{html}");
    assert!(
        html.contains("enter the password chosen at sign-up"),
        "{html}"
    );
    let (status, html) = press(&app, &owner, &link, OWNER).await;
    assert_eq!(status, 403, "{html}");
    assert!(
        html.contains("That is not the password chosen at sign-up"),
        "{html}"
    );
    let (status, body) =
        problem(verify_api(&app, &owner, json!({"token": token_of(&link)})).await).await;
    assert_eq!((status, body.as_str()), (403, "/problems/password-needed"));
    let (status, body) = problem(
        verify_api(
            &app,
            &owner,
            json!({"token": token_of(&link), "password": OWNER}),
        )
        .await,
    )
    .await;
    assert_eq!((status, body.as_str()), (403, "/problems/password-wrong"));

    // The code of the same mail, typed in the owner's browser: the same.
    let res = type_code(&app, &owner, "owner@example.com", &code).await;
    assert_eq!(res.status(), 403);
    assert!(session_set(res.headers()).is_none());
    let (status, body) = problem(
        verify_api(
            &app,
            &owner,
            json!({"email": "owner@example.com", "code": code}),
        )
        .await,
    )
    .await;
    assert_eq!((status, body.as_str()), (403, "/problems/password-needed"));
    let (status, body) = problem(
        verify_api(
            &app,
            &owner,
            json!({"email": "owner@example.com", "code": code, "password": OWNER}),
        )
        .await,
    )
    .await;
    assert_eq!((status, body.as_str()), (403, "/problems/password-wrong"));

    assert!(
        !verified(&app, "owner@example.com").await,
        "still unverified"
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM sessions").await, 0);
    // The operator tells these refusals apart: four without a password
    // (page, API, code page, code API), three with the wrong one.
    for (outcome, n) in [("password-needed", 4.0), ("password-wrong", 3.0)] {
        let series = format!("account_verifications_total{{outcome=\"{outcome}\"}}");
        assert_eq!(app.metric(&series).await, n, "{series}");
    }
    assert_eq!(login(&app, "owner@example.com", STRANGER).await, 401);
    assert_eq!(
        app.count("SELECT verify_code_attempts::bigint AS n FROM users")
            .await,
        0,
        "a right code without its password counts no wrong try"
    );

    // The owner takes the address over with a reset: verified with the
    // owner's password, and the stranger's is dead.
    let res = owner
        .post(app.url("/api/v1/password/forgot"))
        .json(&json!({"email": "owner@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let reset_url = app
        .next_link("owner@example.com", "reset_password", "reset_url")
        .await;
    let res = owner
        .post(app.url("/api/v1/password/reset"))
        .json(&json!({"token": token_of(&reset_url), "password": OWNER}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(verified(&app, "owner@example.com").await);
    assert_eq!(login(&app, "owner@example.com", STRANGER).await, 401);
    assert_eq!(login(&app, "owner@example.com", OWNER).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_who_signs_up_again_after_the_owner_cannot_ride_the_owners_click() {
    let mut app = spawn_app().await;
    let (owner, stranger) = (browser(), browser());
    sign_up(&app, &owner, "late@example.com", OWNER).await;
    let (first, _) = mail(&mut app, "late@example.com").await;
    // The stranger signs the same address up again: the newest sign-up's
    // password is pending, and its mail goes to the owner.
    sign_up(&app, &stranger, "late@example.com", STRANGER).await;
    let (second, code) = mail(&mut app, "late@example.com").await;

    // The owner's browser holds its own sign-up's cookie, not the newest
    // one's: the newest link asks for the password, which is not the owner's.
    let html = owner
        .get(&second)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!html.contains("<script"), "{html}");
    assert_eq!(press(&app, &owner, &second, "").await.0, 403);
    assert_eq!(press(&app, &owner, &second, OWNER).await.0, 403);
    let (status, body) = problem(
        verify_api(
            &app,
            &owner,
            json!({"email": "late@example.com", "code": code}),
        )
        .await,
    )
    .await;
    assert_eq!((status, body.as_str()), (403, "/problems/password-needed"));
    // The first link died with the second sign-up.
    assert_eq!(
        problem(verify_api(&app, &owner, json!({"token": token_of(&first)})).await)
            .await
            .0,
        409
    );
    assert!(!verified(&app, "late@example.com").await);
    assert_eq!(login(&app, "late@example.com", STRANGER).await, 401);

    // Signing up once more from the owner's browser makes it the binding one.
    sign_up(&app, &owner, "late@example.com", OWNER).await;
    let (third, _) = mail(&mut app, "late@example.com").await;
    let (status, _) = press(&app, &owner, &third, "").await;
    assert_eq!(status, 303);
    // No replaced link comes back to life once the address is verified.
    for dead in [&first, &second] {
        let body = json!({"token": token_of(dead), "password": OWNER});
        let res = verify_api(&app, &browser(), body).await;
        assert_eq!(res.status(), 409, "{dead}");
    }
    assert_eq!(login(&app, "late@example.com", STRANGER).await, 401);
    assert_eq!(login(&app, "late@example.com", OWNER).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_binds_the_link_to_the_signups_browser_not_to_the_one_asking() {
    let mut app = spawn_app().await;
    let (stranger, owner) = (browser(), browser());
    sign_up(&app, &stranger, "resend@example.com", STRANGER).await;
    let _ = mail(&mut app, "resend@example.com").await;
    // Past the resend cooldown: the owner asks for the mail again, from the
    // pages and from the API.
    app.exec("UPDATE users SET verification_sent_at = now() - interval '1 day'")
        .await;
    let csrf = app.csrf_of(&owner).await;
    let res = owner
        .post(app.url("/verification/resend"))
        .form(&[("email", "resend@example.com"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let (link, code) = mail(&mut app, "resend@example.com").await;
    let html = owner.get(&link).send().await.unwrap().text().await.unwrap();
    assert!(
        !html.contains("<script"),
        "not the browser that signed up: {html}"
    );
    assert_eq!(press(&app, &owner, &link, "").await.0, 403);
    let res = type_code(&app, &owner, "resend@example.com", &code).await;
    assert_eq!(res.status(), 403);
    let html = res.text().await.unwrap();
    assert!(
        html.contains("enter the password chosen at sign-up"),
        "{html}"
    );
    assert!(!verified(&app, "resend@example.com").await);

    // The stranger's own browser is the sign-up's: it verifies, as it
    // would have anyway (it knows its own password; nothing is taken).
    let (status, _) = press(&app, &stranger, &link, "").await;
    assert_eq!(status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_browser_verifies_with_the_signups_password_and_a_spa_without_it() {
    let mut app = spawn_app().await;
    // Signed up on the phone, link opened on the laptop: the password
    // chosen on the phone finishes it, page or API, link or code.
    let (phone, laptop) = (browser(), browser());
    sign_up(&app, &phone, "laptop@example.com", OWNER).await;
    let (link, _) = mail(&mut app, "laptop@example.com").await;
    let (status, html) = press(&app, &laptop, &link, OWNER).await;
    assert_eq!(status, 303, "{html}");
    assert!(verified(&app, "laptop@example.com").await);

    sign_up(&app, &phone, "code@example.com", OWNER).await;
    let (_, code) = mail(&mut app, "code@example.com").await;
    let res = verify_api(
        &app,
        &laptop,
        json!({"email": "code@example.com", "code": code, "password": OWNER}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(session_set(res.headers()).is_some());

    // A single-page app that signed up through the API holds the binding
    // cookie: the token alone verifies it.
    let spa = browser();
    sign_up(&app, &spa, "spa@example.com", OWNER).await;
    let (link, _) = mail(&mut app, "spa@example.com").await;
    let res = verify_api(&app, &spa, json!({"token": token_of(&link)})).await;
    assert_eq!(res.status(), 200);
    assert!(session_set(res.headers()).is_some());
}

/// Whoever holds a leaked link but not the password guesses it no faster
/// than at the login form (and cannot fill the hashing queue from one
/// client): a password typed against a link counts as a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_the_signups_password_through_a_link_is_limited_like_a_login() {
    let mut app = spawn_app_with(
        Options::default()
            .env("ACCOUNT_RATE_LIMITS", "on")
            .env("ACCOUNT_TRUST_FORWARDED_FOR", "true")
            .env("ACCOUNT_RATE_LIMIT_LOGIN_PER_HOUR", "3"),
    )
    .await;
    let phone = browser();
    sign_up(&app, &phone, "leak@example.com", OWNER).await;
    let (link, _) = mail(&mut app, "leak@example.com").await;
    let guess = |i: usize, from: &'static str| {
        let (url, token) = (app.url("/api/v1/verify"), token_of(&link));
        async move {
            browser()
                .post(url)
                .header("x-forwarded-for", from)
                .json(&json!({"token": token, "password": format!("guess-{i}")}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for i in 0..3 {
        assert_eq!(guess(i, "203.0.113.7").await, 403, "guess {i}");
    }
    assert_eq!(guess(3, "203.0.113.7").await, 429, "the fourth is refused");
    // The page's form is the same door.
    let attacker = browser();
    let html = attacker
        .get(&link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let res = attacker
        .post(app.url("/verify?lang=en"))
        .header("x-forwarded-for", "203.0.113.7")
        .form(&[
            ("token", token_of(&link).as_str()),
            ("password", "guess-4"),
            ("csrf", csrf_in(&html).as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(!verified(&app, "leak@example.com").await);
    // The owner, elsewhere, is not held back.
    let res = browser()
        .post(app.url("/api/v1/verify"))
        .header("x-forwarded-for", "198.51.100.7")
        .json(&json!({"token": token_of(&link), "password": OWNER}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// The same trick through another door: a stranger with an account of
/// their own asks to move it to the owner's address; the owner gets a
/// "confirm your new address" mail they never asked for and presses its
/// button. That click must not give the stranger's account (password,
/// sessions) the owner's address: only a browser signed in as the account
/// that asked confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_change_is_confirmed_only_by_the_account_that_asked() {
    let mut app = spawn_app().await;
    let stranger = browser();
    sign_up(&app, &stranger, "s@example.com", STRANGER).await;
    let (link, _) = mail(&mut app, "s@example.com").await;
    let res = verify_api(&app, &stranger, json!({"token": token_of(&link)})).await;
    assert_eq!(res.status(), 200);
    let res = stranger
        .post(app.url("/api/v1/email"))
        .json(&json!({"new_email": "owner@example.com", "password": STRANGER}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let confirm = app
        .next_link("owner@example.com", "confirm_email_change", "confirm_url")
        .await;
    let token = token_of(&confirm);

    // The owner, in their own browser (no session of that account), presses
    // the button of the page, or an API client posts the token.
    let owner = browser();
    let csrf = app.csrf_of(&owner).await;
    let res = owner
        .post(app.url("/email/confirm?lang=en"))
        .form(&[("token", token.as_str()), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let html = res.text().await.unwrap();
    assert!(
        html.contains("Only the account that asked for this change"),
        "{html}"
    );
    let res = owner
        .post(app.url("/api/v1/email/confirm"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(res).await,
        (401, "/problems/unauthorized".to_owned())
    );
    let me: Value = stranger
        .get(app.url("/api/v1/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "s@example.com", "nothing changed");
    assert_eq!(login(&app, "owner@example.com", STRANGER).await, 401);

    // The account that asked, signed in, confirms (the link stayed good).
    let res = stranger
        .post(app.url("/api/v1/email/confirm"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// From the sign-up's own browser a stranger may verify with the code alone
/// (it chose the password), so a right guess would verify the victim's
/// address with the stranger's password. Five tries per code, and every
/// new mail (a sign-up again, a resend, a login to the unverified account)
/// brings a new code: guesses must not start again with each. After ten
/// wrong in all only the link (in the victim's mailbox) verifies.
/// A code for victim@example.com posted by `client`, without a password.
async fn guess(app: &TestApp, client: &reqwest::Client, code: &str) -> u16 {
    let body = json!({"email": "victim@example.com", "code": code});
    verify_api(app, client, body).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_codes_do_not_renew_a_strangers_guesses() {
    let mut app = spawn_app().await;
    let stranger = browser();
    let mut right = String::new();
    let mut link = String::new();
    for round in 0..3 {
        sign_up(&app, &stranger, "victim@example.com", STRANGER).await;
        (link, right) = mail(&mut app, "victim@example.com").await;
        let wrong = |i: u32| format!("{:06}", (right.parse::<u32>().unwrap() + 1 + i) % 1_000_000);
        for i in 0..5 {
            assert_eq!(
                guess(&app, &stranger, &wrong(i)).await,
                400,
                "round {round}, guess {i}"
            );
        }
    }
    // Ten wrong in all: the newest code, right, no longer verifies.
    assert_eq!(guess(&app, &stranger, &right).await, 400);
    assert!(!verified(&app, "victim@example.com").await);
    assert_eq!(
        app.count("SELECT verify_code_wrong_total::bigint AS n FROM users")
            .await,
        10,
        "counted up to the cap, then refused without counting"
    );
    // The link, which only the mailbox's owner has, still works.
    let res = verify_api(&app, &stranger, json!({"token": token_of(&link)})).await;
    assert_eq!(res.status(), 200);
}
