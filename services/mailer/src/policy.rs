//! How far the mailer trusts a publisher: anyone who may publish to the mail
//! exchange could otherwise send any template to anyone, under any source
//! name, with any link in it, and of any size. Each check here is pure; the
//! pipeline runs them in this order, and a refusal is permanent (the event
//! is dead-lettered with the reason):
//!
//! 1. size (`MAILER_MAX_EVENT_BYTES`), before a byte of the event is parsed:
//!    a 15 MiB event once took the mailer from 19 to 127 MB while serde
//!    built values of it;
//! 2. the publisher (`MAILER_SOURCES`): the envelope's `source` is only a
//!    claim; the AMQP `user_id` is proof, because RabbitMQ refuses a publish
//!    whose `user_id` is not the connection's user;
//! 3. links of built-in templates: every `*_url` field is `https:`, or
//!    `http:` to this machine (development), never `javascript:`, `data:` or
//!    a clear-text link that would carry a token over the network.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};
use shared::{Body, MailSend};

/// In `MAILER_SOURCES`, what stands for raw-content events (a template
/// name cannot hold `*`).
pub const RAW: &str = "*raw*";
/// In `MAILER_SOURCES`, what stands for every template.
pub const ANY_TEMPLATE: &str = "*";

/// Refuses an event larger than `max` bytes, before it is parsed.
pub fn check_size(len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!(
            "the event is {len} bytes, more than MAILER_MAX_EVENT_BYTES ({max}); it was not read"
        ));
    }
    Ok(())
}

/// What one source may send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    templates: BTreeSet<String>,
    any_template: bool,
    raw: bool,
}

/// `MAILER_SOURCES`: the sources that may publish, and what each may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources(BTreeMap<String, Allowed>);

/// Value parser of `MAILER_SOURCES`:
/// `account=verify_email,account_exists;billing=*raw*`.
pub fn sources(s: &str) -> Result<Sources, String> {
    let mut map = BTreeMap::new();
    for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (source, items) = entry
            .split_once('=')
            .ok_or_else(|| format!("expected source=template,...; got {entry:?}"))?;
        let source = source.trim();
        if source.is_empty() || map.contains_key(source) {
            return Err(format!("empty or repeated source in {entry:?}"));
        }
        let mut allowed = Allowed::default();
        for item in items.split(',').map(str::trim) {
            match item {
                RAW => allowed.raw = true,
                ANY_TEMPLATE => allowed.any_template = true,
                t if !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') =>
                {
                    allowed.templates.insert(t.to_owned());
                }
                other => {
                    return Err(format!(
                        "{other:?} is not a template name, {ANY_TEMPLATE} or {RAW}"
                    ));
                }
            }
        }
        map.insert(source.to_owned(), allowed);
    }
    if map.is_empty() {
        return Err("no source listed".into());
    }
    Ok(Sources(map))
}

impl Sources {
    /// Whether `mail`, published by broker user `user_id` (the AMQP
    /// property, if the publisher set it), may be sent. Without a
    /// `user_id` the envelope's `source` is taken at its word, unless
    /// `require_user_id`.
    pub fn check(
        &self,
        mail: &MailSend,
        user_id: Option<&str>,
        require_user_id: bool,
    ) -> Result<(), String> {
        let source = mail.source.as_str();
        match user_id {
            Some(user) if user != source => {
                return Err(format!(
                    "source {source:?} was published by broker user {user:?}; they must be equal"
                ));
            }
            None if require_user_id => {
                return Err(format!(
                    "source {source:?} sent no AMQP user_id (MAILER_REQUIRE_USER_ID)"
                ));
            }
            _ => {}
        }
        let allowed = self
            .0
            .get(source)
            .ok_or_else(|| format!("source {source:?} is not in MAILER_SOURCES"))?;
        match &mail.body {
            Body::Template { template, .. }
                if allowed.any_template || allowed.templates.contains(template) =>
            {
                Ok(())
            }
            Body::Template { template, .. } => Err(format!(
                "source {source:?} may not send template {template:?} (MAILER_SOURCES)"
            )),
            Body::Content { .. } if allowed.raw => Ok(()),
            Body::Content { .. } => Err(format!(
                "source {source:?} may not send raw content (MAILER_SOURCES)"
            )),
        }
    }
}

