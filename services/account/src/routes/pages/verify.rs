//! The verification link's page and its confirmation.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use minijinja::context;
use serde::Deserialize;

use super::super::forms::{guard, page};
use super::super::{Action, Jar, client, limit_link_password, rate_limit, session_cookie};
use crate::accounts::Verified;
use crate::domain::{Email, Password};
use crate::error::AppError;
use crate::state::AppState;
use crate::token::TokenError;
use crate::views::Page;

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

/// GET never consumes the token: link scanners fetch it too. It names the
/// address; in the browser that signed up the page posts itself, anywhere
/// else the person types the password chosen at sign-up and presses a
/// button that says whose account it is.
pub(super) async fn verify_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    q: web::Query<TokenQuery>,
) -> HttpResponse {
    let page = page(&req, &state);
    let Some(token) = q
        .into_inner()
        .token
        .filter(|t| !t.is_empty() && t.len() <= 1024)
    else {
        return state
            .views
            .error_page(&page, AppError::Token(TokenError::Malformed));
    };
    let client = client(&req, &state.settings);
    match state
        .accounts
        .inspect_verification_by(&token, &client)
        .await
    {
        Ok((claims, same_browser)) => state.views.render(
            &page,
            StatusCode::OK,
            "verify.html",
            context! { token, email => claims.email, same_browser },
        ),
        Err(e) => state.views.error_page(&page, e.into()),
    }
}

#[derive(Deserialize)]
pub(super) struct TokenForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

/// A typed password, if any (an empty field is none).
fn typed(password: String) -> Result<Option<Password>, AppError> {
    if password.is_empty() {
        return Ok(None);
    }
    Password::parse_login(password)
        .map(Some)
        .map_err(|e| AppError::Validation(vec![e]))
}

/// The page's message for a verification that needs the sign-up's password.
fn password_message(lang: crate::i18n::Lang, wrong: bool) -> &'static str {
    crate::views::text(
        lang,
        if wrong {
            "password_wrong"
        } else {
            "password_needed"
        },
    )
}

pub(super) async fn verify(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<TokenForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let form = form.into_inner();
    let result = async {
        guard(&req, &state, &form.csrf)?;
        let client = client(&req, &state.settings);
        let password = typed(form.password)?;
        if password.is_some() {
            limit_link_password(&req, &state, &form.token).await?;
        }
        Ok::<_, AppError>(
            state
                .accounts
                .verify(&form.token, password, &client)
                .await?,
        )
    }
    .await;
    match result {
        Ok(verified) => answer(&state, &page, verified),
        // Nothing changed: the same page again, saying what it needs.
        Err(AppError::PasswordNeeded { wrong }) => {
            match state.accounts.inspect_verification(&form.token).await {
                Ok(claims) => state.views.render(
                    &page,
                    StatusCode::FORBIDDEN,
                    "verify.html",
                    context! {
                        token => form.token,
                        email => claims.email,
                        same_browser => false,
                        message => password_message(page.lang, wrong),
                    },
                ),
                Err(e) => state.views.error_page(&page, e.into()),
            }
        }
        Err(e) => state.views.error_page(&page, e),
    }
}

/// A verification's page: signed in and on to the post-verify page, or,
/// for a browser signed in as someone else, what happened and how to switch.
fn answer(state: &AppState, page: &Page, verified: Verified) -> HttpResponse {
    match verified.session {
        Some(session) => HttpResponse::SeeOther()
            .cookie(session_cookie(&state.settings, session.as_str()))
            .cookie(Jar::Binding.removal(&state.settings))
            .insert_header((header::LOCATION, post_verify_location(state, page)))
            .finish(),
        // Signed in as someone else: the address is verified, the session stays.
        None => state.views.notice(
            page,
            StatusCode::OK,
            "verified_kept_title",
            "verified_kept_body",
            context! {
                verified_email => verified.email,
                kept_email => verified.kept_session_of,
                show_switch => true,
            },
        ),
    }
}

fn post_verify_location(state: &AppState, page: &Page) -> String {
    let target = &state.settings.post_verify_url;
    let sep = if target.contains('?') { '&' } else { '?' };
    format!("{target}{sep}lang={}", page.lang.tag())
}

/// The page where a person types the code of their verification mail.
pub(super) async fn code_form(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let page = page(&req, &state);
    state
        .views
        .render(&page, StatusCode::OK, "code.html", context! {})
}

#[derive(Deserialize)]
pub(super) struct CodeForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

/// Verifies by code with the link's rules for pages: signed in, unless the
/// browser is signed in as someone else.
pub(super) async fn code(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<CodeForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let form = form.into_inner();
    let result = async {
        guard(&req, &state, &form.csrf)?;
        let email = Email::parse(&form.email).map_err(|e| AppError::Validation(vec![e]))?;
        rate_limit(&req, &state, Action::Code, &email).await?;
        let client = client(&req, &state.settings);
        let password = typed(form.password)?;
        Ok::<_, AppError>(
            state
                .accounts
                .verify_code(email, &form.code, password, &client)
                .await?,
        )
    }
    .await;
    match result {
        Ok(verified) => answer(&state, &page, verified),
        Err(AppError::Validation(errors)) => state.views.form_errors(
            &page,
            "code.html",
            &errors,
            context! { email => form.email },
        ),
        Err(
            e
            @ (AppError::CodeInvalid | AppError::RateLimited(_) | AppError::PasswordNeeded { .. }),
        ) => {
            use actix_web::ResponseError;
            let message = match e {
                AppError::CodeInvalid => crate::views::text(page.lang, "code_invalid"),
                AppError::PasswordNeeded { wrong } => password_message(page.lang, wrong),
                _ => crate::views::text(page.lang, "rate_limited"),
            };
            let mut res = state.views.render(
                &page,
                e.status_code(),
                "code.html",
                context! { email => form.email, message },
            );
            if let Some(secs) = e.retry_after() {
                res.headers_mut().insert(header::RETRY_AFTER, secs.into());
            }
            res
        }
        Err(e) => state.views.error_page(&page, e),
    }
}
