//! Server-rendered pages in Korean and English: no external assets, plain
//! forms that work without script (the verify page submits itself only in
//! the browser that asked for the link). Handlers parse, call the account
//! operations, and pick a view; one file per part of the site.

mod email;
mod me;
mod password;
mod session;
mod signup;
mod verify;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use super::forms::page;
use crate::state::AppState;

/// Registers the page routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(home))
        .route("/signup", web::get().to(signup::signup_form))
        .route("/signup", web::post().to(signup::signup))
        .route("/verify", web::get().to(verify::verify_page))
        .route("/verify", web::post().to(verify::verify))
        .route("/verify/code", web::get().to(verify::code_form))
        .route("/verify/code", web::post().to(verify::code))
        .route("/verification/resend", web::post().to(signup::resend))
        .route("/email/change", web::post().to(email::change))
        .route("/email/confirm", web::get().to(email::confirm_page))
        .route("/email/confirm", web::post().to(email::confirm))
        .route("/login", web::get().to(session::login_form))
        .route("/login", web::post().to(session::login))
        .route("/logout", web::post().to(session::logout))
        .route("/logout/all", web::post().to(session::logout_all))
        .route("/password/forgot", web::get().to(password::forgot_form))
        .route("/password/forgot", web::post().to(password::forgot))
        .route("/password/reset", web::get().to(password::reset_page))
        .route("/password/reset", web::post().to(password::reset))
        .route("/password/change", web::post().to(password::change))
        .route("/me", web::get().to(me::me))
        .route("/sessions/{id}/end", web::post().to(me::end_session))
        .route("/me/delete", web::get().to(me::delete_confirm))
        .route("/me/delete", web::post().to(me::delete));
}

fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish()
}

async fn home(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    see_other(&format!("/signup?lang={}", page(&req, &state).lang.tag()))
}
