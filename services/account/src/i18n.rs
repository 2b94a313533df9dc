//! The two languages of the pages, chosen by `?lang=`, then Accept-Language.

use std::sync::LazyLock;

use serde_json::{Map, Value};

/// A supported page language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Ko,
    En,
}

static EN: LazyLock<Map<String, Value>> = LazyLock::new(|| load(include_str!("../i18n/en.json")));
static KO: LazyLock<Map<String, Value>> = LazyLock::new(|| load(include_str!("../i18n/ko.json")));

fn load(json: &str) -> Map<String, Value> {
    serde_json::from_str(json).expect("embedded translations are valid JSON")
}

impl Lang {
    /// `ko`, `ko-KR`, `en-US`... to a supported language.
    pub fn from_tag(tag: &str) -> Option<Self> {
        let primary = tag.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        match primary.as_str() {
            "ko" => Some(Self::Ko),
            "en" => Some(Self::En),
            _ => None,
        }
    }

    /// The best supported language of an Accept-Language header, by quality.
    pub fn from_accept_language(header: &str) -> Option<Self> {
        let mut best: Option<(f32, Self)> = None;
        for item in header.split(',') {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            if let Some(lang) = Self::from_tag(tag)
                && q > 0.0
                && best.is_none_or(|(bq, _)| q > bq)
            {
                best = Some((q, lang));
            }
        }
        best.map(|(_, l)| l)
    }

    /// The tag used in mails and `<html lang>`.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Ko => "ko",
            Self::En => "en",
        }
    }

    /// All strings of the language, for templates.
    pub fn strings(self) -> &'static Map<String, Value> {
        match self {
            Self::Ko => &KO,
            Self::En => &EN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_languages_have_the_same_strings() {
        let en: Vec<&String> = Lang::En.strings().keys().collect();
        let ko: Vec<&String> = Lang::Ko.strings().keys().collect();
        assert_eq!(en, ko);
        assert!(
            Lang::Ko
                .strings()
                .values()
                .all(|v| v.as_str().is_some_and(|s| !s.is_empty()))
        );
    }

    #[test]
    fn accept_language_picks_by_quality() {
        assert_eq!(
            Lang::from_accept_language("ko-KR,ko;q=0.9,en-US;q=0.8"),
            Some(Lang::Ko)
        );
        assert_eq!(
            Lang::from_accept_language("fr, en;q=0.5, ko;q=0.4"),
            Some(Lang::En)
        );
        assert_eq!(
            Lang::from_accept_language("en;q=0.2, ko;q=0.9"),
            Some(Lang::Ko)
        );
        assert_eq!(Lang::from_accept_language("fr, de"), None);
        assert_eq!(Lang::from_accept_language("ko;q=0"), None);
    }
}
