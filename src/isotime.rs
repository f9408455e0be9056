//! ISO-8601 date-times: reading the ones phone apps send and writing the ones GPX needs.
//!
//! Only the shapes seen in practice are read: `2024-05-01T12:30:00Z`, with optional fractional
//! seconds, a `+02:00`/`+0200`/`+02` offset or none (UTC), a space instead of the `T` (the
//! `yyyy-MM-dd HH:mm:ss` form of older trackers), or a bare date (midnight UTC). A space before
//! the offset is read as `+`, because a `+` left unencoded in a URL's query decodes to a space
//! (`?from=2025-11-22T08:00:00+01:00`). Week dates,
//! ordinal dates and the basic (separator-free) format are refused. Everything is in ms since
//! the Unix epoch, UTC, using the proleptic Gregorian calendar.
//!
//! The calendar work (and the reading of each field) is `jiff`'s; this module is the thin layer
//! that turns the lenient forms into RFC 3339 first and refuses what `jiff` would read but
//! trackers never mean (the basic format, an hour without minutes, leap seconds, offsets past
//! 23 hours).

use jiff::Timestamp;
use jiff::civil::Date;

/// A string that is not a date-time this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an ISO-8601 date-time (expected e.g. 2024-05-01T12:30:00Z)")]
pub struct TimeError;

/// Whether `bytes[at..at + n]` are all ASCII digits.
fn digits_at(bytes: &[u8], at: usize, n: usize) -> bool {
    bytes
        .get(at..at + n)
        .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
}

/// The lenient forms rewritten as RFC 3339 (`T` separator, an offset always present), or the
/// reason to refuse without asking `jiff`.
fn normalize(text: &str) -> Result<String, TimeError> {
    let bytes = text.as_bytes();
    // `YYYY-MM-DD`, extended format only.
    let date_ok = digits_at(bytes, 0, 4)
        && bytes.get(4) == Some(&b'-')
        && digits_at(bytes, 5, 2)
        && bytes.get(7) == Some(&b'-')
        && digits_at(bytes, 8, 2);
    if !date_ok {
        return Err(TimeError);
    }
    if bytes.len() == 10 {
        return Ok(format!("{text}T00:00:00Z"));
    }
    if !matches!(bytes[10], b'T' | b't' | b' ') {
        return Err(TimeError);
    }
    // `HH:MM`, then optionally `:SS` and a fraction.
    if !(digits_at(bytes, 11, 2) && bytes.get(13) == Some(&b':') && digits_at(bytes, 14, 2)) {
        return Err(TimeError);
    }
    let mut at = 16;
    if bytes.get(at) == Some(&b':') {
        if !digits_at(bytes, at + 1, 2) || &bytes[at + 1..at + 3] == b"60" {
            // A leap second is refused rather than guessed at.
            return Err(TimeError);
        }
        at += 3;
        if matches!(bytes.get(at), Some(b'.' | b',')) {
            at += 1;
            let start = at;
            while bytes.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            if at == start {
                return Err(TimeError);
            }
        }
    }
    let (clock, zone) = text.split_at(at);
    let zone = match zone.as_bytes().first() {
        None => "Z".to_owned(),
        Some(b'Z' | b'z') => zone.to_owned(),
        Some(sign @ (b'+' | b'-' | b' ')) => {
            // `+HH`, `+HHMM` or `+HH:MM`, hours at most 23.
            let rest = &zone[1..];
            let ok = match rest.len() {
                2 => digits_at(rest.as_bytes(), 0, 2),
                4 => digits_at(rest.as_bytes(), 0, 4),
                5 => {
                    digits_at(rest.as_bytes(), 0, 2)
                        && rest.as_bytes()[2] == b':'
                        && digits_at(rest.as_bytes(), 3, 2)
                }
                _ => false,
            };
            if !ok || &rest[..2] > "23" {
                return Err(TimeError);
            }
            let sign = if *sign == b'-' { '-' } else { '+' };
            format!("{sign}{rest}")
        }
        Some(_) => return Err(TimeError),
    };
    Ok(format!("{}T{}{zone}", &clock[..10], &clock[11..]))
}

