//! An operator checks an overridden template before deploying it:
//! `mailer render` prints the mail (or writes .eml / .html) without a broker
//! or an SMTP server, and a template folder with a syntax error is refused
//! at start with the file and line.

use std::path::Path;
use std::process::{Command, Output};

use super::helpers::free_port;

const DATA: &str = r#"{"verify_url": "https://a.example/verify?token=t&lang=en", "expires_at": "2026-11-25T10:00:00Z"}"#;

/// The mailer binary with only `vars`; broker and SMTP point at closed
/// ports, so anything that tried to reach them would fail.
fn mailer(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let closed = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailer"));
    cmd.env_clear()
        .env(
            "MAILER_AMQP_URL",
            format!("amqp://guest:guest@127.0.0.1:{closed}/%2f"),
        )
        .env("MAILER_SMTP_URL", format!("smtp://127.0.0.1:{closed}"))
        .env("MAILER_BIND", "127.0.0.1:0")
        .args(args);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mailer-preview-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn mailer_render_previews_an_overridden_template_without_sending() {
    let dir = temp_dir();
    let templates = dir.join("templates");
    write(
        &templates,
        "verify_email/en/subject.txt",
        "Welcome to {{ brand }}",
    );
    let vars = [
        ("MAILER_TEMPLATE_DIR", templates.to_str().unwrap()),
        ("MAILER_BRAND", "Shop"),
        ("MAILER_FROM", "no-reply@shop.example"),
    ];
    let render = [
        "render",
        "--template",
        "verify_email",
        "--locale",
        "en",
        "--data",
        DATA,
    ];
    let out = mailer(&render, &vars);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Subject: Welcome to Shop"), "{stdout}");
    assert!(
        stdout.contains("From: Shop <no-reply@shop.example>"),
        "{stdout}"
    );
    assert!(
        stdout.contains("25 November 2026, 10:00 UTC"),
        "the text part:\n{stdout}"
    );
    assert!(
        stdout.contains("https://a.example/verify?token=t&lang=en"),
        "{stdout}"
    );

    // The whole message as it would be sent, and the HTML part alone.
    let eml = dir.join("preview.eml");
    let html = dir.join("preview.html");
    for file in [&eml, &html] {
        let mut args = render.to_vec();
        args.extend(["--out", file.to_str().unwrap()]);
        let out = mailer(&args, &vars);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let eml = std::fs::read_to_string(eml).unwrap();
    assert!(eml.contains("Subject: Welcome to Shop"), "{eml}");
    assert!(
        eml.contains("multipart/alternative") && eml.contains("Message-ID:"),
        "{eml}"
    );
    let html = std::fs::read_to_string(html).unwrap();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains("href=\"https://a.example/verify?token=t&amp;lang=en\""));

    // What the running mailer would refuse, the preview refuses, and says why.
    let hostile = r#"{"verify_url": "javascript:alert(1)", "expires_at": "2026-11-25T10:00:00Z"}"#;
    let out = mailer(
        &[
            "render",
            "--template",
            "verify_email",
            "--locale",
            "en",
            "--data",
            hostile,
        ],
        &vars,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`verify_url` must be an https: link"),
        "{stderr}"
    );
    let out = mailer(&["render", "--template", "nope", "--locale", "en"], &vars);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown template \"nope\""));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_template_folder_with_a_syntax_error_is_refused_at_start_with_file_and_line() {
    let dir = temp_dir();
    let body = dir.join("verify_email/ko/body.html");
    write(
        &dir,
        "verify_email/ko/body.html",
        "<p>안녕하세요</p>\n<p>{{ verify_url }}</p>\n<p>{% if name %}{{ name }</p>\n",
    );
    let vars = [("MAILER_TEMPLATE_DIR", dir.to_str().unwrap())];
    for args in [
        &[][..],
        &["render", "--template", "verify_email", "--data", DATA][..],
    ] {
        let out = mailer(args, &vars);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("MAILER_TEMPLATE_DIR"), "{stderr}");
        assert!(
            stderr.contains(&format!("{}:3:", body.display())),
            "the file and line: {stderr}"
        );
        assert!(stderr.contains("syntax error"), "{stderr}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
