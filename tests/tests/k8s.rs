//! The Kubernetes base in deploy/k8s/, rendered by a real kustomize (kubectl's
//! built-in one) and validated against the Kubernetes API schemas by a real
//! validator (kubernetes-validate, strict: unknown fields fail), then held
//! against the code: every variable set is one the service reads, secrets
//! arrive as files from the Secrets deploy/README.md tells you to create,
//! probes hit the ports the services bind, memory requests cover the
//! measured figures, and everything runs unprivileged on a read-only root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde_yaml_ng::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn base() -> PathBuf {
    root().join("deploy/k8s")
}

/// The Kubernetes versions the base is validated against: an old one still
/// in service and the newest the validator knows.
const KUBERNETES: &[&str] = &["1.30.0", "1.37.0"];

/// `kubectl kustomize deploy/k8s`: the manifests as `kubectl apply -k` sends them.
fn rendered_text() -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(base())
        .output()
        .expect("kubectl runs (scripts/test installs it when missing)");
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn rendered() -> Vec<Value> {
    // kustomize writes one document per resource, separated by `---` lines.
    rendered_text()
        .split("\n---\n")
        .map(|doc| serde_yaml_ng::from_str::<Value>(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("a string: {v:?}"))
}

#[test]
fn the_kustomization_lists_every_file_in_the_folder() {
    let k: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(base().join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let listed: BTreeSet<String> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| str_of(r).to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(base())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "a file kustomize would not apply, or a missing one"
    );
}

#[test]
fn the_rendered_base_validates_against_the_kubernetes_schemas() {
    let file = std::env::temp_dir().join(format!("k8s-{}.yaml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, rendered_text()).unwrap();
    for version in KUBERNETES {
        let out = Command::new(testkit::venv_tool("kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", version])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate {version}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_file(&file);
    let kinds: BTreeMap<String, usize> = rendered().iter().fold(BTreeMap::new(), |mut m, d| {
        *m.entry(str_of(&d["kind"]).to_owned()).or_default() += 1;
        m
    });
    let want = BTreeMap::from(
        [
            ("ConfigMap", 2),
            ("Deployment", 2),
            ("Job", 1),
            ("PodDisruptionBudget", 2),
            ("Service", 3),
        ]
        .map(|(k, n)| (k.to_owned(), n)),
    );
    assert_eq!(kinds, want);
}

/// The Secrets and their keys that deploy/README.md creates.
fn documented_secrets() -> BTreeMap<String, BTreeSet<String>> {
    let readme = std::fs::read_to_string(root().join("deploy/README.md")).unwrap();
    let mut out = BTreeMap::new();
    for cmd in readme.split("kubectl create secret generic ").skip(1) {
        let cmd: String = cmd
            .lines()
            .scan(true, |more, line| {
                let take = *more;
                *more = line.trim_end().ends_with('\\');
                take.then_some(line)
            })
            .collect::<Vec<_>>()
            .join(" ");
        let name = cmd.split_whitespace().next().unwrap().to_owned();
        let keys = cmd
            .split("--from-file=")
            .skip(1)
            .map(|rest| rest.split('=').next().unwrap().to_owned())
            .collect();
        out.insert(name, keys);
    }
    out
}

fn env_vars(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                str_of(&e["name"]).to_owned(),
                str_of(&e["value"]).to_owned(),
            )
        })
        .collect()
}

fn config_map(docs: &[Value], pod: &Value) -> BTreeMap<String, String> {
    let container = &pod["containers"][0];
    let name = str_of(&container["envFrom"][0]["configMapRef"]["name"]);
    find(docs, "ConfigMap", name)["data"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (str_of(k).to_owned(), str_of(v).to_owned()))
        .collect()
}

/// Memory quantities in MiB (`96Mi`, `1Gi`).
fn mib(q: &str) -> u64 {
    if let Some(n) = q.strip_suffix("Mi") {
        n.parse().unwrap()
    } else if let Some(n) = q.strip_suffix("Gi") {
        n.parse::<u64>().unwrap() * 1024
    } else {
        panic!("memory in Mi or Gi: {q}")
    }
}

fn port_of(bind: &str) -> u64 {
    bind.rsplit(':').next().unwrap().parse().unwrap()
}

/// What one pod (a Deployment's or the Job's) must do: run unprivileged on a
/// read-only root, take the service's variables only, secrets as files from
/// mounted keys of the documented Secret.
fn check_pod(docs: &[Value], what: &str, pod: &Value, prefix: &str) {
    let sc = &pod["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{what}");
    assert_ne!(sc["runAsUser"].as_u64(), Some(0), "{what}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
    assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
    assert_eq!(
        pod["enableServiceLinks"], false,
        "{what}: no {prefix}SERVICE_HOST noise"
    );
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1, "{what}");
    let c = &containers[0];
    let csc = &c["securityContext"];
    assert_eq!(csc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(csc["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(csc["capabilities"]["drop"][0], "ALL", "{what}");
    let requests = mib(str_of(&c["resources"]["requests"]["memory"]));
    let limit = mib(str_of(&c["resources"]["limits"]["memory"]));
    assert!(requests <= limit, "{what}: request above limit");

    let known = match prefix {
        "ACCOUNT_" => shared::config::variables::<account::config::Cli>(),
        _ => shared::config::variables::<mailer::config::Cli>(),
    };
    let config = config_map(docs, pod);
    for key in config.keys() {
        let var = known.iter().find(|v| &v.name == key);
        let var = var.unwrap_or_else(|| panic!("{what}: {key} is not read by the service"));
        assert!(
            !var.secret,
            "{what}: secret {key} in a ConfigMap; give it as a file"
        );
    }
    // The settings parse as the service reads them (files aside).
    let vars = config.clone().into_iter();
    match prefix {
        "ACCOUNT_" => drop(account::config::Settings::from_vars(vars).expect("account settings")),
        _ => drop(mailer::config::Settings::from_vars(vars).expect("mailer settings")),
    }

    let documented = documented_secrets();
    let volumes = pod["volumes"].as_sequence().unwrap();
    for (key, path) in env_vars(c) {
        let base = key
            .strip_suffix("_FILE")
            .unwrap_or_else(|| panic!("{what}: {key} set inline; only *_FILE here"));
        assert!(
            known.iter().any(|v| v.secret && v.name == base),
            "{what}: {base} is not a secret of the service"
        );
        let mount = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| path.starts_with(&format!("{}/", str_of(&m["mountPath"]))))
            .unwrap_or_else(|| panic!("{what}: {key}={path} is in no mount"));
        assert_eq!(mount["readOnly"], true, "{what}: secrets read-only");
        let file = &path[str_of(&mount["mountPath"]).len() + 1..];
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
        let secret = &volume["secret"];
        let secret_name = str_of(&secret["secretName"]);
        let keys = documented
            .get(secret_name)
            .unwrap_or_else(|| panic!("{what}: deploy/README.md never creates {secret_name}"));
        let key_of_file = match secret["items"].as_sequence() {
            Some(items) => items
                .iter()
                .find(|i| i["path"] == file)
                .map(|i| str_of(&i["key"]).to_owned())
                .unwrap_or_else(|| panic!("{what}: {file} not among the mounted items")),
            None => file.to_owned(),
        };
        assert!(
            keys.contains(&key_of_file),
            "{what}: {key} reads key {key_of_file} of {secret_name}, which deploy/README.md does not create"
        );
    }
}

fn deployment_pod<'a>(docs: &'a [Value], name: &str) -> (&'a Value, &'a Value) {
    let d = find(docs, "Deployment", name);
    (d, &d["spec"]["template"]["spec"])
}

fn container_port(pod: &Value, port: &Value) -> u64 {
    let ports = pod["containers"][0]["ports"].as_sequence().unwrap();
    match port.as_str() {
        Some(name) => ports
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}")),
        None => port.as_u64().unwrap(),
    }
}

#[test]
fn deployments_run_replicas_with_probes_on_the_bound_ports_and_measured_memory() {
    let docs = rendered();
    for (name, prefix, bind, min_mib) in [
        ("account", "ACCOUNT_", "ACCOUNT_BIND", None),
        ("mailer", "MAILER_", "MAILER_BIND", Some(28)),
    ] {
        let (d, pod) = deployment_pod(&docs, name);
        assert!(
            d["spec"]["replicas"].as_u64().unwrap() >= 2,
            "{name}: N > 1"
        );
        check_pod(&docs, name, pod, prefix);
        let config = config_map(&docs, pod);
        let port = port_of(&config[bind]);
        let c = &pod["containers"][0];
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{name} {probe}");
            assert_eq!(
                container_port(pod, &get["port"]),
                port,
                "{name} {probe} on {bind}"
            );
        }
        // Memory: docs/benchmarks.md. The account: about 27 MiB of process
        // plus 19 MiB per hashing thread (measured 64.7 MiB with two).
        let min_mib = min_mib.unwrap_or_else(|| {
            let threads: u64 = config
                .get("ACCOUNT_HASH_CONCURRENCY")
                .expect("hashing threads fixed, not the node's core count")
                .parse()
                .unwrap();
            27 + 19 * threads
        });
        let requests = mib(str_of(&c["resources"]["requests"]["memory"]));
        assert!(
            requests >= min_mib,
            "{name}: requests {requests} MiB, measured peak {min_mib} MiB"
        );
        // Pod labels select it for its Service and budget.
        let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
        assert_eq!(d["spec"]["selector"]["matchLabels"], *pod_labels, "{name}");
        let pdb = find(&docs, "PodDisruptionBudget", name);
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"], *pod_labels,
            "{name} budget"
        );
        if let Some(min) = pdb["spec"]["minAvailable"].as_u64() {
            assert!(
                min < d["spec"]["replicas"].as_u64().unwrap(),
                "{name}: a drain can proceed"
            );
        }
    }
    // The mailer can write only where it must: its mail folder, an emptyDir.
    let (_, pod) = deployment_pod(&docs, "mailer");
    let dir = &config_map(&docs, pod)["MAILER_MAIL_DIR"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir.as_str())
        .expect("a volume at MAILER_MAIL_DIR");
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(volume["emptyDir"].is_mapping(), "an emptyDir");
}

