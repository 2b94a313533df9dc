//! `ACCOUNT_*` configuration: this struct is the list of variables. Each
//! field names its variable, default and help (`account --help` prints
//! them); `Settings::load` then resolves what needs more than one variable
//! (secrets from `*_FILE`, the database password, the key ring).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args};
use secrecy::{ExposeSecret, SecretString};
use shared::Topology;
use shared::config::{self as conf, ConfigError};
use url::Url;

use crate::i18n::Lang;
use crate::token::KeyRing;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, Args)]
pub struct Argon2Settings {
    /// Argon2id memory per hash, in KiB.
    #[arg(long = "argon2-memory-kib", env = "ACCOUNT_ARGON2_MEMORY_KIB", default_value_t = 19456, value_parser = clap::value_parser!(u32).range(1..))]
    pub memory_kib: u32,
    /// Argon2id passes.
    #[arg(long = "argon2-iterations", env = "ACCOUNT_ARGON2_ITERATIONS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: u32,
    /// Argon2id lanes.
    #[arg(long = "argon2-parallelism", env = "ACCOUNT_ARGON2_PARALLELISM", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub parallelism: u32,
}

/// Limits on sign-up, resend and login, shared by every instance (kept in
/// PostgreSQL); each action has its own allowances.
#[derive(Debug, Clone, Copy, Args)]
pub struct RateLimitSettings {
    /// `off` turns the per-client and per-address limits off (benchmarks, or behind a gateway that limits).
    #[arg(long = "rate-limits", value_name = "ON_OFF", env = "ACCOUNT_RATE_LIMITS", default_value = "on", value_parser = conf::boolean, action = ArgAction::Set)]
    pub enabled: bool,
    /// Requests per client (an IPv4 address, or an IPv6 /64) per minute, for each action.
    #[arg(long = "rate-limit-client-per-minute", env = "ACCOUNT_RATE_LIMIT_CLIENT_PER_MINUTE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub client_per_minute: u32,
    /// Requests per e-mail address per hour, for each of sign-up and resend.
    #[arg(long = "rate-limit-address-per-hour", env = "ACCOUNT_RATE_LIMIT_ADDRESS_PER_HOUR", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub address_per_hour: u32,
    /// Logins per e-mail address AND client per hour: failures from one client never lock the owner out of another.
    #[arg(long = "rate-limit-login-per-hour", env = "ACCOUNT_RATE_LIMIT_LOGIN_PER_HOUR", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_per_hour: u32,
}

