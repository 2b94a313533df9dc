//! Server-rendered pages in Korean and English: no external assets, plain
//! forms that work without script (the verify page submits itself only in
//! the browser that asked for the link). Handlers parse, call the account
//! operations, and pick a view.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use minijinja::context;
use serde::Deserialize;

use super::forms::{CredentialsForm, guard, page};
use super::{Jar, client, new_binding, rate_limit, removal_cookie, session_cookie, session_token};
use crate::accounts::Client;
use crate::domain::{Email, Password};
use crate::error::AppError;
use crate::state::AppState;
use crate::token::TokenError;
use crate::views::Page;

/// Registers the page routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(home))
        .route("/signup", web::get().to(signup_form))
        .route("/signup", web::post().to(signup))
        .route("/verify", web::get().to(verify_page))
        .route("/verify", web::post().to(verify))
        .route("/verification/resend", web::post().to(resend))
        .route("/login", web::get().to(login_form))
        .route("/login", web::post().to(login))
        .route("/me", web::get().to(me))
        .route("/logout", web::post().to(logout));
}

fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish()
}

async fn home(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    see_other(&format!("/signup?lang={}", page(&req, &state).lang.tag()))
}

async fn signup_form(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let page = page(&req, &state);
    state
        .views
        .render(&page, StatusCode::OK, "signup.html", context! {})
}

async fn signup(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<CredentialsForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let (binding, cookie) = new_binding(&state.settings);
    let client = client(&req, &state.settings);
    let result = form
        .into_inner()
        .submit(
            &req,
            &state,
            Password::parse_new,
            async |email, password| {
                let hash = Some(binding.hash());
                let lang = page.lang;
                Ok(state
                    .accounts
                    .signup(email, password, lang, hash, &client)
                    .await?)
            },
        )
        .await;
    match result {
        Ok(_) => {
            let mut res = state.views.notice(
                &page,
                StatusCode::ACCEPTED,
                "signup_done_title",
                "signup_done_body",
                context! {},
            );
            let _ = res.add_cookie(&cookie);
            res
        }
        Err(rejected) => rejected.page(&state, &page, "signup.html"),
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// GET never consumes the token: link scanners fetch it too. It names the
/// address; in the browser that asked for the link the page posts itself,
/// anywhere else the person presses a button that says whose account it is.
async fn verify_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    q: web::Query<TokenQuery>,
) -> HttpResponse {
    let page = page(&req, &state);
    let Some(token) = q
        .into_inner()
        .token
        .filter(|t| !t.is_empty() && t.len() <= 1024)
    else {
        return state
            .views
            .error_page(&page, AppError::Token(TokenError::Malformed));
    };
    match state.accounts.inspect_verification(&token).await {
        Ok(claims) => {
            let cookie = Jar::Binding.value(&req, &state.settings);
            let same_browser = crate::binding::matches(cookie.as_deref(), claims.binding.as_ref());
            state.views.render(
                &page,
                StatusCode::OK,
                "verify.html",
                context! { token, email => claims.email, same_browser },
            )
        }
        Err(e) => state.views.error_page(&page, e.into()),
    }
}

#[derive(Deserialize)]
struct TokenForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

async fn verify(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<TokenForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let result = async {
        guard(&req, &state, &form.csrf)?;
        let client = client(&req, &state.settings);
        Ok::<_, AppError>(state.accounts.verify(&form.token, &client).await?)
    }
    .await;
    let verified = match result {
        Ok(v) => v,
        Err(e) => return state.views.error_page(&page, e),
    };
    match verified.session {
        Some(session) => HttpResponse::SeeOther()
            .cookie(session_cookie(&state.settings, session.as_str()))
            .cookie(Jar::Binding.removal(&state.settings))
            .insert_header((header::LOCATION, post_verify_location(&state, &page)))
            .finish(),
        // Signed in as someone else: the address is verified, the session stays.
        None => state.views.notice(
            &page,
            StatusCode::OK,
            "verified_kept_title",
            "verified_kept_body",
            context! {
                verified_email => verified.email,
                kept_email => verified.kept_session_of,
                show_switch => true,
            },
        ),
    }
}

fn post_verify_location(state: &AppState, page: &Page) -> String {
    let target = &state.settings.post_verify_url;
    let sep = if target.contains('?') { '&' } else { '?' };
    format!("{target}{sep}lang={}", page.lang.tag())
}

#[derive(Deserialize)]
struct EmailForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    csrf: String,
}

async fn resend(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<EmailForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let (binding, cookie) = new_binding(&state.settings);
    let result = async {
        guard(&req, &state, &form.csrf)?;
        let email = Email::parse(&form.email).map_err(|e| AppError::Validation(vec![e]))?;
        rate_limit(&req, &state, &email)?;
        let hash = Some(binding.hash());
        Ok::<_, AppError>(state.accounts.resend(email, page.lang, hash).await?)
    }
    .await;
    match result {
        Ok(_) => {
            let mut res = state.views.notice(
                &page,
                StatusCode::ACCEPTED,
                "resend_title",
                "resend_done_body",
                context! {},
            );
            let _ = res.add_cookie(&cookie);
            res
        }
        Err(AppError::Validation(_)) => state.views.notice(
            &page,
            StatusCode::UNPROCESSABLE_ENTITY,
            "resend_title",
            "invalid_input",
            context! { show_resend_form => true },
        ),
        Err(e) => state.views.error_page(&page, e),
    }
}

async fn login_form(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let page = page(&req, &state);
    state
        .views
        .render(&page, StatusCode::OK, "login.html", context! {})
}

async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<CredentialsForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let client: Client = client(&req, &state.settings);
    let result = form
        .into_inner()
        .submit(
            &req,
            &state,
            Password::parse_login,
            async |email, password| Ok(state.accounts.login(email, password, &client).await?),
        )
        .await;
    match result {
        Ok(session) => HttpResponse::SeeOther()
            .cookie(session_cookie(&state.settings, session.as_str()))
            .insert_header((header::LOCATION, format!("/me?lang={}", page.lang.tag())))
            .finish(),
        Err(r) if matches!(r.error, AppError::BadCredentials) => {
            r.again(&state, &page, "login.html", "login_failed")
        }
        Err(r) => r.page(&state, &page, "login.html"),
    }
}

async fn me(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let page = page(&req, &state);
    let login = format!("/login?lang={}", page.lang.tag());
    let Some(token) = session_token(&req, &state.settings) else {
        return see_other(&login);
    };
    match state.accounts.me(&token).await.map_err(AppError::from) {
        Ok(user) => state.views.render(
            &page,
            StatusCode::OK,
            "me.html",
            context! {
                email => user.email,
                verified_at => user.verified_at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()),
            },
        ),
        Err(AppError::Unauthorized) => see_other(&login),
        Err(e) => state.views.error_page(&page, e),
    }
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<LogoutForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    if let Err(e) = guard(&req, &state, &form.csrf) {
        return state.views.error_page(&page, e);
    }
    if let Some(token) = session_token(&req, &state.settings)
        && let Err(e) = state.accounts.logout(&token).await
    {
        tracing::warn!(error = %e, "could not delete a session at logout");
    }
    HttpResponse::SeeOther()
        .cookie(removal_cookie(&state.settings))
        .insert_header((header::LOCATION, format!("/login?lang={}", page.lang.tag())))
        .finish()
}
