//! The `mail.send` v1 envelope: what any service publishes to have a mail sent.
//!
//! `shared/schema/mail.send.v1.schema.json` is generated from these types and
//! kept equal to them by a test, so publishers in other languages can validate
//! against it.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The only envelope version this crate reads and writes.
pub const MAIL_SEND_VERSION: u32 = 1;
/// Template of the sign-up verification mail; `data` is [`VerifyEmailData`].
pub const TEMPLATE_VERIFY_EMAIL: &str = "verify_email";
/// Template of the "you already have an account" mail; `data` is [`AccountExistsData`].
pub const TEMPLATE_ACCOUNT_EXISTS: &str = "account_exists";
/// Template of the password reset mail; `data` is [`ResetPasswordData`].
pub const TEMPLATE_RESET_PASSWORD: &str = "reset_password";
/// Template of the "your password was changed" notice; `data` is [`PasswordChangedData`].
pub const TEMPLATE_PASSWORD_CHANGED: &str = "password_changed";
/// Template of the "your account was deleted" notice; `data` is [`AccountDeletedData`].
pub const TEMPLATE_ACCOUNT_DELETED: &str = "account_deleted";
/// Template of the mail that confirms a new address; `data` is [`ConfirmEmailChangeData`].
pub const TEMPLATE_CONFIRM_EMAIL_CHANGE: &str = "confirm_email_change";
/// Template of the notice to the old address after a change; `data` is [`EmailChangedData`].
pub const TEMPLATE_EMAIL_CHANGED: &str = "email_changed";

/// A `mail.send` event: one mail to one recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "mail.send v1",
    extend("$id" = "urn:mail-send:v1", "not" = {"required": ["template", "content"]})
)]
pub struct MailSend {
    /// Idempotency key, also the AMQP `message_id`.
    pub id: Uuid,
    /// Envelope version, always 1.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// When the publisher created the event (RFC 3339).
    pub created_at: DateTime<Utc>,
    /// Name of the publishing service, for logs and metrics.
    #[schemars(length(min = 1, max = 100))]
    pub source: String,
    /// The recipient.
    pub to: Recipient,
    /// BCP 47 language tag such as `ko` or `en`; unknown ones fall back to the mailer's default.
    #[schemars(length(min = 1, max = 35))]
    pub locale: String,
    /// Either a named template with its data, or raw content.
    #[serde(flatten)]
    pub body: Body,
}

/// The recipient of a mail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Recipient {
    /// The address mail goes to.
    #[schemars(email, length(min = 3, max = 254))]
    pub email: String,
    /// Display name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub name: Option<String>,
}

/// What the mail holds: a template the mailer knows, or content as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Body {
    /// A template of the mailer (`verify_email`, `account_exists`, or an operator's own).
    Template {
        /// Template name: lowercase letters, digits and `_`.
        #[schemars(regex(pattern = r"^[a-z0-9_]{1,64}$"))]
        template: String,
        /// The template's variables.
        data: Map<String, Value>,
    },
    /// A mail the publisher rendered itself.
    Content {
        /// Subject, HTML and plain-text parts.
        content: RawContent,
    },
}

/// A mail rendered by the publisher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RawContent {
    /// Subject line (one line).
    #[schemars(length(min = 1, max = 998))]
    pub subject: String,
    /// HTML part.
    pub html: String,
    /// Plain-text part.
    pub text: String,
}

/// `data` of the `verify_email` template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct VerifyEmailData {
    /// The link that verifies the address and signs the user in.
    #[schemars(url)]
    pub verify_url: String,
    /// When the link stops working.
    pub expires_at: DateTime<Utc>,
    /// A six-digit code that verifies like the link (typed instead of
    /// clicked); optional for other publishers of this template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{6}$"))]
    pub code: Option<String>,
}

/// `data` of the `account_exists` template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AccountExistsData {
    /// Where the user can sign in instead.
    #[schemars(url)]
    pub login_url: String,
}

/// `data` of the `reset_password` template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ResetPasswordData {
    /// The link to the page that sets a new password (works once).
    #[schemars(url)]
    pub reset_url: String,
    /// When the link stops working.
    pub expires_at: DateTime<Utc>,
}

/// `data` of the `password_changed` notice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PasswordChangedData {
    /// When the password was changed.
    pub changed_at: DateTime<Utc>,
    /// Where to reset the password if the change was not the owner's.
    #[schemars(url)]
    pub forgot_url: String,
}

/// `data` of the `account_deleted` notice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AccountDeletedData {
    /// When the account was deleted.
    pub deleted_at: DateTime<Utc>,
    /// Where to sign up again.
    #[schemars(url)]
    pub signup_url: String,
}

