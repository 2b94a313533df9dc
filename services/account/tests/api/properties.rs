//! Property tests of the account service's decoders of untrusted input:
//! the verification token, the key ring and every variable, and the JSON and
//! form bodies of every route that takes one. Arbitrary input never panics,
//! never answers 5xx, and never opens as a token unless a key of the ring
//! sealed it.

use account::config::Settings;
use account::token::{BINDING_LEN, Claims, KeyRing, TokenError, VERIFY_EMAIL, generate_key_spec};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn ring() -> KeyRing {
    KeyRing::parse(&format!(
        "{},{}",
        generate_key_spec("k1"),
        generate_key_spec("k0")
    ))
    .unwrap()
}

fn claims(email: String, epoch: i32) -> Claims {
    let now = Utc.timestamp_opt(Utc::now().timestamp(), 0).unwrap();
    Claims {
        user_id: Uuid::new_v4(),
        email,
        epoch,
        issued_at: now,
        expires_at: now + chrono::Duration::hours(24),
        // Links bound to a browser and links that are not, alike.
        binding: (epoch % 2 == 0).then_some([epoch as u8 | 1; BINDING_LEN]),
    }
}

/// Strings shaped like tokens (version, a ring's or a foreign key id, a
/// base64url body of any bytes) and strings of anything at all.
fn token_like() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,200}",
        any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        (
            prop_oneof![Just("v1"), Just("v2"), Just(""), Just("V1")],
            prop_oneof![Just("k1"), Just("k0"), Just("zz"), Just("")],
            prop::collection::vec(any::<u8>(), 0..160),
        )
            .prop_map(|(v, kid, body)| format!("{v}.{kid}.{}", URL_SAFE_NO_PAD.encode(body))),
    ]
}

/// One change to a token: a flipped bit of its sealed body, a cut, an
/// inserted character, another key id.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    Truncate(usize),
    Insert(usize, char),
    Kid(&'static str),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<char>()).prop_map(|(i, c)| Mutation::Insert(i, c)),
        prop_oneof![Just("k0"), Just("zz")].prop_map(Mutation::Kid),
    ]
}

fn mutate(token: &str, m: &Mutation) -> String {
    let (head, body) = token.rsplit_once('.').unwrap();
    match m {
        Mutation::FlipBit(i, bit) => {
            let mut bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
            let i = i % bytes.len();
            bytes[i] ^= 1 << bit;
            format!("{head}.{}", URL_SAFE_NO_PAD.encode(bytes))
        }
        Mutation::Truncate(n) => token.chars().take(n % token.len()).collect(),
        Mutation::Insert(i, c) => {
            let mut chars: Vec<char> = token.chars().collect();
            chars.insert(i % (chars.len() + 1), *c);
            chars.into_iter().collect()
        }
        Mutation::Kid(kid) => format!("v1.{kid}.{body}"),
    }
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn arbitrary_text_never_opens_as_a_token(token in token_like()) {
        let ring = ring();
        prop_assert!(ring.open(VERIFY_EMAIL, &token, Utc::now()).is_err());
    }

    #[test]
    fn a_changed_token_never_opens_and_a_foreign_key_never_seals_one(
        email in ".{0,60}",
        epoch in any::<i32>(),
        m in mutation(),
    ) {
        let ring = ring();
        let c = claims(email, epoch);
        let token = ring.seal(VERIFY_EMAIL, &c);
        prop_assert_eq!(ring.open(VERIFY_EMAIL, &token, Utc::now()), Ok(c.clone()));
        let changed = mutate(&token, &m);
        if let Ok(opened) = ring.open(VERIFY_EMAIL, &changed, Utc::now()) {
            // Only whitespace around the token may change (it is trimmed).
            prop_assert_eq!(changed.trim(), token.as_str());
            prop_assert_eq!(opened, c.clone());
        }
        // The same key ids, other keys: nothing they seal opens here.
        let impostor = self::ring().seal(VERIFY_EMAIL, &c);
        prop_assert_eq!(ring.open(VERIFY_EMAIL, &impostor, Utc::now()), Err(TokenError::Forged));
        // Another purpose never opens as this one.
        let other = ring.seal("reset-password/v1", &c);
        prop_assert_eq!(ring.open(VERIFY_EMAIL, &other, Utc::now()), Err(TokenError::Forged));
    }

    #[test]
    fn arbitrary_key_rings_never_panic(spec in ".{0,120}") {
        let _ = KeyRing::parse(&spec);
    }
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn arbitrary_configuration_never_panics_and_errors_name_a_variable(
        picks in prop::collection::vec((any::<usize>(), ".{0,40}"), 1..4),
    ) {
        let (names, vars) = shared::config::picked_variables::<account::config::Cli>(picks);
        if let Err(e) = Settings::from_vars(vars) {
            prop_assert!(names.contains(&e.var), "{e}");
        }
    }
}

