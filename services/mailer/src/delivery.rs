//! Channels that deliver a rendered mail: SMTP (lettre, pooled) or a folder
//! of .eml files for development. Both answer with the same outcome type.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use shared::MailSend;
use tokio::sync::Semaphore;

use crate::config::{Outbound, Settings};
use crate::templates::Rendered;

/// Why a delivery failed, and whether trying again later may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DeliveryError {
    pub transient: bool,
    pub reason: String,
}

/// Classifies an SMTP error: 4xx, timeouts, connection and TLS-handshake I/O
/// problems are transient; 5xx and malformed requests are permanent.
pub fn classify(e: &lettre::transport::smtp::Error) -> DeliveryError {
    let transient = if e.is_permanent() {
        false
    } else {
        e.is_transient() || e.is_timeout() || !e.is_response() && !e.is_client()
    };
    let code = e
        .status()
        .map(|c| format!("SMTP {c}: "))
        .unwrap_or_default();
    DeliveryError {
        transient,
        reason: format!("{code}{e}"),
    }
}

/// Where mail goes.
#[derive(Clone)]
pub enum Channel {
    /// lettre's pooled transport. Its own timeout covers only the TCP
    /// connect, so every exchange with the server is also bounded by `timeout`
    /// here: a server that stops answering mid-session must not hold a
    /// prefetch slot forever.
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        timeout: Duration,
        /// lettre's pool `max_size` only caps the idle connections it keeps;
        /// every concurrent send opens its own. This caps the open ones at
        /// MAILER_SMTP_POOL_SIZE, so prefetch never turns into dozens of
        /// sessions at a provider that limits them per account.
        slots: Arc<Semaphore>,
    },
    Dir(AsyncFileTransport<Tokio1Executor>, PathBuf),
}

/// The error of an SMTP exchange that outlived its time: transient.
fn timed_out(after: Duration) -> DeliveryError {
    DeliveryError {
        transient: true,
        reason: format!(
            "the SMTP server did not finish within {} (MAILER_SMTP_TIMEOUT)",
            shared::topology::delay_label(after)
        ),
    }
}

impl Channel {
    /// The channel the settings describe.
    pub fn from_settings(settings: &Settings) -> Result<Self, anyhow::Error> {
        match &settings.outbound {
            Outbound::Dir(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow::anyhow!("MAILER_MAIL_DIR={}: {e}", dir.display()))?;
                Ok(Self::Dir(AsyncFileTransport::new(dir), dir.clone()))
            }
            Outbound::Smtp {
                url,
                password,
                user,
            } => {
                let mut builder =
                    AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
                        .map_err(|e| anyhow::anyhow!("MAILER_SMTP_URL: {e}"))?
                        .timeout(Some(settings.smtp_timeout))
                        .pool_config(
                            PoolConfig::new()
                                .max_size(settings.smtp_pool_size)
                                .idle_timeout(Duration::from_secs(30)),
                        );
                if let (Some(user), Some(password)) = (user, password) {
                    builder = builder.credentials(Credentials::new(
                        user.clone(),
                        password.expose_secret().to_owned(),
                    ));
                }
                Ok(Self::Smtp {
                    transport: builder.build(),
                    timeout: settings.smtp_timeout,
                    slots: Arc::new(Semaphore::new(settings.smtp_pool_size as usize)),
                })
            }
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Smtp { .. } => "smtp",
            Self::Dir(..) => "dir",
        }
    }

    /// Checks that the server answers (SMTP) or the folder is writable.
    pub async fn check(&self) -> Result<(), String> {
        match self {
            Self::Smtp {
                transport, timeout, ..
            } => match tokio::time::timeout(*timeout, transport.test_connection()).await {
                Ok(Ok(true)) => Ok(()),
                Ok(Ok(false)) => Err("the SMTP server did not answer NOOP".into()),
                Ok(Err(e)) => Err(classify(&e).reason),
                Err(_) => Err(timed_out(*timeout).reason),
            },
            Self::Dir(_, dir) => {
                if dir.is_dir() {
                    Ok(())
                } else {
                    Err(format!("{} is missing", dir.display()))
                }
            }
        }
    }

    /// Delivers one message; `Ok` means the server (or the folder) accepted it.
    /// Records `mailer_smtp_seconds` for accepted mail: the time the server
    /// (or the folder) took, not the wait for a free connection.
    pub async fn send(&self, message: Message) -> Result<(), DeliveryError> {
        let mut started = Instant::now();
        let result = match self {
            Self::Smtp {
                transport,
                timeout,
                slots,
            } => {
                // Waiting for a free connection is not the server's time.
                let _slot = slots.acquire().await.map_err(|_| DeliveryError {
                    transient: true,
                    reason: "the SMTP channel is closed".into(),
                })?;
                started = Instant::now();
                // One bound for the whole exchange (connect, TLS, AUTH, MAIL,
                // RCPT, DATA): what an operator means by "SMTP timeout".
                match tokio::time::timeout(*timeout, transport.send(message)).await {
                    Ok(result) => result.map(|_| ()).map_err(|e| classify(&e)),
                    Err(_) => Err(timed_out(*timeout)),
                }
            }
            Self::Dir(t, _) => t
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| DeliveryError {
                    transient: true,
                    reason: format!("cannot write the mail file: {e}"),
                }),
        };
        if result.is_ok() {
            metrics::histogram!("mailer_smtp_seconds", "channel" => self.name())
                .record(started.elapsed().as_secs_f64());
        }
        result
    }
}

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
