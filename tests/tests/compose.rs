//! No Docker engine runs here, so these tests hold docker-compose.yml, the
//! Dockerfile and the production example against the code: every variable
//! set is one the services read, every secret file is produced, ports,
//! health checks and host names agree.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_yaml_ng::Value;
use shared::config::{Variable, variables};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compose() -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(root().join("docker-compose.yml")).unwrap())
        .unwrap()
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    &c["services"][name]
}

fn env_of(c: &Value, name: &str) -> BTreeMap<String, String> {
    service(c, name)["environment"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{name} has an environment mapping"))
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => serde_yaml_ng::to_string(other).unwrap().trim().to_owned(),
            };
            (k.as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// Checks one service's variables against what its settings struct declares.
fn check_vars(prefix: &str, vars: &BTreeMap<String, String>, known: &[Variable]) {
    for key in vars.keys().filter(|k| k.starts_with(prefix)) {
        let ok = known.iter().any(|v| {
            v.name == *key || (v.secret && key.strip_suffix("_FILE") == Some(v.name.as_str()))
        });
        assert!(ok, "{key} is set but the service does not read it (typo?)");
    }
}

fn account_vars() -> Vec<Variable> {
    variables::<account::config::Cli>()
}

fn mailer_vars() -> Vec<Variable> {
    variables::<mailer::config::Cli>()
}

fn host_port(url: &str) -> (String, Option<u16>) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap();
    let hostport = authority.rsplit('@').next().unwrap();
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().ok()),
        None => (hostport.to_owned(), None),
    }
}

#[test]
fn every_variable_in_compose_is_read_by_its_service_and_the_required_ones_are_set() {
    let c = compose();
    let account = env_of(&c, "account");
    let mailer = env_of(&c, "mailer");
    check_vars("ACCOUNT_", &account, &account_vars());
    check_vars("MAILER_", &mailer, &mailer_vars());

    // Without these the containers would fall back to 127.0.0.1 defaults,
    // which point nowhere inside a container.
    for var in [
        "ACCOUNT_BIND",
        "ACCOUNT_PUBLIC_URL",
        "ACCOUNT_DATABASE_URL",
        "ACCOUNT_AMQP_URL",
    ] {
        assert!(
            account.contains_key(var) || account.contains_key(&format!("{var}_FILE")),
            "account lacks {var}"
        );
    }
    assert!(
        account.contains_key("ACCOUNT_TOKEN_KEYS")
            || account.contains_key("ACCOUNT_TOKEN_KEYS_FILE"),
        "a stable key ring"
    );
    for var in [
        "MAILER_BIND",
        "MAILER_AMQP_URL",
        "MAILER_SMTP_URL",
        "MAILER_FROM",
    ] {
        assert!(
            mailer.contains_key(var) || mailer.contains_key(&format!("{var}_FILE")),
            "mailer lacks {var}"
        );
    }
    // Both sides of the broker agree on the prefix.
    assert_eq!(
        account.get("ACCOUNT_AMQP_PREFIX"),
        mailer.get("MAILER_AMQP_PREFIX")
    );
}

#[test]
fn urls_name_compose_services_and_secret_files_are_produced() {
    let c = compose();
    let services: Vec<String> = c["services"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let init = serde_yaml_ng::to_string(&service(&c, "secrets-init")["command"]).unwrap();
    for (name, vars) in [
        ("account", env_of(&c, "account")),
        ("mailer", env_of(&c, "mailer")),
    ] {
        for (key, value) in &vars {
            if key.ends_with("_URL") && key != "ACCOUNT_PUBLIC_URL" {
                let (host, _) = host_port(value);
                assert!(
                    services.contains(&host),
                    "{name}: {key} points at {host:?}, not a compose service"
                );
            }
            if let Some(file) = value
                .strip_prefix("/run/secrets/")
                .filter(|_| key.ends_with("_FILE"))
            {
                assert!(
                    init.contains(&format!("> {file}")),
                    "{name}: {key} reads {file}, which secrets-init never writes"
                );
                let mounts = serde_yaml_ng::to_string(&service(&c, name)["volumes"]).unwrap();
                assert!(
                    mounts.contains("secrets:/run/secrets:ro"),
                    "{name} mounts the secrets volume read-only"
                );
            }
        }
    }
    let pg = env_of(&c, "postgres");
    let pw = pg["POSTGRES_PASSWORD_FILE"]
        .strip_prefix("/run/secrets/")
        .unwrap();
    assert!(init.contains(&format!("> {pw}")));
    // The account connects as the user PostgreSQL creates.
    let account = env_of(&c, "account");
    let db_url = &account["ACCOUNT_DATABASE_URL"];
    assert!(
        db_url.starts_with(&format!(
            "postgres://{}@postgres:5432/{}",
            pg["POSTGRES_USER"], pg["POSTGRES_DB"]
        )),
        "{db_url}"
    );
}

#[test]
fn ports_and_health_checks_agree_with_the_bind_addresses() {
    let c = compose();
    for (name, bind_var) in [("account", "ACCOUNT_BIND"), ("mailer", "MAILER_BIND")] {
        let vars = env_of(&c, name);
        let (host, port) = host_port(&vars[bind_var]);
        assert_eq!(
            host, "0.0.0.0",
            "{name} listens on all interfaces inside its container"
        );
        let port = port.unwrap();
        let health = serde_yaml_ng::to_string(&service(&c, name)["healthcheck"]["test"]).unwrap();
        assert!(
            health.contains(&format!("http://127.0.0.1:{port}/healthz")),
            "{name} health check: {health}"
        );
        if let Some(ports) = service(&c, name)["ports"].as_sequence() {
            for p in ports {
                let p = p.as_str().unwrap();
                assert!(
                    p.ends_with(&format!(":{port}")),
                    "{name} publishes {p}, not its bind port {port}"
                );
            }
        }
    }
    // Only what a developer opens is published: the account, Mailpit's UI, RabbitMQ's UI.
    let published: Vec<&str> = c["services"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, s)| s["ports"].is_sequence())
        .map(|(k, _)| k.as_str().unwrap())
        .collect();
    assert_eq!(published, ["rabbitmq", "mailpit", "account"]);
}

