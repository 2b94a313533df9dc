//! The OpenAPI document: built from the handlers, served, and committed.

use crate::helpers::*;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_document_is_what_the_code_builds_and_serves() {
    let generated = account::routes::openapi::json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(PATH, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(PATH).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{PATH} is stale; regenerate it with `UPDATE_OPENAPI=1 cargo nextest run -p account openapi`"
    );
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.text().await.unwrap(), generated);

    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every route the API registers is in the document.
    let source = include_str!("../../src/routes/api.rs");
    let registered: Vec<String> = source
        .split("resource(\"")
        .skip(1)
        .map(|rest| format!("/api/v1{}", rest.split('"').next().unwrap()))
        .collect();
    assert!(registered.len() >= 14, "{registered:?}");
    for path in &registered {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    // Every error answer is a problem+json with the Problem schema.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    if path.ends_with("readyz") {
                        continue;
                    }
                    let problem =
                        &response["content"]["application/problem+json"]["schema"]["$ref"];
                    assert_eq!(
                        problem, "#/components/schemas/Problem",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    // A method a path does not take is a 405 naming the ones it does.
    let res = app.client.put(app.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, DELETE");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
}
