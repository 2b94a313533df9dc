//! The JSON API under `/api/v1`. Errors are `application/problem+json`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::{
    Action, client, fields, new_binding, rate_limit, removal_cookie, session_cookie, session_token,
};
use crate::accounts::Client;
use crate::domain::{Email, FieldError, Password};
use crate::error::AppError;
use crate::i18n::Lang;
use crate::state::AppState;

/// Registers the API routes. A method a path does not take is a 405 that
/// names the ones it does (`Allow`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    use super::resource;
    cfg.service(
        web::scope("/api/v1")
            .service(resource("/signup", &["POST"]).route(web::post().to(signup)))
            .service(resource("/verify", &["POST"]).route(web::post().to(verify)))
            .service(resource("/verification/resend", &["POST"]).route(web::post().to(resend)))
            .service(resource("/login", &["POST"]).route(web::post().to(login)))
            .service(resource("/logout", &["POST"]).route(web::post().to(logout)))
            .service(resource("/logout/all", &["POST"]).route(web::post().to(logout_all)))
            .service(
                resource("/me", &["GET", "DELETE"])
                    .route(web::get().to(me))
                    .route(web::delete().to(delete_me)),
            )
            .service(resource("/password/forgot", &["POST"]).route(web::post().to(forgot)))
            .service(resource("/password/reset", &["POST"]).route(web::post().to(reset)))
            .service(resource("/password", &["POST"]).route(web::post().to(change_password)))
            .service(resource("/sessions", &["GET"]).route(web::get().to(sessions)))
            .service(resource("/sessions/{id}", &["DELETE"]).route(web::delete().to(end_session)))
            .service(resource("/email", &["POST"]).route(web::post().to(change_email)))
            .service(resource("/email/confirm", &["POST"]).route(web::post().to(confirm_email))),
    );
}

/// The signed-in browser's session token, or 401.
fn signed_in(req: &HttpRequest, state: &AppState) -> Result<String, AppError> {
    session_token(req, &state.settings).ok_or(AppError::Unauthorized)
}

fn one_field<T>(r: Result<T, FieldError>) -> Result<T, AppError> {
    r.map_err(|e| AppError::Validation(vec![e]))
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct SignupRequest {
    /// The address; its part before the @ must be ASCII.
    #[schema(value_type = String, required = true, format = Email, max_length = 254)]
    email: Option<String>,
    /// 8 to 128 characters, not only spaces.
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128)]
    password: Option<String>,
    /// `ko` or `en` (else the Accept-Language, then the default).
    locale: Option<String>,
}

fn required(value: Option<String>, field: &'static str) -> Result<String, FieldError> {
    value.ok_or(FieldError::required(field))
}

/// The answer of every request that mails (or would mail) someone.
#[derive(Serialize, ToSchema)]
pub(crate) struct Accepted {
    #[schema(example = "accepted")]
    status: &'static str,
    detail: &'static str,
}

/// An error, as RFC 9457 `application/problem+json`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Problem {
    /// `/problems/<kind>`, e.g. `/problems/token-used`.
    #[schema(rename = "type", example = "/problems/invalid-input")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// With `/problems/invalid-input`: each field at fault.
    errors: Option<Vec<FieldProblem>>,
}

/// One invalid field of a 422.
#[derive(Serialize, ToSchema)]
pub(crate) struct FieldProblem {
    field: String,
    message: String,
}

/// `POST /api/v1/verify`'s answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct VerifyResponse {
    #[schema(example = "verified")]
    status: String,
    user_id: uuid::Uuid,
}

/// `POST /api/v1/login`'s answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct LoginResponse {
    #[schema(example = "signed-in")]
    status: String,
}

/// `POST /api/v1/password/reset`'s answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct ResetResponse {
    #[schema(example = "password-reset")]
    status: String,
}

/// `POST /api/v1/email/confirm`'s answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct EmailChangedResponse {
    #[schema(example = "email-changed")]
    status: String,
    email: String,
}

/// `GET /api/v1/sessions`'s answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct SessionsResponse {
    sessions: Vec<crate::sessions::SessionInfo>,
}