#[test]
fn start_order_waits_for_health() {
    let c = compose();
    for (name, deps) in [
        ("account", vec!["postgres", "rabbitmq", "mailer"]),
        ("mailer", vec!["rabbitmq", "mailpit"]),
        ("postgres", vec!["secrets-init"]),
    ] {
        for dep in deps {
            let cond = service(&c, name)["depends_on"][dep]["condition"].as_str();
            let want = if dep == "secrets-init" {
                "service_completed_successfully"
            } else {
                "service_healthy"
            };
            assert_eq!(cond, Some(want), "{name} depends on {dep}");
            if want == "service_healthy" {
                assert!(
                    service(&c, dep)["healthcheck"]["test"].is_sequence(),
                    "{dep} has a health check"
                );
            }
        }
    }
    for volume in ["pgdata", "rabbitmq", "secrets"] {
        assert!(
            c["volumes"].as_mapping().unwrap().contains_key(volume),
            "named volume {volume}"
        );
    }
}

#[test]
fn the_dockerfile_builds_locked_and_runs_unprivileged() {
    let d = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    assert!(
        d.contains("cargo chef cook --release --locked"),
        "dependency layer"
    );
    assert!(d.contains("cargo build --release --locked -p account -p mailer"));
    for target in ["account", "mailer"] {
        let stage = d
            .split(&format!(" AS {target}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("stage {target}"));
        let stage = stage.split("\nFROM ").next().unwrap();
        assert!(
            stage.contains("USER 10001"),
            "{target} runs as a non-root user"
        );
        assert!(stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{target}\"]")));
        let c = compose();
        assert_eq!(
            service(&c, target)["build"]["target"].as_str(),
            Some(target)
        );
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

/// `[patch.crates-io]` paths are not workspace members, so cargo-chef's recipe
/// skeleton leaves them out: the builder must copy them before `cook`.
#[test]
fn the_dockerfile_copies_patched_crates_before_cooking() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let patch = manifest
        .split("[patch.crates-io]")
        .nth(1)
        .expect("the workspace patches lettre");
    let patch = patch.split("\n[").next().unwrap();
    let dirs: Vec<&str> = patch
        .split("path = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.split('/').next())
        .collect();
    assert!(!dirs.is_empty(), "patch paths found in {patch:?}");
    let d = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let builder = d.split(" AS builder\n").nth(1).expect("builder stage");
    let before_cook = builder.split("cargo chef cook").next().unwrap();
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for dir in dirs {
        assert!(
            before_cook.contains(&format!("COPY {dir} {dir}")),
            "the builder copies {dir}/ before cargo chef cook"
        );
        assert!(
            !ignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == dir),
            "{dir}/ is not in .dockerignore"
        );
    }
}

#[test]
fn the_production_example_sets_only_known_variables() {
    let text = std::fs::read_to_string(root().join("deploy/production.env.example")).unwrap();
    let mut vars = BTreeMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (k, v) = line.split_once('=').expect("KEY=value");
        vars.insert(k.to_owned(), v.to_owned());
    }
    let account: BTreeMap<_, _> = vars
        .iter()
        .filter(|(k, _)| k.starts_with("ACCOUNT_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mailer: BTreeMap<_, _> = vars
        .iter()
        .filter(|(k, _)| k.starts_with("MAILER_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        account.len() + mailer.len(),
        vars.len(),
        "only ACCOUNT_ and MAILER_ variables"
    );
    check_vars("ACCOUNT_", &account, &account_vars());
    check_vars("MAILER_", &mailer, &mailer_vars());
    // Production posture: Secure cookies, TLS to SMTP, secrets from files.
    assert_eq!(vars["ACCOUNT_COOKIE_SECURE"], "true");
    assert!(vars["MAILER_SMTP_URL"].contains("smtp.naver.com:587?tls=required"));
    for secret in [
        "ACCOUNT_TOKEN_KEYS_FILE",
        "MAILER_SMTP_PASSWORD_FILE",
        "ACCOUNT_DATABASE_PASSWORD_FILE",
    ] {
        assert!(vars.contains_key(secret), "{secret}");
    }
    // The settings parse as the services would read them (files aside).
    let plain = || {
        vars.iter()
            .filter(|(k, _)| !k.ends_with("_FILE"))
            .map(|(k, v)| (k.clone(), v.clone()))
    };
    account::config::Settings::from_vars(plain()).expect("account settings parse");
    mailer::config::Settings::from_vars(plain()).expect("mailer settings parse");
}
