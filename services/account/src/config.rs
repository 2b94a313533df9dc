//! `ACCOUNT_*` configuration, read once at start.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use shared::Topology;
use shared::config::{ConfigError, Env};
use url::Url;

use crate::token::KeyRing;

/// Every variable the service reads (without the `_FILE` twins of secrets).
/// The docker-compose check and the docs use this list.
pub const ENV_VARS: &[&str] = &[
    "ACCOUNT_BIND",
    "ACCOUNT_ADMIN_BIND",
    "ACCOUNT_PUBLIC_URL",
    "ACCOUNT_DATABASE_URL",
    "ACCOUNT_DATABASE_PASSWORD",
    "ACCOUNT_DATABASE_POOL_SIZE",
    "ACCOUNT_AMQP_URL",
    "ACCOUNT_AMQP_PREFIX",
    "ACCOUNT_TOKEN_KEYS",
    "ACCOUNT_TOKEN_TTL",
    "ACCOUNT_SESSION_TTL",
    "ACCOUNT_COOKIE_SECURE",
    "ACCOUNT_RATE_LIMITS",
    "ACCOUNT_RATE_LIMIT_CLIENT_PER_MINUTE",
    "ACCOUNT_RATE_LIMIT_ADDRESS_PER_HOUR",
    "ACCOUNT_TRUST_FORWARDED_FOR",
    "ACCOUNT_RESEND_COOLDOWN",
    "ACCOUNT_POST_VERIFY_URL",
    "ACCOUNT_DEFAULT_LOCALE",
    "ACCOUNT_ARGON2_MEMORY_KIB",
    "ACCOUNT_ARGON2_ITERATIONS",
    "ACCOUNT_ARGON2_PARALLELISM",
    "ACCOUNT_HASH_CONCURRENCY",
    "ACCOUNT_OUTBOX_SWEEP_INTERVAL",
    "ACCOUNT_OUTBOX_RETENTION",
    "ACCOUNT_WORKERS",
    "ACCOUNT_LOG_FORMAT",
];

/// The variables that are secrets and so also accept `<NAME>_FILE`.
pub const SECRET_VARS: &[&str] = &[
    "ACCOUNT_DATABASE_URL",
    "ACCOUNT_DATABASE_PASSWORD",
    "ACCOUNT_AMQP_URL",
    "ACCOUNT_TOKEN_KEYS",
];

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy)]
pub struct Argon2Settings {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

/// Per-client and per-address request limits.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitSettings {
    /// `false` when `ACCOUNT_RATE_LIMITS=off`.
    pub enabled: bool,
    /// Sign-up, resend and login requests per client address per minute.
    pub client_per_minute: u32,
    /// Sign-up, resend and login requests per e-mail address per hour.
    pub address_per_hour: u32,
}