/// `data` of the `confirm_email_change` template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConfirmEmailChangeData {
    /// The link that makes this address the account's.
    #[schemars(url)]
    pub confirm_url: String,
    /// When the link stops working.
    pub expires_at: DateTime<Utc>,
}

/// `data` of the `email_changed` notice, sent to the old address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct EmailChangedData {
    /// The new address, masked (`m***@example.com`).
    #[schemars(length(min = 3, max = 254))]
    pub new_email_masked: String,
    /// When the address was changed.
    pub changed_at: DateTime<Utc>,
    /// Where to take the account back (a reset link goes to the new address,
    /// so this points to the operator's support when set, else the login).
    #[schemars(url)]
    pub login_url: String,
}

/// The templates the mailer embeds (the account service's mails), each in
/// Korean and English.
pub const BUILT_IN_TEMPLATES: [&str; 7] = [
    TEMPLATE_VERIFY_EMAIL,
    TEMPLATE_ACCOUNT_EXISTS,
    TEMPLATE_RESET_PASSWORD,
    TEMPLATE_PASSWORD_CHANGED,
    TEMPLATE_ACCOUNT_DELETED,
    TEMPLATE_CONFIRM_EMAIL_CHANGE,
    TEMPLATE_EMAIL_CHANGED,
];

/// The built-in templates and the JSON Schema of their `data`, in the
/// envelope's schema as `if template is T then data is …`.
fn template_data_schemas() -> Vec<(&'static str, &'static str, Value)> {
    fn schema<T: JsonSchema>() -> Value {
        let mut v = serde_json::to_value(schemars::schema_for!(T)).expect("schema serializes");
        if let Some(o) = v.as_object_mut() {
            o.remove("$schema");
        }
        v
    }
    vec![
        (
            TEMPLATE_VERIFY_EMAIL,
            "VerifyEmailData",
            schema::<VerifyEmailData>(),
        ),
        (
            TEMPLATE_ACCOUNT_EXISTS,
            "AccountExistsData",
            schema::<AccountExistsData>(),
        ),
        (
            TEMPLATE_RESET_PASSWORD,
            "ResetPasswordData",
            schema::<ResetPasswordData>(),
        ),
        (
            TEMPLATE_PASSWORD_CHANGED,
            "PasswordChangedData",
            schema::<PasswordChangedData>(),
        ),
        (
            TEMPLATE_ACCOUNT_DELETED,
            "AccountDeletedData",
            schema::<AccountDeletedData>(),
        ),
    ]
}

/// Why an envelope was refused. The message goes into the dead-letter headers.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is not JSON at all.
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    /// JSON, but not a `mail.send` v1 envelope.
    #[error("invalid envelope: {0}")]
    Invalid(String),
}

impl MailSend {
    /// A new envelope for a known template.
    pub fn template(
        source: &str,
        to: Recipient,
        locale: &str,
        template: &str,
        data: impl Serialize,
    ) -> Self {
        let data = match serde_json::to_value(data) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        Self {
            id: Uuid::now_v7(),
            version: MAIL_SEND_VERSION,
            created_at: Utc::now(),
            source: source.to_owned(),
            to,
            locale: locale.to_owned(),
            body: Body::Template {
                template: template.to_owned(),
                data,
            },
        }
    }

