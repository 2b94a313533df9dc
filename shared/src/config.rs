//! Configuration the same way in both services: the settings struct, derived
//! with clap, is the one list of variables (names, defaults, help). This
//! module turns clap's errors into one line naming the variable, reads
//! secrets from `NAME` or `NAME_FILE` (Docker secrets), treats an empty
//! variable as unset, and offers the value parsers both services share.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches};
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

impl ConfigError {
    /// An error about `var`.
    pub fn new(var: &str, message: impl Into<String>) -> Self {
        Self {
            var: var.to_owned(),
            message: message.into(),
        }
    }
}

/// What a command line asked for, once parsed.
#[derive(Debug)]
pub enum Parsed<T> {
    /// Run with these arguments and settings.
    Run(T),
    /// `--help` or `--version`: print this and exit 0.
    Print(String),
    /// A wrong command line (unknown subcommand or flag): print this and exit 2.
    Usage(String),
    /// A variable (or its flag) holds a bad value.
    Config(ConfigError),
}

/// A variable a settings type reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// e.g. `ACCOUNT_TOKEN_KEYS`.
    pub name: String,
    /// Also readable from the file named by `<name>_FILE`.
    pub secret: bool,
}

/// Every variable `T` (or a command that flattens it) reads, in declaration
/// order, with the `_FILE` twins of secrets folded into their secret.
pub fn variables<T: CommandFactory>() -> Vec<Variable> {
    let cmd = T::command();
    let names: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    names
        .iter()
        .filter(|n| {
            !n.strip_suffix("_FILE")
                .is_some_and(|base| names.iter().any(|m| m == base))
        })
        .map(|n| Variable {
            name: n.clone(),
            secret: names.contains(&format!("{n}_FILE")),
        })
        .collect()
}

/// Variables picked from the ones `T` reads (not the `_FILE` twins, which
/// name files) by index, modulo their count, with the given values: what a
/// property test of a settings parser feeds it.
pub fn picked_variables<T: CommandFactory>(
    picks: impl IntoIterator<Item = (usize, String)>,
) -> (Vec<String>, HashMap<String, String>) {
    let names: Vec<String> = variables::<T>().into_iter().map(|v| v.name).collect();
    let vars = picks
        .into_iter()
        .map(|(i, v)| (names[i % names.len()].clone(), v))
        .collect();
    (names, vars)
}

/// Parses the process's arguments and environment into `T`. An empty
/// variable counts as unset, so the default applies.
pub fn parse_process<T: CommandFactory + FromArgMatches>() -> Parsed<T> {
    let cmd = T::command().mut_args(|a| {
        let empty = a
            .get_env()
            .and_then(std::env::var_os)
            .is_some_and(|v| v.is_empty());
        if empty { a.env(None) } else { a }
    });
    finish::<T>(cmd.try_get_matches_from(std::env::args_os()))
}

/// Parses the command line and environment like [`parse_process`], and
/// leaves the process on anything but `Run`: help and version on stdout
/// (exit 0), a usage or configuration error on stderr (exit 2).
pub fn parse_or_exit<T: CommandFactory + FromArgMatches>() -> T {
    match parse_process::<T>() {
        Parsed::Run(t) => t,
        Parsed::Print(text) => {
            print!("{text}");
            std::process::exit(0);
        }
        Parsed::Usage(text) => {
            eprint!("{text}");
            std::process::exit(2);
        }
        Parsed::Config(e) => exit_with(e),
    }
}

/// Prints a configuration error as its one line and exits with 2.
pub fn exit_with(e: ConfigError) -> ! {
    eprintln!("{e}");
    std::process::exit(2);
}

/// Parses `T` from a map of variables instead of the process environment
/// (tests, or a process assembling its own): each `NAME=value` is given as
/// the flag that reads `NAME`. Unknown names and empty values are ignored.
pub fn parse_vars<T: CommandFactory + FromArgMatches>(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    parse_vars_with(T::command(), vars, T::from_arg_matches)
}

