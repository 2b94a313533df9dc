//! One event in, one mail out: parse and validate the envelope, skip an id
//! already sent, render the template, build the MIME message, wait for the
//! send rate, hand it to the outlet. No AMQP here: the consumer acks or
//! routes by the answer, and unit tests drive it with a stub outlet.

use std::sync::Arc;
use std::time::Instant;

use lettre::Message;
use lettre::message::Mailbox;
use shared::config::ConfigError;
use shared::{Body, MailSend};

use crate::config::Settings;
use crate::dedupe::{Claim, Sent, Store};
use crate::dkim::Signer;
use crate::message::build_message;
use crate::outlet::{DeliveryError, Outlet};
use crate::policy::{self, Sources};
use crate::templates::{self, House, Rendered, Templates};

/// What became of an event that needs no retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// The outlet accepted the mail.
    Sent { template: String },
    /// This process (or, with the dedupe store, any mailer) already sent
    /// this event id; nothing was sent again.
    Duplicate { template: String },
    /// Another mailer is sending this event id right now (dedupe store):
    /// nothing was sent; it is to be looked at again later.
    Busy { template: String },
}

/// An event that was not delivered, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The template name (`raw` for content events, `invalid` when unparsable).
    pub template: String,
    /// The event id, when the envelope had one.
    pub id: Option<uuid::Uuid>,
    pub error: DeliveryError,
}

/// The delivery pipeline and what it needs.
#[derive(Clone)]
pub struct Pipeline {
    pub templates: Arc<Templates>,
    pub outlet: Outlet,
    pub sent: Arc<Sent>,
    /// The idempotency store shared by every mailer, if configured.
    pub store: Option<Arc<Store>>,
    /// How long a claim in the store keeps other mailers off an event: a
    /// whole SMTP exchange and then some; an older claim's mailer died.
    pub claim_lease: std::time::Duration,
    /// The From of every mail: MAILER_FROM's address, the brand as its name.
    pub from: Mailbox,
    /// Signs every message when DKIM is configured.
    pub dkim: Option<Arc<Signer>>,
    pub limiter: Option<Arc<governor::DefaultDirectRateLimiter>>,
    /// MAILER_MAX_EVENT_BYTES.
    pub max_event_bytes: usize,
    /// MAILER_SOURCES, and whether the AMQP user_id must prove the source.
    pub sources: Option<Sources>,
    pub require_user_id: bool,
}

