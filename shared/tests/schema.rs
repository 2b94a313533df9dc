//! The JSON Schema in shared/schema/ is what other languages validate against:
//! it must stay equal to what the Rust types generate, and agree with the Rust
//! parser on what is a valid envelope.

use serde_json::{Value, json};
use shared::envelope::{MailSend, json_schema};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/schema/mail.send.v1.schema.json"
);

#[test]
fn schema_file_equals_the_rust_types() {
    let generated = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(PATH, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(PATH).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{PATH} is stale; regenerate it with `UPDATE_SCHEMA=1 cargo test -p shared --test schema`"
    );
}

fn valid() -> Vec<Value> {
    vec![
        json!({
            "id": "0190f5b4-6a2e-7c3e-9a1b-2f3c4d5e6f70", "version": 1,
            "created_at": "2026-11-24T10:00:00Z", "source": "account",
            "to": {"email": "minsu@example.com", "name": "김민수"}, "locale": "ko",
            "template": "verify_email",
            "data": {"verify_url": "https://a.example/verify?token=v1.k.x", "expires_at": "2026-11-25T10:00:00Z"}
        }),
        json!({
            "id": "0190f5b4-6a2e-7c3e-9a1b-2f3c4d5e6f71", "version": 1,
            "created_at": "2026-11-24T10:00:00+09:00", "source": "billing",
            "to": {"email": "a@example.com"}, "locale": "en",
            "content": {"subject": "Your invoice", "html": "<p>Hi</p>", "text": "Hi"}
        }),
    ]
}

fn invalid() -> Vec<Value> {
    let base = valid()[0].clone();
    let mut out = Vec::new();
    for field in ["id", "version", "created_at", "source", "to", "locale"] {
        let mut v = base.clone();
        v.as_object_mut().unwrap().remove(field);
        out.push(v);
    }
    let mut v = base.clone();
    v["version"] = json!(2);
    out.push(v);
    let mut v = base.clone();
    v["content"] = json!({"subject": "s", "html": "h", "text": "t"});
    out.push(v);
    let mut v = base.clone();
    v.as_object_mut().unwrap().remove("template");
    out.push(v);
    let mut v = base.clone();
    v["template"] = json!("../etc/passwd");
    out.push(v);
    let mut v = base.clone();
    v["id"] = json!("not-a-uuid");
    out.push(v);
    let mut v = base;
    v["data"] = json!("a string");
    out.push(v);
    out
}

#[test]
fn schema_and_rust_agree_on_examples() {
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    for v in valid() {
        assert!(validator.is_valid(&v), "schema rejects {v}");
        let parsed = MailSend::from_slice(v.to_string().as_bytes()).unwrap();
        // What Rust writes back validates too.
        assert!(validator.is_valid(&serde_json::to_value(&parsed).unwrap()));
    }
    for v in invalid() {
        assert!(!validator.is_valid(&v), "schema accepts {v}");
        assert!(
            MailSend::from_slice(v.to_string().as_bytes()).is_err(),
            "Rust accepts {v}"
        );
    }
}