/// The whole configuration of the account service.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: String,
    pub public_url: Url,
    pub database_url: SecretString,
    pub database_pool_size: usize,
    pub amqp_url: SecretString,
    pub topology: Topology,
    /// `None`: no keys configured, a random key for this process only.
    pub token_keys: Option<KeyRing>,
    pub token_ttl: Duration,
    pub session_ttl: Duration,
    pub cookie_secure: bool,
    pub rate_limits: RateLimitSettings,
    pub trust_forwarded_for: bool,
    pub resend_cooldown: Duration,
    pub post_verify_url: String,
    pub default_locale: crate::i18n::Lang,
    pub argon2: Argon2Settings,
    pub hash_concurrency: usize,
    pub outbox_sweep_interval: Duration,
    /// Published outbox rows older than this are deleted; zero keeps them.
    pub outbox_retention: Duration,
    pub workers: usize,
    pub log_json: bool,
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Settings {
    /// Reads `ACCOUNT_*` from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from(&Env::from_process("ACCOUNT_"))
    }

    /// Reads the settings from a prepared environment.
    pub fn from(env: &Env) -> Result<Self, ConfigError> {
        let public_url = env.string("PUBLIC_URL", "http://127.0.0.1:8080");
        let public_url = Url::parse(&public_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                env.error(
                    "PUBLIC_URL",
                    format!("expected an http(s) URL, got {public_url:?}"),
                )
            })?;

        let mut database_url = env
            .secret("DATABASE_URL")?
            .map(|s| s.expose_secret().to_owned())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/accounts".to_owned());
        let mut parsed = Url::parse(&database_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "postgres" | "postgresql"))
            .filter(|u| u.path().len() > 1)
            .ok_or_else(|| {
                env.error(
                    "DATABASE_URL",
                    "expected postgres://user[:password]@host[:port]/database",
                )
            })?;
        if let Some(pw) = env.secret("DATABASE_PASSWORD")? {
            parsed
                .set_password(Some(pw.expose_secret()))
                .map_err(|_| env.error("DATABASE_PASSWORD", "cannot be put into the URL"))?;
            database_url = parsed.to_string();
        }

        let amqp_url = env
            .secret("AMQP_URL")?
            .map(|s| s.expose_secret().to_owned())
            .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
            return Err(env.error("AMQP_URL", "expected an amqp:// or amqps:// URL"));
        }
        let topology = Topology::new(env.get("AMQP_PREFIX").unwrap_or(""))
            .map_err(|e| env.error("AMQP_PREFIX", e.to_string()))?;

        let token_keys = match env.secret("TOKEN_KEYS")? {
            Some(s) => Some(
                KeyRing::parse(s.expose_secret())
                    .map_err(|e| env.error("TOKEN_KEYS", e.to_string()))?,
            ),
            None => None,
        };

        let rate_limits = RateLimitSettings {
            enabled: env.bool("RATE_LIMITS", true)?,
            client_per_minute: positive(env, "RATE_LIMIT_CLIENT_PER_MINUTE", 30)?,
            address_per_hour: positive(env, "RATE_LIMIT_ADDRESS_PER_HOUR", 10)?,
        };

        let default_locale = env.string("DEFAULT_LOCALE", "en");
        let default_locale = crate::i18n::Lang::from_tag(&default_locale).ok_or_else(|| {
            env.error(
                "DEFAULT_LOCALE",
                format!("supported: ko, en; got {default_locale:?}"),
            )
        })?;

        let argon2 = Argon2Settings {
            memory_kib: positive(env, "ARGON2_MEMORY_KIB", 19456)?,
            iterations: positive(env, "ARGON2_ITERATIONS", 2)?,
            parallelism: positive(env, "ARGON2_PARALLELISM", 1)?,
        };
        argon2::Params::new(
            argon2.memory_kib,
            argon2.iterations,
            argon2.parallelism,
            None,
        )
        .map_err(|e| {
            env.error(
                "ARGON2_MEMORY_KIB",
                format!("invalid argon2 parameters: {e}"),
            )
        })?;

        let log_format = env.string("LOG_FORMAT", "text");
        let log_json = match log_format.as_str() {
            "json" => true,
            "text" => false,
            other => {
                return Err(env.error(
                    "LOG_FORMAT",
                    format!("expected json or text, got {other:?}"),
                ));
            }
        };

        let post_verify_url = env.string("POST_VERIFY_URL", "/me");
        if !post_verify_url.starts_with('/') || post_verify_url.starts_with("//") {
            return Err(env.error("POST_VERIFY_URL", "must be a path on this site, like /me"));
        }

        let token_ttl = env.duration("TOKEN_TTL", Duration::from_secs(24 * 3600))?;
        if token_ttl < Duration::from_secs(60) {
            return Err(env.error("TOKEN_TTL", "must be at least 1m"));
        }

        Ok(Self {
            bind: env.string("BIND", "127.0.0.1:8080"),
            public_url,
            database_url: SecretString::from(database_url),
            database_pool_size: positive(env, "DATABASE_POOL_SIZE", 16)? as usize,
            amqp_url: SecretString::from(amqp_url),
            topology,
            token_keys,
            token_ttl,
            session_ttl: env.duration("SESSION_TTL", Duration::from_secs(14 * 24 * 3600))?,
            cookie_secure: env.bool("COOKIE_SECURE", true)?,
            rate_limits,
            trust_forwarded_for: env.bool("TRUST_FORWARDED_FOR", false)?,
            resend_cooldown: env.duration("RESEND_COOLDOWN", Duration::from_secs(60))?,
            post_verify_url,
            default_locale,
            argon2,
            hash_concurrency: positive(env, "HASH_CONCURRENCY", cores() as u32)? as usize,
            outbox_sweep_interval: env
                .duration("OUTBOX_SWEEP_INTERVAL", Duration::from_secs(5))?
                .max(Duration::from_millis(50)),
            outbox_retention: env
                .duration("OUTBOX_RETENTION", Duration::from_secs(7 * 24 * 3600))?,
            workers: positive(env, "WORKERS", cores() as u32)? as usize,
            log_json,
        })
    }

    /// An absolute URL on this service.
    pub fn url(&self, path_and_query: &str) -> String {
        let base = self.public_url.as_str().trim_end_matches('/');
        format!("{base}{path_and_query}")
    }
}

