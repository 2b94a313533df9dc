//! shared/asyncapi.yaml, the AsyncAPI 3.0 document of what flows over
//! RabbitMQ, checked by the AsyncAPI Initiative's parser (@asyncapi/parser,
//! npm, resolving the JSON Schemas it references) and against the code: the
//! same exchanges, routing keys and schemas the services use.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use shared::AccountEventType;
use shared::topology::MAIL_SEND_ROUTING_KEY;
use testkit::root;

/// Runs the parser on `doc`: its exit status and its JSON summary.
fn parse(doc: &Path) -> (bool, Value) {
    let out = std::process::Command::new("node")
        .arg(root().join("tests/browser/asyncapi-validate.mjs"))
        .arg(doc)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the parser's summary ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), summary)
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_asyncapi_document_is_valid_and_says_what_the_code_does() {
    let (ok, doc) = parse(&root().join("shared/asyncapi.yaml"));
    assert!(ok, "{doc:#}");
    assert_eq!(doc["errors"].as_array().unwrap().len(), 0, "{doc:#}");

    let topology = shared::Topology::new("").unwrap();
    let channels = strings(&doc["channels"]);
    for name in [
        topology.exchange(),
        topology.queue(),
        topology.account_exchange(),
    ] {
        assert!(
            channels.contains(&format!("{{prefix}}.{name}")),
            "{channels:?}"
        );
    }

    let account_keys: BTreeSet<String> = AccountEventType::ALL
        .iter()
        .map(|t| t.routing_key())
        .collect();
    let op = |id: &str| {
        doc["operations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["id"] == id)
            .unwrap_or_else(|| panic!("operation {id}"))
            .clone()
    };
    let send_mail = op("sendMail");
    assert_eq!(
        strings(&send_mail["cc"]),
        BTreeSet::from([MAIL_SEND_ROUTING_KEY.to_owned()])
    );
    assert_eq!(send_mail["mandatory"], true);
    let events = op("publishAccountEvents");
    assert_eq!(strings(&events["cc"]), account_keys);
    assert_eq!(events["mandatory"], false);

    let messages = doc["messages"].as_object().unwrap();
    let names: BTreeSet<String> = messages.keys().cloned().collect();
    let mut expected = account_keys.clone();
    expected.insert(MAIL_SEND_ROUTING_KEY.to_owned());
    assert_eq!(names, expected);
    // The parser resolved each payload to the schema file the tests keep
    // equal to the Rust types.
    let id_of = |file: &str| {
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(root().join(file)).unwrap()).unwrap();
        schema["$id"].clone()
    };
    assert_eq!(
        messages[MAIL_SEND_ROUTING_KEY]["schemaId"],
        id_of("shared/schema/mail.send.v1.schema.json")
    );
    for key in &account_keys {
        assert_eq!(
            messages[key]["schemaId"],
            id_of("shared/schema/account.event.v1.schema.json"),
            "{key}"
        );
        assert_eq!(messages[key]["contentType"], "application/json");
    }
}

/// The parser really checks: a reference to a schema that is not there
/// fails it.
#[test]
fn the_parser_refuses_a_document_whose_schema_is_missing() {
    let dir = root().join(format!("target/asyncapi-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("schema")).unwrap();
    let text = std::fs::read_to_string(root().join("shared/asyncapi.yaml"))
        .unwrap()
        .replace("./schema/mail.send.v1.schema.json", "./schema/gone.json");
    std::fs::write(dir.join("asyncapi.yaml"), text).unwrap();
    std::fs::copy(
        root().join("shared/schema/account.event.v1.schema.json"),
        dir.join("schema/account.event.v1.schema.json"),
    )
    .unwrap();
    let (ok, doc) = parse(&dir.join("asyncapi.yaml"));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok, "{doc:#}");
    assert!(doc["errors"].to_string().contains("gone.json"), "{doc:#}");
}
