//! `/healthz` (the process answers), `/readyz` (database and broker), and,
//! on the admin listener only, `/metrics`.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::state::AppState;

/// Registers the probes: on the public listener (load balancers) and on the admin one.
pub fn probes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// Registers the admin listener's routes: the probes and `/metrics`, whose
/// labels (sign-up outcomes, routes) are for operators, not the internet.
pub fn admin(cfg: &mut web::ServiceConfig) {
    probes(cfg);
    cfg.route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
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