/// The whole configuration of the account service.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Configuration (environment variables)")]
pub struct Settings {
    /// Listen address of the public HTTP server (API, pages, /healthz, /readyz).
    #[arg(long, env = "ACCOUNT_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Listen address of the internal server: /metrics, /healthz, /readyz. Keep it off the public network.
    #[arg(long, env = "ACCOUNT_ADMIN_BIND", default_value = "127.0.0.1:8081")]
    pub admin_bind: String,
    /// Base URL put into links.
    #[arg(long, env = "ACCOUNT_PUBLIC_URL", default_value = "http://127.0.0.1:8080", value_parser = public_url)]
    pub public_url: Url,
    /// PostgreSQL URL [default: postgres://postgres@127.0.0.1:5432/accounts]; `?sslmode=require` or `verify-full` uses TLS.
    #[arg(long = "database-url", value_name = "URL", env = "ACCOUNT_DATABASE_URL", hide_env_values = true, value_parser = conf::secret_value)]
    database_url_value: Option<SecretString>,
    /// File holding ACCOUNT_DATABASE_URL (Docker secrets).
    #[arg(long = "database-url-file", env = "ACCOUNT_DATABASE_URL_FILE")]
    database_url_file: Option<PathBuf>,
    /// Database password, put into the URL (so the URL itself need not be secret).
    #[arg(long = "database-password", env = "ACCOUNT_DATABASE_PASSWORD", hide_env_values = true, value_parser = conf::secret_value)]
    database_password: Option<SecretString>,
    /// File holding ACCOUNT_DATABASE_PASSWORD.
    #[arg(
        long = "database-password-file",
        env = "ACCOUNT_DATABASE_PASSWORD_FILE"
    )]
    database_password_file: Option<PathBuf>,
    /// The resolved database URL, password included.
    #[arg(skip = SecretString::from(""))]
    pub database_url: SecretString,
    /// Database connections.
    #[arg(long, env = "ACCOUNT_DATABASE_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub database_pool_size: u32,
    /// RabbitMQ URL, or a comma-separated list of a cluster's nodes tried in turn (at connect and on failover) [default: amqp://guest:guest@127.0.0.1:5672/%2f].
    #[arg(long = "amqp-url", value_name = "URL", env = "ACCOUNT_AMQP_URL", hide_env_values = true, value_parser = conf::amqp_url)]
    amqp_url_value: Option<SecretString>,
    /// File holding ACCOUNT_AMQP_URL.
    #[arg(long = "amqp-url-file", env = "ACCOUNT_AMQP_URL_FILE")]
    amqp_url_file: Option<PathBuf>,
    /// The resolved RabbitMQ URL.
    #[arg(skip = SecretString::from(""))]
    pub amqp_url: SecretString,
    /// Prefix of every exchange and queue name (`<prefix>.mail`); empty means none.
    #[arg(long = "amqp-prefix", value_name = "PREFIX", env = "ACCOUNT_AMQP_PREFIX", default_value = "", value_parser = conf::topology)]
    pub topology: Topology,
    /// Key ring `kid:base64key,...`: the first seals, all open. Unset: a random key for this process only (links die at restart).
    #[arg(long = "token-keys", value_name = "KEYS", env = "ACCOUNT_TOKEN_KEYS", hide_env_values = true, value_parser = conf::secret_value)]
    token_keys_value: Option<SecretString>,
    /// File holding ACCOUNT_TOKEN_KEYS.
    #[arg(long = "token-keys-file", env = "ACCOUNT_TOKEN_KEYS_FILE")]
    token_keys_file: Option<PathBuf>,
    /// The resolved key ring; `None`: none configured.
    #[arg(skip)]
    pub token_keys: Option<KeyRing>,
    /// Lifetime of a verification link (at least 1m).
    #[arg(long, env = "ACCOUNT_TOKEN_TTL", default_value = "24h", value_parser = token_ttl)]
    pub token_ttl: Duration,
    /// Lifetime of a password reset link (at least 1m).
    #[arg(long, env = "ACCOUNT_RESET_TTL", default_value = "1h", value_parser = at_least_a_minute)]
    pub reset_ttl: Duration,
    /// Accounts never verified are deleted this long after their last link was sent.
    #[arg(long, env = "ACCOUNT_UNVERIFIED_TTL", default_value = "7d", value_parser = at_least_a_minute)]
    pub unverified_ttl: Duration,
    /// Lifetime of a session, however much it is used.
    #[arg(long, env = "ACCOUNT_SESSION_TTL", default_value = "14d", value_parser = conf::duration)]
    pub session_ttl: Duration,
    /// A session unused for this long ends (each request moves it on, to the minute).
    #[arg(long, env = "ACCOUNT_SESSION_IDLE_TTL", default_value = "2d", value_parser = at_least_a_minute)]
    pub session_idle_ttl: Duration,
    /// `false` only for plain-HTTP development (the cookie is then `session` instead of `__Host-session`).
    #[arg(long, env = "ACCOUNT_COOKIE_SECURE", default_value = "true", value_parser = conf::boolean, action = ArgAction::Set)]
    pub cookie_secure: bool,
    #[command(flatten)]
    pub rate_limits: RateLimitSettings,
    /// Key client limits on the last hop of the last `X-Forwarded-For` line (only behind your proxy).
    #[arg(long, env = "ACCOUNT_TRUST_FORWARDED_FOR", default_value = "false", value_parser = conf::boolean, action = ArgAction::Set)]
    pub trust_forwarded_for: bool,
    /// Minimum time between two verification mails to one address.
    #[arg(long, env = "ACCOUNT_RESEND_COOLDOWN", default_value = "60s", value_parser = conf::duration)]
    pub resend_cooldown: Duration,
    /// Where `POST /verify` redirects: a path on this site.
    #[arg(long, env = "ACCOUNT_POST_VERIFY_URL", default_value = "/me", value_parser = site_path)]
    pub post_verify_url: String,
    /// The product's name in page titles and at the top of every page (the same as MAILER_BRAND) [default: "Account" / "계정"].
    #[arg(long, env = "ACCOUNT_BRAND")]
    pub brand: Option<String>,
    /// `ko` or `en`, when the browser asks for neither.
    #[arg(long, env = "ACCOUNT_DEFAULT_LOCALE", default_value = "en", value_parser = locale)]
    pub default_locale: Lang,
    #[command(flatten)]
    pub argon2: Argon2Settings,
    /// Most password work queued, as time at the measured hash rate; past it sign-up and login answer 503 with Retry-After.
    #[arg(long, env = "ACCOUNT_HASH_QUEUE", default_value = "3s", value_parser = conf::duration)]
    pub hash_queue: Duration,
    /// Password hashes at once (bounds memory under a sign-up flood) [default: number of cores].
    #[arg(
        long = "hash-concurrency",
        value_name = "N",
        env = "ACCOUNT_HASH_CONCURRENCY"
    )]
    hash_concurrency_value: Option<NonZeroUsize>,
    /// How often the relay looks for rows it was not woken for (at least 50ms).
    #[arg(long, env = "ACCOUNT_OUTBOX_SWEEP_INTERVAL", default_value = "5s", value_parser = conf::duration)]
    pub outbox_sweep_interval: Duration,
    /// Published outbox rows older than this are deleted; `0` keeps them. Unsent rows never are.
    #[arg(long, env = "ACCOUNT_OUTBOX_RETENTION", default_value = "7d", value_parser = conf::duration)]
    pub outbox_retention: Duration,
    /// How often each instance purges expired sessions, idle limit keys and old outbox rows.
    #[arg(long, env = "ACCOUNT_HOUSEKEEPING_INTERVAL", default_value = "10m", value_parser = positive_duration)]
    pub housekeeping_interval: Duration,
    /// HTTP worker threads [default: number of cores].
    #[arg(long = "workers", value_name = "N", env = "ACCOUNT_WORKERS")]
    workers_value: Option<NonZeroUsize>,
    /// `json` for JSON lines, `text` for people; `RUST_LOG` sets the filter.
    #[arg(long = "log-format", value_name = "FORMAT", env = "ACCOUNT_LOG_FORMAT", default_value = "text", value_parser = conf::log_json, action = ArgAction::Set)]
    pub log_json: bool,
}

