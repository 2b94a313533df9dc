//! The account events' JSON Schema (shared/schema/account.event.v1.schema.json)
//! is what consumers in other languages validate against: it must stay equal
//! to what the Rust types generate, and agree with them on examples.

use serde_json::{Value, json};
use shared::account_event::{AccountEvent, json_schema};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/schema/account.event.v1.schema.json"
);

#[test]
fn account_schema_file_equals_the_rust_types() {
    let generated = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(PATH, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(PATH).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{PATH} is stale; regenerate it with `UPDATE_SCHEMA=1 cargo test -p shared --test account_schema`"
    );
}

fn base() -> Value {
    json!({
        "id": "0190f5b4-6a2e-7c3e-9a1b-2f3c4d5e6f70", "version": 1,
        "type": "created", "occurred_at": "2026-11-24T10:00:00Z",
        "user_id": "0190f5b4-6a2e-7c3e-9a1b-2f3c4d5e6f71",
        "email": "minsu@example.com", "locale": "ko"
    })
}

#[test]
fn account_schema_and_rust_agree_on_examples() {
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let mut valid = vec![base()];
    for kind in ["verified", "password_changed", "deleted"] {
        let mut v = base();
        v["type"] = json!(kind);
        valid.push(v);
    }
    let mut changed = base();
    changed["type"] = json!("email_changed");
    changed["previous_email"] = json!("old@example.com");
    valid.push(changed.clone());
    for v in valid {
        assert!(validator.is_valid(&v), "schema refuses {v}");
        serde_json::from_value::<AccountEvent>(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"));
    }

    let mut invalid = Vec::new();
    for field in [
        "id",
        "version",
        "type",
        "occurred_at",
        "user_id",
        "email",
        "locale",
    ] {
        let mut v = base();
        v.as_object_mut().unwrap().remove(field);
        invalid.push((v, true));
    }
    let mut v = base();
    v["version"] = json!(2);
    // The Rust type reads any version; the schema pins 1.
    invalid.push((v, false));
    let mut v = base();
    v["type"] = json!("renamed");
    invalid.push((v, true));
    let mut v = base();
    v["password_hash"] = json!("$argon2id$...");
    invalid.push((v, true));
    let mut v = changed.clone();
    v.as_object_mut().unwrap().remove("previous_email");
    invalid.push((v, false));
    let mut v = base();
    v["previous_email"] = json!("old@example.com");
    invalid.push((v, false));
    for (v, rust_refuses_too) in invalid {
        assert!(!validator.is_valid(&v), "schema accepts {v}");
        if rust_refuses_too {
            assert!(
                serde_json::from_value::<AccountEvent>(v.clone()).is_err(),
                "Rust accepts {v}"
            );
        }
    }
}
