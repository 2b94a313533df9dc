//! `MAILER_*` configuration, read once at start.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};
use shared::Topology;
use shared::config::{ConfigError, Env};

/// Every variable the mailer reads (without the `_FILE` twins of secrets).
pub const ENV_VARS: &[&str] = &[
    "MAILER_BIND",
    "MAILER_AMQP_URL",
    "MAILER_AMQP_PREFIX",
    "MAILER_QUEUE_TYPE",
    "MAILER_PREFETCH",
    "MAILER_RETRY_DELAYS",
    "MAILER_SMTP_URL",
    "MAILER_SMTP_PASSWORD",
    "MAILER_SMTP_POOL_SIZE",
    "MAILER_SMTP_TIMEOUT",
    "MAILER_FROM",
    "MAILER_MAIL_DIR",
    "MAILER_TEMPLATE_DIR",
    "MAILER_DEFAULT_LOCALE",
    "MAILER_SEND_RATE",
    "MAILER_SHUTDOWN_TIMEOUT",
    "MAILER_LOG_FORMAT",
];

/// The variables that are secrets and so also accept `<NAME>_FILE`.
/// The retry ladder when `MAILER_RETRY_DELAYS` is not set: 5 s, 30 s, 2 min, 10 min, 1 h.
pub const DEFAULT_RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(3600),
];

pub const SECRET_VARS: &[&str] = &["MAILER_AMQP_URL", "MAILER_SMTP_URL", "MAILER_SMTP_PASSWORD"];

/// Whether the work queue is a classic or a quorum queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: String,
    pub amqp_url: SecretString,
    pub topology: Topology,
    pub queue_type: QueueType,
    pub prefetch: u16,
    pub retry_delays: Vec<Duration>,
    pub outbound: Outbound,
    pub smtp_pool_size: u32,
    pub smtp_timeout: Duration,
    pub from: Mailbox,
    pub template_dir: Option<PathBuf>,
    pub default_locale: String,
    /// Mails per second at most; `None` for no limit.
    pub send_rate: Option<u32>,
    pub shutdown_timeout: Duration,
    pub log_json: bool,
}

impl Settings {
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

    /// Reads `MAILER_*` from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from(&Env::from_process("MAILER_"))
    }

    /// Reads the settings from a prepared environment.
    pub fn from(env: &Env) -> Result<Self, ConfigError> {
        let amqp_url = env
            .secret("AMQP_URL")?
            .map(|s| s.expose_secret().to_owned())
            .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
            return Err(env.error("AMQP_URL", "expected an amqp:// or amqps:// URL"));
        }
        let topology = Topology::new(env.get("AMQP_PREFIX").unwrap_or(""))
            .map_err(|e| env.error("AMQP_PREFIX", e.to_string()))?;
        let queue_type = match env.string("QUEUE_TYPE", "classic").as_str() {
            "classic" => QueueType::Classic,
            "quorum" => QueueType::Quorum,
            other => {
                return Err(env.error(
                    "QUEUE_TYPE",
                    format!("expected classic or quorum, got {other:?}"),
                ));
            }
        };
        let prefetch: u16 = env.parse("PREFETCH", 32)?;
        if prefetch == 0 {
            return Err(env.error("PREFETCH", "must be at least 1"));
        }
        let retry_delays = env.durations("RETRY_DELAYS", &DEFAULT_RETRY_DELAYS)?;
        if retry_delays.iter().any(|d| d.is_zero()) {
            return Err(env.error("RETRY_DELAYS", "delays must be greater than 0"));
        }

        let password = env.secret("SMTP_PASSWORD")?;
        let outbound = match env.secret("SMTP_URL")? {
            Some(url) => {
                let parsed = url::Url::parse(url.expose_secret())
                    .ok()
                    .filter(|u| matches!(u.scheme(), "smtp" | "smtps") && u.host_str().is_some())
                    .ok_or_else(|| {
                        env.error(
                            "SMTP_URL",
                            "expected smtp://user@host:587?tls=required or smtps://user@host:465",
                        )
                    })?;
                if parsed.password().is_some() && password.is_some() {
                    return Err(env.error(
                        "SMTP_PASSWORD",
                        "the password is also in MAILER_SMTP_URL; keep one",
                    ));
                }
                let user = Some(parsed.username().to_owned()).filter(|u| !u.is_empty());
                let user = user.map(|u| {
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
            None => Outbound::Dir(PathBuf::from(env.string("MAIL_DIR", "./var/mail"))),
        };

        let from_raw = env.string("FROM", "no-reply@localhost");
        let from: Mailbox = from_raw.parse().map_err(|e| {
            env.error(
                "FROM",
                format!("not a mailbox like `Name <addr@host>`: {e}"),
            )
        })?;

        let default_locale = env.string("DEFAULT_LOCALE", "en");
        let send_rate: u32 = env.parse("SEND_RATE", 0)?;
        let log_json = match env.string("LOG_FORMAT", "text").as_str() {
            "json" => true,
            "text" => false,
            other => {
                return Err(env.error(
                    "LOG_FORMAT",
                    format!("expected json or text, got {other:?}"),
                ));
            }
        };
        let template_dir = env.optional("TEMPLATE_DIR").map(PathBuf::from);
        if let Some(dir) = &template_dir
            && !dir.is_dir()
        {
            return Err(env.error("TEMPLATE_DIR", format!("{} is not a folder", dir.display())));
        }

        Ok(Self {
            bind: env.string("BIND", "127.0.0.1:9090"),
            amqp_url: SecretString::from(amqp_url),
            topology,
            queue_type,
            prefetch,
            retry_delays,
            outbound,
            smtp_pool_size: env.parse("SMTP_POOL_SIZE", 4)?.max(1),
            smtp_timeout: env.duration("SMTP_TIMEOUT", Duration::from_secs(30))?,
            from,
            template_dir,
            default_locale,
            send_rate: (send_rate > 0).then_some(send_rate),
            shutdown_timeout: env.duration("SHUTDOWN_TIMEOUT", Duration::from_secs(30))?,
            log_json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from(&Env::from_map(
            "MAILER_",
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        ))
    }

    #[test]
    fn defaults_write_mail_to_a_folder() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.bind, "127.0.0.1:9090");
        assert!(matches!(s.outbound, Outbound::Dir(ref p) if p == &PathBuf::from("./var/mail")));
        assert_eq!(s.from.email.to_string(), "no-reply@localhost");
        assert_eq!(s.retry_delays.len(), 5);
        assert_eq!(s.queue_type, QueueType::Classic);
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
            ("MAILER_SMTP_URL", "http://smtp.example.com"),
            ("MAILER_FROM", "not a mailbox"),
            ("MAILER_SEND_RATE", "fast"),
            ("MAILER_SMTP_TIMEOUT", "long"),
            ("MAILER_LOG_FORMAT", "xml"),
            ("MAILER_TEMPLATE_DIR", "/nonexistent/templates"),
        ] {
            let err = settings(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{var}={value}: {err}");
        }
    }

    #[test]
    fn every_variable_read_is_listed() {
        let read = shared::config::variables_read(include_str!("config.rs"), "MAILER_");
        assert!(read.len() > 10, "the scan finds the reads: {read:?}");
        for var in read {
            assert!(
                ENV_VARS.contains(&var.as_str()),
                "{var} is read but not in ENV_VARS"
            );
        }
    }
}