    /// Parses and validates an envelope, with a reason fit for a dead-letter header.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let value: Value = serde_json::from_slice(bytes).map_err(EnvelopeError::Json)?;
        let obj = value
            .as_object()
            .ok_or_else(|| invalid("the envelope must be a JSON object"))?;
        match obj.get("version").and_then(Value::as_u64) {
            Some(v) if v == u64::from(MAIL_SEND_VERSION) => {}
            Some(v) => return Err(invalid(format!("unsupported version {v}"))),
            None => return Err(invalid("missing field `version`")),
        }
        match (obj.contains_key("template"), obj.contains_key("content")) {
            (true, true) => return Err(invalid("has both `template` and `content`")),
            (false, false) => return Err(invalid("needs `template` and `data`, or `content`")),
            _ => {}
        }
        // Deserialize the head and the chosen body separately so that serde's
        // message names the field at fault instead of "no variant matched".
        #[derive(Deserialize)]
        struct Head {
            id: Uuid,
            version: u32,
            created_at: DateTime<Utc>,
            source: String,
            to: Recipient,
            locale: String,
        }
        #[derive(Deserialize)]
        struct TemplateBody {
            template: String,
            data: Map<String, Value>,
        }
        #[derive(Deserialize)]
        struct ContentBody {
            content: RawContent,
        }
        let field_err = |e: serde_json::Error| invalid(e.to_string());
        let head: Head = serde_json::from_value(value.clone()).map_err(field_err)?;
        let body = if obj.contains_key("template") {
            let b: TemplateBody = serde_json::from_value(value).map_err(field_err)?;
            Body::Template {
                template: b.template,
                data: b.data,
            }
        } else {
            let b: ContentBody = serde_json::from_value(value).map_err(field_err)?;
            Body::Content { content: b.content }
        };
        let mail = MailSend {
            id: head.id,
            version: head.version,
            created_at: head.created_at,
            source: head.source,
            to: head.to,
            locale: head.locale,
            body,
        };
        mail.validate()?;
        Ok(mail)
    }

    /// Checks what the types cannot: address syntax, one-line headers, sane sizes.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if self.version != MAIL_SEND_VERSION {
            return Err(invalid(format!("unsupported version {}", self.version)));
        }
        let email = &self.to.email;
        if email.len() > 254 || !email_address::EmailAddress::is_valid(email) {
            return Err(invalid(format!(
                "`to.email` is not a valid address: {email:?}"
            )));
        }
        if let Some(name) = &self.to.name {
            one_line("to.name", name, 200)?;
        }
        one_line("source", &self.source, 100)?;
        if self.source.is_empty() {
            return Err(invalid("`source` is empty"));
        }
        let locale_ok = !self.locale.is_empty()
            && self.locale.len() <= 35
            && self
                .locale
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !locale_ok {
            return Err(invalid(format!(
                "`locale` is not a language tag: {:?}",
                self.locale
            )));
        }
        match &self.body {
            Body::Template { template, .. } => {
                let ok = !template.is_empty()
                    && template.len() <= 64
                    && template
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !ok {
                    return Err(invalid(format!(
                        "`template` must be 1-64 of a-z, 0-9 and _: {template:?}"
                    )));
                }
            }
            Body::Content { content } => {
                one_line("content.subject", &content.subject, 998)?;
                if content.subject.trim().is_empty() {
                    return Err(invalid("`content.subject` is empty"));
                }
                if content.html.is_empty() && content.text.is_empty() {
                    return Err(invalid("`content` has neither `html` nor `text`"));
                }
            }
        }
        Ok(())
    }

    /// The envelope as JSON bytes, as published.
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a MailSend always serializes")
    }
}

fn invalid(msg: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Invalid(msg.into())
}

fn one_line(field: &str, value: &str, max: usize) -> Result<(), EnvelopeError> {
    if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        return Err(invalid(format!("`{field}` must be one line")));
    }
    if value.chars().count() > max {
        return Err(invalid(format!(
            "`{field}` is longer than {max} characters"
        )));
    }
    Ok(())
}

