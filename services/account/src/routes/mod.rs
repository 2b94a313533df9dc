//! HTTP routes: the JSON API, the pages, and the operations endpoints, with
//! what they share: cookies, the client key, the language, the limits.

pub mod api;
pub mod forms;
pub mod openapi;
pub mod ops;
pub mod pages;
pub mod peer;

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite, time};

use crate::accounts::Client;
use crate::binding::Binding;
use crate::config::Settings;
use crate::domain::{Email, FieldError};
use crate::error::AppError;
use crate::i18n::Lang;
pub use crate::ratelimit::Action;
use crate::ratelimit::Refusal;
use crate::state::AppState;

/// The cookies this service sets. With `Secure`, each name takes the
/// `__Host-` prefix, which browsers pin to this host and path `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jar {
    /// The session.
    Session,
    /// The verification link's browser binding (see `binding`).
    Binding,
    /// The CSRF token repeated in every form.
    Csrf,
}

impl Jar {
    /// The cookie's name under these settings.
    pub fn name(self, settings: &Settings) -> &'static str {
        match (self, settings.cookie_secure) {
            (Self::Session, true) => "__Host-session",
            (Self::Session, false) => "session",
            (Self::Binding, true) => "__Host-verify",
            (Self::Binding, false) => "verify",
            (Self::Csrf, true) => "__Host-csrf",
            (Self::Csrf, false) => "csrf",
        }
    }

    /// The cookie carrying `value`: HttpOnly, SameSite=Lax (sent on the
    /// top-level navigation from a mail to this site, never on another
    /// site's form post), for as long as what it carries lives.
    pub fn cookie(self, settings: &Settings, value: &str) -> Cookie<'static> {
        let mut c = Cookie::build(self.name(settings), value.to_owned())
            .path("/")
            .http_only(true)
            .secure(settings.cookie_secure)
            .same_site(SameSite::Lax)
            .finish();
        let lifetime = match self {
            Self::Session => Some(settings.session_ttl),
            Self::Binding => Some(settings.token_ttl),
            // For the browser's session: a token per visit is enough.
            Self::Csrf => None,
        };
        if let Some(d) = lifetime {
            c.set_max_age(time::Duration::seconds(d.as_secs() as i64));
        }
        c
    }

    /// A cookie that removes this one.
    pub fn removal(self, settings: &Settings) -> Cookie<'static> {
        let mut c = self.cookie(settings, "");
        c.make_removal();
        c
    }

    /// The value the browser sent, if any.
    pub fn value(self, req: &HttpRequest, settings: &Settings) -> Option<String> {
        req.cookie(self.name(settings))
            .map(|c| c.value().to_owned())
            .filter(|v| !v.is_empty())
    }
}

/// A resource at `path` whose other methods answer 405 with `Allow`.
pub fn resource(path: &str, allow: &'static [&'static str]) -> actix_web::Resource {
    actix_web::web::resource(path).default_service(actix_web::web::to(move || async move {
        use actix_web::ResponseError;
        let mut res = AppError::MethodNotAllowed.error_response();
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&allow.join(", ")) {
            res.headers_mut().insert(actix_web::http::header::ALLOW, v);
        }
        res
    }))
}

/// The session cookie carrying `value`.
pub fn session_cookie(settings: &Settings, value: &str) -> Cookie<'static> {
    Jar::Session.cookie(settings, value)
}

/// A cookie that removes the session cookie.
pub fn removal_cookie(settings: &Settings) -> Cookie<'static> {
    Jar::Session.removal(settings)
}

/// The session token sent by the browser, if any.
pub fn session_token(req: &HttpRequest, settings: &Settings) -> Option<String> {
    Jar::Session.value(req, settings)
}

/// A fresh binding for a link this request asks for, and its cookie.
pub fn new_binding(settings: &Settings) -> (Binding, Cookie<'static>) {
    let binding = Binding::generate();
    let cookie = Jar::Binding.cookie(settings, binding.as_str());
    (binding, cookie)
}

