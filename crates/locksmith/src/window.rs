//! Reboot windows: `REBOOT_WINDOW_START` (`HH:MM` daily or `Thu 23:00` weekly, any case) plus
//! `REBOOT_WINDOW_LENGTH` (a Go duration such as `1h30m`), in an IANA time zone.
//!
//! Pure: every question takes the current instant as an argument (an injected clock).
//! The start is a wall-clock time in the zone; the length is elapsed time. A start that falls
//! into a DST gap begins when the clock jumps past it (Go's `time.Date` does the same); a start
//! that occurs twice (DST fall-back) begins at its first occurrence.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

/// Errors parsing a window.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error(
        "invalid reboot window start {0:?}: want HH:MM or a weekday and HH:MM, e.g. \"Thu 23:00\""
    )]
    Start(String),
    #[error("invalid reboot window length {0:?}: want a duration such as 1h30m")]
    Length(String),
    #[error("reboot window length must be positive, got {0:?}")]
    NonPositive(String),
    #[error("unknown time zone {0:?} (want an IANA name such as Europe/Berlin)")]
    Zone(String),
    #[error("REBOOT_WINDOW_START and REBOOT_WINDOW_LENGTH must be set together")]
    Incomplete,
}

/// When a window opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowStart {
    Daily(NaiveTime),
    Weekly(Weekday, NaiveTime),
}

/// A recurring reboot window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub start: WindowStart,
    pub length: Duration,
    pub zone: Tz,
}

/// Parses `HH:MM` or `<weekday> HH:MM` (weekday as `thu`, `Thu`, `THURSDAY`, ...).
pub fn parse_start(s: &str) -> Result<WindowStart, WindowError> {
    let err = || WindowError::Start(s.to_string());
    let parts: Vec<&str> = s.split_whitespace().collect();
    let parse_time = |t: &str| {
        let (h, m) = t.split_once(':').ok_or_else(err)?;
        let h: u32 = h.parse().map_err(|_| err())?;
        let m: u32 = m.parse().map_err(|_| err())?;
        NaiveTime::from_hms_opt(h, m, 0).ok_or_else(err)
    };
    match parts.as_slice() {
        [t] => Ok(WindowStart::Daily(parse_time(t)?)),
        [d, t] => {
            let day = parse_weekday(d).ok_or_else(err)?;
            Ok(WindowStart::Weekly(day, parse_time(t)?))
        }
        _ => Err(err()),
    }
}

fn parse_weekday(s: &str) -> Option<Weekday> {
    let s = s.to_ascii_lowercase();
    let days = [
        ("mon", "monday", Weekday::Mon),
        ("tue", "tuesday", Weekday::Tue),
        ("wed", "wednesday", Weekday::Wed),
        ("thu", "thursday", Weekday::Thu),
        ("fri", "friday", Weekday::Fri),
        ("sat", "saturday", Weekday::Sat),
        ("sun", "sunday", Weekday::Sun),
    ];
    days.iter()
        .find(|(short, long, _)| s == *short || s == *long)
        .map(|(_, _, d)| *d)
}

/// Parses a Go-style duration: one or more `<number><unit>` with units h, m, s, ms
/// (`1h30m`, `90m`, `1.5h`, `45s`).
pub fn parse_length(s: &str) -> Result<Duration, WindowError> {
    let err = || WindowError::Length(s.to_string());
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total_ms: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_end == 0 {
            return Err(err());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| err())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1_000.0,
            "ms" => 1.0,
            _ => return Err(err()),
        };
        total_ms += n * factor;
        rest = &rest[unit_end..];
    }
    if total_ms <= 0.0 {
        return Err(WindowError::NonPositive(s.to_string()));
    }
    Ok(Duration::milliseconds(total_ms.round() as i64))
}

/// Parses an IANA zone name.
pub fn parse_zone(s: &str) -> Result<Tz, WindowError> {
    s.trim()
        .parse::<Tz>()
        .map_err(|_| WindowError::Zone(s.to_string()))
}

impl Window {
    /// Builds a window from the config strings (both or neither must be given).
    pub fn from_config(
        start: Option<&str>,
        length: Option<&str>,
        zone: Tz,
    ) -> Result<Option<Window>, WindowError> {
        match (start, length) {
            (None, None) => Ok(None),
            (Some(s), Some(l)) => Ok(Some(Window {
                start: parse_start(s)?,
                length: parse_length(l)?,
                zone,
            })),
            _ => Err(WindowError::Incomplete),
        }
    }

    /// The instant the window opening on local date `date` starts, if it opens that day.
    fn start_on(&self, date: NaiveDate) -> Option<DateTime<Utc>> {
        let time = match self.start {
            WindowStart::Daily(t) => t,
            WindowStart::Weekly(d, t) if date.weekday() == d => t,
            WindowStart::Weekly(..) => return None,
        };
        let naive = date.and_time(time);
        let local = match self.zone.from_local_datetime(&naive) {
            chrono::LocalResult::Single(t) => t,
            chrono::LocalResult::Ambiguous(first, _) => first,
            // In a DST gap: read the wall time with the offset in force before the gap.
            chrono::LocalResult::None => {
                let before = self
                    .zone
                    .from_local_datetime(&(naive - Duration::hours(3)))
                    .earliest()?;
                let offset = chrono::Offset::fix(before.offset());
                return Some(
                    (naive - Duration::seconds(offset.local_minus_utc() as i64)).and_utc(),
                );
            }
        };
        Some(local.with_timezone(&Utc))
    }