impl Pipeline {
    /// The pipeline the settings describe, delivering to `outlet`.
    pub fn new(settings: &Settings, outlet: Outlet) -> Result<Self, anyhow::Error> {
        let house = House {
            brand: settings.brand(),
            support_address: settings.support_address.as_ref().map(|a| a.to_string()),
            zones: settings.time_zones(),
        };
        // A configuration error: `main` stops the start with its one line.
        let templates = Templates::load(settings.template_dir.as_deref(), &settings.default_locale)
            .map_err(|e| ConfigError::new("MAILER_TEMPLATE_DIR", format!("{e:#}")))?
            .with_house(house);
        let limiter = settings
            .send_rate()
            .and_then(std::num::NonZeroU32::new)
            .map(|n| {
                Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
                    n,
                )))
            });
        Ok(Self {
            templates: Arc::new(templates),
            outlet,
            sent: Arc::new(Sent::new(100_000)),
            store: settings
                .dedupe_url
                .clone()
                .map(|url| Arc::new(Store::new(url, settings.dedupe_retention))),
            claim_lease: settings.smtp_timeout + std::time::Duration::from_secs(10),
            from: settings.sender(),
            dkim: settings.dkim.clone(),
            limiter,
            max_event_bytes: settings.max_event_bytes,
            sources: settings.sources.clone(),
            require_user_id: settings.require_user_id,
        })
    }

    /// Delivers the event in `body`, published by broker user `user_id`
    /// (proven by the broker; see `routing::publisher`), if known.
    pub async fn process(&self, body: &[u8], user_id: Option<&str>) -> Result<Handled, Failure> {
        let unread = |reason: String| Failure {
            template: "invalid".into(),
            id: None,
            error: DeliveryError::permanent(reason),
        };
        policy::check_size(body.len(), self.max_event_bytes).map_err(unread)?;
        let mail = MailSend::from_slice(body).map_err(|e| unread(e.to_string()))?;
        let template = match &mail.body {
            Body::Template { template, .. } => template.clone(),
            Body::Content { .. } => "raw".to_owned(),
        };
        let fail = |error: DeliveryError| Failure {
            template: template.clone(),
            id: Some(mail.id),
            error,
        };
        if let Some(sources) = &self.sources {
            sources
                .check(&mail, user_id, self.require_user_id)
                .map_err(|reason| fail(DeliveryError::permanent(reason)))?;
        }
        if self.sent.contains(&mail.id) {
            tracing::info!(event_id = %mail.id, "already sent by this process; acking the redelivery");
            return Ok(Handled::Duplicate { template });
        }
        let lag = (chrono::Utc::now() - mail.created_at)
            .to_std()
            .unwrap_or_default();
        metrics::histogram!("mailer_queue_lag_seconds").record(lag.as_secs_f64());
        let message = self.compose(&mail).map_err(fail)?;
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        if let Some(store) = &self.store {
            match store.claim(mail.id, self.claim_lease).await {
                Claim::Mine => {}
                Claim::Accepted => {
                    tracing::info!(event_id = %mail.id, "already sent by a mailer (dedupe store); acking the redelivery");
                    return Ok(Handled::Duplicate { template });
                }
                Claim::Busy => return Ok(Handled::Busy { template }),
            }
        }
        let started = Instant::now();
        // The outlet records mailer_smtp_seconds itself, without the wait
        // for a free connection.
        if let Err(e) = self.outlet.send(message).await {
            if let Some(store) = &self.store {
                store.release(mail.id).await;
            }
            return Err(fail(e));
        }
        self.sent.insert(mail.id);
        // Before the ack: from here on, a redelivery to any mailer is known.
        if let Some(store) = &self.store {
            store.record(mail.id).await;
        }
        let domain = mail.to.email.rsplit('@').next().unwrap_or("");
        match (&self.outlet, &mail.body) {
            // A laptop has no inbox: the link in the log is the point.
            (Outlet::Dir(_, dir), Body::Template { data, .. }) => {
                let links: Vec<&str> = data
                    .iter()
                    .filter(|(k, _)| k.ends_with("_url"))
                    .filter_map(|(_, v)| v.as_str())
                    .collect();
                tracing::info!(event_id = %mail.id, %template, to = %mail.to.email, folder = %dir.display(), links = ?links, "mail written");
            }
            _ => {
                tracing::info!(event_id = %mail.id, %template, to_domain = %domain, ms = started.elapsed().as_millis() as u64, "mail sent")
            }
        }
        Ok(Handled::Sent { template })
    }

    /// The message of `mail` as it would be sent: the links of a built-in
    /// template checked, the template rendered, the MIME message built and
    /// signed.
    pub fn compose(&self, mail: &MailSend) -> Result<Message, DeliveryError> {
        let rendered = self.render(mail)?;
        self.build(mail, &rendered)
    }

    /// The parts of `mail`: its template rendered (links of a built-in one
    /// checked first), or its raw content.
    pub fn render(&self, mail: &MailSend) -> Result<Rendered, DeliveryError> {
        Ok(match &mail.body {
            Body::Template { template, data } => {
                if templates::builtin(template) {
                    policy::check_links(data).map_err(DeliveryError::permanent)?;
                }
                self.templates
                    .render(template, &mail.locale, data, mail.to.name.as_deref())
                    .map_err(|e| DeliveryError::permanent(e.to_string()))?
            }
            Body::Content { content } => Rendered {
                subject: content.subject.clone(),
                html: content.html.clone(),
                text: content.text.clone(),
            },
        })
    }

    /// The MIME message of `mail` with its `rendered` parts, DKIM-signed
    /// when configured.
    pub fn build(&self, mail: &MailSend, rendered: &Rendered) -> Result<Message, DeliveryError> {
        let mut message = build_message(mail, rendered, &self.from)?;
        if let Some(dkim) = &self.dkim {
            dkim.sign(&mut message);
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lettre::transport::stub::AsyncStubTransport;
    use shared::Recipient;
    use shared::envelope::TEMPLATE_VERIFY_EMAIL;

    fn pipeline(stub: AsyncStubTransport) -> Pipeline {
        let settings = Settings::from_vars([(
            "MAILER_FROM".to_owned(),
            "Account <no-reply@acc.example>".to_owned(),
        )])
        .unwrap();
        Pipeline::new(&settings, Outlet::Stub(stub)).unwrap()
    }

    fn verify_event(to: &str) -> MailSend {
        MailSend::template(
            "account",
            Recipient {
                email: to.into(),
                name: None,
            },
            "ko",
            TEMPLATE_VERIFY_EMAIL,
            serde_json::json!({
                "verify_url": "https://acc.example/verify?token=v1.k.ABC",
                "expires_at": "2026-11-25T10:00:00Z"
            }),
        )
    }

    #[tokio::test]
    async fn an_event_becomes_one_mail_and_its_redelivery_none() {
        let stub = AsyncStubTransport::new_ok();
        let p = pipeline(stub.clone());
        let event = verify_event("minsu@example.com");
        assert_eq!(
            p.process(&event.to_vec(), None).await,
            Ok(Handled::Sent {
                template: "verify_email".into()
            })
        );
        assert_eq!(
            p.process(&event.to_vec(), None).await,
            Ok(Handled::Duplicate {
                template: "verify_email".into()
            })
        );
        let sent = stub.messages().await;
        assert_eq!(sent.len(), 1);
        let (envelope, raw) = &sent[0];
        assert_eq!(envelope.to()[0].to_string(), "minsu@example.com");
        assert!(raw.contains(&format!("Message-ID: <{}@acc.example>", event.id)));
        assert!(raw.contains("multipart/alternative"), "{raw}");
    }

    #[tokio::test]
    async fn bad_events_fail_permanently_and_outlet_failures_transiently() {
        let p = pipeline(AsyncStubTransport::new_ok());
        let f = p.process(b"{not json", None).await.unwrap_err();
        assert_eq!(
            (f.template.as_str(), f.id, f.error.transient),
            ("invalid", None, false)
        );
        let mut unknown = verify_event("a@example.com");
        if let Body::Template { template, .. } = &mut unknown.body {
            *template = "no_such_template".into();
        }
        let f = p.process(&unknown.to_vec(), None).await.unwrap_err();
        assert_eq!((f.id, f.error.transient), (Some(unknown.id), false));
        assert!(f.error.reason.contains("unknown template"), "{f:?}");

        let down = pipeline(AsyncStubTransport::new_error());
        let event = verify_event("b@example.com");
        let f = down.process(&event.to_vec(), None).await.unwrap_err();
        assert!(f.error.transient, "{f:?}");
        // Not sent, so not remembered: the retry will try again.
        assert!(!down.sent.contains(&event.id));
    }
}
