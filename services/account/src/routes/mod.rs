//! HTTP routes: the JSON API, the pages, and the operations endpoints, with
//! what they share: cookies, the client key, the language, the limits.

pub mod api;
pub mod forms;
pub mod ops;
pub mod pages;

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite, time};

use crate::config::Settings;
use crate::domain::{Email, FieldError};
use crate::error::AppError;
use crate::i18n::Lang;
pub use crate::ratelimit::Action;
use crate::ratelimit::Refusal;
use crate::state::AppState;

/// The cookie name: `__Host-` when Secure, which browsers pin to this host and path `/`.
pub fn cookie_name(settings: &Settings) -> &'static str {
    if settings.cookie_secure {
        "__Host-session"
    } else {
        "session"
    }
}

/// The session cookie carrying `value`.
pub fn session_cookie(settings: &Settings, value: &str) -> Cookie<'static> {
    Cookie::build(cookie_name(settings), value.to_owned())
        .path("/")
        .http_only(true)
        .secure(settings.cookie_secure)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::seconds(
            settings.session_ttl.as_secs() as i64
        ))
        .finish()
}

/// A cookie that removes the session cookie.
pub fn removal_cookie(settings: &Settings) -> Cookie<'static> {
    let mut c = session_cookie(settings, "");
    c.make_removal();
    c
}

/// The session token sent by the browser, if any.
pub fn session_token(req: &HttpRequest, settings: &Settings) -> Option<String> {
    req.cookie(cookie_name(settings))
        .map(|c| c.value().to_owned())
}

/// The client address rate limits key on: the peer, or the last X-Forwarded-For
/// hop when the operator says a proxy sets it.
pub fn client_key(req: &HttpRequest, settings: &Settings) -> String {
    if settings.trust_forwarded_for
        && let Some(hop) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    {
        return hop.to_owned();
    }
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The page language: `?lang=`, then Accept-Language, then the default.
pub fn lang(req: &HttpRequest, state: &AppState) -> Lang {
    let from_query = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "lang")
        .and_then(|(_, v)| Lang::from_tag(&v));
    from_query
        .or_else(|| {
            req.headers()
                .get("accept-language")
                .and_then(|v| v.to_str().ok())
                .and_then(Lang::from_accept_language)
        })
        .unwrap_or(state.settings.default_locale)
}

/// Counts the request against the limits of `action` for this client and
/// address (shared by every instance): 429 with Retry-After when one is spent.
pub async fn rate_limit(
    req: &HttpRequest,
    state: &AppState,
    action: Action,
    email: &Email,
) -> Result<(), AppError> {
    let client = client_key(req, &state.settings);
    match state.limits.check(action, &client, &email.key()).await {
        Ok(()) => Ok(()),
        Err(Refusal::Limited(wait)) => Err(AppError::RateLimited(wait)),
        Err(Refusal::Unavailable(e)) => Err(AppError::Unavailable(e)),
    }
}

/// Collects every field error at once, so a client can show them together.
pub fn fields<A, B>(
    a: Result<A, FieldError>,
    b: Result<B, FieldError>,
) -> Result<(A, B), AppError> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (a, b) => Err(AppError::Validation(
            [a.err(), b.err()].into_iter().flatten().collect(),
        )),
    }
}
