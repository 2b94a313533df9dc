//! The sign-up form, and the form that asks for a verification link again.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use minijinja::context;
use serde::Deserialize;

use super::super::forms::{CredentialsForm, guard, page};
use super::super::{Action, client, new_binding, rate_limit};
use crate::domain::{Email, Password};
use crate::error::AppError;
use crate::state::AppState;

pub(super) async fn signup_form(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let page = page(&req, &state);
    state
        .views
        .render(&page, StatusCode::OK, "signup.html", context! {})
}

pub(super) async fn signup(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<CredentialsForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let (binding, cookie) = new_binding(&state.settings);
    let client = client(&req, &state.settings);
    let result = form
        .into_inner()
        .submit(
            &req,
            &state,
            Action::Signup,
            Password::parse_new,
            async |email, password| {
                let hash = Some(binding.hash());
                let lang = page.lang;
                Ok(state
                    .accounts
                    .signup(email, password, lang, hash, &client)
                    .await?)
            },
        )
        .await;
    match result {
        Ok(_) => {
            let mut res = state.views.notice(
                &page,
                StatusCode::ACCEPTED,
                "signup_done_title",
                "signup_done_body",
                context! { show_code_link => true },
            );
            let _ = res.add_cookie(&cookie);
            res
        }
        Err(rejected) => rejected.page(&state, &page, "signup.html"),
    }
}

#[derive(Deserialize)]
pub(super) struct EmailForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    csrf: String,
}

pub(super) async fn resend(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<EmailForm>,
) -> HttpResponse {
    let page = page(&req, &state);
    let result = async {
        guard(&req, &state, &form.csrf)?;
        let email = Email::parse(&form.email).map_err(|e| AppError::Validation(vec![e]))?;
        rate_limit(&req, &state, Action::Resend, &email).await?;
        // No new binding cookie: the link stays bound to the sign-up's
        // browser, whose cookie this must not replace.
        Ok::<_, AppError>(state.accounts.resend(email, page.lang).await?)
    }
    .await;
    match result {
        Ok(_) => state.views.notice(
            &page,
            StatusCode::ACCEPTED,
            "resend_title",
            "resend_done_body",
            context! {},
        ),
        Err(AppError::Validation(_)) => state.views.notice(
            &page,
            StatusCode::UNPROCESSABLE_ENTITY,
            "resend_title",
            "invalid_input",
            context! { show_resend_form => true },
        ),
        Err(e) => state.views.error_page(&page, e),
    }
}
