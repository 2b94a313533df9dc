//! Mail templates: `<template>/<locale>/{subject.txt, body.html, body.txt}`.
//! The defaults are embedded; `MAILER_TEMPLATE_DIR` overrides or adds files of
//! the same layout without a rebuild (read at start, so a broken template
//! stops the start instead of dead-lettering mail).

use std::collections::BTreeSet;
use std::path::Path;

use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::{Map, Value as Json};

use crate::zones::{self, TimeZones};

/// The parts of a rendered mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// Why a template could not be rendered. Both are permanent: retrying the same event cannot help.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("unknown template {0:?}")]
    Unknown(String),
    #[error("template {template:?} failed to render: {reason}")]
    Failed { template: String, reason: String },
}

const PARTS: [&str; 3] = ["subject.txt", "body.html", "body.txt"];

macro_rules! embedded {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../templates/", $path)))),*]
    };
}

const EMBEDDED: &[(&str, &str)] = embedded![
    "_layout/ko/body.html",
    "_layout/ko/body.txt",
    "_layout/en/body.html",
    "_layout/en/body.txt",
    "verify_email/ko/subject.txt",
    "verify_email/ko/body.html",
    "verify_email/ko/body.txt",
    "verify_email/en/subject.txt",
    "verify_email/en/body.html",
    "verify_email/en/body.txt",
    "account_exists/ko/subject.txt",
    "account_exists/ko/body.html",
    "account_exists/ko/body.txt",
    "account_exists/en/subject.txt",
    "account_exists/en/body.html",
    "account_exists/en/body.txt",
    "reset_password/ko/subject.txt",
    "reset_password/ko/body.html",
    "reset_password/ko/body.txt",
    "reset_password/en/subject.txt",
    "reset_password/en/body.html",
    "reset_password/en/body.txt",
    "password_changed/ko/subject.txt",
    "password_changed/ko/body.html",
    "password_changed/ko/body.txt",
    "password_changed/en/subject.txt",
    "password_changed/en/body.html",
    "password_changed/en/body.txt",
    "account_deleted/ko/subject.txt",
    "account_deleted/ko/body.html",
    "account_deleted/ko/body.txt",
    "account_deleted/en/subject.txt",
    "account_deleted/en/body.html",
    "account_deleted/en/body.txt",
    "confirm_email_change/ko/subject.txt",
    "confirm_email_change/ko/body.html",
    "confirm_email_change/ko/body.txt",
    "confirm_email_change/en/subject.txt",
    "confirm_email_change/en/body.html",
    "confirm_email_change/en/body.txt",
    "email_changed/ko/subject.txt",
    "email_changed/ko/body.html",
    "email_changed/ko/body.txt",
    "email_changed/en/subject.txt",
    "email_changed/en/body.html",
    "email_changed/en/body.txt",
];

/// Whether `template` is one of the embedded templates (an operator's
/// override of one still counts): their `*_url` fields are checked.
pub fn builtin(template: &str) -> bool {
    EMBEDDED
        .iter()
        .any(|(path, _)| path.split('/').next() == Some(template))
}

/// What every mail says about who sends it, whatever the event's data:
/// `brand`, `support_address`, and the `timezone` its times are shown in.
#[derive(Debug, Clone, Default)]
pub struct House {
    pub brand: String,
    pub support_address: Option<String>,
    pub zones: TimeZones,
}

/// All templates, compiled.
pub struct Templates {
    env: Environment<'static>,
    /// `(template, locale)` pairs that have all three parts.
    available: BTreeSet<(String, String)>,
    default_locale: String,
    house: House,
}

/// `{{ t | datetime }}`: an RFC 3339 time in the zone and language of the
/// mail being rendered (`zones::format`); anything else as it is.
fn datetime(state: &minijinja::State, value: String) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(&value) else {
        return value;
    };
    let lookup = |name: &str| {
        state
            .lookup(name)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let tz = lookup("timezone").parse().unwrap_or(chrono_tz::UTC);
    zones::format(t.with_timezone(&chrono::Utc), tz, &lookup("locale"))
}

/// A template's syntax error as `file:line: what`, for the one line that
/// stops the start.
fn syntax_error(file: &Path, e: &minijinja::Error) -> anyhow::Error {
    let line = e.line().map(|l| format!(":{l}")).unwrap_or_default();
    let what = e.detail().unwrap_or("syntax error");
    anyhow::anyhow!("{}{line}: {} ({what})", file.display(), e.kind())
}

