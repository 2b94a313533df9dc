//! The JSON API under `/api/v1`. Errors are `application/problem+json`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::{
    client, fields, new_binding, rate_limit, removal_cookie, session_cookie, session_token,
};
use crate::accounts::Client;
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
            .route("/logout/all", web::post().to(logout_all))
            .route("/me", web::get().to(me))
            .route("/me", web::delete().to(delete_me))
            .route("/password/forgot", web::post().to(forgot))
            .route("/password/reset", web::post().to(reset))
            .route("/password", web::post().to(change_password))
            .route("/sessions", web::get().to(sessions))
            .route("/sessions/{id}", web::delete().to(end_session))
            .route("/email", web::post().to(change_email))
            .route("/email/confirm", web::post().to(confirm_email)),
    );
}

/// The signed-in browser's session token, or 401.
fn signed_in(req: &HttpRequest, state: &AppState) -> Result<String, AppError> {
    session_token(req, &state.settings).ok_or(AppError::Unauthorized)
}

fn one_field<T>(r: Result<T, FieldError>) -> Result<T, AppError> {
    r.map_err(|e| AppError::Validation(vec![e]))
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
    rate_limit(&req, &state, &email)?;
    // A browser that signs up through the API (a single-page app) is the
    // one its link signs in without a click.
    let (binding, cookie) = new_binding(&state.settings);
    let client = client(&req, &state.settings);
    state
        .accounts
        .signup(email, password, lang, Some(binding.hash()), &client)
        .await?;
    let mut res = accepted();
    res.add_cookie(&cookie)
        .map_err(|e| AppError::Internal(e.into()))?;
    Ok(res)
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
    rate_limit(&req, &state, &email)?;
    let (binding, cookie) = new_binding(&state.settings);
    state
        .accounts
        .resend(email, super::lang(&req, &state), Some(binding.hash()))
        .await?;
    let mut res = accepted();
    res.add_cookie(&cookie)
        .map_err(|e| AppError::Internal(e.into()))?;
    Ok(res)
}

/// Either the link's token, or the address and the code of its mail.
#[derive(Deserialize)]
struct VerifyRequest {
    token: Option<String>,
    email: Option<String>,
    code: Option<String>,
}

#[tracing::instrument(name = "api.verify", skip_all)]
async fn verify(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<VerifyRequest>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    // API clients are signed in by the link or the code, as documented; the
    // session cookie they held (if any) is simply replaced in their jar.
    let client = Client {
        session: None,
        ..client(&req, &state.settings)
    };
    let verified = match (body.token, body.email, body.code) {
        (Some(token), _, _) => state.accounts.verify(&token, &client).await?,
        (None, email, code) => {
            let (email, code) = fields(
                required(email, "email").and_then(|e| Email::parse(&e)),
                required(code, "code"),
            )?;
            rate_limit(&req, &state, &email)?;
            state.accounts.verify_code(email, &code, &client).await?
        }
    };
    let mut res = HttpResponse::Ok();
    if let Some(session) = &verified.session {
        res.cookie(session_cookie(&state.settings, session.as_str()));
    }
    Ok(res.json(json!({"status": "verified", "user_id": verified.user_id})))
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
    rate_limit(&req, &state, &email)?;
    let session = state
        .accounts
        .login(email, password, &client(&req, &state.settings))
        .await?;
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

/// Ends every session of the signed-in user (all devices).
#[tracing::instrument(name = "api.logout_all", skip_all)]
async fn logout_all(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let token = session_token(&req, &state.settings).ok_or(AppError::Unauthorized)?;
    let ended = state.accounts.logout_all(&token).await?;
    tracing::info!(sessions = ended, "signed out everywhere");
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

#[derive(Deserialize)]
struct ForgotRequest {
    email: Option<String>,
}

/// Always 202, with the same body and at the same speed for every address:
/// the mail is queued off the request's path.
#[tracing::instrument(name = "api.password_forgot", skip_all)]
async fn forgot(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ForgotRequest>,
) -> Result<HttpResponse, AppError> {
    let email =
        one_field(required(body.into_inner().email, "email").and_then(|e| Email::parse(&e)))?;
    rate_limit(&req, &state, &email)?;
    let accounts = state.accounts.clone();
    tokio::spawn(async move {
        if let Err(e) = accounts.forgot(email).await {
            tracing::warn!(error = %e, "could not queue a password reset mail");
        }
    });
    Ok(accepted())
}

#[derive(Deserialize)]
struct ResetRequest {
    token: Option<String>,
    password: Option<String>,
}

/// Sets a new password with a reset link's token; signs this client in.
#[tracing::instrument(name = "api.password_reset", skip_all)]
async fn reset(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ResetRequest>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let (token, password) = fields(
        required(body.token, "token"),
        required(body.password, "password").and_then(Password::parse_new),
    )?;
    let client = Client {
        session: None,
        ..client(&req, &state.settings)
    };
    let session = state
        .accounts
        .reset_password(&token, password, &client)
        .await?;
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(&state.settings, session.as_str()))
        .json(json!({"status": "password-reset"})))
}

