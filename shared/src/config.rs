//! Reading configuration from prefixed environment variables, the same way in
//! both services: every error names the variable, every secret may come from
//! `NAME_FILE` (Docker secrets).

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use secrecy::{ExposeSecret, SecretString};

/// A configuration error: one line that names the variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("configuration error: {var}: {message}")]
pub struct ConfigError {
    /// The full variable name, e.g. `ACCOUNT_BIND`.
    pub var: String,
    /// What is wrong with it.
    pub message: String,
}

/// A view of the environment under one prefix (`ACCOUNT_`, `MAILER_`).
#[derive(Debug, Clone)]
pub struct Env {
    prefix: String,
    vars: HashMap<String, String>,
}

impl Env {
    /// The process environment.
    pub fn from_process(prefix: &str) -> Self {
        Self::from_map(prefix, std::env::vars())
    }

    /// A given set of variables (tests, or a process that assembles its own).
    pub fn from_map(prefix: &str, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            prefix: prefix.to_owned(),
            vars: vars.into_iter().collect(),
        }
    }

    /// The full name of a variable, e.g. `var("BIND")` is `ACCOUNT_BIND`.
    pub fn var(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// An error about a variable.
    pub fn error(&self, name: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            var: self.var(name),
            message: message.into(),
        }
    }

    /// The raw value, if set (an empty value counts as set).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(&self.var(name)).map(String::as_str)
    }

    /// The value, or `default` when unset or empty.
    pub fn string(&self, name: &str, default: &str) -> String {
        match self.get(name) {
            Some(v) if !v.trim().is_empty() => v.trim().to_owned(),
            _ => default.to_owned(),
        }
    }

    /// The value when set and not empty.
    pub fn optional(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// A value parsed with `FromStr`, or `default` when unset.
    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| self.error(name, format!("cannot parse {v:?}: {e}"))),
        }
    }

    /// A boolean (`true/false`, `1/0`, `yes/no`, `on/off`), or `default` when unset.
    pub fn bool(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.optional(name).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(self.error(name, format!("expected true or false, got {v:?}"))),
            },
        }
    }

    /// A duration such as `30s`, `5m`, `24h` or `500ms`, or `default` when unset.
    pub fn duration(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.optional(name) {
            None => Ok(default),
            Some(v) => humantime::parse_duration(&v).map_err(|e| {
                self.error(
                    name,
                    format!("expected a duration like 30s or 24h, got {v:?}: {e}"),
                )
            }),
        }
    }

    /// A comma-separated list of durations, or `default` when unset.
    pub fn durations(
        &self,
        name: &str,
        default: &[Duration],
    ) -> Result<Vec<Duration>, ConfigError> {
        match self.optional(name) {
            None => Ok(default.to_vec()),
            Some(v) => v
                .split(',')
                .map(|d| {
                    humantime::parse_duration(d.trim()).map_err(|e| {
                        self.error(
                            name,
                            format!("expected durations like 5s,30s,2m, got {d:?}: {e}"),
                        )
                    })
                })
                .collect(),
        }
    }

    /// A secret from `NAME` or from the file named by `NAME_FILE` (not both).
    /// A file's trailing newline is dropped.
    pub fn secret(&self, name: &str) -> Result<Option<SecretString>, ConfigError> {
        let file_name = format!("{name}_FILE");
        match (
            self.get(name).filter(|v| !v.is_empty()),
            self.optional(&file_name),
        ) {
            (Some(_), Some(_)) => Err(self.error(
                name,
                format!(
                    "set either {} or {}, not both",
                    self.var(name),
                    self.var(&file_name)
                ),
            )),
            (Some(v), None) => Ok(Some(SecretString::from(v.to_owned()))),
            (None, Some(path)) => {
                let path = PathBuf::from(path);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.error(&file_name, format!("cannot read {}: {e}", path.display()))
                })?;
                let text = text.trim_end_matches(['\r', '\n']);
                if text.is_empty() {
                    return Err(self.error(&file_name, format!("{} is empty", path.display())));
                }
                Ok(Some(SecretString::from(text.to_owned())))
            }
            (None, None) => Ok(None),
        }
    }
}

/// The variable names a configuration module reads through `env.<method>("NAME", ...)`,
/// found in its source (tests before the `#[cfg(test)]` line are ignored).
/// Services use it to check that their `ENV_VARS` list is complete.
pub fn variables_read(source: &str, prefix: &str) -> Vec<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or("");
    code.split("env.")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.split_once('(')?.1;
            let name = rest.strip_prefix('"')?.split('"').next()?;
            Some(format!("{prefix}{name}"))
        })
        .collect()
}

/// Replaces the password in a URL by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_map(
            "T_",
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn errors_name_the_variable() {
        let e = env(&[("T_PORT", "eighty"), ("T_ON", "maybe"), ("T_TTL", "soon")]);
        let err = e.parse::<u16>("PORT", 1).unwrap_err();
        assert_eq!(err.var, "T_PORT");
        assert!(err.to_string().starts_with("configuration error: T_PORT: "));
        assert_eq!(e.bool("ON", false).unwrap_err().var, "T_ON");
        assert_eq!(e.duration("TTL", Duration::ZERO).unwrap_err().var, "T_TTL");
        assert_eq!(e.parse::<u16>("UNSET", 7).unwrap(), 7);
        assert_eq!(
            e.durations("UNSET", &[Duration::from_secs(5)]).unwrap(),
            vec![Duration::from_secs(5)]
        );
    }

    #[test]
    fn secrets_come_from_the_variable_or_a_file() {
        let dir = std::env::temp_dir().join(format!("shared-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let f = file.to_str().unwrap();

        let e = env(&[("T_PW_FILE", f)]);
        assert_eq!(e.secret("PW").unwrap().unwrap().expose_secret(), "s3cret");
        let e = env(&[("T_PW", "direct")]);
        assert_eq!(e.secret("PW").unwrap().unwrap().expose_secret(), "direct");
        let e = env(&[("T_PW", "direct"), ("T_PW_FILE", f)]);
        assert_eq!(e.secret("PW").unwrap_err().var, "T_PW");
        let e = env(&[("T_PW_FILE", "/nonexistent/pw")]);
        assert_eq!(e.secret("PW").unwrap_err().var, "T_PW_FILE");
        assert!(env(&[]).secret("PW").unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/accounts"),
            "postgres://postgres@127.0.0.1/accounts"
        );
        assert_eq!(
            redact_url("smtp://a:b@c:587?tls=required"),
            "smtp://a:***@c:587?tls=required"
        );
    }
}
