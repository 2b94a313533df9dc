//! The `account.*` events v1: what the account service tells other services
//! (billing, CRM, analytics) about an account's life, on the topic exchange
//! `<prefix>.account` with routing key `account.<type>`.
//!
//! Published through the account's outbox in the same transaction as the
//! change, with publisher confirms: at least once (consumers de-duplicate on
//! `id`), and for one user in the order the changes happened. Never a
//! password hash, a token or a code.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The only account event version this crate writes.
pub const ACCOUNT_EVENT_VERSION: u32 = 1;

/// What happened to the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountEventType {
    /// A sign-up stored a new, unverified account.
    Created,
    /// The address was proven (link or code).
    Verified,
    /// The password was changed or reset.
    PasswordChanged,
    /// The address moved to a confirmed new one (`previous_email` holds the old).
    EmailChanged,
    /// The account is gone: deleted by its owner, or never verified in time.
    Deleted,
}

impl AccountEventType {
    /// Every type, in the order of an account's life.
    pub const ALL: [Self; 5] = [
        Self::Created,
        Self::Verified,
        Self::PasswordChanged,
        Self::EmailChanged,
        Self::Deleted,
    ];

    /// The `type` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Verified => "verified",
            Self::PasswordChanged => "password_changed",
            Self::EmailChanged => "email_changed",
            Self::Deleted => "deleted",
        }
    }

    /// The routing key: `account.<type>`.
    pub fn routing_key(self) -> String {
        format!("account.{}", self.as_str())
    }
}

/// One account event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "account event v1", extend("$id" = "urn:account-event:v1"))]
#[serde(deny_unknown_fields)]
pub struct AccountEvent {
    /// Unique per event, also the AMQP `message_id`: the key to de-duplicate on.
    pub id: Uuid,
    /// Always 1.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// What happened; the routing key is `account.<type>`.
    #[serde(rename = "type")]
    pub kind: AccountEventType,
    /// When it happened (RFC 3339), the time of the change's transaction.
    pub occurred_at: DateTime<Utc>,
    /// The account's stable id.
    pub user_id: Uuid,
    /// The account's address after the event (for `deleted`: the last one).
    #[schemars(email, length(min = 3, max = 254))]
    pub email: String,
    /// The account's language, a BCP 47 tag (`ko`, `en`).
    #[schemars(length(min = 1, max = 35))]
    pub locale: String,
    /// `email_changed` only: the address before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(email, length(min = 3, max = 254))]
    pub previous_email: Option<String>,
}

impl AccountEvent {
    /// A new event of `kind` about `user_id`, now.
    pub fn new(kind: AccountEventType, user_id: Uuid, email: &str, locale: &str) -> Self {
        Self {
            id: Uuid::now_v7(),
            version: ACCOUNT_EVENT_VERSION,
            kind,
            occurred_at: Utc::now(),
            user_id,
            email: email.to_owned(),
            locale: locale.to_owned(),
            previous_email: None,
        }
    }

    /// The routing key it is published with.
    pub fn routing_key(&self) -> String {
        self.kind.routing_key()
    }
}

/// The JSON Schema of the event (`shared/schema/account.event.v1.schema.json`):
/// `previous_email` is required exactly when `type` is `email_changed`.
pub fn json_schema() -> Value {
    let mut schema =
        serde_json::to_value(schemars::schema_for!(AccountEvent)).expect("schema serializes");
    schema["if"] = serde_json::json!({"properties": {"type": {"const": "email_changed"}}});
    schema["then"] = serde_json::json!({"required": ["previous_email"]});
    schema["else"] = serde_json::json!({"not": {"required": ["previous_email"]}});
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_name_their_routing_key() {
        let mut e = AccountEvent::new(
            AccountEventType::EmailChanged,
            Uuid::nil(),
            "new@example.com",
            "ko",
        );
        e.previous_email = Some("old@example.com".into());
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "email_changed");
        assert_eq!(v["version"], 1);
        assert_eq!(e.routing_key(), "account.email_changed");
        assert_eq!(serde_json::from_value::<AccountEvent>(v).unwrap(), e);
        let created = AccountEvent::new(AccountEventType::Created, Uuid::nil(), "a@b.c", "en");
        let v = serde_json::to_value(&created).unwrap();
        assert!(v.get("previous_email").is_none(), "{v}");
        for kind in AccountEventType::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                Value::String(kind.as_str().into())
            );
        }
    }
}
