//! `MAILER_*` configuration: this struct is the list of variables. Each
//! field names its variable, default and help (`mailer --help` prints
//! them); `Settings::load` then resolves what needs more than one variable
//! (secrets from `*_FILE`, the SMTP URL and its password).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};
use shared::Topology;
use shared::config::{self as conf, ConfigError};

use crate::dkim::Signer;
use crate::zones::TimeZones;

/// The retry ladder when `MAILER_RETRY_DELAYS` is not set: 5 s, 30 s, 2 min, 10 min, 1 h.
pub const DEFAULT_RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(3600),
];

/// Whether the work queue is a classic or a quorum queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    Classic,
    Quorum,
}

/// Where mail goes.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An SMTP server: URL (`smtp://user@host:587?tls=required`, `smtps://...:465`) and password.
    Smtp {
        url: SecretString,
        password: Option<SecretString>,
        user: Option<String>,
    },
    /// A folder of .eml files (development).
    Dir(PathBuf),
}

/// The whole configuration of the mailer.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Configuration (environment variables)")]
pub struct Settings {
    /// Health, readiness and metrics listen address.
    #[arg(long, env = "MAILER_BIND", default_value = "127.0.0.1:9090")]
    pub bind: String,
    /// RabbitMQ URL, or a comma-separated list of a cluster's nodes tried in turn (at connect and on failover) [default: amqp://guest:guest@127.0.0.1:5672/%2f].
    #[arg(long = "amqp-url", value_name = "URL", env = "MAILER_AMQP_URL", hide_env_values = true, value_parser = conf::amqp_url)]
    amqp_url_value: Option<SecretString>,
    /// File holding MAILER_AMQP_URL.
    #[arg(long = "amqp-url-file", env = "MAILER_AMQP_URL_FILE")]
    amqp_url_file: Option<PathBuf>,
    /// The resolved RabbitMQ URL.
    #[arg(skip = SecretString::from(""))]
    pub amqp_url: SecretString,
    /// The broker user of the resolved URL (RabbitMQ's `guest` when it names none).
    #[arg(skip)]
    pub amqp_user: String,
    /// Prefix of every exchange and queue name; must equal ACCOUNT_AMQP_PREFIX.
    #[arg(long = "amqp-prefix", value_name = "PREFIX", env = "MAILER_AMQP_PREFIX", default_value = "", value_parser = conf::topology)]
    pub topology: Topology,
    /// `quorum` for replicated queues (fixed when the queues are first declared).
    #[arg(long, env = "MAILER_QUEUE_TYPE", value_enum, default_value = "classic")]
    pub queue_type: QueueType,
    /// Messages in flight per mailer.
    #[arg(long, env = "MAILER_PREFETCH", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// The retry ladder: how long a transiently failed mail waits before each new try.
    #[arg(long, env = "MAILER_RETRY_DELAYS", default_value = "5s,30s,2m,10m,1h", value_parser = retry_delays)]
    pub retry_delays: RetryDelays,
    /// SMTP server, e.g. `smtp://ID%40naver.com@smtp.naver.com:587?tls=required` or `smtps://user@host:465`. Unset: mail is written to MAILER_MAIL_DIR.
    #[arg(long = "smtp-url", value_name = "URL", env = "MAILER_SMTP_URL", hide_env_values = true, value_parser = smtp_url)]
    smtp_url: Option<SecretString>,
    /// File holding MAILER_SMTP_URL.
    #[arg(long = "smtp-url-file", env = "MAILER_SMTP_URL_FILE")]
    smtp_url_file: Option<PathBuf>,
    /// SMTP password (Naver: the application password).
    #[arg(long = "smtp-password", value_name = "PASSWORD", env = "MAILER_SMTP_PASSWORD", hide_env_values = true, value_parser = conf::secret_value)]
    smtp_password: Option<SecretString>,
    /// File holding MAILER_SMTP_PASSWORD.
    #[arg(long = "smtp-password-file", env = "MAILER_SMTP_PASSWORD_FILE")]
    smtp_password_file: Option<PathBuf>,
    /// Where mail goes, resolved.
    #[arg(skip = Outbound::Dir(PathBuf::new()))]
    pub outbound: Outbound,
    /// SMTP sessions open at once, at most.
    #[arg(long, env = "MAILER_SMTP_POOL_SIZE", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub smtp_pool_size: u32,
    /// Bound of one whole SMTP exchange (connect, TLS, AUTH, MAIL, RCPT, DATA).
    #[arg(long, env = "MAILER_SMTP_TIMEOUT", default_value = "30s", value_parser = conf::duration)]
    pub smtp_timeout: Duration,
    /// From address (`Name <addr>`); Naver requires the authenticated account.
    #[arg(long, env = "MAILER_FROM", default_value = "no-reply@localhost", value_parser = mailbox)]
    pub from: Mailbox,
    /// The product's name: the From display name, at the top of every mail and in its footer [default: MAILER_FROM's name, else its domain].
    #[arg(long, env = "MAILER_BRAND", value_parser = one_line)]
    brand: Option<String>,
    /// Where readers can ask for help, shown in every mail's footer.
    #[arg(long, env = "MAILER_SUPPORT_ADDRESS", value_parser = address)]
    pub support_address: Option<lettre::Address>,
    /// Zone of the times in mail: `Asia/Seoul` for every language, or `en=America/New_York,ko=Asia/Seoul` [default: ko=Asia/Seoul, others UTC].
    #[arg(long, env = "MAILER_TIMEZONE", value_parser = crate::zones::time_zones)]
    time_zones: Option<TimeZones>,
    /// DKIM: the signing domain (`d=`); with MAILER_DKIM_SELECTOR and MAILER_DKIM_KEY. Unset: no signature (Naver signs itself).
    #[arg(long, env = "MAILER_DKIM_DOMAIN", value_parser = dns_name)]
    dkim_domain: Option<String>,
    /// DKIM: the selector (`s=`): the key's DNS record is <selector>._domainkey.<domain>.
    #[arg(long, env = "MAILER_DKIM_SELECTOR", value_parser = dns_name)]
    dkim_selector: Option<String>,
    /// DKIM private key: RSA (PKCS#1 or PKCS#8 PEM) or Ed25519 (PKCS#8 PEM or base64 seed).
    #[arg(long = "dkim-key", value_name = "KEY", env = "MAILER_DKIM_KEY", hide_env_values = true, value_parser = conf::secret_value)]
    dkim_key: Option<SecretString>,
    /// File holding MAILER_DKIM_KEY.
    #[arg(long = "dkim-key-file", env = "MAILER_DKIM_KEY_FILE")]
    dkim_key_file: Option<PathBuf>,
    /// The DKIM signer, resolved.
    #[arg(skip)]
    pub dkim: Option<Arc<Signer>>,
    /// Folder for mail when no SMTP is set.
    #[arg(long, env = "MAILER_MAIL_DIR", default_value = "./var/mail")]
    mail_dir: PathBuf,
    /// Folder of templates that override or add to the embedded ones.
    #[arg(long, env = "MAILER_TEMPLATE_DIR", value_parser = folder)]
    pub template_dir: Option<PathBuf>,
    /// Locale used when an event's locale has no template.
    #[arg(long, env = "MAILER_DEFAULT_LOCALE", default_value = "en")]
    pub default_locale: String,
    /// Mails per second at most, per mailer; 0 for no limit.
    #[arg(
        long = "send-rate",
        value_name = "PER_SECOND",
        env = "MAILER_SEND_RATE",
        default_value_t = 0
    )]
    send_rate_value: u32,
    /// Events larger than this are dead-lettered unread (bytes, or with KiB/MiB).
    #[arg(long, env = "MAILER_MAX_EVENT_BYTES", default_value = "256KiB", value_parser = byte_size)]
    pub max_event_bytes: usize,
    /// Who may publish what: `account=verify_email,account_exists;billing=*raw*` (`*` any template, `*raw*` raw content). Unset: every source, everything.
    #[arg(long, env = "MAILER_SOURCES", value_parser = crate::policy::sources)]
    pub sources: Option<crate::policy::Sources>,
    /// With MAILER_SOURCES: refuse events whose publisher did not set the AMQP user_id (then a source is proven, not claimed).
    #[arg(long, env = "MAILER_REQUIRE_USER_ID", default_value = "false", value_parser = conf::boolean, action = clap::ArgAction::Set)]
    pub require_user_id: bool,
    /// Shared idempotency store (PostgreSQL URL, e.g. the account's database): every mailer records each event id accepted by SMTP and checks it before sending, so a mailer killed before its ack leaves fewer duplicates. Unset: each mailer remembers only its own.
    #[arg(long = "dedupe-url", value_name = "URL", env = "MAILER_DEDUPE_URL", hide_env_values = true, value_parser = dedupe_url)]
    dedupe_url_value: Option<SecretString>,
    /// File holding MAILER_DEDUPE_URL.
    #[arg(long = "dedupe-url-file", env = "MAILER_DEDUPE_URL_FILE")]
    dedupe_url_file: Option<PathBuf>,
    /// The resolved dedupe store URL, if any.
    #[arg(skip)]
    pub dedupe_url: Option<SecretString>,
    /// How long the dedupe store keeps an event id (longer than a mail can stay in the queues).
    #[arg(long, env = "MAILER_DEDUPE_RETENTION", default_value = "7d", value_parser = conf::duration)]
    pub dedupe_retention: Duration,
    /// How long SIGTERM waits for mail in flight.
    #[arg(long, env = "MAILER_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = conf::duration)]
    pub shutdown_timeout: Duration,
    /// `json` for JSON lines, `text` for people; `RUST_LOG` sets the filter.
    #[arg(long = "log-format", value_name = "FORMAT", env = "MAILER_LOG_FORMAT", default_value = "text", value_parser = conf::log_json, action = clap::ArgAction::Set)]
    pub log_json: bool,
}

