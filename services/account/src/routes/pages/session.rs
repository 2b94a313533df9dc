//! Signing in and out.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use minijinja::context;
use serde::Deserialize;

use super::super::forms::{CredentialsForm, guard, page};
use super::super::{Action, client, removal_cookie, session_cookie, session_token};
use crate::accounts::Client;
use crate::domain::Password;
use crate::error::AppError;
use crate::state::AppState;

pub(super) async fn login_form(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let page = page(&req, &state);
    state
        .views
        .render(&page, StatusCode::OK, "login.html", context! {})
}

pub(super) async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<CredentialsForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let client: Client = client(&req, &state.settings);
    let result = form
        .into_inner()
        .submit(
            &req,
            &state,
            Action::Login,
            Password::parse_login,
            async |email, password| Ok(state.accounts.login(email, password, &client).await?),
        )
        .await;
    match result {
        Ok(session) => HttpResponse::SeeOther()
            .cookie(session_cookie(&state.settings, session.as_str()))
            .insert_header((header::LOCATION, format!("/me?lang={}", page.lang.tag())))
            .finish(),
        Err(r) if matches!(r.error, AppError::BadCredentials) => {
            r.again(&state, &page, "login.html", "login_failed")
        }
        Err(r) => r.page(&state, &page, "login.html"),
    }
}

#[derive(Deserialize)]
pub(super) struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<LogoutForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    if let Err(e) = guard(&req, &state, &form.csrf) {
        return state.views.error_page(&page, e);
    }
    if let Some(token) = session_token(&req, &state.settings)
        && let Err(e) = state.accounts.logout(&token).await
    {
        tracing::warn!(error = %e, "could not delete a session at logout");
    }
    HttpResponse::SeeOther()
        .cookie(removal_cookie(&state.settings))
        .insert_header((header::LOCATION, format!("/login?lang={}", page.lang.tag())))
        .finish()
}

/// Ends every session of the signed-in person ("sign out everywhere").
pub(super) async fn logout_all(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<LogoutForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    if let Err(e) = guard(&req, &state, &form.csrf) {
        return state.views.error_page(&page, e);
    }
    if let Some(token) = session_token(&req, &state.settings)
        && let Err(e) = state.accounts.logout_all(&token).await
    {
        tracing::warn!(error = %e, "could not end every session");
    }
    HttpResponse::SeeOther()
        .cookie(removal_cookie(&state.settings))
        .insert_header((header::LOCATION, format!("/login?lang={}", page.lang.tag())))
        .finish()
}
