//! The OpenAPI 3.1 document of the JSON API, built from the handlers' own
//! annotations and body types, served at `/api/v1/openapi.json` and kept in
//! `services/account/openapi.json` (a test holds the file equal to it).

use actix_web::{HttpResponse, web};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{api, ops};

/// The session cookie as a security scheme.
struct SessionCookie;

impl Modify for SessionCookie {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "session",
                "The session cookie set by login or verification. Named `__Host-session` \
                 when ACCOUNT_COOKIE_SECURE=true (the default), `session` otherwise.",
            ))),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Account service",
        description = "Sign-up with e-mail verification, sessions, and the credential lifecycle. \
                       Errors are application/problem+json (RFC 9457). Sign-up, resend, forgot \
                       and login answer alike for every address.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        api::signup,
        api::resend,
        api::verify,
        api::login,
        api::logout,
        api::logout_all,
        api::me,
        api::delete_me,
        api::forgot,
        api::reset,
        api::change_password,
        api::sessions,
        api::end_session,
        api::change_email,
        api::confirm_email,
        ops::healthz,
        ops::readyz,
        document,
    ),
    modifiers(&SessionCookie),
    tags(
        (name = "account", description = "The JSON API"),
        (name = "operations", description = "Probes for load balancers and orchestrators")
    )
)]
pub struct ApiDoc;

/// The document as served and as committed.
pub fn json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the document serializes")
        + "\n"
}

/// Registers `GET /api/v1/openapi.json`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/api/v1/openapi.json", &["GET"]).route(web::get().to(document)));
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    description = "This document.",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
pub(crate) async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json())
}
