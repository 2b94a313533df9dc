//! Times in mail are shown in the reader's zone, with the zone named: a link
//! that "works until 10:00 UTC" makes a reader in Seoul do sums. The zone
//! comes from the mail's language (`ko` → Asia/Seoul, others → UTC) unless
//! `MAILER_TIMEZONE` says otherwise, for every language (`Asia/Seoul`) or per
//! language (`en=America/New_York,ko=Asia/Seoul`). Zone rules come from
//! chrono-tz (the IANA database, compiled in: no zone files needed in the
//! container).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// `MAILER_TIMEZONE`, resolved: the zone of each language.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeZones {
    every: Option<Tz>,
    by_language: BTreeMap<String, Tz>,
}

fn zone(name: &str) -> Result<Tz, String> {
    name.trim()
        .parse()
        .map_err(|_| format!("{name:?} is not an IANA time zone like Asia/Seoul"))
}

/// Value parser of `MAILER_TIMEZONE`: `Asia/Seoul`, or `en=UTC,ko=Asia/Seoul`.
pub fn time_zones(s: &str) -> Result<TimeZones, String> {
    let mut zones = TimeZones::default();
    if !s.contains('=') {
        zones.every = Some(zone(s)?);
        return Ok(zones);
    }
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (language, name) = entry
            .split_once('=')
            .ok_or_else(|| format!("expected language=Zone, got {entry:?}"))?;
        zones
            .by_language
            .insert(language.trim().to_ascii_lowercase(), zone(name)?);
    }
    Ok(zones)
}

/// The language of a locale tag: `ko-KR` → `ko`.
fn language(locale: &str) -> String {
    locale
        .split(['-', '_'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

impl TimeZones {
    /// The zone mail in `locale` shows times in.
    pub fn for_locale(&self, locale: &str) -> Tz {
        let language = language(locale);
        if let Some(tz) = self.by_language.get(&language).or(self.every.as_ref()) {
            return *tz;
        }
        match language.as_str() {
            "ko" => chrono_tz::Asia::Seoul,
            _ => chrono_tz::UTC,
        }
    }
}

/// `t` as a reader of `locale` in zone `tz` reads it, the zone named:
/// `2026년 11월 25일 19:00 KST (Asia/Seoul)`, `25 November 2026, 05:00 EST
/// (America/New_York)`, `25 November 2026, 10:00 UTC`.
pub fn format(t: DateTime<Utc>, tz: Tz, locale: &str) -> String {
    let local = t.with_timezone(&tz);
    let zone = if tz == chrono_tz::UTC {
        "UTC".to_owned()
    } else {
        format!("{} ({})", local.format("%Z"), tz.name())
    };
    let day_and_time = match language(locale).as_str() {
        "ko" => local.format("%Y년 %-m월 %-d일 %H:%M"),
        _ => local.format("%-d %B %Y, %H:%M"),
    };
    format!("{day_and_time} {zone}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn each_language_has_its_zone_unless_configured() {
        let default = TimeZones::default();
        assert_eq!(default.for_locale("ko-KR"), chrono_tz::Asia::Seoul);
        assert_eq!(default.for_locale("en"), chrono_tz::UTC);
        assert_eq!(default.for_locale("fr"), chrono_tz::UTC);
        let every = time_zones("Europe/Berlin").unwrap();
        assert_eq!(every.for_locale("ko"), chrono_tz::Europe::Berlin);
        let some = time_zones("en=America/New_York").unwrap();
        assert_eq!(some.for_locale("en-US"), chrono_tz::America::New_York);
        assert_eq!(some.for_locale("ko"), chrono_tz::Asia::Seoul);
        for bad in ["Mars/Olympus", "en=Nowhere", "en"] {
            assert!(time_zones(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_local_and_name_their_zone() {
        let t = at("2026-11-25T10:00:00Z");
        assert_eq!(
            format(t, chrono_tz::Asia::Seoul, "ko"),
            "2026년 11월 25일 19:00 KST (Asia/Seoul)"
        );
        assert_eq!(
            format(t, chrono_tz::UTC, "en"),
            "25 November 2026, 10:00 UTC"
        );
        assert_eq!(
            format(t, chrono_tz::America::New_York, "en"),
            "25 November 2026, 05:00 EST (America/New_York)"
        );
        // Summer time, and a date that changes with the zone.
        assert_eq!(
            format(
                at("2026-07-01T02:30:00Z"),
                chrono_tz::America::New_York,
                "en"
            ),
            "30 June 2026, 22:30 EDT (America/New_York)"
        );
    }
}
