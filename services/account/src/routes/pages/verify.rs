//! The verification link's page and its confirmation.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use minijinja::context;
use serde::Deserialize;

use super::super::forms::{guard, page};
use super::super::{Jar, client, session_cookie};
use crate::error::AppError;
use crate::state::AppState;
use crate::token::TokenError;
use crate::views::Page;

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

/// GET never consumes the token: link scanners fetch it too. It names the
/// address; in the browser that asked for the link the page posts itself,
/// anywhere else the person presses a button that says whose account it is.
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
    match state.accounts.inspect_verification(&token).await {
        Ok(claims) => {
            let cookie = Jar::Binding.value(&req, &state.settings);
            let same_browser = crate::binding::matches(cookie.as_deref(), claims.binding.as_ref());
            state.views.render(
                &page,
                StatusCode::OK,
                "verify.html",
                context! { token, email => claims.email, same_browser },
            )
        }
        Err(e) => state.views.error_page(&page, e.into()),
    }
}

#[derive(Deserialize)]
pub(super) struct TokenForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

pub(super) async fn verify(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<TokenForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let result = async {
        guard(&req, &state, &form.csrf)?;
        let client = client(&req, &state.settings);
        Ok::<_, AppError>(state.accounts.verify(&form.token, &client).await?)
    }
    .await;
    let verified = match result {
        Ok(v) => v,
        Err(e) => return state.views.error_page(&page, e),
    };
    match verified.session {
        Some(session) => HttpResponse::SeeOther()
            .cookie(session_cookie(&state.settings, session.as_str()))
            .cookie(Jar::Binding.removal(&state.settings))
            .insert_header((header::LOCATION, post_verify_location(&state, &page)))
            .finish(),
        // Signed in as someone else: the address is verified, the session stays.
        None => state.views.notice(
            &page,
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
