//! Outlets: where a built mail goes. SMTP (lettre, pooled), a folder of
//! .eml files for development, or a stub that keeps mail in memory (unit
//! tests of the pipeline). All answer with the same outcome type.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::stub::AsyncStubTransport;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use crate::config::{Outbound, Settings};

/// Why a delivery failed, and whether trying again later may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DeliveryError {
    pub transient: bool,
    pub reason: String,
}

impl DeliveryError {
    /// A failure that trying again cannot fix.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            transient: false,
            reason: reason.into(),
        }
    }
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

/// The TLS certificate problem in an error's causes, if the failure is our
/// client refusing the server's certificate (unknown CA, wrong name,
/// expired...): a configuration error, not the server's state.
pub fn rejected_certificate(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    fn certificate(e: &(dyn std::error::Error + 'static)) -> Option<String> {
        match e.downcast_ref::<rustls::Error>()? {
            rustls::Error::InvalidCertificate(c) => Some(format!("invalid certificate: {c:?}")),
            rustls::Error::NoCertificatesPresented => Some("no certificate presented".into()),
            _ => None,
        }
    }
    let mut cause = Some(e);
    while let Some(err) = cause {
        // tokio-rustls wraps the TLS error in an io::Error, whose `source()`
        // skips it: look inside.
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| certificate(i));
        if let Some(found) = certificate(err).or(inner) {
            return Some(found);
        }
        cause = err.source();
    }
    None
}

/// Classifies a lettre SMTP error (see [`retryable`]). A rejected
/// certificate is transient here (the mail must not die of it); the outlet
/// also remembers it as a configuration error ([`Outlet::misconfigured`]).
pub fn classify(e: &lettre::transport::smtp::Error) -> DeliveryError {
    if let Some(why) = rejected_certificate(e) {
        return DeliveryError {
            transient: true,
            reason: format!(
                "configuration error: the SMTP server's certificate was rejected ({why}); \
                 check MAILER_SMTP_URL's host and the trusted CAs"
            ),
        };
    }
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
pub enum Outlet {
    /// lettre's pooled transport. Its own timeout covers only the TCP
    /// connect, so every exchange with the server is also bounded by `timeout`
    /// here: a server that stops answering mid-session must not hold a
    /// prefetch slot forever.
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        timeout: Duration,
        /// lettre's pool `max_size` only caps the idle connections it keeps;
        /// every concurrent send opens its own. This caps the sends at once
        /// at MAILER_SMTP_POOL_SIZE, the pool's `max_size` too, so prefetch
        /// never turns into dozens of sessions at a provider that limits
        /// them per account. The vendored lettre parks a connection before
        /// `send` returns (vendor/README.md), so the slot is free only once
        /// its session is back in the pool: the sessions open at once never
        /// exceed the cap either.
        slots: Arc<Semaphore>,
        /// The configuration error the last exchange ran into (a rejected
        /// certificate), until an exchange succeeds: readiness reports it
        /// and failed mail waits instead of climbing its retry ladder.
        misconfigured: Arc<std::sync::Mutex<Option<String>>>,
    },
    Dir(AsyncFileTransport<Tokio1Executor>, PathBuf),
    /// Keeps every mail in memory and answers as it was made to
    /// (`AsyncStubTransport::new_ok()` or `new_error()`, a transient failure).
    Stub(AsyncStubTransport),
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

impl Outlet {
    /// The outlet the settings describe.
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
                    misconfigured: Arc::default(),
                })
            }
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Smtp { .. } => "smtp",
            Self::Dir(..) => "dir",
            Self::Stub(_) => "stub",
        }
    }

    /// The configuration error that stops mail going out (a rejected SMTP
    /// certificate), if the last exchange ran into one.
    pub fn misconfigured(&self) -> Option<String> {
        match self {
            Self::Smtp { misconfigured, .. } => misconfigured.lock().ok()?.clone(),
            _ => None,
        }
    }

    /// Records what an SMTP exchange said about the configuration.
    fn observe(&self, error: Option<&lettre::transport::smtp::Error>) {
        let Self::Smtp { misconfigured, .. } = self else {
            return;
        };
        let now = error.and_then(|e| rejected_certificate(e).map(|_| classify(e).reason));
        if let Ok(mut state) = misconfigured.lock() {
            match (&*state, &now) {
                (None, Some(reason)) => {
                    tracing::error!(%reason, "SMTP is misconfigured: mail waits in the retry queues until it is fixed")
                }
                (Some(_), None) => tracing::info!("SMTP configuration error cleared"),
                _ => {}
            }
            *state = now;
        }
    }

    /// Checks that the server answers (SMTP) or the folder is writable.
    pub async fn check(&self) -> Result<(), String> {
        match self {
            Self::Smtp {
                transport,
                timeout,
                slots,
                ..
            } => match tokio::time::timeout(*timeout, async {
                // A session like any other: within MAILER_SMTP_POOL_SIZE.
                let _slot = slots.acquire().await;
                transport.test_connection().await
            })
            .await
            {
                Ok(Ok(true)) => {
                    self.observe(None);
                    Ok(())
                }
                Ok(Ok(false)) => Err("the SMTP server did not answer NOOP".into()),
                Ok(Err(e)) => {
                    self.observe(Some(&e));
                    Err(classify(&e).reason)
                }
                Err(_) => Err(timed_out(*timeout).reason),
            },
            Self::Dir(_, dir) => {
                if dir.is_dir() {
                    Ok(())
                } else {
                    Err(format!("{} is missing", dir.display()))
                }
            }
            Self::Stub(_) => Ok(()),
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
                ..
            } => {
                // Waiting for a free connection is not the server's time.
                let _slot = slots.acquire().await.map_err(|_| DeliveryError {
                    transient: true,
                    reason: "the SMTP outlet is closed".into(),
                })?;
                started = Instant::now();
                // One bound for the whole exchange (connect, TLS, AUTH, MAIL,
                // RCPT, DATA): what an operator means by "SMTP timeout".
                match tokio::time::timeout(*timeout, transport.send(message)).await {
                    Ok(Ok(_)) => {
                        self.observe(None);
                        Ok(())
                    }
                    Ok(Err(e)) => {
                        self.observe(Some(&e));
                        Err(classify(&e))
                    }
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
            Self::Stub(t) => t.send(message).await.map_err(|e| DeliveryError {
                transient: true,
                reason: format!("the stub outlet refused the mail: {e}"),
            }),
        };
        if result.is_ok() {
            metrics::histogram!("mailer_smtp_seconds", "channel" => self.name())
                .record(started.elapsed().as_secs_f64());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
