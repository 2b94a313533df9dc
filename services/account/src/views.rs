//! The pages' view layer: the embedded templates, the security headers every
//! page carries (a CSP with a fresh script nonce), and how an error or a
//! form's field errors look on a page, in the page's language.

use actix_web::cookie::Cookie;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};
use base64::Engine;
use minijinja::{Environment, Value, context};

use crate::domain::FieldError;
use crate::error::AppError;
use crate::i18n::Lang;
use crate::token::TokenError;

/// The page templates, compiled once.
pub struct Views {
    env: Environment<'static>,
    /// ACCOUNT_BRAND; unset, the generic `site_name` of the page's language.
    brand: Option<String>,
}

impl Default for Views {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Views {
    /// The pages, titled with `brand`.
    pub fn new(brand: Option<String>) -> Self {
        let mut env = Environment::new();
        for (name, src) in [
            ("base.html", include_str!("../templates/base.html")),
            ("errors.html", include_str!("../templates/errors.html")),
            ("signup.html", include_str!("../templates/signup.html")),
            ("notice.html", include_str!("../templates/notice.html")),
            ("verify.html", include_str!("../templates/verify.html")),
            ("login.html", include_str!("../templates/login.html")),
            ("me.html", include_str!("../templates/me.html")),
            ("forgot.html", include_str!("../templates/forgot.html")),
            ("reset.html", include_str!("../templates/reset.html")),
            ("delete.html", include_str!("../templates/delete.html")),
            ("code.html", include_str!("../templates/code.html")),
            (
                "email_confirm.html",
                include_str!("../templates/email_confirm.html"),
            ),
        ] {
            env.add_template(name, src)
                .expect("embedded templates parse");
        }
        Self { env, brand }
    }
}

/// What every page of one request needs: its language, and the CSRF token
/// its forms carry, with the cookie to set when the browser had none.
pub struct Page {
    pub lang: Lang,
    pub csrf: String,
    pub new_csrf_cookie: Option<Cookie<'static>>,
}

/// One translated string of `lang`.
pub fn text(lang: Lang, key: &str) -> &'static str {
    lang.strings()
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or("")
}

impl Views {
    /// Renders a page with a fresh CSP nonce and the CSRF token for its forms.
    pub fn render(&self, page: &Page, status: StatusCode, name: &str, ctx: Value) -> HttpResponse {
        let lang = page.lang;
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        let nonce = base64::engine::general_purpose::STANDARD.encode(nonce);
        let brand = self.brand.as_deref().unwrap_or(text(lang, "site_name"));
        let ctx = context! {
            t => Value::from(minijinja::value::Serde(lang.strings())),
            nonce => &nonce,
            csrf => &page.csrf,
            brand,
            ..ctx
        };
        let html = match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => html,
            Err(e) => {
                tracing::error!(error = %e, template = name, "page rendering failed");
                return HttpResponse::InternalServerError().finish();
            }
        };
        let mut res = HttpResponse::build(status);
        if let Some(cookie) = &page.new_csrf_cookie {
            res.cookie(cookie.clone());
        }
        res.content_type("text/html; charset=utf-8")
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

    /// A short page with a title and a sentence (and, in `ctx`, the forms it offers).
    pub fn notice(
        &self,
        page: &Page,
        status: StatusCode,
        title: &str,
        body: &str,
        ctx: Value,
    ) -> HttpResponse {
        let lang = page.lang;
        let ctx = context! { title => text(lang, title), body => text(lang, body), ..ctx };
        self.render(page, status, "notice.html", ctx)
    }

    /// A form page again, with its field errors in the page's language and
    /// what the person typed (never the password).
    pub fn form_errors(
        &self,
        page: &Page,
        name: &str,
        errors: &[FieldError],
        ctx: Value,
    ) -> HttpResponse {
        let errors: Vec<Value> = errors
            .iter()
            .map(|e| context! { field => e.field, message => text(page.lang, e.key) })
            .collect();
        self.render(
            page,
            StatusCode::UNPROCESSABLE_ENTITY,
            name,
            context! { errors, ..ctx },
        )
    }

    /// An error as a page in the user's language.
    pub fn error_page(&self, page: &Page, err: AppError) -> HttpResponse {
        err.log();
        let (title, body, ctx) = match &err {
            AppError::Token(TokenError::Expired(claims)) => (
                "expired_link_title",
                "expired_link_body",
                context! { resend_email => claims.email.clone() },
            ),
            AppError::Token(_) => (
                "invalid_link_title",
                "invalid_link_body",
                context! { show_resend_form => true },
            ),
            AppError::TokenUsed { .. } => (
                "used_link_title",
                "used_link_body",
                context! { show_login => true, show_resend_form => true },
            ),
            AppError::RateLimited(_) => ("error_title", "rate_limited", context! {}),
            AppError::Busy(_) => ("error_title", "busy", context! {}),
            AppError::BadRequest(_)
            | AppError::UnsupportedMediaType
            | AppError::PayloadTooLarge => ("error_title", "bad_request", context! {}),
            AppError::Forbidden(_) => ("error_title", "forbidden", context! {}),
            AppError::CodeInvalid => ("error_title", "code_invalid", context! {}),
            _ => ("error_title", "error_body", context! {}),
        };
        let mut res = self.notice(page, err.status_code(), title, body, ctx);
        if let Some(secs) = err.retry_after() {
            res.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        res
    }
}
