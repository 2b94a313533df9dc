//! The observability bundle in deploy/observability/ against real tools and
//! the real services: promtool checks the Prometheus configuration and the
//! alert rules and runs their unit tests (each alert fires on what it is
//! meant for and stays quiet otherwise), the dashboard's queries parse as
//! PromQL, and every metric name the rules, the dashboard and
//! docs/operations.md use is one the running services export.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use shared::Topology;
use tokio::process::Child;
use uuid::Uuid;

use testkit::{PG, Teardown, free_port, root, service_binary};

fn bundle() -> PathBuf {
    root().join("deploy/observability")
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs (scripts/test installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

fn yaml(path: &Path) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every rule file, as (file name, parsed).
fn rule_files() -> Vec<(String, serde_yaml_ng::Value)> {
    let mut files: Vec<_> = std::fs::read_dir(bundle().join("rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "rule files in deploy/observability/rules"
    );
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_str().unwrap().to_owned(),
                yaml(&p),
            )
        })
        .collect()
}

/// Alert name → expression, over every rule file.
fn alerts() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (_, file) in rule_files() {
        for group in file["groups"].as_sequence().unwrap() {
            for rule in group["rules"].as_sequence().unwrap() {
                if let Some(name) = rule["alert"].as_str() {
                    let expr = rule["expr"].as_str().unwrap().to_owned();
                    assert!(out.insert(name.to_owned(), expr).is_none(), "{name} twice");
                }
            }
        }
    }
    out
}

fn dashboard() -> Value {
    let path = bundle().join("grafana/dashboards/signup.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// (panel title, query) for every query of the dashboard.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    panels(d)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_owned()))
        })
        .collect()
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
];
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers that are not
/// functions, aggregations, keywords, label names (in `{}` or after `by`),
/// durations, numbers, strings or Grafana variables (`$__rate_interval`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_to = |mut i: usize, close: char| {
        while i < chars.len() && chars[i] != close {
            if matches!(chars[i], '"' | '\'' | '`') {
                let q = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != q {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            i += 1;
            while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if call {
                    i = skip_to(next + 1, ')');
                }
            } else if !call
                && !AGGREGATIONS.contains(&word.as_str())
                && !KEYWORDS.contains(&word.to_lowercase().as_str())
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_metric_name_scanner_finds_selectors_only() {
    let got = metric_names(
        r#"sum by (job, le) (rate(a_seconds_bucket{route="/x", le!="{}"}[5m] offset 10m))
           / on (job) group_left (x) max without (instance) (b_total) > bool 0.5
           or histogram_quantile(0.99, c:rec[$__rate_interval]) and up == 1e3"#,
    );
    let want: BTreeSet<String> = ["a_seconds_bucket", "b_total", "c:rec", "up"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn promtool_accepts_the_configuration_and_the_rules() {
    let out = promtool(&["check", "config", "prometheus.yml"], &bundle());
    // The configuration loads the rules by a path relative to itself, which
    // is where compose mounts them: the check reads them through it.
    assert!(out.contains("rules/signup.yml"), "{out}");
    for (name, _) in rule_files() {
        promtool(&["check", "rules", &format!("rules/{name}")], &bundle());
    }
}

#[test]
fn every_alert_is_unit_tested_firing_and_quiet() {
    let alerts = alerts();
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(bundle().join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let out = promtool(&["test", "rules", &format!("tests/{name}")], &bundle());
        assert!(out.contains("SUCCESS"), "{out}");
        let spec = yaml(file);
        for test in spec["tests"].as_sequence().unwrap() {
            for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
                let alert = case["alertname"].as_str().unwrap().to_owned();
                assert!(alerts.contains_key(&alert), "{name} tests unknown {alert}");
                let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
                if expected > 0 {
                    firing.insert(alert);
                } else {
                    quiet.insert(alert);
                }
            }
        }
    }
    for alert in alerts.keys() {
        assert!(firing.contains(alert), "no test where {alert} fires");
        assert!(quiet.contains(alert), "no test where {alert} stays quiet");
    }
}

#[test]
fn the_dashboard_queries_parse_and_cover_what_operators_watch() {
    let d = dashboard();
    let queries = dashboard_queries(&d);
    // promtool parses each query as PromQL (Grafana's range variables set to
    // a fixed window), as recording rules in a scratch file.
    let dir = std::env::temp_dir().join(format!("dashboard-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules: Vec<serde_yaml_ng::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, q))| {
            let q = q
                .replace("$__rate_interval", "5m")
                .replace("$__range", "6h");
            serde_yaml_ng::to_value(BTreeMap::from([
                ("record".to_owned(), format!("dashboard:query_{i}")),
                ("expr".to_owned(), q),
            ]))
            .unwrap()
        })
        .collect();
    let file =
        serde_yaml_ng::to_string(&json!({"groups": [{"name": "dashboard", "rules": rules}]}))
            .unwrap();
    std::fs::write(dir.join("dashboard.yml"), file).unwrap();
    let checked = Command::new("promtool")
        .args(["check", "rules", "dashboard.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        checked.status.success(),
        "a dashboard query is not PromQL: {}",
        String::from_utf8_lossy(&checked.stdout)
    );

    // Every panel reads the data source compose provisions, panel ids are unique.
    let provisioned = yaml(&bundle().join("grafana/provisioning/datasources/prometheus.yml"));
    let uid = provisioned["datasources"][0]["uid"].as_str().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id twice");
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], uid, "{}", p["title"]);
        }
    }
    let used: BTreeSet<String> = queries.iter().flat_map(|(_, q)| metric_names(q)).collect();
    for name in [
        "account_signups_total",
        "account_verifications_total",
        "account_logins_total",
        "account_outbox_backlog",
        "account_outbox_publish_latency_seconds_bucket",
        "account_outbox_published_total",
        "mailer_messages_total",
        "mailer_smtp_seconds_bucket",
        "http_request_duration_seconds_bucket",
    ] {
        assert!(used.contains(name), "the dashboard shows {name}");
    }
    let mails = queries
        .iter()
        .any(|(_, q)| q.contains("sum by (template, outcome) (rate(mailer_messages_total"));
    assert!(mails, "mails by template and outcome");
    let http = queries
        .iter()
        .any(|(_, q)| q.contains("by (route, le) (rate(http_request_duration_seconds_bucket"));
    assert!(http, "HTTP latency by route");
}

