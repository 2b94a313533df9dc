//! Errors at the HTTP boundary, as RFC 9457 `application/problem+json`.
//! The cause chain of an internal error is logged once and never shown.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::accounts::AccountError;
use crate::domain::FieldError;
use crate::token::TokenError;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid input")]
    Validation(Vec<FieldError>),
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("unsupported media type; send application/json")]
    UnsupportedMediaType,
    #[error("no such resource")]
    NotFound,
    #[error("this method is not allowed here; see the Allow header")]
    MethodNotAllowed,
    #[error("too many requests")]
    RateLimited(Duration),
    #[error("not signed in")]
    Unauthorized,
    #[error("invalid e-mail address or password")]
    BadCredentials,
    #[error("too much work queued; retry shortly")]
    Busy(Duration),
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the link or code was already used, or a newer mail replaced it")]
    TokenUsed { email: String },
    #[error("the code is wrong, expired or was tried too often; ask for a new mail")]
    CodeInvalid,
    #[error("this browser did not sign up for the account")]
    PasswordNeeded { wrong: bool },
    #[error("the address now belongs to another account")]
    EmailTaken,
    #[error("temporarily unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<AccountError> for AppError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::BadCredentials => Self::BadCredentials,
            AccountError::NoSession => Self::Unauthorized,
            AccountError::NotFound => Self::NotFound,
            AccountError::CodeInvalid => Self::CodeInvalid,
            AccountError::EmailTaken => Self::EmailTaken,
            AccountError::Busy(wait) => Self::Busy(wait),
            // Nobody reads this answer: the client has gone.
            AccountError::Abandoned => Self::Busy(Duration::from_secs(1)),
            AccountError::Token(t) => Self::Token(t),
            AccountError::TokenUsed { email } => Self::TokenUsed { email },
            AccountError::PasswordNeeded { wrong } => Self::PasswordNeeded { wrong },
            AccountError::Unavailable(e) => Self::Unavailable(e),
            AccountError::Internal(e) => Self::Internal(e),
        }
    }
}

impl AppError {
    /// The problem `type` slug, also used by the pages to pick a message.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Validation(_) => "invalid-input",
            Self::BadRequest(_) => "bad-request",
            Self::PayloadTooLarge => "payload-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::RateLimited(_) => "rate-limited",
            Self::Unauthorized => "unauthorized",
            Self::BadCredentials => "bad-credentials",
            Self::Busy(_) => "busy",
            Self::Forbidden(_) => "forbidden",
            Self::Token(TokenError::Expired(_)) => "token-expired",
            Self::Token(_) => "token-invalid",
            Self::TokenUsed { .. } => "token-used",
            Self::CodeInvalid => "code-invalid",
            Self::PasswordNeeded { wrong: false } => "password-needed",
            Self::PasswordNeeded { wrong: true } => "password-wrong",
            Self::EmailTaken => "email-taken",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Validation(_) => "One or more fields are invalid.".into(),
            Self::BadRequest(m) => m.clone(),
            Self::RateLimited(_) => "Too many requests; retry after the indicated delay.".into(),
            Self::Busy(_) => "The service is busy; retry after the indicated delay.".into(),
            Self::Token(TokenError::Expired(_)) => {
                "The link has expired; ask for a new one at /api/v1/verification/resend.".into()
            }
            Self::Token(_) => "The link is malformed, damaged or not ours.".into(),
            Self::PasswordNeeded { wrong: false } => {
                "This client did not sign up for the account: send the password chosen at \
                 sign-up as `password`, or set a new one through /api/v1/password/forgot. \
                 The link or code stays good."
                    .into()
            }
            Self::PasswordNeeded { wrong: true } => {
                "The password is not the one chosen at sign-up; set a new one through \
                 /api/v1/password/forgot. The link or code stays good."
                    .into()
            }
            Self::Unavailable(_) => "A backing service is unavailable; retry shortly.".into(),
            Self::Internal(_) => "An internal error occurred; it has been logged.".into(),
            other => other.to_string(),
        }
    }

    /// Logs server-side failures with their cause chain (once, here).
    pub fn log(&self) {
        match self {
            Self::Internal(e) => tracing::error!(error = format!("{e:#}"), "request failed"),
            Self::Unavailable(e) => {
                tracing::warn!(error = format!("{e:#}"), "dependency unavailable")
            }
            _ => {}
        }
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthorized | Self::BadCredentials => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::PasswordNeeded { .. } => StatusCode::FORBIDDEN,
            Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Token(TokenError::Expired(_)) => StatusCode::GONE,
            Self::Token(_) => StatusCode::BAD_REQUEST,
            Self::TokenUsed { .. } | Self::EmailTaken => StatusCode::CONFLICT,
            Self::CodeInvalid => StatusCode::BAD_REQUEST,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        self.log();
        let status = self.status_code();
        let mut body = json!({
            "type": format!("/problems/{}", self.kind()),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.detail(),
        });
        if let Self::Validation(fields) = self {
            body["errors"] = fields
                .iter()
                .map(|f| json!({"field": f.field, "message": f.message}))
                .collect();
        }
        let mut res = HttpResponse::build(status);
        res.content_type("application/problem+json");
        if let Some(wait) = self.retry_after() {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from(wait)));
        }
        res.body(body.to_string())
    }
}

impl AppError {
    /// Seconds for a `Retry-After` header, when the error has one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited(wait) | Self::Busy(wait) => {
                Some(wait.as_secs_f64().ceil().max(1.0) as u64)
            }
            Self::Unavailable(_) => Some(5),
            _ => None,
        }
    }
}