/// The retry ladder, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryDelays(pub Vec<Duration>);

impl std::ops::Deref for RetryDelays {
    type Target = [Duration];
    fn deref(&self) -> &[Duration] {
        &self.0
    }
}

/// Value parser of `MAILER_RETRY_DELAYS` (the tests read ladders with it too).
pub fn retry_delays(s: &str) -> Result<RetryDelays, String> {
    let delays = conf::durations(s)?;
    if delays.iter().any(|d| d.is_zero()) {
        return Err("delays must be greater than 0".into());
    }
    Ok(RetryDelays(delays))
}

/// Value parser of a size in bytes: `262144`, `256KiB`, `1MiB`.
fn byte_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        _ => {
            return Err(format!(
                "expected bytes like 262144, 256KiB or 1MiB, got {s:?}"
            ));
        }
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("expected bytes like 262144, 256KiB or 1MiB, got {s:?}"))
}

fn smtp_url(s: &str) -> Result<SecretString, String> {
    url::Url::parse(s.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "smtp" | "smtps") && u.host_str().is_some())
        .map(|_| SecretString::from(s.trim().to_owned()))
        .ok_or_else(|| "expected smtp://user@host:587?tls=required or smtps://user@host:465".into())
}

/// The user name of a URL, percent-decoded (`ID%40naver.com` is `ID@naver.com`).
fn url_user(url: &url::Url) -> Option<String> {
    Some(url.username()).filter(|u| !u.is_empty()).map(|u| {
        url::form_urlencoded::parse(format!("u={u}").as_bytes())
            .next()
            .map_or_else(|| u.to_owned(), |(_, v)| v.into_owned())
    })
}

