//! Server-rendered pages in Korean and English: no external assets, plain
//! forms that work without script (the verify page submits itself when it can).

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use minijinja::{Environment, Value, context};
use serde::Deserialize;

use super::{fields, lang, rate_limit, removal_cookie, session_cookie, session_token};
use crate::accounts;
use crate::domain::{Email, FieldError, Password};
use crate::error::AppError;
use crate::i18n::Lang;
use crate::sessions;
use crate::startup::AppState;
use crate::token::TokenError;

/// The page templates, compiled once.
pub struct Pages {
    env: Environment<'static>,
}

impl Default for Pages {
    fn default() -> Self {
        let mut env = Environment::new();
        for (name, src) in [
            ("base.html", include_str!("../../templates/base.html")),
            ("errors.html", include_str!("../../templates/errors.html")),
            ("signup.html", include_str!("../../templates/signup.html")),
            ("notice.html", include_str!("../../templates/notice.html")),
            ("verify.html", include_str!("../../templates/verify.html")),
            ("login.html", include_str!("../../templates/login.html")),
            ("me.html", include_str!("../../templates/me.html")),
        ] {
            env.add_template(name, src)
                .expect("embedded templates parse");
        }
        Self { env }
    }
}

impl Pages {
    /// Renders a page with a fresh CSP nonce.
    pub fn render(&self, status: StatusCode, name: &str, lang: Lang, ctx: Value) -> HttpResponse {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        let nonce = base64::engine::general_purpose::STANDARD.encode(nonce);
        let ctx = context! { t => Value::from(minijinja::value::Serde(lang.strings())), nonce => &nonce, ..ctx };
        let html = match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => html,
            Err(e) => {
                tracing::error!(error = %e, template = name, "page rendering failed");
                return HttpResponse::InternalServerError().finish();
            }
        };
        HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CONTENT_LANGUAGE, lang.tag()))
            .insert_header(("cache-control", "no-store"))
            .insert_header(("x-frame-options", "DENY"))
            .insert_header(("x-content-type-options", "nosniff"))
            // same-origin: the verify page's URL holds the token, so no Referer
            // ever leaves the site; "no-referrer" would also make browsers send
            // `Origin: null` on our own form posts.
            .insert_header(("referrer-policy", "same-origin"))
            .insert_header((
                "content-security-policy",
                format!(
                    "default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; \
                     form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
                ),
            ))
            .body(html)
    }
}

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

/// Refuses form posts from other sites (login CSRF). Browsers that send
/// `Sec-Fetch-Site` are judged by it; otherwise the Origin, when sent, must be
/// this service's public origin or the Host the request came to.
fn same_origin(req: &HttpRequest, state: &AppState) -> Result<(), AppError> {
    if let Some(site) = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
    {
        return match site {
            "same-origin" | "none" => Ok(()),
            _ => Err(AppError::Forbidden("cross-site form post")),
        };
    }
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let public = state.settings.public_url.origin().ascii_serialization();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
    if origin == public || (!host.is_empty() && origin_host == host) {
        Ok(())
    } else {
        Err(AppError::Forbidden("cross-site form post"))
    }
}

/// Renders an error as a page in the user's language.
fn error_page(state: &AppState, lang: Lang, err: AppError) -> HttpResponse {
    use actix_web::ResponseError;
    err.log();
    let t = lang.strings();
    let s = |k: &str| t.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let status = err.status_code();
    let ctx = match &err {
        AppError::Token(TokenError::Expired(claims)) => context! {
            title => s("expired_link_title"), body => s("expired_link_body"), resend_email => claims.email.clone()
        },
        AppError::Token(_) => context! {
            title => s("invalid_link_title"), body => s("invalid_link_body"), show_resend_form => true
        },
        AppError::TokenUsed { .. } => context! {
            title => s("used_link_title"), body => s("used_link_body"), show_login => true, show_resend_form => true
        },
        AppError::RateLimited(_) => {
            context! { title => s("error_title"), body => s("rate_limited") }
        }
        _ => context! { title => s("error_title"), body => s("error_body") },
    };
    let mut res = state.pages.render(status, "notice.html", lang, ctx);
    if let Some(secs) = err.retry_after() {
        res.headers_mut().insert(header::RETRY_AFTER, secs.into());
    }
    res
}

fn field_errors(lang: Lang, errors: &[FieldError]) -> Vec<Value> {
    let _ = lang;
    errors
        .iter()
        .map(|e| context! { field => e.field, message => e.message })
        .collect()
}

async fn home(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    see_other(&format!("/signup?lang={}", lang(&req, &state).tag()))
}

async fn signup_form(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let lang = lang(&req, &state);
    state
        .pages
        .render(StatusCode::OK, "signup.html", lang, context! {})
}

#[derive(Deserialize)]
/// The sign-up and login forms.
struct CredentialsForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