fn accepted() -> HttpResponse {
    HttpResponse::Accepted().json(Accepted {
        status: "accepted",
        detail: "If the address can receive mail, a message is on its way.",
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/signup",
    tag = "account",
    description = "Registers an address, or mails its owner: the same answer either way.",
    request_body = SignupRequest,
    responses(
        (status = 202, description = "Accepted; a mail is on its way if the address can receive one", body = Accepted),
        (status = 400, description = "The body is not JSON, or not an object of this shape", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid; `errors` names each", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this client or for this address; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    )
)]
#[tracing::instrument(name = "api.signup", skip_all)]
pub(crate) async fn signup(
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

#[derive(Deserialize, ToSchema)]
pub(crate) struct ResendRequest {
    #[schema(value_type = String, required = true, format = Email, max_length = 254)]
    email: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/verification/resend",
    tag = "account",
    description = "Sends a fresh verification link, at most once per cooldown; the same answer for every address.",
    request_body = ResendRequest,
    responses(
        (status = 202, description = "Accepted", body = Accepted),
        (status = 400, description = "The body is not JSON, or not an object of this shape", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid; `errors` names each", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this client or for this address; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    )
)]
#[tracing::instrument(name = "api.resend", skip_all)]
pub(crate) async fn resend(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ResendRequest>,
) -> Result<HttpResponse, AppError> {
    let email = required(body.into_inner().email, "email")
        .and_then(|e| Email::parse(&e))
        .map_err(|e| AppError::Validation(vec![e]))?;
    rate_limit(&req, &state, Action::Resend, &email).await?;
    // The link stays bound to the sign-up's client (asking for it again
    // proves nothing about the password), so no new binding cookie.
    state
        .accounts
        .resend(email, super::lang(&req, &state))
        .await?;
    Ok(accepted())
}

/// Either the link's token, or the address and the code of its mail.
#[derive(Deserialize, ToSchema)]
pub(crate) struct VerifyRequest {
    /// The `token` of the mailed link; or give `email` and `code` instead.
    #[schema(max_length = 1024)]
    token: Option<String>,
    #[schema(format = Email, max_length = 254)]
    email: Option<String>,
    /// The six digits of the same mail (spaces and dashes ignored).
    #[schema(pattern = "^[0-9 -]{6,8}$")]
    code: Option<String>,
    /// The password chosen at sign-up: needed unless this client holds the
    /// sign-up's binding cookie (a single-page app that signed up through
    /// `/api/v1/signup` does).
    #[schema(max_length = 512)]
    password: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/verify",
    tag = "account",
    description = "Verifies an address by the link's token, or by the address and the code of the same mail, and signs in. A client other than the one that signed up (no sign-up binding cookie) must also send the password chosen at sign-up: someone who signs up another person's address cannot have it verified with their own password.",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "Verified and signed in (Set-Cookie)", body = VerifyResponse),
        (status = 400, description = "The token is malformed, damaged or not ours; the code is wrong, dead or the address unknown; or the body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The link was already used, or a newer one replaced it", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "This client did not sign up for the account and `password` is missing (`/problems/password-needed`) or not the sign-up's (`/problems/password-wrong`); nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The link has expired", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid; `errors` names each", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this client or for this address; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    )
)]
#[tracing::instrument(name = "api.verify", skip_all)]
pub(crate) async fn verify(
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
    let password = match body.password.filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => Some(Password::parse_login(p).map_err(|e| AppError::Validation(vec![e]))?),
    };
    let verified = match (body.token, body.email, body.code) {
        (Some(token), _, _) => {
            if password.is_some() {
                super::limit_link_password(&req, &state, &token).await?;
            }
            state.accounts.verify(&token, password, &client).await?
        }
        (None, email, code) => {
            let (email, code) = fields(
                required(email, "email").and_then(|e| Email::parse(&e)),
                required(code, "code"),
            )?;
            rate_limit(&req, &state, Action::Code, &email).await?;
            state
                .accounts
                .verify_code(email, &code, password, &client)
                .await?
        }
    };
    let mut res = HttpResponse::Ok();
    if let Some(session) = &verified.session {
        res.cookie(session_cookie(&state.settings, session.as_str()));
    }
    Ok(res.json(json!({"status": "verified", "user_id": verified.user_id})))
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct LoginRequest {
    #[schema(value_type = String, required = true, format = Email, max_length = 254)]
    email: Option<String>,
    #[schema(value_type = String, required = true, min_length = 1, max_length = 512)]
    password: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/login",
    tag = "account",
    description = "Signs in; a wrong password, an unknown address and an unverified account answer alike.",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in (Set-Cookie)", body = LoginResponse),
        (status = 401, description = "Wrong address or password", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "The body is not JSON, or not an object of this shape", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid; `errors` names each", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this client or for this address; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    )
)]
#[tracing::instrument(name = "api.login", skip_all)]
pub(crate) async fn login(
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
    let session = state
        .accounts
        .login(email, password, &client(&req, &state.settings))
        .await?;
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(&state.settings, session.as_str()))
        .json(json!({"status": "signed-in"})))
}

#[utoipa::path(
    post,
    path = "/api/v1/logout",
    tag = "account",
    description = "Ends this session.",
    responses(
        (status = 204, description = "Signed out"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    )
)]
#[tracing::instrument(name = "api.logout", skip_all)]
pub(crate) async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    if let Some(token) = session_token(&req, &state.settings) {
        state.accounts.logout(&token).await?;
    }
    Ok(HttpResponse::NoContent()
        .cookie(removal_cookie(&state.settings))
        .finish())
}

