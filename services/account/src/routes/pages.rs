//! Server-rendered pages in Korean and English: no external assets, plain
//! forms that work without script (the verify page submits itself when it can).
//! Handlers parse, call the account operations, and pick a view.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use minijinja::context;
use serde::Deserialize;

use super::forms::{CredentialsForm, same_origin};
use super::{Action, lang, rate_limit, removal_cookie, session_cookie, session_token};
use crate::domain::{Email, Password};
use crate::error::AppError;
use crate::i18n::Lang;
use crate::state::AppState;
use crate::token::TokenError;

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
    see_other(&format!("/signup?lang={}", lang(&req, &state).tag()))
}

async fn signup_form(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let lang = lang(&req, &state);
    state
        .views
        .render(StatusCode::OK, "signup.html", lang, context! {})
}

async fn signup(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<CredentialsForm>,
) -> HttpResponse {
    let lang = lang(&req, &state);
    let result = form
        .into_inner()
        .submit(
            &req,
            &state,
            Action::Signup,
            Password::parse_new,
            async |email, password| Ok(state.accounts.signup(email, password, lang).await?),
        )
        .await;
    match result {
        Ok(_) => state.views.notice(
            StatusCode::ACCEPTED,
            lang,
            "signup_done_title",
            "signup_done_body",
            context! {},
        ),
        Err(rejected) => rejected.page(&state, "signup.html", lang),
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// GET never consumes the token: link scanners fetch it too. The page posts it back.
async fn verify_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    q: web::Query<TokenQuery>,
) -> HttpResponse {
    let lang = lang(&req, &state);
    match q
        .into_inner()
        .token
        .filter(|t| !t.is_empty() && t.len() <= 1024)
    {
        Some(token) => state
            .views
            .render(StatusCode::OK, "verify.html", lang, context! { token }),
        None => state
            .views
            .error_page(lang, AppError::Token(TokenError::Malformed)),
    }
}

#[derive(Deserialize)]
struct TokenForm {
    #[serde(default)]
    token: String,
}

async fn verify(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<TokenForm>,
) -> HttpResponse {
    let lang = lang(&req, &state);
    let result = async {
        same_origin(&req, &state)?;
        Ok::<_, AppError>(state.accounts.verify(&form.token).await?)
    }
    .await;
    match result {
        Ok((_, session)) => HttpResponse::SeeOther()
            .cookie(session_cookie(&state.settings, session.as_str()))
            .insert_header((header::LOCATION, post_verify_location(&state, lang)))
            .finish(),
        Err(e) => state.views.error_page(lang, e),
    }
}

fn post_verify_location(state: &AppState, lang: Lang) -> String {
    let target = &state.settings.post_verify_url;
    let sep = if target.contains('?') { '&' } else { '?' };
    format!("{target}{sep}lang={}", lang.tag())
}

#[derive(Deserialize)]
struct EmailForm {
    #[serde(default)]
    email: String,
}

async fn resend(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<EmailForm>,
) -> HttpResponse {
    let lang = lang(&req, &state);
    let result = async {
        same_origin(&req, &state)?;
        let email = Email::parse(&form.email).map_err(|e| AppError::Validation(vec![e]))?;
        rate_limit(&req, &state, Action::Resend, &email).await?;
        Ok::<_, AppError>(state.accounts.resend(email, lang).await?)
    }
    .await;
    match result {
        Ok(_) => state.views.notice(
            StatusCode::ACCEPTED,
            lang,
            "resend_title",
            "resend_done_body",
            context! {},
        ),
        Err(AppError::Validation(_)) => state.views.notice(
            StatusCode::UNPROCESSABLE_ENTITY,
            lang,
            "resend_title",
            "invalid_input",
            context! { show_resend_form => true },
        ),
        Err(e) => state.views.error_page(lang, e),
    }
}

async fn login_form(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let lang = lang(&req, &state);
    state
        .views
        .render(StatusCode::OK, "login.html", lang, context! {})
}

async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<CredentialsForm>,
) -> HttpResponse {
    let lang = lang(&req, &state);
    let result = form
        .into_inner()
        .submit(
            &req,
            &state,
            Action::Login,
            Password::parse_login,
            async |email, password| Ok(state.accounts.login(email, password).await?),
        )
        .await;
    match result {
        Ok(session) => HttpResponse::SeeOther()
            .cookie(session_cookie(&state.settings, session.as_str()))
            .insert_header((header::LOCATION, format!("/me?lang={}", lang.tag())))
            .finish(),
        Err(r) if matches!(r.error, AppError::BadCredentials) => {
            r.again(&state, "login.html", lang, "login_failed")
        }
        Err(r) if matches!(r.error, AppError::NotVerified) => {
            r.again(&state, "login.html", lang, "not_verified")
        }
        Err(r) => r.page(&state, "login.html", lang),
    }
}

async fn me(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let lang = lang(&req, &state);
    let login = format!("/login?lang={}", lang.tag());
    let Some(token) = session_token(&req, &state.settings) else {
        return see_other(&login);
    };
    match state.accounts.me(&token).await.map_err(AppError::from) {
        Ok(user) => state.views.render(
            StatusCode::OK,
            "me.html",
            lang,
            context! {
                email => user.email,
                verified_at => user.verified_at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()),
            },
        ),
        Err(AppError::Unauthorized) => see_other(&login),
        Err(e) => state.views.error_page(lang, e),
    }
}

async fn logout(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let lang = lang(&req, &state);
    if same_origin(&req, &state).is_ok()
        && let Some(token) = session_token(&req, &state.settings)
        && let Err(e) = state.accounts.logout(&token).await
    {
        tracing::warn!(error = %e, "could not delete a session at logout");
    }
    HttpResponse::SeeOther()
        .cookie(removal_cookie(&state.settings))
        .insert_header((header::LOCATION, format!("/login?lang={}", lang.tag())))
        .finish()
}