/// Refuses any `*_url` field of `data` that is not an `https:` link (or
/// `http:` to this machine). The reason names the field and the scheme or
/// host, never the link: links carry tokens, and reasons are logged.
pub fn check_links(data: &Map<String, Value>) -> Result<(), String> {
    for (field, value) in data.iter().filter(|(k, _)| k.ends_with("_url")) {
        let refused = |what: String| {
            Err(format!(
                "`{field}` must be an https: link (http: only to localhost); {what}"
            ))
        };
        let Some(text) = value.as_str() else {
            return refused("it is not a string".into());
        };
        let Ok(url) = url::Url::parse(text) else {
            return refused("it is not an absolute URL".into());
        };
        let local = match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        match url.scheme() {
            "https" if url.host().is_some() => {}
            "http" if local => {}
            "http" => return refused(format!("it is http: to {}", url.host_str().unwrap_or(""))),
            scheme => return refused(format!("it is {scheme}:")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shared::{RawContent, Recipient};

    fn event(source: &str, template: Option<&str>) -> MailSend {
        let to = Recipient {
            email: "a@example.com".into(),
            name: None,
        };
        let mut mail = MailSend::template(source, to, "en", "x", json!({}));
        mail.body = match template {
            Some(t) => Body::Template {
                template: t.into(),
                data: Map::new(),
            },
            None => Body::Content {
                content: RawContent {
                    subject: "s".into(),
                    html: String::new(),
                    text: "t".into(),
                },
            },
        };
        mail
    }

    #[test]
    fn sizes_are_checked_against_the_cap() {
        assert!(check_size(256 << 10, 256 << 10).is_ok());
        let e = check_size((256 << 10) + 1, 256 << 10).unwrap_err();
        assert!(e.contains("262145 bytes") && e.contains("(262144)"), "{e}");
    }

    #[test]
    fn sources_allow_what_they_list_and_nothing_else() {
        let s = sources("account=verify_email,account_exists; billing=*raw*;ops=*").unwrap();
        let ok = |src, t| s.check(&event(src, t), Some(src), true);
        assert!(ok("account", Some("verify_email")).is_ok());
        assert!(ok("account", Some("account_exists")).is_ok());
        assert!(ok("billing", None).is_ok());
        assert!(ok("ops", Some("anything")).is_ok());
        let e = ok("account", None).unwrap_err();
        assert!(e.contains("may not send raw content"), "{e}");
        let e = ok("billing", Some("verify_email")).unwrap_err();
        assert!(e.contains("may not send template \"verify_email\""), "{e}");
        assert!(ok("ops", None).is_err(), "`*` is every template, not raw");
        let e = ok("stranger", None).unwrap_err();
        assert!(e.contains("not in MAILER_SOURCES"), "{e}");
    }

    #[test]
    fn the_broker_user_is_the_source_when_present() {
        let s = sources("account=verify_email").unwrap();
        let mail = event("account", Some("verify_email"));
        let e = s.check(&mail, Some("billing"), false).unwrap_err();
        assert!(e.contains("published by broker user \"billing\""), "{e}");
        // Without user_id: the envelope's word, unless proof is required.
        assert!(s.check(&mail, None, false).is_ok());
        let e = s.check(&mail, None, true).unwrap_err();
        assert!(e.contains("no AMQP user_id"), "{e}");
    }

    #[test]
    fn bad_source_lists_are_refused() {
        for bad in [
            "",
            "account",
            "account=",
            "=x",
            "a=x;a=y",
            "a=Bad-Name",
            "a=x y",
        ] {
            assert!(sources(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn links_must_be_https_or_local_http() {
        let check = |url: Value| check_links(json!({ "verify_url": url }).as_object().unwrap());
        for good in [
            "https://acc.example/verify?token=v1.k.x",
            "http://127.0.0.1:8080/verify?token=x",
            "http://localhost:8080/verify",
            "http://[::1]:8080/v",
        ] {
            assert!(check(json!(good)).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("javascript:alert(1)", "it is javascript:"),
            ("JavaScript:alert(1)", "it is javascript:"),
            ("data:text/html,<script>x</script>", "it is data:"),
            (
                "http://acc.example/verify?token=secret",
                "http: to acc.example",
            ),
            ("//acc.example/verify", "not an absolute URL"),
        ] {
            let e = check(json!(bad)).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("secret"), "the link stays out of reasons: {e}");
        }
        assert!(check(json!(42)).unwrap_err().contains("not a string"));
        // Fields that are not links are not links.
        assert!(check_links(json!({"expires_at": "javascript:x"}).as_object().unwrap()).is_ok());
    }
}
