//! `/healthz`, `/readyz` (broker connection, SMTP configuration) and
//! `/metrics` on `MAILER_BIND`.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::{App, HttpResponse, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::outlet::Outlet;

struct State {
    connected: Arc<AtomicBool>,
    outlet: Outlet,
    metrics: PrometheusHandle,
}

/// Starts the small operations server; returns it with its port.
pub fn serve(
    bind: &str,
    connected: Arc<AtomicBool>,
    outlet: Outlet,
    metrics: PrometheusHandle,
) -> Result<(actix_web::dev::Server, u16), anyhow::Error> {
    let listener = TcpListener::bind(bind)
        .map_err(|e| anyhow::anyhow!("cannot listen on MAILER_BIND={bind}: {e}"))?;
    let port = listener.local_addr()?.port();
    let state = web::Data::new(State {
        connected,
        outlet,
        metrics,
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route(
                "/healthz",
                web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }),
            )
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(render_metrics))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((server, port))
}

/// Ready: consuming from the broker, and no known SMTP configuration error
/// (a rejected certificate), which the body names.
async fn readyz(state: web::Data<State>) -> HttpResponse {
    let broker = state.connected.load(Ordering::Relaxed);
    let smtp = state.outlet.misconfigured();
    let body = json!({
        "broker": if broker { "ok" } else { "down" },
        "smtp": smtp.as_deref().unwrap_or("ok"),
    });
    if broker && smtp.is_none() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn render_metrics(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
