//! What every form post shares: the refusal of other sites' posts (login
//! CSRF), and the credentials form that sign-up and login both are.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use minijinja::context;
use serde::Deserialize;

use super::{Action, fields, rate_limit};
use crate::domain::{Email, FieldError, Password};
use crate::error::AppError;
use crate::i18n::Lang;
use crate::state::AppState;

/// Refuses form posts from other sites (login CSRF). Browsers that send
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

/// The sign-up and login forms: an address and a password.
#[derive(Deserialize)]
pub struct CredentialsForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

/// A credentials form that did not go through: what was typed, and why.
pub struct Rejected {
    typed: String,
    pub error: AppError,
}

impl CredentialsForm {
    /// Checks the origin, parses both fields (the password with `policy`),
    /// applies the limits of `action`, then runs `op` on the parsed values.
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
            same_origin(req, state)?;
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
        template: &str,
        lang: Lang,
        message_key: &str,
    ) -> HttpResponse {
        use actix_web::ResponseError;
        state.views.render(
            self.error.status_code(),
            template,
            lang,
            context! { message => crate::views::text(lang, message_key), email => self.typed },
        )
    }

    /// The form again with its field errors, or the error page.
    pub fn page(self, state: &AppState, template: &str, lang: Lang) -> HttpResponse {
        match self.error {
            AppError::Validation(errors) => {
                state
                    .views
                    .form_errors(template, lang, &errors, context! { email => self.typed })
            }
            error => state.views.error_page(lang, error),
        }
    }
}