/// [`parse_vars`] for a settings struct alone (one that is flattened into
/// a command line).
pub fn settings_from_vars<S: clap::Args + FromArgMatches>(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<S, ConfigError> {
    let cmd = S::augment_args(clap::Command::new("settings"));
    parse_vars_with(cmd, vars, S::from_arg_matches)
}

fn parse_vars_with<T>(
    cmd: clap::Command,
    vars: impl IntoIterator<Item = (String, String)>,
    from: fn(&clap::ArgMatches) -> Result<T, clap::Error>,
) -> Result<T, ConfigError> {
    let flags: HashMap<String, String> = cmd
        .get_arguments()
        .filter_map(|a| {
            Some((
                a.get_env()?.to_string_lossy().into_owned(),
                a.get_long()?.to_owned(),
            ))
        })
        .collect();
    let mut args: Vec<OsString> = vec![cmd.get_name().into()];
    for (name, value) in vars {
        if let Some(long) = flags.get(&name)
            && !value.is_empty()
        {
            args.push(format!("--{long}={value}").into());
        }
    }
    let parsed = cmd
        .clone()
        .mut_args(|a| a.env(None))
        .try_get_matches_from(args)
        .and_then(|m| from(&m));
    match parsed.map_err(|e| from_clap(&cmd, e)) {
        Ok(t) => Ok(t),
        Err(Parsed::Config(e)) => Err(e),
        Err(Parsed::Print(m) | Parsed::Usage(m)) => Err(ConfigError::new("-", m)),
        Err(Parsed::Run(never)) => match never {},
    }
}

fn finish<T: CommandFactory + FromArgMatches>(
    matches: Result<clap::ArgMatches, clap::Error>,
) -> Parsed<T> {
    let parsed = matches.and_then(|m| T::from_arg_matches(&m));
    match parsed {
        Ok(t) => Parsed::Run(t),
        Err(e) => match from_clap(&T::command(), e) {
            Parsed::Run(never) => match never {},
            Parsed::Print(m) => Parsed::Print(m),
            Parsed::Usage(m) => Parsed::Usage(m),
            Parsed::Config(e) => Parsed::Config(e),
        },
    }
}

/// What a clap error means here: help or version to print, a usage error,
/// or a bad value of a variable (one line naming it).
fn from_clap(cmd: &clap::Command, e: clap::Error) -> Parsed<std::convert::Infallible> {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => return Parsed::Print(e.to_string()),
        ErrorKind::InvalidValue
        | ErrorKind::ValueValidation
        | ErrorKind::WrongNumberOfValues
        | ErrorKind::TooManyValues
        | ErrorKind::ArgumentConflict => {}
        _ => return Parsed::Usage(e.render().to_string()),
    }
    let flag = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.split_whitespace().next().unwrap_or("").to_owned(),
        _ => String::new(),
    };
    let long = flag.trim_start_matches('-').split('=').next().unwrap_or("");
    let arg = cmd.get_arguments().find(|a| a.get_long() == Some(long));
    let var = arg
        .and_then(|a| a.get_env().map(|v| v.to_string_lossy().into_owned()))
        .unwrap_or(flag);
    // A secret's value never reaches the terminal or a log collector.
    let secret = arg.is_some_and(|a| a.is_hide_env_values_set());
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) if !secret => format!(" {v:?}"),
        _ => String::new(),
    };
    let reason = std::error::Error::source(&e)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    Parsed::Config(ConfigError::new(
        &var,
        format!("invalid value{value}{reason}"),
    ))
}

/// A secret from its variable or from the file its `_FILE` twin names (not
/// both). A file's trailing newline is dropped.
pub fn secret(
    var: &str,
    value: Option<SecretString>,
    file: Option<&Path>,
) -> Result<Option<SecretString>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            var,
            format!("set either {var} or {var}_FILE, not both"),
        )),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(path)) => {
            let file_var = format!("{var}_FILE");
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(&file_var, format!("cannot read {}: {e}", path.display()))
            })?;
            let text = text.trim_end_matches(['\r', '\n']);
            if text.is_empty() {
                return Err(ConfigError::new(
                    &file_var,
                    format!("{} is empty", path.display()),
                ));
            }
            Ok(Some(SecretString::from(text.to_owned())))
        }
        (None, None) => Ok(None),
    }
}

/// Value parser: a secret string (never shown by `Debug`).
pub fn secret_value(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_owned()))
}

/// Value parser: `true/false`, `1/0`, `yes/no`, `on/off`.
pub fn boolean(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

/// Value parser: a duration such as `30s`, `5m`, `24h` or `500ms`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("expected a duration like 30s or 24h: {e}"))
}

/// Value parser: a comma-separated list of durations such as `5s,30s,2m`.
pub fn durations(s: &str) -> Result<Vec<Duration>, String> {
    s.split(',')
        .map(|d| {
            humantime::parse_duration(d.trim())
                .map_err(|e| format!("expected durations like 5s,30s,2m, got {d:?}: {e}"))
        })
        .collect()
}

/// Value parser: the log format, `text` or `json` (true for JSON).
pub fn log_json(s: &str) -> Result<bool, String> {
    match s.trim() {
        "json" => Ok(true),
        "text" => Ok(false),
        other => Err(format!("expected json or text, got {other:?}")),
    }
}

