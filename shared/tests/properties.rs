//! Property tests of the contract's decoders of untrusted input: the
//! `mail.send` envelope (any publisher's bytes) and the configuration value
//! parsers (an operator's text). Arbitrary input never panics; what parses
//! is valid.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use shared::MailSend;
use shared::config::{self as conf, ExposeSecret};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, small enough to generate quickly.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An envelope-shaped object: the real field names, each present or not,
/// each a plausible or an arbitrary value.
fn envelope_like() -> impl Strategy<Value = Value> {
    let field = |good: Value| prop_oneof![6 => Just(Some(good)), 2 => json_value().prop_map(Some), 1 => Just(None)];
    (
        field(json!("0190f5b4-6a2e-7c3e-9a1b-2f3c4d5e6f70")),
        field(json!(1)),
        field(json!("2026-11-24T10:00:00Z")),
        field(json!("billing")),
        field(json!({"email": "minsu@example.com", "name": "김민수"})),
        field(json!("ko")),
        field(json!("verify_email")),
        field(json!({"verify_url": "https://a.example/v?token=t", "expires_at": "2026-11-25T10:00:00Z"})),
        field(json!({"subject": "s", "html": "<p>h</p>", "text": "t"})),
    )
        .prop_map(|(id, version, created, source, to, locale, template, data, content)| {
            let mut obj = Map::new();
            for (k, v) in [
                ("id", id),
                ("version", version),
                ("created_at", created),
                ("source", source),
                ("to", to),
                ("locale", locale),
                ("template", template),
                ("data", data),
                ("content", content),
            ] {
                if let Some(v) = v {
                    obj.insert(k.to_owned(), v);
                }
            }
            Value::Object(obj)
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_envelope_parser(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = MailSend::from_slice(&bytes);
    }

    #[test]
    fn an_envelope_that_parses_is_valid_and_round_trips(value in envelope_like()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Ok(mail) = MailSend::from_slice(&bytes) {
            prop_assert_eq!(mail.version, 1);
            prop_assert!(mail.to.email.contains('@'), "{}", mail.to.email);
            let again = MailSend::from_slice(&mail.to_vec()).expect("what we write parses");
            prop_assert_eq!(again, mail);
        }
    }

    #[test]
    fn configuration_values_never_panic_and_errors_never_echo_a_secret(s in ".{0,80}") {
        let _ = conf::boolean(&s);
        let _ = conf::duration(&s);
        let _ = conf::durations(&s);
        let _ = conf::log_json(&s);
        let _ = conf::topology(&s);
        match conf::amqp_url(&s) {
            Ok(list) => prop_assert!(shared::amqp::split(list.expose_secret()).count() >= 1),
            Err(e) => prop_assert!(s.trim().len() < 4 || !e.contains(s.trim()), "{e}"),
        }
    }
}
