//! No Docker engine runs here, so these tests hold docker-compose.yml, the
//! Dockerfile and the production example against the code and against real
//! tools: a real Compose implementation (`docker-compose config`, Compose v5
//! from PyPI) resolves the file as `docker compose up` would (env files,
//! variables, profiles), hadolint lints the Dockerfile, and the checks below
//! read what Compose resolved: every variable set is one the services read,
//! every secret file is produced and reaches only the services that need it,
//! ports, health checks and host names agree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use shared::config::{Variable, variables};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// docker-compose.yml resolved by the real Compose, as `docker compose up`
/// would see it in a checkout with `dot_env` as its `.env` (none: `None`)
/// and `profiles` enabled. Runs on a copy of the file and the files it reads
/// (deploy/compose/), with an empty environment, so a developer's own `.env`
/// or exported variables do not change what is tested.
fn resolved(dot_env: Option<&str>, profiles: &[&str]) -> Value {
    let dir = std::env::temp_dir().join(format!("compose-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("deploy/compose")).unwrap();
    std::fs::copy(
        root().join("docker-compose.yml"),
        dir.join("docker-compose.yml"),
    )
    .unwrap();
    for entry in std::fs::read_dir(root().join("deploy/compose")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(
            &path,
            dir.join("deploy/compose").join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    if let Some(text) = dot_env {
        std::fs::write(dir.join(".env"), text).unwrap();
    }
    let mut cmd = Command::new(testkit::venv_tool("docker-compose"));
    cmd.env_clear()
        .env("HOME", &dir)
        .current_dir(&dir)
        .args(["-f", "docker-compose.yml"]);
    for p in profiles {
        cmd.args(["--profile", p]);
    }
    let out = cmd.args(["config", "--format", "json"]).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "docker-compose config warns: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn compose() -> Value {
    resolved(None, &[])
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    let s = &c["services"][name];
    assert!(s.is_object(), "service {name}");
    s
}

fn env_of(c: &Value, name: &str) -> BTreeMap<String, String> {
    service(c, name)["environment"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has an environment"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
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

fn port_of(c: &Value, service_name: &str, var: &str) -> u16 {
    host_port(&env_of(c, service_name)[var]).1.unwrap()
}

/// The lines of deploy/production.env.example under `# --- <heading>` up to
/// the next heading, as `KEY=value` pairs.
fn production_block(heading: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root().join("deploy/production.env.example")).unwrap();
    let start = text
        .find(&format!("# --- {heading} ---"))
        .unwrap_or_else(|| panic!("a '# --- {heading} ---' block"));
    let block = text[start..].split_once('\n').unwrap().1;
    let block = block.split("\n# --- ").next().unwrap();
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn a_real_compose_accepts_the_file_with_and_without_the_observability_profile() {
    // `resolved` fails on an error or any warning.
    let dev = compose();
    let names = |c: &Value| -> BTreeSet<String> {
        c["services"].as_object().unwrap().keys().cloned().collect()
    };
    let all = resolved(None, &["observability"]);
    let extra: Vec<String> = names(&all).difference(&names(&dev)).cloned().collect();
    assert_eq!(
        extra,
        ["grafana", "prometheus"],
        "the profile adds Prometheus and Grafana, nothing else, and only when asked"
    );
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
        "ACCOUNT_ADMIN_BIND",
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

/// The files secrets-init writes, as (volume, path inside the volume).
fn generated_secrets(c: &Value) -> BTreeSet<(String, String)> {
    let init = service(c, "secrets-init");
    let script = init["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = BTreeSet::new();
    for written in script.split("> ").skip(1) {
        let path = written.split_whitespace().next().unwrap();
        let (volume, rel) = volume_path(init, path).unwrap_or_else(|| {
            panic!("secrets-init writes {path}, which is in none of its volumes")
        });
        out.insert((volume, rel));
    }
    assert!(!out.is_empty(), "secrets-init writes secrets: {script}");
    out
}

/// The named volume and the path inside it that `path` of `svc` lands in.
fn volume_path(svc: &Value, path: &str) -> Option<(String, String)> {
    svc["volumes"].as_array()?.iter().find_map(|m| {
        let target = m["target"].as_str()?;
        let rel = path.strip_prefix(target)?.strip_prefix('/')?;
        (m["type"] == "volume").then(|| (m["source"].as_str().unwrap().to_owned(), rel.to_owned()))
    })
}

#[test]
fn urls_name_compose_services_and_secret_files_are_produced() {
    let c = compose();
    let services: Vec<String> = c["services"].as_object().unwrap().keys().cloned().collect();
    let generated = generated_secrets(&c);
    for name in ["account", "mailer", "postgres"] {
        for (key, value) in &env_of(&c, name) {
            if key.ends_with("_URL") && key != "ACCOUNT_PUBLIC_URL" {
                let (host, _) = host_port(value);
                assert!(
                    services.contains(&host),
                    "{name}: {key} points at {host:?}, not a compose service"
                );
            }
            if key.ends_with("_FILE") {
                let (volume, rel) = volume_path(service(&c, name), value)
                    .unwrap_or_else(|| panic!("{name}: {key}={value} is in none of its volumes"));
                assert!(
                    generated.contains(&(volume.clone(), rel.clone())),
                    "{name}: {key} reads {rel} of volume {volume}, which secrets-init never writes"
                );
            }
        }
    }
    // The account connects as the user PostgreSQL creates.
    let pg = env_of(&c, "postgres");
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
fn each_service_mounts_only_its_own_secrets_read_only() {
    let c = compose();
    let generated = generated_secrets(&c);
    let secret_volumes: BTreeSet<&str> = generated.iter().map(|(v, _)| v.as_str()).collect();
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, svc) in c["services"].as_object().unwrap() {
        if name == "secrets-init" {
            continue;
        }
        for m in svc["volumes"].as_array().into_iter().flatten() {
            let source = m["source"].as_str().unwrap_or_default();
            if m["type"] == "volume" && secret_volumes.contains(source) {
                assert_eq!(m["read_only"], true, "{name} mounts {source} read-only");
                let files = generated
                    .iter()
                    .filter(|(v, _)| v == source)
                    .map(|(_, f)| f.clone());
                seen.entry(name.clone()).or_default().extend(files);
            }
        }
    }
    let want: BTreeMap<String, BTreeSet<String>> = [
        ("account", vec!["postgres_password", "token_keys"]),
        ("postgres", vec!["postgres_password"]),
    ]
    .into_iter()
    .map(|(s, f)| (s.to_owned(), f.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        seen, want,
        "the token keys reach only the account, the database password only PostgreSQL and the account"
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
        // Readiness, not liveness: depends_on waits for this.
        let health: Vec<&str> = service(&c, name)["healthcheck"]["test"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            health,
            [
                "CMD",
                "curl",
                "-fsS",
                &format!("http://127.0.0.1:{port}/readyz")
            ],
            "{name} health check"
        );
        for p in service(&c, name)["ports"].as_array().into_iter().flatten() {
            assert_eq!(
                p["target"].as_u64(),
                Some(u64::from(port)),
                "{name} publishes {p}, not its bind port {port}"
            );
        }
    }
    // The admin listener (metrics) stays on the compose network.
    let admin = port_of(&c, "account", "ACCOUNT_ADMIN_BIND");
    assert_eq!(
        host_port(&env_of(&c, "account")["ACCOUNT_ADMIN_BIND"]).0,
        "0.0.0.0"
    );
    for p in service(&c, "account")["ports"].as_array().unwrap() {
        assert_ne!(
            p["target"].as_u64(),
            Some(u64::from(admin)),
            "admin port published"
        );
    }

    // Only what a developer opens is published, and only on localhost.
    for profiles in [&[][..], &["observability"][..]] {
        let c = resolved(None, profiles);
        let mut published = BTreeSet::new();
        for (name, svc) in c["services"].as_object().unwrap() {
            for p in svc["ports"].as_array().into_iter().flatten() {
                published.insert(name.as_str());
                assert_eq!(
                    p["host_ip"], "127.0.0.1",
                    "{name} publishes {p} beyond localhost by default"
                );
            }
        }
        let mut want = BTreeSet::from(["account", "mailpit", "rabbitmq"]);
        if !profiles.is_empty() {
            want.extend(["prometheus", "grafana"]);
        }
        assert_eq!(published, want);
    }
    // One variable opens the account (and nothing else) to the network.
    let open = resolved(Some("SIGNUP_ACCOUNT_HOST_IP=0.0.0.0\n"), &[]);
    for (name, svc) in open["services"].as_object().unwrap() {
        for p in svc["ports"].as_array().into_iter().flatten() {
            let want = if name == "account" {
                "0.0.0.0"
            } else {
                "127.0.0.1"
            };
            assert_eq!(p["host_ip"], want, "{name}: {p}");
        }
    }
}

#[test]
fn every_health_check_is_in_exec_form() {
    let c = resolved(None, &["observability"]);
    let mut checked = 0;
    for (name, svc) in c["services"].as_object().unwrap() {
        let Some(test) = svc["healthcheck"]["test"].as_array() else {
            continue;
        };
        assert_eq!(
            test.first().and_then(Value::as_str),
            Some("CMD"),
            "{name}: {test:?} runs through a shell"
        );
        checked += 1;
    }
    assert_eq!(checked, 7, "every long-running service has a health check");
}

#[test]
fn rabbitmq_keeps_its_node_name_across_recreation() {
    let c = compose();
    let rabbit = service(&c, "rabbitmq");
    let hostname = rabbit["hostname"].as_str().expect("a fixed hostname");
    assert!(!hostname.is_empty());
    // Its data (named after rabbit@<hostname>) is on a named volume.
    let data = rabbit["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["target"] == "/var/lib/rabbitmq")
        .expect("data on a volume");
    assert_eq!(data["type"], "volume");
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
                    service(&c, dep)["healthcheck"]["test"].is_array(),
                    "{dep} has a health check"
                );
            }
        }
    }
    for volume in ["pgdata", "rabbitmq", "db-password", "token-keys"] {
        assert!(
            c["volumes"].as_object().unwrap().contains_key(volume),
            "named volume {volume}"
        );
    }
}

/// Real SMTP without editing docker-compose.yml: the SMTP block of the
/// production example, copied into `.env`, plus the host file of the password.
#[test]
fn real_smtp_comes_from_the_production_example_in_dot_env() {
    let dev = env_of(&compose(), "mailer");
    assert_eq!(
        dev["MAILER_SMTP_URL"], "smtp://mailpit:1025",
        "Mailpit by default"
    );
    assert!(!dev.contains_key("MAILER_SMTP_PASSWORD_FILE"));

    let smtp = production_block("mailer: SMTP (Naver)");
    assert!(smtp["MAILER_SMTP_URL"].contains("smtp.naver.com:587?tls=required"));
    let mut dot_env: String = smtp.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    dot_env.push_str("SMTP_PASSWORD_HOST_FILE=./secrets/naver_app_password\n");
    let c = resolved(Some(&dot_env), &[]);
    let mailer = env_of(&c, "mailer");
    for (k, v) in &smtp {
        assert_eq!(mailer.get(k), Some(v), "{k} from .env reaches the mailer");
    }
    // The compose network's own settings still win.
    assert_eq!(mailer["MAILER_AMQP_URL"], dev["MAILER_AMQP_URL"]);
    check_vars("MAILER_", &mailer, &mailer_vars());
    // The password file the example names is the secret compose mounts,
    // taken from the host file .env names.
    let file = &smtp["MAILER_SMTP_PASSWORD_FILE"];
    let secret = service(&c, "mailer")["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            let t = s["target"].as_str().unwrap();
            let t = if t.starts_with('/') {
                t.to_owned()
            } else {
                format!("/run/secrets/{t}")
            };
            &t == file
        })
        .unwrap_or_else(|| panic!("no secret mounted at {file}"));
    let source = secret["source"].as_str().unwrap();
    let host_file = c["secrets"][source]["file"].as_str().unwrap();
    assert!(
        host_file.ends_with("/secrets/naver_app_password"),
        "{host_file}"
    );
    // Without .env the secret is the empty placeholder, which exists.
    let placeholder = compose()["secrets"][source]["file"]
        .as_str()
        .unwrap()
        .to_owned();
    let rel = placeholder.split("/deploy/compose/").nth(1).unwrap();
    assert!(root().join("deploy/compose").join(rel).is_file());
    // The settings parse as the mailer would read them (files aside).
    let plain = mailer
        .iter()
        .filter(|(k, _)| !k.ends_with("_FILE"))
        .map(|(k, v)| (k.clone(), v.clone()));
    mailer::config::Settings::from_vars(plain).expect("mailer settings parse");
    // The password and .env never enter an image's build context.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for path in [".env", "secrets/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == path),
            ".dockerignore: {path}"
        );
    }
}

/// The bind mounts of `svc` as (path in the repository, target), from the
/// resolved (absolute, in a scratch copy) sources.
fn bind_mounts(svc: &Value) -> Vec<(PathBuf, String)> {
    svc["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["type"] == "bind")
        .map(|m| {
            let source = m["source"].as_str().unwrap();
            let rel = source
                .split_once("/deploy/")
                .map(|(_, r)| format!("deploy/{r}"))
                .unwrap_or_else(|| panic!("bind mount {source} outside deploy/"));
            (root().join(rel), m["target"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn yaml_file(path: &std::path::Path) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_observability_profile_scrapes_the_services_and_mounts_the_bundle() {
    let c = resolved(None, &["observability"]);
    // Prometheus reads the bundle's configuration where its command says,
    // and the rules where that configuration says (relative to itself).
    let prometheus = service(&c, "prometheus");
    let mounts = bind_mounts(prometheus);
    let config_target = prometheus["command"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix("--config.file="))
        .expect("--config.file");
    let (config, _) = mounts
        .iter()
        .find(|(_, t)| t == config_target)
        .unwrap_or_else(|| panic!("nothing mounted at {config_target}"));
    assert_eq!(*config, root().join("deploy/observability/prometheus.yml"));
    let cfg = yaml_file(config);
    let config_dir = std::path::Path::new(config_target).parent().unwrap();
    for pattern in cfg["rule_files"].as_sequence().unwrap() {
        let dir = config_dir.join(pattern.as_str().unwrap());
        let dir = dir.parent().unwrap().to_str().unwrap();
        let (source, _) = mounts
            .iter()
            .find(|(_, t)| t == dir)
            .unwrap_or_else(|| panic!("rules {dir} not mounted"));
        assert!(source.join("signup.yml").is_file(), "{}", source.display());
    }
    // It scrapes the account's admin listener and the mailer's port, by the
    // compose service names.
    let targets: BTreeMap<String, String> = cfg["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["job_name"].as_str().unwrap().to_owned(),
                j["static_configs"][0]["targets"][0]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    let want = BTreeMap::from([
        (
            "account".to_owned(),
            format!("account:{}", port_of(&c, "account", "ACCOUNT_ADMIN_BIND")),
        ),
        (
            "mailer".to_owned(),
            format!("mailer:{}", port_of(&c, "mailer", "MAILER_BIND")),
        ),
    ]);
    assert_eq!(targets, want);
    assert_ne!(
        port_of(&c, "account", "ACCOUNT_ADMIN_BIND"),
        port_of(&c, "account", "ACCOUNT_BIND"),
        "metrics are scraped from the admin listener, not the public port"
    );

    // Grafana gets the provisioning (data source = the prometheus service)
    // and the dashboards where the provider looks for them.
    let grafana = service(&c, "grafana");
    let mounts = bind_mounts(grafana);
    let (provisioning, _) = mounts
        .iter()
        .find(|(_, t)| t == "/etc/grafana/provisioning")
        .expect("provisioning mounted");
    let ds = yaml_file(&provisioning.join("datasources/prometheus.yml"));
    let url = ds["datasources"][0]["url"].as_str().unwrap();
    assert_eq!(host_port(url), ("prometheus".to_owned(), Some(9090)));
    let provider = yaml_file(&provisioning.join("dashboards/signup.yml"));
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let (dashboards, _) = mounts
        .iter()
        .find(|(_, t)| t == path)
        .unwrap_or_else(|| panic!("nothing mounted at the provider's {path}"));
    assert!(dashboards.join("signup.json").is_file());
}

fn dockerfile() -> String {
    std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap()
}

fn stage(d: &str, target: &str) -> String {
    let stage = d
        .split(&format!(" AS {target}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("stage {target}"));
    stage.split("\nFROM ").next().unwrap().to_owned()
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfile() {
    let out = Command::new(testkit::venv_tool("hadolint"))
        .args(["--no-color", "--failure-threshold", "info"])
        .arg(root().join("deploy/Dockerfile"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.trim().is_empty(),
        "hadolint: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dockerfile_builds_locked_and_runs_unprivileged() {
    let d = dockerfile();
    assert!(
        d.contains("cargo chef cook --release --locked"),
        "dependency layer"
    );
    assert!(d.contains("cargo build --release --locked -p account -p mailer"));
    let c = compose();
    for (target, bind) in [("account", "ACCOUNT_BIND"), ("mailer", "MAILER_BIND")] {
        let stage = stage(&d, target);
        assert!(
            stage.contains("USER 10001"),
            "{target} runs as a non-root user"
        );
        assert!(stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{target}\"]")));
        assert_eq!(
            service(&c, target)["build"]["target"].as_str(),
            Some(target)
        );
        // The image's own health check: exec form, readiness, its bind port.
        let port = host_port(
            stage
                .lines()
                .find_map(|l| {
                    l.strip_prefix("ENV ")?
                        .split(' ')
                        .find_map(|kv| kv.strip_prefix(&format!("{bind}=")))
                })
                .unwrap_or_else(|| panic!("{target} sets {bind}")),
        )
        .1
        .unwrap();
        let health = stage
            .lines()
            .find(|l| l.starts_with("HEALTHCHECK "))
            .unwrap_or_else(|| panic!("{target} has a HEALTHCHECK"));
        assert!(
            health.ends_with(&format!(
                "CMD [\"curl\", \"-fsS\", \"http://127.0.0.1:{port}/readyz\"]"
            )),
            "{target}: {health}"
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
    let d = dockerfile();
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

#[test]
fn every_example_allow_list_lets_the_account_service_send_all_its_mail() {
    use shared::envelope::*;
    // Every template the account service publishes (services/account/src/mails.rs).
    let sent = [
        TEMPLATE_VERIFY_EMAIL,
        TEMPLATE_ACCOUNT_EXISTS,
        TEMPLATE_RESET_PASSWORD,
        TEMPLATE_PASSWORD_CHANGED,
        TEMPLATE_ACCOUNT_DELETED,
        TEMPLATE_CONFIRM_EMAIL_CHANGE,
        TEMPLATE_EMAIL_CHANGED,
    ];
    let mails = std::fs::read_to_string(root().join("services/account/src/mails.rs")).unwrap();
    let used = mails.matches("TEMPLATE_").count();
    assert!(used >= 2 * sent.len(), "a template the list above lacks?");
    for file in ["deploy/production.env.example", "docs/operations.md"] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let lists: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once("MAILER_SOURCES=")?.1.split_whitespace().next())
            .collect();
        assert!(!lists.is_empty(), "{file} shows MAILER_SOURCES");
        for list in lists {
            let list = list.trim_matches('\'');
            let account = list
                .split(';')
                .find_map(|e| e.strip_prefix("account="))
                .unwrap_or_else(|| panic!("{file}: no account= entry in {list}"));
            let allowed: Vec<&str> = account.split(',').collect();
            for t in sent {
                assert!(
                    allowed.contains(&t),
                    "{file}: MAILER_SOURCES leaves out {t}, which the account service sends; \
                     copying it would dead-letter that mail"
                );
            }
        }
    }
}