/// Names used by queries that no service exports, and why.
const NOT_EXPORTED: &[(&str, &str)] = &[(
    "up",
    "Prometheus' own per-target series: 0 when a scrape fails",
)];

/// The metric names docs/operations.md tells operators to watch.
fn documented_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let section = text
        .split("## Metrics to alert on")
        .nth(1)
        .expect("docs/operations.md has the metrics section");
    let section = section.split("\n## ").next().unwrap();
    section
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|code| code.split('{').next().unwrap().trim().to_owned())
        .filter(|n| {
            ["account_", "mailer_", "http_"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect()
}

/// The service processes, their database and broker prefix; removed on drop.
struct Services {
    account_public: String,
    account_admin: String,
    mailer: String,
    mail_dir: PathBuf,
    _procs: Vec<Child>,
    _teardown: Teardown,
}

async fn wait_ok(url: &str) {
    let ok = testkit::wait_ok(&reqwest::Client::new(), url, Duration::from_secs(60)).await;
    assert!(ok, "{url} never answered 200");
}

impl Services {
    async fn start() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("observability-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let topology = Topology::new(&format!("test-{id}")).unwrap();
        let db = format!("test_obs_{id}");
        let teardown = Teardown {
            dir: Some(dir.clone()),
            database: Some(db.clone()),
            topology: Some(topology.clone()),
            retry_delays: mailer::config::DEFAULT_RETRY_DELAYS.to_vec(),
        };
        let log = || {
            if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            }
        };
        let mail_dir = dir.join("mail");
        let mailer_port = free_port();
        let mailer = tokio::process::Command::new(service_binary("mailer"))
            .env_clear()
            .env("MAILER_BIND", format!("127.0.0.1:{mailer_port}"))
            .env("MAILER_AMQP_PREFIX", topology.prefix())
            .env("MAILER_MAIL_DIR", &mail_dir)
            .stderr(log())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mailer = (format!("http://127.0.0.1:{mailer_port}"), mailer);
        wait_ok(&format!("{}/readyz", mailer.0)).await;

        let (public, admin) = (free_port(), free_port());
        let account = tokio::process::Command::new(service_binary("account"))
            .env_clear()
            .env("ACCOUNT_BIND", format!("127.0.0.1:{public}"))
            .env("ACCOUNT_ADMIN_BIND", format!("127.0.0.1:{admin}"))
            .env("ACCOUNT_PUBLIC_URL", format!("http://127.0.0.1:{public}"))
            .env("ACCOUNT_DATABASE_URL", format!("{PG}/{db}"))
            .env("ACCOUNT_AMQP_PREFIX", topology.prefix())
            .env("ACCOUNT_COOKIE_SECURE", "false")
            .env("ACCOUNT_RATE_LIMITS", "off")
            .stderr(log())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let account_public = format!("http://127.0.0.1:{public}");
        wait_ok(&format!("{account_public}/readyz")).await;
        Self {
            account_public,
            account_admin: format!("http://127.0.0.1:{admin}"),
            mailer: mailer.0,
            mail_dir,
            _procs: vec![mailer.1, account],
            _teardown: teardown,
        }
    }

    /// The account's metrics, from its admin listener (ACCOUNT_ADMIN_BIND).
    async fn account_metrics(&self) -> String {
        scrape(&format!("{}/metrics", self.account_admin)).await
    }
}

async fn scrape(url: &str) -> String {
    let r = reqwest::get(url).await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.text().await.unwrap()
}

/// Series in Prometheus text format: name → the label sets it has, as text.
fn series(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = match line[end..].strip_prefix('{') {
            Some(rest) => rest.split('}').next().unwrap().to_owned(),
            None => String::new(),
        };
        out.entry(line[..end].to_owned())
            .or_default()
            .insert(labels);
    }
    out
}