fn one_line(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.chars().any(char::is_control) || s.len() > 200 {
        return Err("expected one line of text".into());
    }
    Ok(s.to_owned())
}

fn dns_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    ok.then(|| s.to_ascii_lowercase())
        .ok_or_else(|| format!("{s:?} is not a DNS name like mail.example.com"))
}

fn address(s: &str) -> Result<lettre::Address, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("not an address like help@example.com: {e}"))
}

fn dedupe_url(s: &str) -> Result<SecretString, String> {
    url::Url::parse(s.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "postgres" | "postgresql") && u.path().len() > 1)
        .map(|_| SecretString::from(s.trim().to_owned()))
        .ok_or_else(|| "expected postgres://user[:password]@host[:port]/database".into())
}

fn mailbox(s: &str) -> Result<Mailbox, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("not a mailbox like `Name <addr@host>`: {e}"))
}

fn folder(s: &str) -> Result<PathBuf, String> {
    let dir = PathBuf::from(s);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!("{} is not a folder", dir.display()))
    }
}

fn dkim_needs(var: &str) -> ConfigError {
    ConfigError::new(
        var,
        "DKIM signing needs MAILER_DKIM_DOMAIN, MAILER_DKIM_SELECTOR and MAILER_DKIM_KEY (or _FILE) together",
    )
}

