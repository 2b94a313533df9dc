//! The signed-in person's page: the account, its sessions, the password
//! change, and the account's deletion (with a confirmation step).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use minijinja::{Value, context};
use serde::Deserialize;

use super::super::forms::{guard, page};
use super::super::{Action, client, rate_limit, removal_cookie, session_token};
use super::see_other;
use crate::domain::{Email, Password};
use crate::error::AppError;
use crate::state::AppState;
use crate::views::Page;

fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// /me for `session`, with `extra` (a message or field errors) in its context.
pub(super) async fn me_page(
    state: &AppState,
    page: &Page,
    session: &str,
    status: StatusCode,
    extra: Value,
) -> HttpResponse {
    let login = format!("/login?lang={}", page.lang.tag());
    let loaded = async {
        let user = state.accounts.me(session).await?;
        let sessions = state.accounts.sessions(session).await?;
        Ok::<_, crate::accounts::AccountError>((user, sessions))
    }
    .await
    .map_err(AppError::from);
    match loaded {
        Ok((user, sessions)) => {
            let sessions: Vec<Value> = sessions
                .iter()
                .map(|s| {
                    context! {
                        id => s.id.to_string(),
                        user_agent => s.user_agent.clone(),
                        last_seen => when(s.last_seen_at),
                        created => when(s.created_at),
                        current => s.current,
                    }
                })
                .collect();
            state.views.render(
                page,
                status,
                "me.html",
                context! {
                    email => user.email,
                    verified_at => user.verified_at.map(when),
                    sessions,
                    ..extra
                },
            )
        }
        Err(AppError::Unauthorized) => see_other(&login),
        Err(e) => state.views.error_page(page, e),
    }
}

#[derive(Deserialize)]
pub(super) struct MeQuery {
    done: Option<String>,
}

pub(super) async fn me(
    req: HttpRequest,
    state: web::Data<AppState>,
    q: web::Query<MeQuery>,
) -> HttpResponse {
    let page = page(&req, &state);
    let Some(session) = session_token(&req, &state.settings) else {
        return see_other(&format!("/login?lang={}", page.lang.tag()));
    };
    let done = match q.into_inner().done.as_deref() {
        Some("password") => Some(crate::views::text(page.lang, "password_changed_done")),
        Some("email") => Some(crate::views::text(page.lang, "email_change_sent")),
        _ => None,
    };
    me_page(&state, &page, &session, StatusCode::OK, context! { done }).await
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Ends one of the person's sessions (the "end" button of the list).
pub(super) async fn end_session(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let result = async {
        guard(&req, &state, &form.csrf)?;
        let session = session_token(&req, &state.settings).ok_or(AppError::Unauthorized)?;
        let id = uuid::Uuid::parse_str(&id).map_err(|_| AppError::NotFound)?;
        state.accounts.end_session(&session, id).await?;
        Ok::<_, AppError>(())
    }
    .await;
    match result {
        Ok(()) => see_other(&format!("/me?lang={}", page.lang.tag())),
        Err(AppError::Unauthorized) => see_other(&format!("/login?lang={}", page.lang.tag())),
        Err(e) => state.views.error_page(&page, e),
    }
}

/// The confirmation step before an account is deleted.
pub(super) async fn delete_confirm(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let page = page(&req, &state);
    let Some(session) = session_token(&req, &state.settings) else {
        return see_other(&format!("/login?lang={}", page.lang.tag()));
    };
    match state.accounts.me(&session).await.map_err(AppError::from) {
        Ok(user) => state.views.render(
            &page,
            StatusCode::OK,
            "delete.html",
            context! { email => user.email },
        ),
        Err(AppError::Unauthorized) => see_other(&format!("/login?lang={}", page.lang.tag())),
        Err(e) => state.views.error_page(&page, e),
    }
}

#[derive(Deserialize)]
pub(super) struct DeleteForm {
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

pub(super) async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<DeleteForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let Some(session) = session_token(&req, &state.settings) else {
        return see_other(&format!("/login?lang={}", page.lang.tag()));
    };
    let form = form.into_inner();
    let result = async {
        guard(&req, &state, &form.csrf)?;
        let password =
            Password::parse_login(form.password).map_err(|e| AppError::Validation(vec![e]))?;
        let me = state.accounts.me(&session).await?;
        rate_limit(
            &req,
            &state,
            Action::Login,
            &Email::stored(me.email.clone()),
        )
        .await?;
        state
            .accounts
            .delete_account(&session, password, &client(&req, &state.settings))
            .await?;
        Ok::<_, AppError>(me.email)
    }
    .await;
    match result {
        Ok(_) => {
            let mut res = state.views.notice(
                &page,
                StatusCode::OK,
                "deleted_title",
                "deleted_body",
                context! {},
            );
            let _ = res.add_cookie(&removal_cookie(&state.settings));
            res
        }
        Err(AppError::Unauthorized) => see_other(&format!("/login?lang={}", page.lang.tag())),
        Err(e @ (AppError::BadCredentials | AppError::Validation(_))) => {
            use actix_web::ResponseError;
            let email = state
                .accounts
                .me(&session)
                .await
                .map(|u| u.email)
                .unwrap_or_default();
            state.views.render(
                &page,
                e.status_code(),
                "delete.html",
                context! { email, message => crate::views::text(page.lang, "current_password_wrong") },
            )
        }
        Err(e) => state.views.error_page(&page, e),
    }
}
