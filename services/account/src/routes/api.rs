//! The JSON API under `/api/v1`. Errors are `application/problem+json`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::{Action, fields, rate_limit, removal_cookie, session_cookie, session_token};
use crate::domain::{Email, FieldError, Password};
use crate::error::AppError;
use crate::i18n::Lang;
use crate::state::AppState;

/// Registers the API routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .route("/signup", web::post().to(signup))
            .route("/verify", web::post().to(verify))
            .route("/verification/resend", web::post().to(resend))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/me", web::get().to(me)),
    );
}

#[derive(Deserialize)]
struct SignupRequest {
    email: Option<String>,
    password: Option<String>,
    locale: Option<String>,
}

fn required(value: Option<String>, field: &'static str) -> Result<String, FieldError> {
    value.ok_or(FieldError::required(field))
}

fn accepted() -> HttpResponse {
    HttpResponse::Accepted().json(json!({
        "status": "accepted",
        "detail": "If the address can receive mail, a message is on its way."
    }))
}

#[tracing::instrument(name = "api.signup", skip_all)]
async fn signup(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<SignupRequest>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let (email, password) = fields(
        required(body.email, "email").and_then(|e| Email::parse(&e)),
        required(body.password, "password").and_then(Password::parse_new),
    )?;
    let lang = match body.locale.as_deref() {
        None | Some("") => super::lang(&req, &state),
        Some(tag) => Lang::from_tag(tag).unwrap_or(state.settings.default_locale),
    };
    rate_limit(&req, &state, Action::Signup, &email).await?;
    state.accounts.signup(email, password, lang).await?;
    Ok(accepted())
}

#[derive(Deserialize)]
struct ResendRequest {
    email: Option<String>,
}

#[tracing::instrument(name = "api.resend", skip_all)]
async fn resend(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ResendRequest>,
) -> Result<HttpResponse, AppError> {
    let email = required(body.into_inner().email, "email")
        .and_then(|e| Email::parse(&e))
        .map_err(|e| AppError::Validation(vec![e]))?;
    rate_limit(&req, &state, Action::Resend, &email).await?;
    state
        .accounts
        .resend(email, super::lang(&req, &state))
        .await?;
    Ok(accepted())
}

#[derive(Deserialize)]
struct VerifyRequest {
    token: Option<String>,
}

#[tracing::instrument(name = "api.verify", skip_all)]
async fn verify(
    state: web::Data<AppState>,
    body: web::Json<VerifyRequest>,
) -> Result<HttpResponse, AppError> {
    let token =
        required(body.into_inner().token, "token").map_err(|e| AppError::Validation(vec![e]))?;
    let (user_id, session) = state.accounts.verify(&token).await?;
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(&state.settings, session.as_str()))
        .json(json!({"status": "verified", "user_id": user_id})))
}

#[derive(Deserialize)]
struct LoginRequest {
    email: Option<String>,
    password: Option<String>,
}

#[tracing::instrument(name = "api.login", skip_all)]
async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let (email, password) = fields(
        required(body.email, "email").and_then(|e| Email::parse(&e)),
        required(body.password, "password").and_then(Password::parse_login),
    )?;
    rate_limit(&req, &state, Action::Login, &email).await?;
    let session = state.accounts.login(email, password).await?;
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(&state.settings, session.as_str()))
        .json(json!({"status": "signed-in"})))
}

#[tracing::instrument(name = "api.logout", skip_all)]
async fn logout(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    if let Some(token) = session_token(&req, &state.settings) {
        state.accounts.logout(&token).await?;
    }
    Ok(HttpResponse::NoContent()
        .cookie(removal_cookie(&state.settings))
        .finish())
}

#[tracing::instrument(name = "api.me", skip_all)]
async fn me(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let token = session_token(&req, &state.settings).ok_or(AppError::Unauthorized)?;
    let user = state.accounts.me(&token).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(user))
}