/// The JSON Schema of the envelope, as generated from the Rust types: the
/// envelope, and for each built-in template the shape of its `data`.
pub fn json_schema() -> Value {
    let mut schema =
        serde_json::to_value(schemars::schema_for!(MailSend)).expect("schema serializes");
    let mut rules = Vec::new();
    for (template, name, data) in template_data_schemas() {
        schema["$defs"][name] = data;
        rules.push(serde_json::json!({
            "if": {"properties": {"template": {"const": template}}, "required": ["template"]},
            "then": {"properties": {"data": {"$ref": format!("#/$defs/{name}")}}}
        }));
    }
    schema["allOf"] = Value::Array(rules);
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> MailSend {
        MailSend::template(
            "account",
            Recipient {
                email: "민수@example.com".replace("민수", "minsu"),
                name: Some("김민수".into()),
            },
            "ko",
            TEMPLATE_VERIFY_EMAIL,
            VerifyEmailData {
                verify_url: "http://127.0.0.1:8080/verify?token=abc".into(),
                expires_at: Utc::now(),
                code: None,
            },
        )
    }

    #[test]
    fn round_trips_through_json() {
        let mail = sample();
        let parsed = MailSend::from_slice(&mail.to_vec()).unwrap();
        assert_eq!(parsed, mail);
        let v: Value = serde_json::from_slice(&mail.to_vec()).unwrap();
        assert_eq!(v["template"], "verify_email");
        assert_eq!(v["version"], 1);
        assert!(v["data"]["verify_url"].is_string());
    }

    #[test]
    fn raw_content_parses() {
        let raw = json!({
            "id": Uuid::new_v4(), "version": 1, "created_at": "2026-11-24T10:00:00Z",
            "source": "billing", "to": {"email": "a@example.com"}, "locale": "en",
            "content": {"subject": "Invoice", "html": "<p>hi</p>", "text": "hi"}
        });
        let mail = MailSend::from_slice(raw.to_string().as_bytes()).unwrap();
        assert!(matches!(mail.body, Body::Content { .. }));
    }

    fn reason(v: Value) -> String {
        MailSend::from_slice(v.to_string().as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_envelopes_say_why() {
        let base = serde_json::to_value(sample()).unwrap();
        assert!(
            MailSend::from_slice(b"{not json")
                .unwrap_err()
                .to_string()
                .starts_with("invalid JSON")
        );
        let mut v = base.clone();
        v["version"] = json!(2);
        assert!(reason(v).contains("unsupported version 2"));
        let mut v = base.clone();
        v["content"] = json!({"subject": "x", "html": "", "text": "x"});
        assert!(reason(v).contains("both"));
        let mut v = base.clone();
        v.as_object_mut().unwrap().remove("template");
        assert!(reason(v).contains("needs"));
        let mut v = base.clone();
        v["to"]["email"] = json!("not-an-address");
        assert!(reason(v).contains("to.email"));
        let mut v = base.clone();
        v["template"] = json!("../../etc/passwd");
        assert!(reason(v).contains("template"));
        let mut v = base.clone();
        v["to"]["name"] = json!("a\r\nBcc: x@example.com");
        assert!(reason(v).contains("one line"));
        let mut v = base.clone();
        v.as_object_mut().unwrap().remove("id");
        assert!(reason(v).contains("id"));
        let mut v = base;
        v["data"] = json!("text");
        assert!(reason(v).contains("invalid type"));
    }

    /// A raw-content envelope as JSON, to bend field by field.
    fn raw() -> Value {
        json!({
            "id": Uuid::new_v4(), "version": 1, "created_at": "2026-11-24T10:00:00Z",
            "source": "billing", "to": {"email": "a@example.com"}, "locale": "en",
            "content": {"subject": "Invoice", "html": "<p>hi</p>", "text": "hi"}
        })
    }

    fn accepted(v: &Value) -> bool {
        MailSend::from_slice(v.to_string().as_bytes()).is_ok()
    }

    #[test]
    fn a_version_past_u32_is_named_as_unsupported() {
        let mut v = raw();
        v["version"] = json!(4_294_967_296_u64);
        assert_eq!(
            reason(v),
            "invalid envelope: unsupported version 4294967296"
        );
    }

    #[test]
    fn the_address_may_be_254_characters_and_no_more() {
        // 64 + 1 + 189 = 254: a valid address at the bound.
        let local = "a".repeat(64);
        let domain = |len: usize| {
            let labels = [
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(len - 63 - 63 - 6),
            ];
            format!("{}.{}.{}.com", labels[0], labels[1], labels[2])
        };
        let at_bound = format!("{local}@{}", domain(189));
        assert_eq!(at_bound.len(), 254);
        let mut v = raw();
        v["to"]["email"] = json!(at_bound);
        assert!(accepted(&v), "254 characters");
        let over = format!("{local}@{}", domain(190));
        assert_eq!(over.len(), 255);
        v["to"]["email"] = json!(over);
        assert!(reason(v).contains("is not a valid address"));
    }

    #[test]
    fn locales_are_language_tags_of_at_most_35_characters() {
        for ok in ["en", "ko-KR", "zh_Hant", &"a".repeat(35)] {
            let mut v = raw();
            v["locale"] = json!(ok);
            assert!(accepted(&v), "{ok:?}");
        }
        for bad in ["", "en US", "ko;", "ko\n", &"a".repeat(36)] {
            let mut v = raw();
            v["locale"] = json!(bad);
            assert!(reason(v).contains("is not a language tag"), "{bad:?}");
        }
    }

    #[test]
    fn raw_content_needs_html_or_text_and_either_alone_will_do() {
        for (html, text, ok) in [("<p>hi</p>", "", true), ("", "hi", true), ("", "", false)] {
            let mut v = raw();
            v["content"]["html"] = json!(html);
            v["content"]["text"] = json!(text);
            assert_eq!(accepted(&v), ok, "html {html:?}, text {text:?}");
        }
    }

    #[test]
    fn one_line_fields_refuse_every_line_break_and_nul_and_count_characters() {
        for bad in ["a\rb", "a\nb", "a\0b"] {
            let mut v = raw();
            v["source"] = json!(bad);
            assert!(reason(v).contains("must be one line"), "{bad:?}");
        }
        // `source` may be 100 characters (not bytes), and no more.
        let mut v = raw();
        v["source"] = json!("가".repeat(100));
        assert!(accepted(&v), "100 characters");
        v["source"] = json!("가".repeat(101));
        assert!(reason(v).contains("longer than 100 characters"));
    }
}
