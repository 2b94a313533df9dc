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

/// An SMTP failure as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpFailure {
    /// The server answered with this reply code.
    Code(u16),
    /// A reply that could not be read: cut short (the server hung up
    /// mid-answer, lettre's "incomplete response") or garbled.
    Malformed,
    /// Refused by the client before the server was asked: no common AUTH
    /// mechanism, no STARTTLS, non-ASCII without SMTPUTF8/8BITMIME.
    Client,
    /// Connect refused or reset, DNS, TLS handshake, timeouts.
    Network,
}

/// Whether trying again later may help: 4xx, network trouble and replies cut
/// short, yes; 5xx and what the client refuses by itself (a configuration
/// problem), no.
pub fn retryable(failure: SmtpFailure) -> bool {
    match failure {
        SmtpFailure::Code(code) => (400..500).contains(&code),
        SmtpFailure::Malformed | SmtpFailure::Network => true,
        SmtpFailure::Client => false,
    }
}

/// Classifies a lettre SMTP error (see [`retryable`]).
pub fn classify(e: &lettre::transport::smtp::Error) -> DeliveryError {
    let failure = match e.status() {
        Some(code) => SmtpFailure::Code(code.into()),
        None if e.is_response() => SmtpFailure::Malformed,
        None if e.is_client() => SmtpFailure::Client,
        None => SmtpFailure::Network,
    };
    let code = e
        .status()
        .map(|c| format!("SMTP {c}: "))
        .unwrap_or_default();
    DeliveryError {
        transient: retryable(failure),
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
    fn smtp_failures_split_into_retry_and_dead() {
        for code in [421, 450, 451, 452, 454] {
            assert!(retryable(SmtpFailure::Code(code)), "{code}");
        }
        for code in [500, 530, 535, 550, 552, 553, 554] {
            assert!(!retryable(SmtpFailure::Code(code)), "{code}");
        }
        // A server that hangs up mid-reply is a dropped connection, not a verdict.
        assert!(retryable(SmtpFailure::Malformed));
        assert!(retryable(SmtpFailure::Network));
        assert!(!retryable(SmtpFailure::Client));
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t: AsyncSmtpTransport<Tokio1Executor> =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                .port(port)
                .build();
        let err = t.test_connection().await.unwrap_err();
        let d = classify(&err);
        assert!(d.transient, "{d:?}");
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
