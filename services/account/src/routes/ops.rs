//! `/healthz` (the process answers), `/readyz` (database and broker), `/metrics`.

use actix_web::{HttpResponse, web};
use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::startup::AppState;

/// Registers the operations routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let db = async {
        let mut conn = state.pool.get().await.ok()?;
        diesel::sql_query("SELECT 1").execute(&mut conn).await.ok()
    };
    let db_ok = tokio::time::timeout(std::time::Duration::from_secs(2), db)
        .await
        .ok()
        .flatten()
        .is_some();
    let publisher = state.relay.publisher();
    let broker_ok = publisher.is_connected()
        || tokio::time::timeout(
            std::time::Duration::from_secs(2),
            publisher.ensure_connected(),
        )
        .await
        .is_ok_and(|r| r.is_ok());
    let body = json!({
        "database": if db_ok { "ok" } else { "down" },
        "broker": if broker_ok { "ok" } else { "down" },
    });
    if db_ok && broker_ok {
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