/// Value parser: an AMQP URL (`amqp://` or `amqps://`), or a comma-separated
/// list of them (a cluster's nodes, tried in turn: [`crate::amqp::Nodes`]).
/// The error never repeats a URL: it may hold a password.
pub fn amqp_url(s: &str) -> Result<SecretString, String> {
    let urls: Vec<&str> = crate::amqp::split(s).collect();
    if urls.is_empty() {
        return Err(
            "expected an amqp:// or amqps:// URL, or a comma-separated list of them".into(),
        );
    }
    for (i, url) in urls.iter().enumerate() {
        let scheme_ok = url.starts_with("amqp://") || url.starts_with("amqps://");
        if !scheme_ok || url.parse::<lapin::uri::AMQPUri>().is_err() {
            return Err(format!(
                "entry {} of {} is not an amqp:// or amqps:// URL",
                i + 1,
                urls.len()
            ));
        }
    }
    Ok(SecretString::from(urls.join(",")))
}

/// Value parser: a broker name prefix (see [`crate::Topology::new`]).
pub fn topology(s: &str) -> Result<crate::Topology, String> {
    crate::Topology::new(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    #[command(name = "t")]
    struct T {
        #[arg(long, env = "T_PORT", default_value_t = 1)]
        port: u16,
        #[arg(long, env = "T_ON", default_value_t = false, value_parser = boolean, action = clap::ArgAction::Set)]
        on: bool,
        #[arg(long, env = "T_TTL", default_value = "5s", value_parser = duration)]
        ttl: Duration,
        #[arg(long = "pw", env = "T_PW", hide_env_values = true, value_parser = not_hunter2)]
        pw: Option<SecretString>,
        #[arg(long = "pw-file", env = "T_PW_FILE")]
        pw_file: Option<std::path::PathBuf>,
    }

    fn not_hunter2(s: &str) -> Result<SecretString, String> {
        if s == "hunter2" {
            return Err("too weak".into());
        }
        secret_value(s)
    }

    fn vars(pairs: &[(&str, &str)]) -> Result<T, ConfigError> {
        parse_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn errors_name_the_variable_in_one_line() {
        for (var, value) in [("T_PORT", "eighty"), ("T_ON", "maybe"), ("T_TTL", "soon")] {
            let err = vars(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{err}");
            let line = err.to_string();
            assert!(line.starts_with(&format!("configuration error: {var}: invalid value")));
            assert!(line.contains(value), "{line}");
            assert!(!line.contains('\n'), "{line:?}");
        }
        let t = vars(&[
            ("T_PORT", "8"),
            ("T_ON", "on"),
            ("UNRELATED", "x"),
            ("T_TTL", ""),
        ])
        .unwrap();
        assert_eq!((t.port, t.on, t.ttl), (8, true, Duration::from_secs(5)));
    }

    #[test]
    fn variables_fold_file_twins_into_secrets() {
        let v = variables::<T>();
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["T_PORT", "T_ON", "T_TTL", "T_PW"]);
        assert!(v[3].secret && !v[0].secret);
    }

    #[test]
    fn secrets_come_from_the_variable_or_a_file() {
        let dir = std::env::temp_dir().join(format!("shared-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let f = file.to_str().unwrap();

        let resolve = |t: T| secret("T_PW", t.pw, t.pw_file.as_deref());
        let got = resolve(vars(&[("T_PW_FILE", f)]).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(got.expose_secret(), "s3cret");
        let got = resolve(vars(&[("T_PW", "direct")]).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(got.expose_secret(), "direct");
        let both = resolve(vars(&[("T_PW", "direct"), ("T_PW_FILE", f)]).unwrap());
        assert_eq!(both.unwrap_err().var, "T_PW");
        let missing = resolve(vars(&[("T_PW_FILE", "/nonexistent/pw")]).unwrap());
        assert_eq!(missing.unwrap_err().var, "T_PW_FILE");
        assert!(resolve(vars(&[]).unwrap()).unwrap().is_none());
        std::fs::write(&file, "\n").unwrap();
        let empty = resolve(vars(&[("T_PW_FILE", f)]).unwrap());
        assert_eq!(empty.unwrap_err().var, "T_PW_FILE");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn shared_parsers() {
        assert_eq!(
            durations("5s, 30s,2m").unwrap(),
            [5, 30, 120].map(Duration::from_secs)
        );
        assert!(durations("5s,soon").is_err());
        assert!(amqp_url("amqps://b").is_ok());
        assert!(amqp_url("http://b").is_err());
        let list = amqp_url(" amqp://u:p@a:5672/%2f , amqp://u:p@b:5672/%2f,").unwrap();
        assert_eq!(
            list.expose_secret(),
            "amqp://u:p@a:5672/%2f,amqp://u:p@b:5672/%2f"
        );
        let err = amqp_url("amqp://u:secret@a,http://u:secret@b").unwrap_err();
        assert!(
            err.contains("entry 2 of 2") && !err.contains("secret"),
            "{err}"
        );
        assert!(amqp_url(" , ").is_err());
        assert!(log_json("json").unwrap() && !log_json("text").unwrap());
        assert!(log_json("xml").is_err());
    }
}