    /// Window starts around `now` (8 days either side), in order.
    fn starts_around(&self, now: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let today = now.with_timezone(&self.zone).date_naive();
        (-8..=8).filter_map(move |d| self.start_on(today + Duration::days(d)))
    }

    /// Whether `now` lies inside a window.
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        self.starts_around(now)
            .any(|s| s <= now && now < s + self.length)
    }

    /// Time to wait from `now` until inside a window (zero when inside).
    pub fn wait(&self, now: DateTime<Utc>) -> Duration {
        if self.contains(now) {
            return Duration::zero();
        }
        self.starts_around(now)
            .filter(|s| *s > now)
            .min()
            .map(|s| s - now)
            // Unreachable for a valid window (one opens at least weekly); wait a day and re-ask.
            .unwrap_or_else(|| Duration::days(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn win(start: &str, len: &str, zone: &str) -> Window {
        Window::from_config(Some(start), Some(len), parse_zone(zone).unwrap())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn parses() {
        assert_eq!(
            parse_start("thu 23:00").unwrap(),
            WindowStart::Weekly(Weekday::Thu, NaiveTime::from_hms_opt(23, 0, 0).unwrap())
        );
        assert_eq!(
            parse_start("THURSDAY 1:05").unwrap(),
            parse_start("Thu 01:05").unwrap()
        );
        assert!(matches!(
            parse_start("04:00").unwrap(),
            WindowStart::Daily(_)
        ));
        for bad in ["", "25:00", "12:60", "Thx 10:00", "10", "Mon 10:00 x"] {
            assert!(parse_start(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_length("1h30m").unwrap(), Duration::minutes(90));
        assert_eq!(parse_length("1.5h").unwrap(), Duration::minutes(90));
        assert_eq!(parse_length("45s").unwrap(), Duration::seconds(45));
        for bad in ["", "h", "10", "1d", "0m", "-1h"] {
            assert!(parse_length(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Window::from_config(Some("04:00"), None, Tz::UTC),
            Err(WindowError::Incomplete)
        );
        assert_eq!(Window::from_config(None, None, Tz::UTC), Ok(None));
        assert!(parse_zone("Mars/Olympus").is_err());
    }

    #[test]
    fn daily_window() {
        let w = win("04:00", "1h", "UTC");
        assert!(w.contains(utc("2026-01-10T04:00:00Z")));
        assert!(w.contains(utc("2026-01-10T04:59:59Z")));
        assert!(!w.contains(utc("2026-01-10T05:00:00Z")));
        assert_eq!(w.wait(utc("2026-01-10T05:00:00Z")), Duration::hours(23));
        assert_eq!(w.wait(utc("2026-01-10T03:30:00Z")), Duration::minutes(30));
    }

    #[test]
    fn daily_window_crossing_midnight() {
        let w = win("23:30", "1h", "UTC");
        assert!(w.contains(utc("2026-01-10T23:45:00Z")));
        assert!(w.contains(utc("2026-01-11T00:15:00Z")));
        assert!(!w.contains(utc("2026-01-11T00:30:00Z")));
        assert_eq!(w.wait(utc("2026-01-11T00:30:00Z")), Duration::hours(23));
    }

    #[test]
    fn weekly_window_crossing_week_end() {
        // 2026-01-11 is a Sunday.
        let w = win("sun 23:00", "2h", "UTC");
        assert!(w.contains(utc("2026-01-11T23:10:00Z")));
        assert!(w.contains(utc("2026-01-12T00:59:00Z")));
        assert!(!w.contains(utc("2026-01-12T01:00:00Z")));
        assert_eq!(
            w.wait(utc("2026-01-12T01:00:00Z")),
            Duration::days(6) + Duration::hours(22)
        );
        // Thursday: waits until Sunday 23:00.
        assert_eq!(w.wait(utc("2026-01-08T23:00:00Z")), Duration::days(3));
    }

    #[test]
    fn named_zone_and_dst() {
        // Europe/Berlin springs forward on 2026-03-29 at 02:00 CET -> 03:00 CEST.
        let w = win("09:00", "30m", "Europe/Berlin");
        assert!(w.contains(utc("2026-03-28T08:10:00Z"))); // 09:10 CET
        assert!(!w.contains(utc("2026-03-29T08:10:00Z"))); // 10:10 CEST
        assert!(w.contains(utc("2026-03-29T07:10:00Z"))); // 09:10 CEST
                                                          // From Saturday 09:30 CET to Sunday 09:00 CEST: 22.5 h of elapsed time, not 23.5.
        assert_eq!(
            w.wait(utc("2026-03-28T08:30:00Z")),
            Duration::minutes(22 * 60 + 30)
        );
        // A start inside the gap (02:30 does not exist that night) opens at 03:30 CEST.
        let g = win("02:30", "1h", "Europe/Berlin");
        assert_eq!(g.wait(utc("2026-03-29T00:00:00Z")), Duration::minutes(90));
        // Fall back on 2026-10-25 (03:00 CEST -> 02:00 CET): 02:30 occurs twice; first counts.
        assert!(g.contains(utc("2026-10-25T00:30:00Z"))); // 02:30 CEST
        assert!(g.contains(utc("2026-10-25T01:10:00Z"))); // 02:10 CET, still inside the 1 h
        assert!(!g.contains(utc("2026-10-25T01:30:00Z"))); // 02:30 CET, the second one
    }
}
