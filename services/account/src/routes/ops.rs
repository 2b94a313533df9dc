//! `/healthz` (the process answers), `/readyz` (database and broker), and,
//! on the admin listener only, `/metrics`.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::state::AppState;

/// Registers the probes: on the public listener (load balancers) and on the admin one.
pub fn probes(cfg: &mut web::ServiceConfig) {
    use super::resource;
    cfg.service(resource("/healthz", &["GET"]).route(web::get().to(healthz)))
        .service(resource("/readyz", &["GET"]).route(web::get().to(readyz)));
}

/// Registers the admin listener's routes: the probes and `/metrics`, whose
/// labels (sign-up outcomes, routes) are for operators, not the internet.
pub fn admin(cfg: &mut web::ServiceConfig) {
    probes(cfg);
    cfg.service(super::resource("/metrics", &["GET"]).route(web::get().to(metrics)));
}

/// `/healthz`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    #[schema(example = "ok")]
    status: String,
}

/// `/readyz`'s answer: each dependency `ok` or `down`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Readiness {
    #[schema(example = "ok")]
    database: String,
    #[schema(example = "ok")]
    broker: String,
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    description = "The process answers.",
    responses((status = 200, description = "Alive", body = Health))
)]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    description = "The database and the broker answer.",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A dependency is down", body = Readiness)
    )
)]
pub(crate) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let r = state.health.check().await;
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let body = json!({"database": word(r.database), "broker": word(r.broker)});
    if r.ready() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