/// The browser behind a request, for the account operations.
pub fn client(req: &HttpRequest, settings: &Settings) -> Client {
    Client {
        session: session_token(req, settings),
        binding: Jar::Binding.value(req, settings),
        user_agent: req
            .headers()
            .get(actix_web::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        still_there: peer::still_there(req),
    }
}

/// The client address rate limits key on: the peer, or the last X-Forwarded-For
/// hop when the operator says a proxy sets it.
pub fn client_key(req: &HttpRequest, settings: &Settings) -> String {
    // The last hop of the last header line: a proxy that adds a line of its
    // own (HAProxy) rather than joining the client's must win over the
    // client's line, which `get` (the first line) would read.
    if settings.trust_forwarded_for
        && let Some(line) = req.headers().get_all("x-forwarded-for").last()
    {
        let line = String::from_utf8_lossy(line.as_bytes());
        let hop = line.rsplit(',').next().map(str::trim).unwrap_or_default();
        if !hop.is_empty() {
            return match hop_address(hop) {
                Some(ip) => address_key(ip),
                // Not an address (a proxy's own notation): as is, bounded.
                None => hop.chars().take(64).collect(),
            };
        }
    }
    req.peer_addr()
        .map(|a| address_key(a.ip()))
        .unwrap_or_else(|| "unknown".into())
}

/// The address in a forwarded hop: `203.0.113.9`, `2001:db8::1`, with a
/// port (`203.0.113.9:5555`, `[2001:db8::1]:443`), bracketed, or with a zone
/// (`fe80::1%eth0`). A port must not make a new client of each connection.
fn hop_address(hop: &str) -> Option<std::net::IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Ok(sock) = hop.parse::<std::net::SocketAddr>() {
        return Some(sock.ip());
    }
    let bare = hop.trim_start_matches('[').trim_end_matches(']');
    let bare = bare.split('%').next().unwrap_or(bare);
    bare.parse().ok()
}

/// The rate-limit key of a client address: IPv4 as is (an IPv4-mapped IPv6
/// address too), IPv6 by its /64. One subscriber or host is handed a whole
/// /64; keyed per address, a client rotating through it (2^64 addresses)
/// would never meet a per-client limit.
pub fn address_key(ip: std::net::IpAddr) -> String {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
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

/// A new password sent with a reset link counts as a login to the link's
/// address from this client: one live link fired in parallel must not fill
/// the hashing queue (each request would hash before the first commits).
pub async fn limit_reset(req: &HttpRequest, state: &AppState, token: &str) -> Result<(), AppError> {
    let claims = state.accounts.reset_claims(token)?;
    rate_limit(req, state, Action::Login, &Email::stored(claims.email)).await
}

/// A password typed against a verification link counts as a login to the
/// link's address from this client: whoever holds a leaked link guesses the
/// sign-up's password no faster than at the login form, and cannot fill
/// the hashing queue from one client. (Checked before the hash; a link
/// that does not open answers its own error first.)
pub async fn limit_link_password(
    req: &HttpRequest,
    state: &AppState,
    token: &str,
) -> Result<(), AppError> {
    let claims = state.accounts.verification_claims(token)?;
    let email = Email::parse(&claims.email).map_err(|e| AppError::Validation(vec![e]))?;
    rate_limit(req, state, Action::Login, &email).await
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

#[cfg(test)]
mod tests {
    use super::{address_key, hop_address};

    #[test]
    fn forwarded_hops_with_ports_brackets_or_zones_are_their_address() {
        let ip = |s: &str| hop_address(s).map(|a| a.to_string());
        assert_eq!(ip("203.0.113.9").as_deref(), Some("203.0.113.9"));
        assert_eq!(ip("203.0.113.9:5555").as_deref(), Some("203.0.113.9"));
        assert_eq!(ip("[2001:db8::1]:443").as_deref(), Some("2001:db8::1"));
        assert_eq!(ip("[2001:db8::1]").as_deref(), Some("2001:db8::1"));
        assert_eq!(ip("fe80::1%eth0").as_deref(), Some("fe80::1"));
        assert_eq!(ip("unknown"), None);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_ipv4_as_is() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("203.0.113.9"), "203.0.113.9");
        assert_eq!(key("::ffff:203.0.113.9"), "203.0.113.9");
    }
}