/// Escapes like minijinja but leaves `/` alone, so links in the HTML part stay
/// readable byte for byte (`&#x2f;` is valid, but mail scanners and people
/// copying a link out of the source trip over it).
fn html_attribute_safe(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    match (state.auto_escape(), value.as_str()) {
        (minijinja::AutoEscape::Html, Some(s)) if !value.is_safe() => {
            let mut escaped = String::with_capacity(s.len());
            for c in s.chars() {
                match c {
                    '&' => escaped.push_str("&amp;"),
                    '<' => escaped.push_str("&lt;"),
                    '>' => escaped.push_str("&gt;"),
                    '"' => escaped.push_str("&quot;"),
                    '\'' => escaped.push_str("&#x27;"),
                    c => escaped.push(c),
                }
            }
            out.write_str(&escaped).map_err(|e| {
                minijinja::Error::new(minijinja::ErrorKind::WriteFailure, e.to_string())
            })
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

impl Templates {
    /// The embedded templates, then the operator's folder over them.
    pub fn load(dir: Option<&Path>, default_locale: &str) -> Result<Self, anyhow::Error> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_filter("datetime", datetime);
        env.set_formatter(html_attribute_safe);
        for (name, source) in EMBEDDED {
            env.add_template(name, source)?;
        }
        if let Some(dir) = dir {
            for template in std::fs::read_dir(dir)? {
                let template = template?.path();
                let Some(t) = template
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                else {
                    continue;
                };
                if !template.is_dir() || !valid_name(&t) {
                    continue;
                }
                for locale in std::fs::read_dir(&template)? {
                    let locale = locale?.path();
                    let Some(l) = locale
                        .file_name()
                        .and_then(|n| n.to_str())
                        .map(str::to_owned)
                    else {
                        continue;
                    };
                    if !locale.is_dir() {
                        continue;
                    }
                    for part in PARTS {
                        let file = locale.join(part);
                        if file.is_file() {
                            let source = std::fs::read_to_string(&file)?;
                            env.add_template_owned(format!("{t}/{l}/{part}"), source)
                                .map_err(|e| syntax_error(&file, &e))?;
                        }
                    }
                }
            }
        }
        let mut available = BTreeSet::new();
        let names: Vec<String> = env.templates().map(|(n, _)| n.to_owned()).collect();
        for name in &names {
            let mut it = name.splitn(3, '/');
            if let (Some(t), Some(l), Some(_)) = (it.next(), it.next(), it.next())
                && PARTS
                    .iter()
                    .all(|p| names.contains(&format!("{t}/{l}/{p}")))
            {
                available.insert((t.to_owned(), l.to_owned()));
            }
        }
        Ok(Self {
            env,
            available,
            default_locale: default_locale.to_owned(),
            house: House::default(),
        })
    }

    /// The same templates, rendered for `house`.
    pub fn with_house(mut self, house: House) -> Self {
        self.house = house;
        self
    }

    /// The `(template, locale)` pairs that can be rendered.
    pub fn available(&self) -> impl Iterator<Item = &(String, String)> {
        self.available.iter()
    }

    /// Whether `template` can be rendered in some locale.
    pub fn knows(&self, template: &str) -> bool {
        self.available.iter().any(|(t, _)| t == template)
    }

    /// The locale used for `template` when `requested` is asked for: the tag,
    /// its primary language, the default locale, then English.
    pub fn resolve_locale(&self, template: &str, requested: &str) -> Option<String> {
        let requested = requested.replace('_', "-").to_ascii_lowercase();
        let primary = requested.split('-').next().unwrap_or("").to_owned();
        [
            requested,
            primary,
            self.default_locale.clone(),
            "en".to_owned(),
        ]
        .into_iter()
        .find(|l| self.available.contains(&(template.to_owned(), l.clone())))
    }

    /// Renders `template` for `locale` with `data` (and the recipient's `name`).
    pub fn render(
        &self,
        template: &str,
        locale: &str,
        data: &Map<String, Json>,
        name: Option<&str>,
    ) -> Result<Rendered, RenderError> {
        let locale = self
            .resolve_locale(template, locale)
            .ok_or_else(|| RenderError::Unknown(template.to_owned()))?;
        let mut ctx = data.clone();
        ctx.entry("name")
            .or_insert_with(|| name.map(Json::from).unwrap_or(Json::Null));
        // The mailer's word, not the publisher's: an event cannot rebrand.
        let house = &self.house;
        ctx.insert("brand".into(), Json::from(house.brand.clone()));
        ctx.insert(
            "support_address".into(),
            house.support_address.clone().map_or(Json::Null, Json::from),
        );
        ctx.insert("locale".into(), Json::from(locale.clone()));
        let tz = house.zones.for_locale(&locale);
        ctx.insert("timezone".into(), Json::from(tz.name()));
        let ctx = Value::from(minijinja::value::Serde(&ctx));
        let part = |p: &str| {
            self.env
                .get_template(&format!("{template}/{locale}/{p}"))
                .and_then(|t| t.render(&ctx))
                .map_err(|e| RenderError::Failed {
                    template: template.to_owned(),
                    reason: format!("{e:#}"),
                })
        };
        let subject = part("subject.txt")?.trim().replace(['\r', '\n'], " ");
        Ok(Rendered {
            subject,
            html: part("body.html")?,
            text: part("body.txt")?,
        })
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> Map<String, Json> {
        json!({"verify_url": "https://acc.example/verify?token=v1.k.ABC&lang=ko", "expires_at": "2026-11-25T10:00:00Z"})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn embedded_templates_render_in_both_languages() {
        let t = Templates::load(None, "en").unwrap();
        let ko = t
            .render("verify_email", "ko-KR", &data(), Some("김민수"))
            .unwrap();
        assert_eq!(ko.subject, "이메일 주소를 확인해 주세요");
        assert!(ko.html.contains("김민수님"));
        // The link survives HTML escaping as a valid attribute value.
        assert!(
            ko.html
                .contains("href=\"https://acc.example/verify?token=v1.k.ABC&amp;lang=ko\"")
        );
        assert!(
            ko.text
                .contains("https://acc.example/verify?token=v1.k.ABC&lang=ko")
        );
        assert!(ko.text.contains("2026년 11월 25일 19:00 KST (Asia/Seoul)"));
        let en = t.render("verify_email", "fr", &data(), None).unwrap();
        assert_eq!(en.subject, "Confirm your e-mail address");
        let exists = t
            .render(
                "account_exists",
                "ko",
                json!({"login_url": "https://acc.example/login"})
                    .as_object()
                    .unwrap(),
                None,
            )
            .unwrap();
        assert!(exists.html.contains("https://acc.example/login"));
    }

    #[test]
    fn every_built_in_template_renders_in_both_languages_with_its_data() {
        let t = Templates::load(None, "en").unwrap();
        let data = json!({
            "verify_url": "https://acc.example/verify?token=v2.k.ABC",
            "reset_url": "https://acc.example/password/reset?token=v2.k.DEF",
            "login_url": "https://acc.example/login",
            "forgot_url": "https://acc.example/password/forgot",
            "signup_url": "https://acc.example/signup",
            "expires_at": "2026-11-25T10:00:00Z",
            "changed_at": "2026-11-25T10:00:00Z",
            "deleted_at": "2026-11-25T10:00:00Z",
            "confirm_url": "https://acc.example/email/confirm?token=v2.k.GHI",
            "new_email_masked": "m***@example.com",
            "code": "042137",
        });
        for template in shared::envelope::BUILT_IN_TEMPLATES {
            for locale in ["ko", "en"] {
                assert_eq!(
                    t.resolve_locale(template, locale).as_deref(),
                    Some(locale),
                    "{template}/{locale} is embedded"
                );
                let r = t
                    .render(template, locale, data.as_object().unwrap(), None)
                    .unwrap_or_else(|e| panic!("{template}/{locale}: {e}"));
                assert!(!r.subject.is_empty() && !r.subject.contains('\n'));
                assert!(r.html.contains(&format!("<html lang=\"{locale}\">")));
                let links = [
                    "verify_url",
                    "reset_url",
                    "login_url",
                    "forgot_url",
                    "signup_url",
                    "confirm_url",
                ];
                let used: Vec<&str> = links
                    .iter()
                    .map(|k| data[k].as_str().unwrap())
                    .filter(|url| r.text.contains(url))
                    .collect();
                assert!(
                    !used.is_empty(),
                    "{template}/{locale}: a link in the text part"
                );
                for url in used {
                    assert!(
                        r.html.contains(url),
                        "{template}/{locale}: {url} in both parts"
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_templates_and_missing_data_are_errors() {
        let t = Templates::load(None, "en").unwrap();
        assert_eq!(
            t.render("nope", "en", &data(), None),
            Err(RenderError::Unknown("nope".into()))
        );
        assert!(matches!(
            t.render("verify_email", "en", &Map::new(), None),
            Err(RenderError::Failed { .. })
        ));
    }

    #[test]
    fn values_are_escaped_in_html() {
        let t = Templates::load(None, "en").unwrap();
        let r = t
            .render("verify_email", "en", &data(), Some("<script>x</script>"))
            .unwrap();
        assert!(!r.html.contains("<script>x"));
        assert!(r.html.contains("&lt;script&gt;"));
    }

    #[test]
    fn an_operator_folder_overrides_and_adds() {
        let dir = std::env::temp_dir().join(format!("mailer-templates-{}", std::process::id()));
        let add = dir.join("welcome/ko");
        std::fs::create_dir_all(&add).unwrap();
        std::fs::write(add.join("subject.txt"), "환영합니다 {{ who }}").unwrap();
        std::fs::write(add.join("body.html"), "<p>{{ who }}</p>").unwrap();
        std::fs::write(add.join("body.txt"), "{{ who }}").unwrap();
        let over = dir.join("verify_email/en");
        std::fs::create_dir_all(&over).unwrap();
        std::fs::write(over.join("subject.txt"), "Custom subject").unwrap();
        let t = Templates::load(Some(&dir), "ko").unwrap();
        let w = t
            .render(
                "welcome",
                "en",
                json!({"who": "민지"}).as_object().unwrap(),
                None,
            )
            .unwrap();
        assert_eq!(w.subject, "환영합니다 민지");
        assert_eq!(
            t.render("verify_email", "en", &data(), None)
                .unwrap()
                .subject,
            "Custom subject"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
