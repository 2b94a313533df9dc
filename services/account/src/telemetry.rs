//! Request telemetry: one span per request (its id, method and route
//! pattern), a log line with status and duration, and the HTTP metrics.

use std::time::Instant;

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

/// The request id a client sent, if it is short and plain, or a fresh one.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Middleware (`from_fn`): spans, logs and measures every request, and
/// echoes the request id.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let request_id = request_id(&req);
    let method = req.method().to_string();
    // The route pattern, never the raw path or query: tokens travel in queries.
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("request", id = %request_id, %method, %route);
    let res = next.call(req).instrument(span.clone()).await;
    let _enter = span.enter();
    let status = match &res {
        Ok(r) => r.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    let elapsed = started.elapsed().as_secs_f64();
    let labels = [
        ("method", method),
        ("route", route.clone()),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed);
    if matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics") {
        tracing::debug!(status = status.as_u16(), ms = elapsed * 1e3, "request");
    } else {
        tracing::info!(status = status.as_u16(), ms = elapsed * 1e3, "request");
    }
    res.map(|mut r| {
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            r.headers_mut()
                .insert(HeaderName::from_static("x-request-id"), v);
        }
        r
    })
}
