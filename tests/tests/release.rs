//! Release hygiene: the declared licence ships as files, release binaries
//! are stripped, both images carry the OCI labels, and cargo-deny (real,
//! offline) accepts every dependency's licence, source and ban; the README
//! tells a newcomer what the test command needs.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `key = "value"` in the `[section]` of the workspace manifest.
fn manifest_value(section: &str, key: &str) -> Option<String> {
    let manifest = read("Cargo.toml");
    let body = manifest.split(&format!("\n[{section}]\n")).nth(1)?;
    let body = body.split("\n[").next().unwrap();
    body.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
    })
}

#[test]
fn the_declared_licences_ship_as_files() {
    let license = manifest_value("workspace.package", "license").unwrap();
    assert_eq!(license, "MIT OR Apache-2.0");
    for id in license.split(" OR ") {
        let (file, must) = match id {
            "MIT" => (
                "LICENSE-MIT",
                &[
                    "MIT License",
                    "Permission is hereby granted, free of charge",
                    "THE SOFTWARE IS PROVIDED \"AS IS\"",
                ][..],
            ),
            "Apache-2.0" => (
                "LICENSE-APACHE",
                &[
                    "Apache License",
                    "Version 2.0, January 2004",
                    "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
                    "END OF TERMS AND CONDITIONS",
                ][..],
            ),
            other => panic!("no licence file known for {other}"),
        };
        let text = read(file);
        for m in must {
            assert!(text.contains(m), "{file} lacks {m:?}");
        }
    }
    // Every crate of the workspace declares the workspace's licence.
    let manifest = read("Cargo.toml");
    let members = manifest.split("members = [").nth(1).unwrap();
    let members = members.split(']').next().unwrap();
    for member in members.split(',').map(|m| m.trim().trim_matches('"')) {
        let crate_manifest = read(&format!("{member}/Cargo.toml"));
        assert!(
            crate_manifest.contains("license.workspace = true"),
            "{member} declares the workspace licence"
        );
    }
}

#[test]
fn release_binaries_are_stripped() {
    assert_eq!(
        manifest_value("profile.release", "strip").as_deref(),
        Some("true")
    );
}

#[test]
fn both_images_carry_the_oci_labels() {
    let d = read("deploy/Dockerfile");
    let license = manifest_value("workspace.package", "license").unwrap();
    // The builder sees the revision build.rs turns into *_build_info.
    let builder = d.split(" AS builder\n").nth(1).unwrap();
    let builder = builder.split("\nFROM ").next().unwrap();
    let arg = builder
        .find("ARG SIGNUP_REVISION")
        .expect("ARG in the builder");
    assert!(arg < builder.find("cargo build --release").unwrap());
    for (target, version) in [
        ("account", account::metrics::VERSION),
        ("mailer", mailer::metrics::VERSION),
    ] {
        let stage = d.split(&format!(" AS {target}\n")).nth(1).unwrap();
        let stage = stage.split("\nFROM ").next().unwrap();
        assert!(stage.contains("ARG SIGNUP_REVISION"), "{target}");
        let labels = stage
            .split("LABEL ")
            .nth(1)
            .unwrap_or_else(|| panic!("{target} has labels"));
        let labels = labels.split("\nCOPY").next().unwrap().replace("\\\n", " ");
        for (key, want) in [
            ("title", format!("signup-{target}")),
            ("version", version.to_owned()),
            ("revision", "${SIGNUP_REVISION}".to_owned()),
            ("licenses", license.clone()),
        ] {
            let needle = format!("org.opencontainers.image.{key}=\"{want}\"");
            assert!(labels.contains(&needle), "{target}: {needle} in {labels}");
        }
        assert!(
            labels.contains("org.opencontainers.image.description=\""),
            "{target}: a description"
        );
    }
}

#[test]
fn cargo_deny_accepts_licences_bans_and_sources_offline() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["deny", "--frozen", "check", "licenses", "bans", "sources"])
        .current_dir(root())
        .output()
        .expect("cargo deny runs (scripts/test installs cargo-deny)");
    // Diagnostics on stderr, the summary on stdout.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.status.success(), "cargo deny ({}): {text}", out.status);
    assert!(text.contains("bans ok, licenses ok, sources ok"), "{text}");
}

#[test]
fn the_readme_names_what_a_newcomer_needs() {
    let readme = read("README.md");
    let prerequisites = readme
        .split("### Prerequisites")
        .nth(1)
        .expect("README: a Prerequisites section");
    let prerequisites = prerequisites.split("\n## ").next().unwrap();
    let rust = manifest_value("workspace.package", "rust-version").unwrap();
    for must in [rust.as_str(), "cargo-nextest", "root"] {
        assert!(prerequisites.contains(must), "README prerequisites: {must}");
    }
    // Everything the test command installs is named there.
    let deps = read("scripts/test-deps.sh");
    let mut installed: Vec<String> = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("apt_install "))
        .flat_map(|pkgs| pkgs.split_whitespace().map(str::to_owned))
        .filter(|p| !p.starts_with('-'))
        .collect();
    installed.push("cargo-deny".into());
    installed.extend(
        read("tests/support/requirements.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split("==").next().unwrap().to_owned()),
    );
    assert!(installed.len() > 8, "{installed:?}");
    for tool in installed {
        assert!(
            prerequisites.contains(&tool),
            "README prerequisites name {tool}"
        );
    }
}