#[derive(Deserialize)]
struct ChangePasswordRequest {
    current_password: Option<String>,
    new_password: Option<String>,
}

/// Changes the password of the signed-in user (the current one required);
/// every other session ends. A wrong current password counts as a failed login.
#[tracing::instrument(name = "api.password_change", skip_all)]
async fn change_password(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ChangePasswordRequest>,
) -> Result<HttpResponse, AppError> {
    let session = signed_in(&req, &state)?;
    let body = body.into_inner();
    let (current, new) = fields(
        required(body.current_password, "current_password").and_then(Password::parse_login),
        required(body.new_password, "new_password").and_then(Password::parse_new),
    )?;
    let me = state.accounts.me(&session).await?;
    rate_limit(&req, &state, &Email::stored(me.email))?;
    state
        .accounts
        .change_password(&session, current, new, &client(&req, &state.settings))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The signed-in user's sessions.
#[tracing::instrument(name = "api.sessions", skip_all)]
async fn sessions(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let session = signed_in(&req, &state)?;
    let list = state.accounts.sessions(&session).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({ "sessions": list })))
}

/// Ends one of the signed-in user's sessions (another user's: 404).
#[tracing::instrument(name = "api.end_session", skip_all)]
async fn end_session(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let session = signed_in(&req, &state)?;
    let id = uuid::Uuid::parse_str(&id).map_err(|_| AppError::NotFound)?;
    state.accounts.end_session(&session, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
struct DeleteRequest {
    password: Option<String>,
}

/// Deletes the signed-in user's account (the password required).
#[tracing::instrument(name = "api.delete_me", skip_all)]
async fn delete_me(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<DeleteRequest>,
) -> Result<HttpResponse, AppError> {
    let session = signed_in(&req, &state)?;
    let password = one_field(
        required(body.into_inner().password, "password").and_then(Password::parse_login),
    )?;
    let me = state.accounts.me(&session).await?;
    rate_limit(&req, &state, &Email::stored(me.email))?;
    state
        .accounts
        .delete_account(&session, password, &client(&req, &state.settings))
        .await?;
    Ok(HttpResponse::NoContent()
        .cookie(removal_cookie(&state.settings))
        .finish())
}

#[derive(Deserialize)]
struct ChangeEmailRequest {
    new_email: Option<String>,
    password: Option<String>,
}

/// Asks to move the signed-in account to a new address: 202 whether or not
/// the address is taken; the change happens only through the mailed link.
#[tracing::instrument(name = "api.change_email", skip_all)]
async fn change_email(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ChangeEmailRequest>,
) -> Result<HttpResponse, AppError> {
    let session = signed_in(&req, &state)?;
    let body = body.into_inner();
    let (new_email, password) = fields(
        required(body.new_email, "new_email").and_then(|e| {
            Email::parse(&e).map_err(|err| FieldError {
                field: "new_email",
                ..err
            })
        }),
        required(body.password, "password").and_then(Password::parse_login),
    )?;
    let me = state.accounts.me(&session).await?;
    rate_limit(&req, &state, &Email::stored(me.email))?;
    rate_limit(&req, &state, &new_email)?;
    state
        .accounts
        .request_email_change(
            &session,
            new_email,
            password,
            &client(&req, &state.settings),
        )
        .await?;
    Ok(accepted())
}

#[derive(Deserialize)]
struct ConfirmEmailRequest {
    token: Option<String>,
}

/// Makes the link's new address the account's (sessions stay).
#[tracing::instrument(name = "api.confirm_email", skip_all)]
async fn confirm_email(
    state: web::Data<AppState>,
    body: web::Json<ConfirmEmailRequest>,
) -> Result<HttpResponse, AppError> {
    let token = one_field(required(body.into_inner().token, "token"))?;
    let (_, email) = state.accounts.confirm_email_change(&token).await?;
    Ok(HttpResponse::Ok().json(json!({"status": "email-changed", "email": email})))
}