/// A body for a route: bytes of anything, or an object with the route's
/// field names holding any JSON (strings of any length and content, numbers,
/// nested values).
fn json_body() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,300}".prop_map(Value::String),
        "[a-z0-9.+-]{1,20}@[a-z0-9-]{1,20}\\.[a-z]{2,6}".prop_map(Value::String),
        prop::collection::vec(".{0,10}".prop_map(Value::String), 0..3).prop_map(Value::Array),
    ];
    let field = prop_oneof![
        Just("email".to_owned()),
        Just("password".to_owned()),
        Just("token".to_owned()),
        Just("locale".to_owned()),
        ".{0,6}",
    ];
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..300),
        4 => prop::collection::vec((field, value), 0..5).prop_map(|fields| {
            let obj: serde_json::Map<String, Value> =
                fields.into_iter().collect();
            serde_json::to_vec(&obj).unwrap()
        }),
    ]
}

fn form_body() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("email".to_owned()),
        Just("password".to_owned()),
        Just("token".to_owned()),
        ".{0,6}",
    ];
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..300),
        4 => prop::collection::vec((field, ".{0,200}"), 0..5).prop_map(|fields| {
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(fields)
                .finish()
                .into_bytes()
        }),
    ]
}

/// Posts `cases` arbitrary bodies to `routes` of one running app; every
/// answer is below 500 (4xx for what does not parse).
fn post_arbitrary_bodies(
    routes: &'static [&'static str],
    content_type: &'static str,
    body: impl Strategy<Value = Vec<u8>>,
    cases: u32,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(spawn_app_with(Options {
        capture: false,
        ..Options::default()
    }));
    let mut runner = TestRunner::new(config(cases));
    let strategy = (prop::sample::select(routes), body);
    let result = runner.run(&strategy, |(route, bytes)| {
        let res = rt
            .block_on(
                app.client
                    .post(app.url(route))
                    .header("content-type", content_type)
                    .body(bytes.clone())
                    .send(),
            )
            .map_err(|e| TestCaseError::fail(format!("no answer (a panic?): {e}")))?;
        let status = res.status().as_u16();
        prop_assert!(
            status < 500,
            "{route} answered {status} to {:?}",
            String::from_utf8_lossy(&bytes)
        );
        Ok(())
    });
    drop(app);
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    result.unwrap();
}

#[test]
fn arbitrary_json_bodies_never_answer_5xx() {
    post_arbitrary_bodies(
        &[
            "/api/v1/signup",
            "/api/v1/login",
            "/api/v1/verify",
            "/api/v1/verification/resend",
        ],
        "application/json",
        json_body(),
        2000,
    );
}

#[test]
fn arbitrary_form_bodies_never_answer_5xx() {
    post_arbitrary_bodies(
        &["/signup", "/login", "/verify", "/verification/resend"],
        "application/x-www-form-urlencoded",
        form_body(),
        2000,
    );
}