#[test]
fn services_expose_the_public_port_and_keep_metrics_internal() {
    let docs = rendered();
    let (account, account_pod) = deployment_pod(&docs, "account");
    let (mailer, mailer_pod) = deployment_pod(&docs, "mailer");
    let account_config = config_map(&docs, account_pod);
    let ports = |name: &str| -> Vec<(u64, u64)> {
        let s = find(&docs, "Service", name);
        assert_eq!(
            s["spec"]["type"], "ClusterIP",
            "{name}: no node port, no load balancer"
        );
        let pod = if name.starts_with("account") {
            account_pod
        } else {
            mailer_pod
        };
        let d = if name.starts_with("account") {
            account
        } else {
            mailer
        };
        assert_eq!(
            s["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"],
            "{name} selects its pods"
        );
        s["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["port"].as_u64().unwrap(),
                    container_port(pod, &p["targetPort"]),
                )
            })
            .collect()
    };
    let public = port_of(&account_config["ACCOUNT_BIND"]);
    let admin = port_of(&account_config["ACCOUNT_ADMIN_BIND"]);
    assert_ne!(public, admin);
    assert_eq!(
        ports("account"),
        [(8080, public)],
        "the public Service: the public port only"
    );
    assert_eq!(
        ports("account-admin"),
        [(8081, admin)],
        "metrics on the admin listener"
    );
    let mailer_bind = port_of(&config_map(&docs, mailer_pod)["MAILER_BIND"]);
    assert_eq!(ports("mailer"), [(9090, mailer_bind)]);
}

