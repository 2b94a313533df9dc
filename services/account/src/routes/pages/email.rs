//! Changing the account's address: asked for on /me (the password
//! required), confirmed from the link mailed to the new address.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use minijinja::context;
use serde::Deserialize;

use super::super::forms::{guard, page};
use super::super::{Action, client, rate_limit, session_token};
use super::me::me_page;
use super::see_other;
use crate::domain::{Email, FieldError, Password};
use crate::error::AppError;
use crate::state::AppState;
use crate::token::TokenError;
use crate::views::Page;

#[derive(Deserialize)]
pub(super) struct ChangeForm {
    #[serde(default)]
    new_email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

/// The change-address form on /me: the same answer whether or not the new
/// address is taken.
pub(super) async fn change(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<ChangeForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let Some(session) = session_token(&req, &state.settings) else {
        return see_other(&format!("/login?lang={}", page.lang.tag()));
    };
    let form = form.into_inner();
    let result = async {
        guard(&req, &state, &form.csrf)?;
        let (new_email, password) = super::super::fields(
            Email::parse(&form.new_email).map_err(|e| FieldError {
                field: "new_email",
                ..e
            }),
            Password::parse_login(form.password),
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
        Ok::<_, AppError>(())
    }
    .await;
    match result {
        Ok(()) => see_other(&format!("/me?lang={}&done=email", page.lang.tag())),
        Err(AppError::Unauthorized) => see_other(&format!("/login?lang={}", page.lang.tag())),
        Err(AppError::BadCredentials) => {
            me_page(
                &state,
                &page,
                &session,
                StatusCode::UNAUTHORIZED,
                context! {
                    email_message => crate::views::text(page.lang, "current_password_wrong"),
                },
            )
            .await
        }
        Err(AppError::Validation(errors)) => {
            let errors: Vec<minijinja::Value> = errors
                .iter()
                .map(|e| context! { field => e.field, message => crate::views::text(page.lang, e.key) })
                .collect();
            me_page(
                &state,
                &page,
                &session,
                StatusCode::UNPROCESSABLE_ENTITY,
                context! { email_errors => errors },
            )
            .await
        }
        Err(e) => state.views.error_page(&page, e),
    }
}

/// A change link that does not work: the page says why.
fn link_error(state: &AppState, page: &Page, err: AppError) -> HttpResponse {
    use actix_web::ResponseError;
    let (title, body) = match &err {
        AppError::Token(TokenError::Expired(_)) => ("expired_link_title", "change_expired_body"),
        AppError::Token(_) => ("invalid_link_title", "change_invalid_body"),
        AppError::TokenUsed { .. } => ("used_link_title", "change_used_body"),
        AppError::EmailTaken => ("change_taken_title", "change_taken_body"),
        AppError::Unauthorized => ("change_sign_in_title", "change_sign_in_body"),
        _ => return state.views.error_page(page, err),
    };
    err.log();
    state.views.notice(
        page,
        err.status_code(),
        title,
        body,
        context! { show_login => true },
    )
}

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

/// GET changes nothing (mail scanners fetch it): the old and the new
/// address, and one button.
pub(super) async fn confirm_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    q: web::Query<TokenQuery>,
) -> HttpResponse {
    let page = page(&req, &state);
    let token = q.into_inner().token.unwrap_or_default();
    match state.accounts.inspect_email_change(&token).await {
        Ok((claims, current)) => {
            // Only the account that asked confirms: say so before a press,
            // in a browser (a phone's mail app, say) not signed in as it.
            let me = match session_token(&req, &state.settings) {
                Some(s) => state.accounts.me(&s).await.ok(),
                None => None,
            };
            if me.is_none_or(|u| u.id != claims.user_id) {
                return state.views.notice(
                    &page,
                    StatusCode::OK,
                    "change_sign_in_title",
                    "change_sign_in_body",
                    context! { show_login => true },
                );
            }
            state.views.render(
                &page,
                StatusCode::OK,
                "email_confirm.html",
                context! { token, old_email => current, new_email => claims.email },
            )
        }
        Err(e) => link_error(&state, &page, e.into()),
    }
}

#[derive(Deserialize)]
pub(super) struct ConfirmForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

pub(super) async fn confirm(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<ConfirmForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let result = async {
        guard(&req, &state, &form.csrf)?;
        let session = session_token(&req, &state.settings);
        Ok::<_, AppError>(
            state
                .accounts
                .confirm_email_change(&form.token, session.as_deref())
                .await?,
        )
    }
    .await;
    match result {
        Ok((_, new_email)) => state.views.notice(
            &page,
            StatusCode::OK,
            "email_changed_title",
            "email_changed_body",
            context! { new_email, show_me => true },
        ),
        Err(e) => link_error(&state, &page, e),
    }
}