impl Settings {
    /// Settings from a map of variables (tests), resolved as at start.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        conf::settings_from_vars::<Self>(vars)?.load()
    }

    /// Resolves what one variable alone cannot say: secrets from files, and
    /// where mail goes.
    pub fn load(mut self) -> Result<Self, ConfigError> {
        self.amqp_url = conf::secret(
            "MAILER_AMQP_URL",
            self.amqp_url_value.take(),
            self.amqp_url_file.as_deref(),
        )?
        .unwrap_or_else(|| SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"));
        conf::amqp_url(self.amqp_url.expose_secret())
            .map_err(|e| ConfigError::new("MAILER_AMQP_URL", e))?;
        // The broker user of the first node (a cluster's nodes share users).
        self.amqp_user = shared::amqp::split(self.amqp_url.expose_secret())
            .next()
            .and_then(|u| url::Url::parse(u).ok())
            .and_then(|u| url_user(&u))
            .unwrap_or_else(|| "guest".to_owned());
        self.dedupe_url = conf::secret(
            "MAILER_DEDUPE_URL",
            self.dedupe_url_value.take(),
            self.dedupe_url_file.as_deref(),
        )?;
        if let Some(url) = &self.dedupe_url {
            dedupe_url(url.expose_secret())
                .map_err(|e| ConfigError::new("MAILER_DEDUPE_URL", e))?;
        }
        let password = conf::secret(
            "MAILER_SMTP_PASSWORD",
            self.smtp_password.take(),
            self.smtp_password_file.as_deref(),
        )?;
        let url = conf::secret(
            "MAILER_SMTP_URL",
            self.smtp_url.take(),
            self.smtp_url_file.as_deref(),
        )?;
        self.outbound = match url {
            Some(url) => {
                let parsed = url::Url::parse(url.expose_secret())
                    .map_err(|e| ConfigError::new("MAILER_SMTP_URL", e.to_string()))?;
                smtp_url(url.expose_secret())
                    .map_err(|e| ConfigError::new("MAILER_SMTP_URL", e))?;
                if parsed.password().is_some() && password.is_some() {
                    return Err(ConfigError::new(
                        "MAILER_SMTP_PASSWORD",
                        "the password is also in MAILER_SMTP_URL; keep one",
                    ));
                }
                let user = url_user(&parsed);
                Outbound::Smtp {
                    url,
                    password,
                    user,
                }
            }
            None => Outbound::Dir(self.mail_dir.clone()),
        };
        let key = conf::secret(
            "MAILER_DKIM_KEY",
            self.dkim_key.take(),
            self.dkim_key_file.as_deref(),
        )?;
        self.dkim = match (&self.dkim_domain, &self.dkim_selector, key) {
            (None, None, None) => None,
            (Some(domain), Some(selector), Some(key)) => Some(Arc::new(
                Signer::new(domain, selector, key.expose_secret())
                    .map_err(|e| ConfigError::new("MAILER_DKIM_KEY", e))?,
            )),
            (None, ..) => return Err(dkim_needs("MAILER_DKIM_DOMAIN")),
            (_, None, _) => return Err(dkim_needs("MAILER_DKIM_SELECTOR")),
            (.., None) => return Err(dkim_needs("MAILER_DKIM_KEY")),
        };
        Ok(self)
    }

    /// The product's name: MAILER_BRAND, else MAILER_FROM's name, else its domain.
    pub fn brand(&self) -> String {
        self.brand
            .clone()
            .or_else(|| self.from.name.clone().filter(|n| !n.trim().is_empty()))
            .unwrap_or_else(|| self.from.email.domain().to_owned())
    }

    /// The From of every mail: the brand as its name.
    pub fn sender(&self) -> Mailbox {
        Mailbox::new(Some(self.brand()), self.from.email.clone())
    }

    /// The zone of each language's times.
    pub fn time_zones(&self) -> TimeZones {
        self.time_zones.clone().unwrap_or_default()
    }

    /// Mails per second at most; `None` for no limit.
    pub fn send_rate(&self) -> Option<u32> {
        (self.send_rate_value > 0).then_some(self.send_rate_value)
    }

    /// Warnings about settings that start fine but will likely fail or leak
    /// in production; `main` logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(dkim) = &self.dkim {
            let from = self.from.email.domain().to_ascii_lowercase();
            let d = dkim.domain.to_ascii_lowercase();
            if from != d && !from.ends_with(&format!(".{d}")) {
                out.push(format!(
                    "MAILER_DKIM_DOMAIN ({d}) is not the domain of MAILER_FROM ({from}): DMARC needs them aligned"
                ));
            }
        }
        let Outbound::Smtp { url, user, .. } = &self.outbound else {
            return out;
        };
        let from = self.from.email.to_string().to_ascii_lowercase();
        if let Some(user) = user {
            let user = user.to_ascii_lowercase();
            // Naver logs in with the bare ID and sends as ID@naver.com.
            let matches = if user.contains('@') {
                from == user
            } else {
                from.split('@').next() == Some(user.as_str())
            };
            if !matches {
                out.push(format!(
                    "MAILER_FROM ({from}) is not the SMTP account ({user}); Naver and most providers reject a From that is not the authenticated account"
                ));
            }
        }
        if let Ok(url) = url::Url::parse(url.expose_secret()) {
            let tls = url
                .query_pairs()
                .find(|(k, _)| k == "tls")
                .map(|(_, v)| v.into_owned());
            // `smtp` is not a special scheme for the url crate: the host stays text.
            let host = url.host_str().unwrap_or("").trim_matches(['[', ']']);
            let local = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            match (url.scheme(), tls.as_deref()) {
                ("smtp", Some("opportunistic")) => out.push(
                    "MAILER_SMTP_URL has tls=opportunistic: a man in the middle can strip STARTTLS; use tls=required".to_owned(),
                ),
                ("smtp", None) if !local => out.push(
                    "MAILER_SMTP_URL has no TLS: mail and the password cross the network in clear; add ?tls=required or use smtps://".to_owned(),
                ),
                _ => {}
            }
        }
        out
    }
}

