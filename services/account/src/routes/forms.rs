//! What every form post shares: the refusal of other sites' posts (login
//! CSRF) by the Fetch Metadata or Origin headers AND a per-browser token in
//! a cookie that each form repeats, and the credentials form that sign-up
//! and login both are.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine;
use minijinja::context;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{Action, Jar, fields, lang, rate_limit};
use crate::domain::{Email, FieldError, Password};
use crate::error::AppError;
use crate::state::AppState;
use crate::views::Page;

/// Refuses form posts from other sites. Browsers that send
/// `Sec-Fetch-Site` are judged by it; otherwise the Origin, when sent, must be
/// this service's public origin or the Host the request came to.
pub fn same_origin(req: &HttpRequest, state: &AppState) -> Result<(), AppError> {
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

/// Checks a form post: from this site (headers) and carrying the token of
/// this browser's CSRF cookie. A post with neither header and no token, or
/// a token another browser got, is refused.
pub fn guard(req: &HttpRequest, state: &AppState, token: &str) -> Result<(), AppError> {
    same_origin(req, state)?;
    let cookie = Jar::Csrf.value(req, &state.settings).unwrap_or_default();
    if cookie.is_empty() || !bool::from(cookie.as_bytes().ct_eq(token.as_bytes())) {
        return Err(AppError::Forbidden("missing or stale form token"));
    }
    Ok(())
}

/// The page context of a request: its language and its CSRF token (the
/// cookie's, or a new one the response sets).
pub fn page(req: &HttpRequest, state: &AppState) -> Page {
    let lang = lang(req, state);
    match Jar::Csrf.value(req, &state.settings) {
        Some(csrf) => Page {
            lang,
            csrf,
            new_csrf_cookie: None,
        },
        None => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).expect("the OS random source works");
            let csrf = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            Page {
                lang,
                new_csrf_cookie: Some(Jar::Csrf.cookie(&state.settings, &csrf)),
                csrf,
            }
        }
    }
}

/// The sign-up and login forms: an address and a password.
#[derive(Deserialize)]
pub struct CredentialsForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

/// A credentials form that did not go through: what was typed, and why.
pub struct Rejected {
    typed: String,
    pub error: AppError,
}

impl CredentialsForm {
    /// Guards the post, parses both fields (the password with `policy`),
    /// applies the limits, then runs `op` on the parsed values.
    pub async fn submit<T, Fut>(
        self,
        req: &HttpRequest,
        state: &AppState,
        action: Action,
        policy: fn(String) -> Result<Password, FieldError>,
        op: impl FnOnce(Email, Password) -> Fut,
    ) -> Result<T, Rejected>
    where
        Fut: Future<Output = Result<T, AppError>>,
    {
        let typed = self.email.clone();
        let result = async {
            guard(req, state, &self.csrf)?;
            let (email, password) = fields(Email::parse(&self.email), policy(self.password))?;
            rate_limit(req, state, action, &email).await?;
            op(email, password).await
        }
        .await;
        result.map_err(|error| Rejected { typed, error })
    }
}

impl Rejected {
    /// The form again with a message (e.g. wrong credentials), keeping the address.
    pub fn again(
        self,
        state: &AppState,
        page: &Page,
        template: &str,
        message_key: &str,
    ) -> HttpResponse {
        use actix_web::ResponseError;
        state.views.render(
            page,
            self.error.status_code(),
            template,
            context! { message => crate::views::text(page.lang, message_key), email => self.typed },
        )
    }

    /// The form again with its field errors, or the error page.
    pub fn page(self, state: &AppState, page: &Page, template: &str) -> HttpResponse {
        match self.error {
            AppError::Validation(errors) => {
                state
                    .views
                    .form_errors(page, template, &errors, context! { email => self.typed })
            }
            error => state.views.error_page(page, error),
        }
    }
}