async fn signup(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<CredentialsForm>,
) -> HttpResponse {
    let lang = lang(&req, &state);
    let form = form.into_inner();
    let typed = form.email.clone();
    let result = async {
        same_origin(&req, &state)?;
        let (email, password) = fields(
            Email::parse(&form.email),
            Password::parse_new(form.password),
        )?;
        rate_limit(&req, &state, &email)?;
        accounts::signup(&state, email, password, lang).await
    }
    .await;
    let t = lang.strings();
    match result {
        Ok(_) => state.pages.render(
            StatusCode::ACCEPTED,
            "notice.html",
            lang,
            context! { title => t["signup_done_title"].as_str(), body => t["signup_done_body"].as_str() },
        ),
        Err(AppError::Validation(errors)) => state.pages.render(
            StatusCode::UNPROCESSABLE_ENTITY,
            "signup.html",
            lang,
            context! { errors => field_errors(lang, &errors), email => typed },
        ),
        Err(e) => error_page(&state, lang, e),
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
            .pages
            .render(StatusCode::OK, "verify.html", lang, context! { token }),
        None => error_page(&state, lang, AppError::Token(TokenError::Malformed)),
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
        accounts::verify(&state, &form.token).await
    }
    .await;
    match result {
        Ok((_, session)) => HttpResponse::SeeOther()
            .cookie(session_cookie(&state.settings, session.as_str()))
            .insert_header((header::LOCATION, post_verify_location(&state, lang)))
            .finish(),
        Err(e) => error_page(&state, lang, e),
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
        rate_limit(&req, &state, &email)?;
        accounts::resend(&state, email, lang).await
    }
    .await;
    let t = lang.strings();
    match result {
        Ok(_) => state.pages.render(
            StatusCode::ACCEPTED,
            "notice.html",
            lang,
            context! { title => t["resend_title"].as_str(), body => t["resend_done_body"].as_str() },
        ),
        Err(AppError::Validation(_)) => state.pages.render(
            StatusCode::UNPROCESSABLE_ENTITY,
            "notice.html",
            lang,
            context! { title => t["resend_title"].as_str(), body => t["invalid_input"].as_str(), show_resend_form => true },
        ),
        Err(e) => error_page(&state, lang, e),
    }
}

async fn login_form(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let lang = lang(&req, &state);
    state
        .pages
        .render(StatusCode::OK, "login.html", lang, context! {})
}

async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<CredentialsForm>,
) -> HttpResponse {
    let lang = lang(&req, &state);
    let form = form.into_inner();
    let typed = form.email.clone();
    let result = async {
        same_origin(&req, &state)?;
        let (email, password) = fields(
            Email::parse(&form.email),
            Password::parse_login(form.password),
        )?;
        rate_limit(&req, &state, &email)?;
        accounts::login(&state, email, password).await
    }
    .await;
    let t = lang.strings();
    let retry = |status, message: &str| {
        state.pages.render(
            status,
            "login.html",
            lang,
            context! { message => message, email => &typed },
        )
    };
    match result {
        Ok(session) => HttpResponse::SeeOther()
            .cookie(session_cookie(&state.settings, session.as_str()))
            .insert_header((header::LOCATION, format!("/me?lang={}", lang.tag())))
            .finish(),
        Err(AppError::Validation(errors)) => state.pages.render(
            StatusCode::UNPROCESSABLE_ENTITY,
            "login.html",
            lang,
            context! { errors => field_errors(lang, &errors), email => &typed },
        ),
        Err(AppError::BadCredentials) => retry(
            StatusCode::UNAUTHORIZED,
            t["login_failed"].as_str().unwrap_or(""),
        ),
        Err(AppError::NotVerified) => retry(
            StatusCode::FORBIDDEN,
            t["not_verified"].as_str().unwrap_or(""),
        ),
        Err(e) => error_page(&state, lang, e),
    }
}

async fn me(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let lang = lang(&req, &state);
    let Some(token) = session_token(&req, &state.settings) else {
        return see_other(&format!("/login?lang={}", lang.tag()));
    };
    let user = async {
        let mut conn = state.pool.get().await?;
        Ok::<_, AppError>(sessions::lookup(&mut conn, &token).await?)
    }
    .await;
    match user {
        Ok(Some(user)) => state.pages.render(
            StatusCode::OK,
            "me.html",
            lang,
            context! {
                email => user.email,
                verified_at => user.verified_at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()),
            },
        ),
        Ok(None) => see_other(&format!("/login?lang={}", lang.tag())),
        Err(e) => error_page(&state, lang, e),
    }
}

async fn logout(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let lang = lang(&req, &state);
    if same_origin(&req, &state).is_ok()
        && let Some(token) = session_token(&req, &state.settings)
        && let Ok(mut conn) = state.pool.get().await
        && let Err(e) = sessions::delete(&mut conn, &token).await
    {
        tracing::warn!(error = %e, "could not delete a session at logout");
    }
    HttpResponse::SeeOther()
        .cookie(removal_cookie(&state.settings))
        .insert_header((header::LOCATION, format!("/login?lang={}", lang.tag())))
        .finish()
}