/// The command line: a subcommand (running the worker by default) and the settings.
#[derive(Debug, clap::Parser)]
#[command(
    name = "mailer",
    version,
    about = "Consumes mail.send events and delivers them over SMTP, with retries and dead letters"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

/// What `mailer` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Consume and deliver mail (the default).
    Run,
    /// Look at dead letters, or send them back to the work queue.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Print a mail as the mailer would send it, without sending it: check
    /// an overridden template (MAILER_TEMPLATE_DIR) before deploying it.
    Render(RenderArgs),
}

/// `mailer render ...`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RenderArgs {
    /// The template, e.g. `verify_email`.
    #[arg(long)]
    pub template: String,
    /// The mail's language.
    #[arg(long, default_value = "en")]
    pub locale: String,
    /// The template's data, a JSON object, as an event's `data`.
    #[arg(long, default_value = "{}")]
    pub data: String,
    /// The recipient.
    #[arg(long, default_value = "preview@example.com")]
    pub to: String,
    /// The recipient's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Write to this file instead of printing: `.eml` the whole message as
    /// sent, `.html` the HTML part, `.txt` the text part.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `mailer dead ...`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum DeadCommand {
    /// Print id, attempts, when and why of every dead letter (they stay).
    List,
    /// Move dead letters back to the work queue once the cause is fixed;
    /// each starts the retry ladder again.
    Requeue {
        /// Every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// The message ids to requeue.
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_write_mail_to_a_folder() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.bind, "127.0.0.1:9090");
        assert!(matches!(s.outbound, Outbound::Dir(ref p) if p == &PathBuf::from("./var/mail")));
        assert_eq!(s.from.email.to_string(), "no-reply@localhost");
        assert_eq!(&*s.retry_delays, &DEFAULT_RETRY_DELAYS);
        assert_eq!(s.queue_type, QueueType::Classic);
        assert_eq!(s.prefetch, 32);
        assert_eq!(s.smtp_pool_size, 4);
        assert_eq!(s.smtp_timeout, Duration::from_secs(30));
        assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(s.send_rate(), None);
        assert_eq!(s.default_locale, "en");
        assert!(s.template_dir.is_none() && !s.log_json);
        assert_eq!(s.max_event_bytes, 256 * 1024);
        assert_eq!(s.amqp_user, "guest");
        let named = settings(&[("MAILER_AMQP_URL", "amqp://mail%2Der:pw@mq:5672/%2f")]).unwrap();
        assert_eq!(named.amqp_user, "mail-er");
        assert!(s.sources.is_none() && !s.require_user_id);
        let sized = settings(&[("MAILER_MAX_EVENT_BYTES", "1MiB")]).unwrap();
        assert_eq!(sized.max_event_bytes, 1 << 20);
        assert!(s.dedupe_url.is_none());
        assert_eq!(s.dedupe_retention, Duration::from_secs(7 * 86400));
        assert_eq!(
            s.amqp_url.expose_secret(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        let q = settings(&[
            ("MAILER_QUEUE_TYPE", "quorum"),
            ("MAILER_SEND_RATE", "5"),
            ("MAILER_LOG_FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!((q.queue_type, q.send_rate()), (QueueType::Quorum, Some(5)));
        assert!(q.log_json);
    }

    #[test]
    fn the_brand_names_the_sender() {
        let named = settings(&[("MAILER_FROM", "Shop <a@shop.example>")]).unwrap();
        assert_eq!(named.brand(), "Shop");
        let branded = settings(&[
            ("MAILER_FROM", "Shop <a@shop.example>"),
            ("MAILER_BRAND", "하늘마켓"),
        ])
        .unwrap();
        let sender = branded.sender();
        assert_eq!(sender.name.as_deref(), Some("하늘마켓"));
        assert_eq!(sender.email.to_string(), "a@shop.example");
        assert_eq!(settings(&[]).unwrap().brand(), "localhost");
    }

    #[test]
    fn dkim_needs_all_three_and_warns_when_not_aligned() {
        let seed = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
        let only = settings(&[("MAILER_DKIM_SELECTOR", "s1")]).unwrap_err();
        assert_eq!(only.var, "MAILER_DKIM_DOMAIN");
        let no_key = settings(&[
            ("MAILER_DKIM_DOMAIN", "a.example"),
            ("MAILER_DKIM_SELECTOR", "s1"),
        ]);
        assert_eq!(no_key.unwrap_err().var, "MAILER_DKIM_KEY");
        let s = settings(&[
            ("MAILER_DKIM_DOMAIN", "a.example"),
            ("MAILER_DKIM_SELECTOR", "s1"),
            ("MAILER_DKIM_KEY", seed),
            ("MAILER_FROM", "no-reply@mail.a.example"),
        ])
        .unwrap();
        assert_eq!(s.dkim.as_ref().unwrap().algorithm, "ed25519");
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());
        assert!(!format!("{s:?}").contains(seed), "no key in Debug");
        let other = settings(&[
            ("MAILER_DKIM_DOMAIN", "a.example"),
            ("MAILER_DKIM_SELECTOR", "s1"),
            ("MAILER_DKIM_KEY", seed),
            ("MAILER_FROM", "no-reply@b.example"),
        ])
        .unwrap();
        assert!(
            other.warnings()[0].contains("DMARC"),
            "{:?}",
            other.warnings()
        );
        let bad_key = settings(&[
            ("MAILER_DKIM_DOMAIN", "a.example"),
            ("MAILER_DKIM_SELECTOR", "s1"),
            ("MAILER_DKIM_KEY", "not a key"),
        ]);
        assert_eq!(bad_key.unwrap_err().var, "MAILER_DKIM_KEY");
    }

    #[test]
    fn smtp_url_and_user() {
        let s = settings(&[
            (
                "MAILER_SMTP_URL",
                "smtp://me%40naver.com@smtp.naver.com:587?tls=required",
            ),
            ("MAILER_SMTP_PASSWORD", "pw"),
        ])
        .unwrap();
        match s.outbound {
            Outbound::Smtp { user, password, .. } => {
                assert_eq!(user.as_deref(), Some("me@naver.com"));
                assert_eq!(password.unwrap().expose_secret(), "pw");
            }
            other => panic!("{other:?}"),
        }
        let both = settings(&[
            ("MAILER_SMTP_URL", "smtp://me:pw@smtp.example.com:587"),
            ("MAILER_SMTP_PASSWORD", "pw"),
        ]);
        assert_eq!(both.unwrap_err().var, "MAILER_SMTP_PASSWORD");
    }

    #[test]
    fn risky_smtp_settings_are_warned_about() {
        let warn = |url: &str, from: &str| {
            settings(&[("MAILER_SMTP_URL", url), ("MAILER_FROM", from)])
                .unwrap()
                .warnings()
        };
        // Naver: the bare ID logs in, ID@naver.com sends.
        assert!(
            warn(
                "smtp://myid@smtp.naver.com:587?tls=required",
                "Shop <MyID@naver.com>"
            )
            .is_empty()
        );
        assert!(warn("smtps://me%40gmail.com@smtp.gmail.com:465", "me@gmail.com").is_empty());
        let w = warn(
            "smtp://myid@smtp.naver.com:587?tls=required",
            "no-reply@shop.example",
        );
        assert!(w.len() == 1 && w[0].contains("MAILER_FROM"), "{w:?}");
        let w = warn(
            "smtp://a%40b.example@mail.b.example:587?tls=opportunistic",
            "a@b.example",
        );
        assert!(w.len() == 1 && w[0].contains("opportunistic"), "{w:?}");
        let w = warn("smtp://mail.b.example:25", "a@b.example");
        assert!(w.len() == 1 && w[0].contains("no TLS"), "{w:?}");
        // A relay on this host (Mailpit, a local Postfix) needs no TLS.
        assert!(warn("smtp://127.0.0.1:1025", "a@b.example").is_empty());
        assert!(settings(&[]).unwrap().warnings().is_empty());
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        for (var, value) in [
            ("MAILER_AMQP_URL", "http://x"),
            ("MAILER_AMQP_PREFIX", "a b"),
            ("MAILER_QUEUE_TYPE", "stream"),
            ("MAILER_PREFETCH", "0"),
            ("MAILER_RETRY_DELAYS", "5s,soon"),
            ("MAILER_RETRY_DELAYS", "5s,0s"),
            ("MAILER_SMTP_URL", "http://smtp.example.com"),
            ("MAILER_SMTP_POOL_SIZE", "0"),
            ("MAILER_FROM", "not a mailbox"),
            ("MAILER_SEND_RATE", "fast"),
            ("MAILER_SMTP_TIMEOUT", "long"),
            ("MAILER_SHUTDOWN_TIMEOUT", "never"),
            ("MAILER_LOG_FORMAT", "xml"),
            ("MAILER_TEMPLATE_DIR", "/nonexistent/templates"),
            ("MAILER_MAX_EVENT_BYTES", "0"),
            ("MAILER_MAX_EVENT_BYTES", "256 kB"),
            ("MAILER_SOURCES", "account"),
            ("MAILER_REQUIRE_USER_ID", "perhaps"),
            ("MAILER_BRAND", "two\nlines"),
            ("MAILER_SUPPORT_ADDRESS", "help desk"),
            ("MAILER_TIMEZONE", "Mars/Olympus"),
            ("MAILER_DKIM_SELECTOR", "two words"),
            ("MAILER_DEDUPE_URL", "redis://cache:6379"),
            ("MAILER_DEDUPE_RETENTION", "forever"),
        ] {
            let err = settings(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{var}={value}: {err}");
        }
    }

    #[test]
    fn the_struct_is_the_list_of_variables() {
        let vars = shared::config::variables::<Cli>();
        let secrets: Vec<&str> = vars
            .iter()
            .filter(|v| v.secret)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            secrets,
            [
                "MAILER_AMQP_URL",
                "MAILER_SMTP_URL",
                "MAILER_SMTP_PASSWORD",
                "MAILER_DKIM_KEY",
                "MAILER_DEDUPE_URL"
            ]
        );
        assert!(vars.iter().any(|v| v.name == "MAILER_RETRY_DELAYS"));
        assert!(vars.iter().all(|v| v.name.starts_with("MAILER_")));
    }

    #[test]
    fn dead_letter_commands() {
        use clap::Parser;
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.command);
        assert!(matches!(
            parse(&["mailer", "dead", "list"]).unwrap(),
            Some(Command::Dead(DeadCommand::List))
        ));
        assert!(matches!(
            parse(&["mailer", "dead", "requeue", "--all"]).unwrap(),
            Some(Command::Dead(DeadCommand::Requeue { all: true, ref ids })) if ids.is_empty()
        ));
        assert!(matches!(
            parse(&["mailer", "dead", "requeue", "a", "b"]).unwrap(),
            Some(Command::Dead(DeadCommand::Requeue { all: false, ref ids })) if ids == &["a", "b"]
        ));
        assert!(parse(&["mailer", "dead", "requeue"]).is_err());
        assert!(parse(&["mailer", "dead", "requeue", "--all", "a"]).is_err());
        assert!(matches!(
            parse(&["mailer", "render", "--template", "verify_email", "--locale", "ko"]).unwrap(),
            Some(Command::Render(RenderArgs { ref template, ref locale, out: None, .. }))
                if template == "verify_email" && locale == "ko"
        ));
        assert!(
            parse(&["mailer", "render"]).is_err(),
            "--template is required"
        );
    }
}
