//! The MIME message of a mail: multipart/alternative (text, then HTML), a
//! Message-ID derived from the event id, and `Auto-Submitted`.

use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use shared::MailSend;

use crate::outlet::DeliveryError;
use crate::templates::Rendered;

/// Builds the MIME message: multipart/alternative (text, then HTML), a
/// Message-ID derived from the event id, and `Auto-Submitted: auto-generated`.
pub fn build_message(
    mail: &MailSend,
    rendered: &Rendered,
    from: &Mailbox,
) -> Result<Message, DeliveryError> {
    let permanent = |reason: String| DeliveryError {
        transient: false,
        reason,
    };
    let to: Mailbox = Mailbox::new(
        mail.to.name.clone(),
        mail.to
            .email
            .parse()
            .map_err(|e| permanent(format!("invalid recipient {:?}: {e}", mail.to.email)))?,
    );
    let domain = from.email.domain().to_owned();
    let mut builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(rendered.subject.clone())
        .message_id(Some(format!("<{}@{domain}>", mail.id)));
    builder = builder.header(AutoSubmitted);
    let body = if rendered.html.is_empty() {
        MultiPart::mixed().singlepart(SinglePart::plain(rendered.text.clone()))
    } else {
        MultiPart::alternative()
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(rendered.text.clone()),
            )
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(rendered.html.clone()),
            )
    };
    builder
        .multipart(body)
        .map_err(|e| permanent(format!("cannot build the message: {e}")))
}

/// `Auto-Submitted: auto-generated` (RFC 3834): tells auto-responders not to answer.
#[derive(Debug, Clone)]
struct AutoSubmitted;

impl lettre::message::header::Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::Recipient;
    use shared::envelope::TEMPLATE_VERIFY_EMAIL;

    #[test]
    fn messages_carry_both_parts_and_our_headers() {
        let mail = MailSend::template(
            "test",
            Recipient {
                email: "minsu@example.com".into(),
                name: Some("김민수".into()),
            },
            "ko",
            TEMPLATE_VERIFY_EMAIL,
            serde_json::json!({}),
        );
        let long_link = format!("https://acc.example/verify?token=v1.k.{}", "A".repeat(300));
        let rendered = Rendered {
            subject: "이메일 주소를 확인해 주세요".into(),
            html: format!("<a href=\"{long_link}\">확인</a>"),
            text: format!("링크: {long_link}"),
        };
        let from: Mailbox = "Account <no-reply@acc.example>".parse().unwrap();
        let msg = build_message(&mail, &rendered, &from).unwrap();
        let raw = String::from_utf8(msg.formatted()).unwrap();
        assert!(
            raw.contains(&format!("Message-ID: <{}@acc.example>", mail.id)),
            "{raw}"
        );
        assert!(raw.contains("Auto-Submitted: auto-generated"));
        assert!(raw.contains("multipart/alternative"));
        assert!(
            raw.contains("Subject: =?utf-8?"),
            "non-ASCII subject is encoded: {raw}"
        );
        assert!(raw.contains("text/plain") && raw.contains("text/html"));
    }

    #[test]
    fn bad_recipients_are_permanent() {
        let mut mail = MailSend::template(
            "t",
            Recipient {
                email: "a@b.example".into(),
                name: None,
            },
            "en",
            "x",
            serde_json::json!({}),
        );
        mail.to.email = "not an address".into();
        let r = Rendered {
            subject: "s".into(),
            html: String::new(),
            text: "t".into(),
        };
        let err = build_message(&mail, &r, &"a@b.example".parse().unwrap()).unwrap_err();
        assert!(!err.transient);
    }
}