#[test]
fn the_migrate_job_runs_account_migrate_with_the_database_url_only() {
    let docs = rendered();
    let job = find(&docs, "Job", "account-migrate");
    let pod = &job["spec"]["template"]["spec"];
    check_pod(&docs, "account-migrate", pod, "ACCOUNT_");
    let c = &pod["containers"][0];
    assert_eq!(c["args"].as_sequence().unwrap().len(), 1);
    assert_eq!(c["args"][0], "migrate");
    assert!(matches!(
        pod["restartPolicy"].as_str(),
        Some("OnFailure" | "Never")
    ));
    let (_, account_pod) = deployment_pod(&docs, "account");
    assert_eq!(
        c["image"], account_pod["containers"][0]["image"],
        "the same release"
    );
    let vars: Vec<String> = env_vars(c).into_keys().collect();
    assert_eq!(vars, ["ACCOUNT_DATABASE_URL_FILE"]);
}

#[test]
fn the_deploy_readme_shows_how_to_apply_it() {
    let readme = std::fs::read_to_string(root().join("deploy/README.md")).unwrap();
    assert!(readme.contains("kubectl apply -k deploy/k8s"));
    assert!(readme.contains("--profile observability"));
    let secrets = documented_secrets();
    assert_eq!(
        secrets.keys().collect::<Vec<_>>(),
        ["account-secrets", "mailer-secrets"]
    );
}