fn public_url(s: &str) -> Result<Url, String> {
    Url::parse(s)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| "expected an http(s) URL".into())
}

fn at_least_a_minute(s: &str) -> Result<Duration, String> {
    let ttl = conf::duration(s)?;
    if ttl < Duration::from_secs(60) {
        return Err("must be at least 1m".into());
    }
    Ok(ttl)
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = conf::duration(s)?;
    if d.is_zero() {
        return Err("must be greater than 0".into());
    }
    Ok(d)
}

fn token_ttl(s: &str) -> Result<Duration, String> {
    at_least_a_minute(s)
}

/// A path on this site and nothing else: browsers read `//host`, `/\host`
/// and a tab or newline inside either as another site.
fn site_path(s: &str) -> Result<String, String> {
    let refused = || "must be a path on this site, like /me".to_owned();
    if !s.starts_with('/')
        || s.starts_with("//")
        || s.contains('\\')
        || s.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(refused());
    }
    // What a browser makes of it, resolved against some origin, must stay there.
    let base = Url::parse("https://site.invalid/").expect("a valid base");
    match base.join(s) {
        Ok(u) if u.origin() == base.origin() => Ok(s.to_owned()),
        _ => Err(refused()),
    }
}

fn locale(s: &str) -> Result<Lang, String> {
    Lang::from_tag(s).ok_or_else(|| "supported: ko, en".into())
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Settings {
    /// Settings from a map of variables (tests), resolved as at start.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        conf::settings_from_vars::<Self>(vars)?.load()
    }

    /// Resolves what one variable alone cannot say: secrets from files, the
    /// database password into the URL, the key ring.
    pub fn load(mut self) -> Result<Self, ConfigError> {
        let url = conf::secret(
            "ACCOUNT_DATABASE_URL",
            self.database_url_value.take(),
            self.database_url_file.as_deref(),
        )?;
        let url = url
            .as_ref()
            .map(|s| s.expose_secret())
            .unwrap_or("postgres://postgres@127.0.0.1:5432/accounts");
        let mut parsed = Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "postgres" | "postgresql"))
            .filter(|u| u.path().len() > 1)
            .ok_or_else(|| {
                ConfigError::new(
                    "ACCOUNT_DATABASE_URL",
                    "expected postgres://user[:password]@host[:port]/database",
                )
            })?;
        if let Some(pw) = conf::secret(
            "ACCOUNT_DATABASE_PASSWORD",
            self.database_password.take(),
            self.database_password_file.as_deref(),
        )? {
            parsed.set_password(Some(pw.expose_secret())).map_err(|_| {
                ConfigError::new("ACCOUNT_DATABASE_PASSWORD", "cannot be put into the URL")
            })?;
        }
        self.database_url = SecretString::from(parsed.to_string());

        self.amqp_url = conf::secret(
            "ACCOUNT_AMQP_URL",
            self.amqp_url_value.take(),
            self.amqp_url_file.as_deref(),
        )?
        .unwrap_or_else(|| SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"));
        conf::amqp_url(self.amqp_url.expose_secret())
            .map_err(|e| ConfigError::new("ACCOUNT_AMQP_URL", e))?;

        self.token_keys = conf::secret(
            "ACCOUNT_TOKEN_KEYS",
            self.token_keys_value.take(),
            self.token_keys_file.as_deref(),
        )?
        .map(|s| KeyRing::parse(s.expose_secret()))
        .transpose()
        .map_err(|e| ConfigError::new("ACCOUNT_TOKEN_KEYS", e.to_string()))?;

        argon2::Params::new(
            self.argon2.memory_kib,
            self.argon2.iterations,
            self.argon2.parallelism,
            None,
        )
        .map_err(|e| {
            ConfigError::new(
                "ACCOUNT_ARGON2_MEMORY_KIB",
                format!("invalid argon2 parameters: {e}"),
            )
        })?;
        self.outbox_sweep_interval = self.outbox_sweep_interval.max(Duration::from_millis(50));
        Ok(self)
    }

    /// Password hashes at once.
    pub fn hash_concurrency(&self) -> usize {
        self.hash_concurrency_value.map_or_else(cores, |n| n.get())
    }

    /// HTTP worker threads.
    pub fn workers(&self) -> usize {
        self.workers_value.map_or_else(cores, |n| n.get())
    }

    /// An absolute URL on this service.
    pub fn url(&self, path_and_query: &str) -> String {
        let base = self.public_url.as_str().trim_end_matches('/');
        format!("{base}{path_and_query}")
    }
}