/// Parses an ISO-8601 date-time (see the module doc for the shapes read) into ms since the
/// epoch.
pub fn parse_ms(text: &str) -> Result<i64, TimeError> {
    let text = text.trim();
    let rfc3339 = normalize(text)?;
    // The date alone first, so an impossible day is refused whatever the rest says.
    text.get(..10)
        .and_then(|d| d.parse::<Date>().ok())
        .ok_or(TimeError)?;
    let ts: Timestamp = rfc3339.parse().map_err(|_| TimeError)?;
    // Milliseconds, sub-millisecond digits dropped (not rounded), as trackers mean them.
    Ok(ts.as_second() * 1000 + i64::from(ts.subsec_nanosecond()) / 1_000_000)
}

/// Formats ms since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC). Times outside the years
/// -9999 to 9999 (which no fix holds) are written as the nearest end of that span.
pub fn format_ms(ms: i64) -> String {
    let ts = Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    });
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shapes_apps_send() {
        // 2021-03-20T14:10:57Z = 1616249457 s.
        for text in [
            "2021-03-20T14:10:57Z",
            "2021-03-20T14:10:57.000Z",
            "2021-03-20t14:10:57z",
            "2021-03-20 14:10:57",
            "2021-03-20T14:10:57",
            "2021-03-20T16:10:57+02:00",
            "2021-03-20T16:10:57+0200",
            "2021-03-20T16:10:57+02",
            "2021-03-20T13:40:57-00:30",
            "2021-03-20T16:10:57 02:00",
            " 2021-03-20T14:10:57Z ",
        ] {
            assert_eq!(parse_ms(text), Ok(1_616_249_457_000), "{text}");
        }
        assert_eq!(parse_ms("2021-03-20T14:10:57.25Z"), Ok(1_616_249_457_250));
        assert_eq!(
            parse_ms("2021-03-20T14:10:57,123456Z"),
            Ok(1_616_249_457_123)
        );
        assert_eq!(parse_ms("2021-03-20T14:10Z"), Ok(1_616_249_400_000));
        assert_eq!(parse_ms("1970-01-01"), Ok(0));
        assert_eq!(parse_ms("2024-02-29"), Ok(1_709_164_800_000));
        assert_eq!(parse_ms("1969-12-31T23:59:59Z"), Ok(-1000));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for text in [
            "",
            "yesterday",
            "2021-3-20",
            "2021-13-01",
            "2021-02-29",
            "2023-04-31",
            "2021-03-20T24:00:00Z",
            "2021-03-20T14:60:00Z",
            "2021-03-20T14:10:61Z",
            "2021-03-20T14:10:57.Z",
            "2021-03-20T14:10:57Zjunk",
            "2021-03-20T14:10:57+2",
            "2021-03-20T14:10:57 Z",
            "2021-03-20T14:10:57+25:00",
            "2021-03-20X14:10:57",
            "20210320T141057Z",
            "2021-03-20T14",
        ] {
            assert_eq!(parse_ms(text), Err(TimeError), "{text:?}");
        }
    }

    #[test]
    fn refuses_what_the_calendar_crate_alone_would_read() {
        for text in [
            "2021-03-20T14:10:60Z",
            "2021-03-20T14:10:57+24:00",
            "2021-03-20T14:10:57+02:00[Europe/Berlin]junk",
            "2021-03-20T14:10:57.123456789012Zx",
            "+002021-03-20T14:10:57Z",
            "2021-03-20T1410",
        ] {
            assert_eq!(parse_ms(text), Err(TimeError), "{text:?}");
        }
    }

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_616_249_457_250), "2021-03-20T14:10:57.250Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
        // Every seventh day over four centuries, both ways.
        const MS_PER_DAY: i64 = 86_400_000;
        let start = parse_ms("1900-01-01").unwrap() / MS_PER_DAY;
        for days in (start..start + 146_097).step_by(7) {
            let ms = days * MS_PER_DAY + 45_296_789;
            let text = format_ms(ms);
            assert_eq!(parse_ms(&text), Ok(ms), "{text}");
            assert_eq!(parse_ms(&text[..10]), Ok(days * MS_PER_DAY), "{text}");
        }
        // Far outside what any fix holds: still a date, never a panic.
        assert!(
            format_ms(i64::MAX).starts_with("9999-12-"),
            "{}",
            format_ms(i64::MAX)
        );
        assert!(
            format_ms(i64::MIN).starts_with("-9999-01-"),
            "{}",
            format_ms(i64::MIN)
        );
    }
}
