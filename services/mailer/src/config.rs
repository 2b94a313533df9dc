//! `MAILER_*` configuration: this struct is the list of variables. Each
//! field names its variable, default and help (`mailer --help` prints
//! them); `Settings::load` then resolves what needs more than one variable
//! (secrets from `*_FILE`, the SMTP URL and its password).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};
use shared::Topology;
use shared::config::{self as conf, ConfigError};

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

fn smtp_url(s: &str) -> Result<SecretString, String> {
    url::Url::parse(s.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "smtp" | "smtps") && u.host_str().is_some())
        .map(|_| SecretString::from(s.trim().to_owned()))
        .ok_or_else(|| "expected smtp://user@host:587?tls=required or smtps://user@host:465".into())
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
                let user = Some(parsed.username().to_owned())
                    .filter(|u| !u.is_empty())
                    .map(|u| {
                        url::form_urlencoded::parse(format!("u={u}").as_bytes())
                            .next()
                            .map(|(_, v)| v.into_owned())
                            .unwrap_or(u)
                    });
                Outbound::Smtp {
                    url,
                    password,
                    user,
                }
            }
            None => Outbound::Dir(self.mail_dir.clone()),
        };
        Ok(self)
    }

    /// Mails per second at most; `None` for no limit.
    pub fn send_rate(&self) -> Option<u32> {
        (self.send_rate_value > 0).then_some(self.send_rate_value)
    }

    /// Warnings about settings that start fine but will likely fail or leak
    /// in production; `main` logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
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
    }
}