fn exported(all: &BTreeMap<String, BTreeSet<String>>, name: &str) -> bool {
    all.contains_key(name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .all(|s| all.contains_key(&format!("{name}{s}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_the_dashboard_and_the_docs_use_is_exported() {
    let services = Services::start().await;

    // Before any sign-up: the build info and the counters the alerts key on
    // exist at zero, so the first event is an increase.
    let account = series(&services.account_metrics().await);
    let mailer = series(&scrape(&format!("{}/metrics", services.mailer)).await);
    let revision = std::env::var("SIGNUP_REVISION").ok().unwrap_or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned())
            .unwrap_or_else(|| "unknown".into())
    });
    for (all, name, version) in [
        (&account, "account_build_info", account::metrics::VERSION),
        (&mailer, "mailer_build_info", mailer::metrics::VERSION),
    ] {
        let labels = all.get(name).unwrap_or_else(|| panic!("{name} at start"));
        let want = format!("revision=\"{revision}\",version=\"{version}\"");
        assert!(
            labels.iter().any(|l| {
                let mut parts: Vec<&str> = l.split(',').collect();
                parts.sort();
                parts.join(",") == want
            }),
            "{name}: {labels:?}, want {want}"
        );
    }
    for (all, name, label) in [
        (&mailer, "mailer_messages_total", "outcome=\"dead\""),
        (&mailer, "mailer_messages_total", "outcome=\"retried\""),
        (&mailer, "mailer_broker_connected", ""),
        (
            &account,
            "account_verifications_total",
            "outcome=\"verified\"",
        ),
        (&account, "account_logins_total", "outcome=\"ok\""),
        (&account, "account_signups_total", "outcome=\"created\""),
        (&account, "account_outbox_published_total", ""),
    ] {
        let sets = all.get(name).unwrap_or_else(|| panic!("{name} at start"));
        assert!(
            sets.iter().any(|l| l.contains(label)),
            "{name}{{{label}}} at start: {sets:?}"
        );
    }
    assert!(
        mailer["mailer_messages_total"]
            .iter()
            .any(|l| l.contains("template=\"verify_email\"") && l.contains("outcome=\"dead\"")),
        "dead letters of verify_email at zero"
    );

    // One sign-up: the histograms and the HTTP series appear with it.
    let email = format!("obs-{}@example.com", Uuid::new_v4().simple());
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/signup", services.account_public))
        .json(&json!({"email": email, "password": "a good long password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let mailed = testkit::wait_until(Duration::from_secs(30), || async {
        std::fs::read_dir(&services.mail_dir)
            .map(|d| d.count() > 0)
            .unwrap_or(false)
    })
    .await;
    assert!(mailed, "the verification mail was written");
    // The mailer counts after its ack; the account's relay after the confirm.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (account, mailer) = loop {
        let account = series(&services.account_metrics().await);
        let mailer = series(&scrape(&format!("{}/metrics", services.mailer)).await);
        if exported(&account, "account_outbox_publish_latency_seconds")
            && exported(&account, "http_request_duration_seconds")
            && exported(&mailer, "mailer_delivery_seconds")
        {
            break (account, mailer);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sign-up's series never appeared: {account:?} {mailer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let all: BTreeMap<String, BTreeSet<String>> = account.into_iter().chain(mailer).collect();

    let mut used: BTreeMap<String, String> = BTreeMap::new();
    for (alert, expr) in alerts() {
        for name in metric_names(&expr) {
            used.entry(name).or_insert(format!("alert {alert}"));
        }
    }
    for (title, expr) in dashboard_queries(&dashboard()) {
        for name in metric_names(&expr) {
            used.entry(name)
                .or_insert(format!("dashboard panel {title:?}"));
        }
    }
    for name in documented_names() {
        used.entry(name).or_insert("docs/operations.md".into());
    }
    assert!(used.len() > 15, "the scan finds the names: {used:?}");
    let skipped: BTreeSet<&str> = NOT_EXPORTED.iter().map(|(n, _)| *n).collect();
    let missing: Vec<String> = used
        .iter()
        .filter(|(name, _)| !skipped.contains(name.as_str()) && !exported(&all, name))
        .map(|(name, by)| format!("{name} (used by {by})"))
        .collect();
    assert!(
        missing.is_empty(),
        "used but not exported by the services: {missing:?}"
    );
}
