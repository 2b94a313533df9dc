//! Forgot, reset and change the password.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use minijinja::context;
use serde::Deserialize;

use super::super::forms::{guard, page};
use super::super::{Action, client, rate_limit, session_cookie, session_token};
use super::me::me_page;
use super::see_other;
use crate::accounts::Client;
use crate::domain::{Email, FieldError, Password};
use crate::error::AppError;
use crate::state::AppState;
use crate::token::TokenError;
use crate::views::Page;

/// `?email=` fills the field in (the verification page links here with
/// the address it names); anything longer than an address is ignored.
pub(super) async fn forgot_form(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let page = page(&req, &state);
    let email = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "email")
        .map(|(_, v)| v.into_owned())
        .filter(|v| v.len() <= 254);
    state
        .views
        .render(&page, StatusCode::OK, "forgot.html", context! { email })
}

#[derive(Deserialize)]
pub(super) struct ForgotForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    csrf: String,
}

/// The same page for every address; the mail is queued off the request's path.
pub(super) async fn forgot(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<ForgotForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let form = form.into_inner();
    let result = async {
        guard(&req, &state, &form.csrf)?;
        let email = Email::parse(&form.email).map_err(|e| AppError::Validation(vec![e]))?;
        rate_limit(&req, &state, Action::Reset, &email).await?;
        let accounts = state.accounts.clone();
        tokio::spawn(async move {
            if let Err(e) = accounts.forgot(email).await {
                tracing::warn!(error = %e, "could not queue a password reset mail");
            }
        });
        Ok::<_, AppError>(())
    }
    .await;
    match result {
        Ok(()) => state.views.notice(
            &page,
            StatusCode::ACCEPTED,
            "forgot_done_title",
            "forgot_done_body",
            context! { show_login => true },
        ),
        Err(AppError::Validation(errors)) => state.views.form_errors(
            &page,
            "forgot.html",
            &errors,
            context! { email => form.email },
        ),
        Err(e) => state.views.error_page(&page, e),
    }
}

/// A reset link that does not work: the page says why and offers a new one.
fn link_error(state: &AppState, page: &Page, err: AppError) -> HttpResponse {
    use actix_web::ResponseError;
    let (title, body) = match &err {
        AppError::Token(TokenError::Expired(_)) => ("expired_link_title", "reset_expired_body"),
        AppError::Token(_) => ("invalid_link_title", "reset_invalid_body"),
        AppError::TokenUsed { .. } => ("used_link_title", "reset_used_body"),
        _ => return state.views.error_page(page, err),
    };
    err.log();
    state.views.notice(
        page,
        err.status_code(),
        title,
        body,
        context! { show_forgot => true },
    )
}

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

/// GET changes nothing (mail scanners fetch it): the new-password form,
/// naming the account.
pub(super) async fn reset_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    q: web::Query<TokenQuery>,
) -> HttpResponse {
    let page = page(&req, &state);
    let token = q.into_inner().token.unwrap_or_default();
    reset_form(&state, &page, &token, StatusCode::OK, &[]).await
}

async fn reset_form(
    state: &AppState,
    page: &Page,
    token: &str,
    status: StatusCode,
    errors: &[FieldError],
) -> HttpResponse {
    match state.accounts.inspect_reset(token).await {
        Ok(claims) => {
            let ctx = context! { token, email => claims.email };
            if errors.is_empty() {
                state.views.render(page, status, "reset.html", ctx)
            } else {
                state.views.form_errors(page, "reset.html", errors, ctx)
            }
        }
        Err(e) => link_error(state, page, e.into()),
    }
}

#[derive(Deserialize)]
pub(super) struct ResetForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

pub(super) async fn reset(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<ResetForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let form = form.into_inner();
    let result = async {
        guard(&req, &state, &form.csrf)?;
        let password =
            Password::parse_new(form.password).map_err(|e| AppError::Validation(vec![e]))?;
        super::super::limit_reset(&req, &state, &form.token).await?;
        let client = Client {
            session: None,
            ..client(&req, &state.settings)
        };
        Ok::<_, AppError>(
            state
                .accounts
                .reset_password(&form.token, password, &client)
                .await?,
        )
    }
    .await;
    match result {
        Ok(session) => HttpResponse::SeeOther()
            .cookie(session_cookie(&state.settings, session.as_str()))
            .insert_header((
                header::LOCATION,
                format!("/me?lang={}&done=password", page.lang.tag()),
            ))
            .finish(),
        Err(AppError::Validation(errors)) => {
            reset_form(
                &state,
                &page,
                &form.token,
                StatusCode::UNPROCESSABLE_ENTITY,
                &errors,
            )
            .await
        }
        Err(e) => link_error(&state, &page, e),
    }
}

#[derive(Deserialize)]
pub(super) struct ChangeForm {
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    csrf: String,
}

/// The change-password form on /me.
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
        let (current, new) = super::super::fields(
            Password::parse_login(form.current_password).map_err(|e| FieldError {
                field: "current_password",
                ..e
            }),
            Password::parse_new(form.new_password).map_err(|e| FieldError {
                field: "new_password",
                ..e
            }),
        )?;
        let me = state.accounts.me(&session).await?;
        rate_limit(&req, &state, Action::Login, &Email::stored(me.email)).await?;
        state
            .accounts
            .change_password(&session, current, new, &client(&req, &state.settings))
            .await?;
        Ok::<_, AppError>(())
    }
    .await;
    match result {
        Ok(()) => see_other(&format!("/me?lang={}&done=password", page.lang.tag())),
        Err(AppError::Unauthorized) => see_other(&format!("/login?lang={}", page.lang.tag())),
        Err(AppError::BadCredentials) => {
            me_page(
                &state,
                &page,
                &session,
                StatusCode::UNAUTHORIZED,
                context! {
                    password_message => crate::views::text(page.lang, "current_password_wrong"),
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
                context! { password_errors => errors },
            )
            .await
        }
        Err(e) => state.views.error_page(&page, e),
    }
}