/// Ends every session of the signed-in user (all devices).
#[utoipa::path(
    post,
    path = "/api/v1/logout/all",
    tag = "account",
    description = "Ends every session of the signed-in user.",
    responses(
        (status = 204, description = "Every session ended"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    ),
    security(("session" = []))
)]
#[tracing::instrument(name = "api.logout_all", skip_all)]
pub(crate) async fn logout_all(
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

#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "account",
    description = "The signed-in user.",
    responses(
        (status = 200, description = "The user", body = crate::sessions::SessionUser),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    ),
    security(("session" = []))
)]
#[tracing::instrument(name = "api.me", skip_all)]
pub(crate) async fn me(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let token = session_token(&req, &state.settings).ok_or(AppError::Unauthorized)?;
    let user = state.accounts.me(&token).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(user))
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct ForgotRequest {
    #[schema(value_type = String, required = true, format = Email, max_length = 254)]
    email: Option<String>,
}

/// Always 202, with the same body and at the same speed for every address:
/// the mail is queued off the request's path.
#[utoipa::path(
    post,
    path = "/api/v1/password/forgot",
    tag = "account",
    description = "Mails a reset link if the address has an account; the same answer for every address.",
    request_body = ForgotRequest,
    responses(
        (status = 202, description = "Accepted", body = Accepted),
        (status = 400, description = "The body is not JSON, or not an object of this shape", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid; `errors` names each", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this client or for this address; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    )
)]
#[tracing::instrument(name = "api.password_forgot", skip_all)]
pub(crate) async fn forgot(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ForgotRequest>,
) -> Result<HttpResponse, AppError> {
    let email =
        one_field(required(body.into_inner().email, "email").and_then(|e| Email::parse(&e)))?;
    rate_limit(&req, &state, Action::Reset, &email).await?;
    let accounts = state.accounts.clone();
    tokio::spawn(async move {
        if let Err(e) = accounts.forgot(email).await {
            tracing::warn!(error = %e, "could not queue a password reset mail");
        }
    });
    Ok(accepted())
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct ResetRequest {
    /// The `token` of the mailed reset link.
    #[schema(value_type = String, required = true, max_length = 1024)]
    token: Option<String>,
    /// The new password: 8 to 128 characters.
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128)]
    password: Option<String>,
}

/// Sets a new password with a reset link's token; signs this client in.
#[utoipa::path(
    post,
    path = "/api/v1/password/reset",
    tag = "account",
    description = "Sets a new password with a reset link's token; every session ends and this client is signed in.",
    request_body = ResetRequest,
    responses(
        (status = 200, description = "Reset and signed in (Set-Cookie)", body = ResetResponse),
        (status = 400, description = "The token is malformed, damaged, not ours or for another purpose; or the body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The link was already used, or a newer one replaced it", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The link has expired", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid; `errors` names each", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many password checks from this client for this address (a reset counts as a login); see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    )
)]
#[tracing::instrument(name = "api.password_reset", skip_all)]
pub(crate) async fn reset(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ResetRequest>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let (token, password) = fields(
        required(body.token, "token"),
        required(body.password, "password").and_then(Password::parse_new),
    )?;
    super::limit_reset(&req, &state, &token).await?;
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

#[derive(Deserialize, ToSchema)]
pub(crate) struct ChangePasswordRequest {
    #[schema(value_type = String, required = true, min_length = 1, max_length = 512)]
    current_password: Option<String>,
    /// 8 to 128 characters.
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128)]
    new_password: Option<String>,
}

/// Changes the password of the signed-in user (the current one required);
/// every other session ends. A wrong current password counts as a failed login.
#[utoipa::path(
    post,
    path = "/api/v1/password",
    tag = "account",
    description = "Changes the signed-in user's password; every other session ends.",
    request_body = ChangePasswordRequest,
    responses(
        (status = 204, description = "Changed"),
        (status = 401, description = "Not signed in, or the password is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "The body is not JSON, or not an object of this shape", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid; `errors` names each", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this client or for this address; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    ),
    security(("session" = []))
)]
#[tracing::instrument(name = "api.password_change", skip_all)]
pub(crate) async fn change_password(
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
    rate_limit(&req, &state, Action::Login, &Email::stored(me.email)).await?;
    state
        .accounts
        .change_password(&session, current, new, &client(&req, &state.settings))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The signed-in user's sessions.
#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    tag = "account",
    description = "The signed-in user's sessions.",
    responses(
        (status = 200, description = "The sessions, the current one marked", body = SessionsResponse),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    ),
    security(("session" = []))
)]
#[tracing::instrument(name = "api.sessions", skip_all)]
pub(crate) async fn sessions(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let session = signed_in(&req, &state)?;
    let list = state.accounts.sessions(&session).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({ "sessions": list })))
}