fn positive(env: &Env, name: &str, default: u32) -> Result<u32, ConfigError> {
    let v = env.parse(name, default)?;
    if v == 0 {
        return Err(env.error(name, "must be greater than 0"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from(&Env::from_map(
            "ACCOUNT_",
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        ))
    }

    #[test]
    fn defaults_target_the_local_machine() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.bind, "127.0.0.1:8080");
        assert_eq!(s.url("/verify"), "http://127.0.0.1:8080/verify");
        assert_eq!(
            s.database_url.expose_secret(),
            "postgres://postgres@127.0.0.1:5432/accounts"
        );
        assert!(s.cookie_secure);
        assert!(s.token_keys.is_none());
        assert_eq!(s.token_ttl, Duration::from_secs(86400));
        assert_eq!(s.argon2.memory_kib, 19456);
        assert_eq!(s.outbox_retention, Duration::from_secs(7 * 24 * 3600));
        let keep = settings(&[("ACCOUNT_OUTBOX_RETENTION", "0")]).unwrap();
        assert!(keep.outbox_retention.is_zero());
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let cases = [
            ("ACCOUNT_PUBLIC_URL", "not a url"),
            ("ACCOUNT_DATABASE_URL", "mysql://x/y"),
            ("ACCOUNT_AMQP_URL", "http://x"),
            ("ACCOUNT_AMQP_PREFIX", "bad prefix"),
            ("ACCOUNT_TOKEN_KEYS", "k1:tooshort"),
            ("ACCOUNT_TOKEN_TTL", "forever"),
            ("ACCOUNT_COOKIE_SECURE", "maybe"),
            ("ACCOUNT_RATE_LIMITS", "sometimes"),
            ("ACCOUNT_DEFAULT_LOCALE", "fr"),
            ("ACCOUNT_ARGON2_MEMORY_KIB", "0"),
            ("ACCOUNT_LOG_FORMAT", "xml"),
            ("ACCOUNT_POST_VERIFY_URL", "https://evil.example"),
            ("ACCOUNT_WORKERS", "-1"),
            ("ACCOUNT_OUTBOX_RETENTION", "a week"),
        ];
        for (var, value) in cases {
            let err = settings(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{var}={value}: {err}");
        }
    }

    #[test]
    fn database_password_is_put_into_the_url() {
        let s = settings(&[
            ("ACCOUNT_DATABASE_URL", "postgres://app@db:5432/accounts"),
            ("ACCOUNT_DATABASE_PASSWORD", "p@ss word"),
        ])
        .unwrap();
        let url = Url::parse(s.database_url.expose_secret()).unwrap();
        assert_eq!(url.username(), "app");
        assert_eq!(url.password(), Some("p%40ss%20word"));
    }

    #[test]
    fn every_variable_read_is_listed() {
        let read = shared::config::variables_read(include_str!("config.rs"), "ACCOUNT_");
        assert!(read.len() > 10, "the scan finds the reads: {read:?}");
        for var in read {
            assert!(
                ENV_VARS.contains(&var.as_str()),
                "{var} is read but not in ENV_VARS"
            );
        }
    }
}