/// The command line: a subcommand (serving by default) and the settings.
#[derive(Debug, clap::Parser)]
#[command(
    name = "account",
    version,
    about = "Sign-up, e-mail verification by encrypted link, sessions; publishes mail through an outbox"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

/// What `account` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Serve HTTP and run the outbox relay (the default).
    Serve,
    /// Create the database if missing, apply migrations, and exit.
    Migrate,
    /// Print a fresh `kid:base64key` entry for ACCOUNT_TOKEN_KEYS.
    Keygen {
        /// The key id [default: k<today>, e.g. k20261130].
        kid: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_target_the_local_machine() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.bind, "127.0.0.1:8080");
        assert_eq!(s.admin_bind, "127.0.0.1:8081");
        assert_eq!(s.url("/verify"), "http://127.0.0.1:8080/verify");
        assert_eq!(
            s.database_url.expose_secret(),
            "postgres://postgres@127.0.0.1:5432/accounts"
        );
        assert_eq!(
            s.amqp_url.expose_secret(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(s.topology.prefix(), "");
        assert!(s.cookie_secure);
        assert!(!s.trust_forwarded_for);
        assert!(s.rate_limits.enabled);
        assert_eq!(
            (
                s.rate_limits.client_per_minute,
                s.rate_limits.address_per_hour,
                s.rate_limits.login_per_hour
            ),
            (30, 10, 10)
        );
        assert!(s.token_keys.is_none());
        assert_eq!(s.token_ttl, Duration::from_secs(86400));
        assert_eq!(s.session_ttl, Duration::from_secs(14 * 86400));
        assert_eq!(s.session_idle_ttl, Duration::from_secs(2 * 86400));
        assert_eq!(s.reset_ttl, Duration::from_secs(3600));
        assert_eq!(s.unverified_ttl, Duration::from_secs(7 * 86400));
        assert_eq!(s.hash_queue, Duration::from_secs(3));
        assert_eq!(s.housekeeping_interval, Duration::from_secs(600));
        for ok in ["/me", "/welcome?from=mail", "/a/b#c"] {
            let s = settings(&[("ACCOUNT_POST_VERIFY_URL", ok)]).unwrap();
            assert_eq!(s.post_verify_url, ok);
        }
        assert_eq!(s.resend_cooldown, Duration::from_secs(60));
        assert_eq!(s.post_verify_url, "/me");
        assert_eq!(s.default_locale, Lang::En);
        // The OWASP minimum for argon2id: 19 MiB, 2 passes, 1 lane.
        assert_eq!(
            (
                s.argon2.memory_kib,
                s.argon2.iterations,
                s.argon2.parallelism
            ),
            (19456, 2, 1)
        );
        assert_eq!(s.hash_concurrency(), cores());
        assert_eq!(s.workers(), cores());
        assert_eq!(s.database_pool_size, 16);
        assert_eq!(s.outbox_sweep_interval, Duration::from_secs(5));
        assert_eq!(s.outbox_retention, Duration::from_secs(7 * 24 * 3600));
        assert!(!s.log_json);
        let keep = settings(&[("ACCOUNT_OUTBOX_RETENTION", "0")]).unwrap();
        assert!(keep.outbox_retention.is_zero());
        let ko = settings(&[
            ("ACCOUNT_DEFAULT_LOCALE", "ko-KR"),
            ("ACCOUNT_WORKERS", "3"),
        ])
        .unwrap();
        assert_eq!((ko.default_locale, ko.workers()), (Lang::Ko, 3));
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
            ("ACCOUNT_TOKEN_TTL", "30s"),
            ("ACCOUNT_SESSION_TTL", "long"),
            ("ACCOUNT_COOKIE_SECURE", "maybe"),
            ("ACCOUNT_RATE_LIMITS", "sometimes"),
            ("ACCOUNT_RATE_LIMIT_CLIENT_PER_MINUTE", "0"),
            ("ACCOUNT_RATE_LIMIT_LOGIN_PER_HOUR", "0"),
            ("ACCOUNT_DEFAULT_LOCALE", "fr"),
            ("ACCOUNT_ARGON2_MEMORY_KIB", "0"),
            ("ACCOUNT_ARGON2_MEMORY_KIB", "4"),
            ("ACCOUNT_LOG_FORMAT", "xml"),
            ("ACCOUNT_POST_VERIFY_URL", "https://evil.example"),
            ("ACCOUNT_POST_VERIFY_URL", "//evil.example"),
            ("ACCOUNT_POST_VERIFY_URL", "/\\evil.example"),
            ("ACCOUNT_POST_VERIFY_URL", "/\t/evil.example"),
            ("ACCOUNT_POST_VERIFY_URL", "me"),
            ("ACCOUNT_SESSION_IDLE_TTL", "10s"),
            ("ACCOUNT_RESET_TTL", "5s"),
            ("ACCOUNT_UNVERIFIED_TTL", "never"),
            ("ACCOUNT_HASH_QUEUE", "soon"),
            ("ACCOUNT_HOUSEKEEPING_INTERVAL", "0s"),
            ("ACCOUNT_WORKERS", "-1"),
            ("ACCOUNT_HASH_CONCURRENCY", "0"),
            ("ACCOUNT_DATABASE_POOL_SIZE", "0"),
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
    fn the_struct_is_the_list_of_variables() {
        let vars = shared::config::variables::<Cli>();
        let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        for expected in [
            "ACCOUNT_BIND",
            "ACCOUNT_TOKEN_KEYS",
            "ACCOUNT_ARGON2_MEMORY_KIB",
            "ACCOUNT_RATE_LIMIT_ADDRESS_PER_HOUR",
            "ACCOUNT_LOG_FORMAT",
        ] {
            assert!(names.contains(&expected), "{expected} in {names:?}");
        }
        let secrets: Vec<&str> = vars
            .iter()
            .filter(|v| v.secret)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            secrets,
            [
                "ACCOUNT_DATABASE_URL",
                "ACCOUNT_DATABASE_PASSWORD",
                "ACCOUNT_AMQP_URL",
                "ACCOUNT_TOKEN_KEYS"
            ]
        );
        assert!(names.iter().all(|n| n.starts_with("ACCOUNT_")));
    }
}