/// Ends one of the signed-in user's sessions (another user's: 404).
#[utoipa::path(
    delete,
    path = "/api/v1/sessions/{id}",
    tag = "account",
    description = "Ends one of the signed-in user's sessions.",
    params(("id" = String, Path, description = "The session id from GET /api/v1/sessions")),
    responses(
        (status = 204, description = "Ended"),
        (status = 404, description = "No session of this user has this id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    ),
    security(("session" = []))
)]
#[tracing::instrument(name = "api.end_session", skip_all)]
pub(crate) async fn end_session(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let session = signed_in(&req, &state)?;
    let id = uuid::Uuid::parse_str(&id).map_err(|_| AppError::NotFound)?;
    state.accounts.end_session(&session, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct DeleteRequest {
    /// The current password.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 512)]
    password: Option<String>,
}

/// Deletes the signed-in user's account (the password required).
#[utoipa::path(
    delete,
    path = "/api/v1/me",
    tag = "account",
    description = "Deletes the signed-in user's account (the password required).",
    request_body = DeleteRequest,
    responses(
        (status = 204, description = "Deleted; the session cookie is removed"),
        (status = 401, description = "Not signed in, or the password is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "The body is not JSON, or not an object of this shape", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid; `errors` names each", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this client or for this address; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    ),
    security(("session" = []))
)]
#[tracing::instrument(name = "api.delete_me", skip_all)]
pub(crate) async fn delete_me(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<DeleteRequest>,
) -> Result<HttpResponse, AppError> {
    let session = signed_in(&req, &state)?;
    let password = one_field(
        required(body.into_inner().password, "password").and_then(Password::parse_login),
    )?;
    let me = state.accounts.me(&session).await?;
    rate_limit(&req, &state, Action::Login, &Email::stored(me.email)).await?;
    state
        .accounts
        .delete_account(&session, password, &client(&req, &state.settings))
        .await?;
    Ok(HttpResponse::NoContent()
        .cookie(removal_cookie(&state.settings))
        .finish())
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct ChangeEmailRequest {
    #[schema(value_type = String, required = true, format = Email, max_length = 254)]
    new_email: Option<String>,
    /// The current password.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 512)]
    password: Option<String>,
}

/// Asks to move the signed-in account to a new address: 202 whether or not
/// the address is taken; the change happens only through the mailed link.
#[utoipa::path(
    post,
    path = "/api/v1/email",
    tag = "account",
    description = "Asks to move the account to a new address; the same answer whether or not it is taken.",
    request_body = ChangeEmailRequest,
    responses(
        (status = 202, description = "Accepted; the new address gets a link", body = Accepted),
        (status = 401, description = "Not signed in, or the password is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "The body is not JSON, or not an object of this shape", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid; `errors` names each", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this client or for this address; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    ),
    security(("session" = []))
)]
#[tracing::instrument(name = "api.change_email", skip_all)]
pub(crate) async fn change_email(
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
    rate_limit(&req, &state, Action::Login, &Email::stored(me.email)).await?;
    rate_limit(&req, &state, Action::ChangeEmail, &new_email).await?;
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

#[derive(Deserialize, ToSchema)]
pub(crate) struct ConfirmEmailRequest {
    /// The `token` of the link mailed to the new address.
    #[schema(value_type = String, required = true, max_length = 1024)]
    token: Option<String>,
}

/// Makes the link's new address the account's (sessions stay).
#[utoipa::path(
    post,
    path = "/api/v1/email/confirm",
    tag = "account",
    description = "Makes the link's new address the account's. Only a client signed in as that account may (its session cookie): the new address's owner, clicking a change they never asked for, must not hand their address to the account that asked.",
    request_body = ConfirmEmailRequest,
    responses(
        (status = 200, description = "Changed", body = EmailChangedResponse),
        (status = 400, description = "The token is malformed, damaged, not ours or for another purpose; or the body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in as the account that asked for the change; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The link was used or superseded, or the address was taken meanwhile", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The link has expired", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid; `errors` names each", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backing service is unavailable or the hashing queue is full; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An internal error (logged)", body = Problem, content_type = "application/problem+json")
    )
)]
#[tracing::instrument(name = "api.confirm_email", skip_all)]
pub(crate) async fn confirm_email(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ConfirmEmailRequest>,
) -> Result<HttpResponse, AppError> {
    let token = one_field(required(body.into_inner().token, "token"))?;
    let session = session_token(&req, &state.settings);
    let (_, email) = state
        .accounts
        .confirm_email_change(&token, session.as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(json!({"status": "email-changed", "email": email})))
}
